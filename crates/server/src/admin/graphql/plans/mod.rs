//! Plans: apply, list, cancel, and follow executions and their output.

mod types;

use async_graphql::Subscription;
use futures_util::{Stream, StreamExt};
use mobius_core::plans::{OperationSpec, PlanError, PlanSpec, PlanTargets};
use tokio_stream::wrappers::BroadcastStream;

use crate::admin::graphql::gate::WriteStore;
use crate::admin::graphql::prelude::*;
use crate::device::{PlanEvent, PlanServices};
pub use types::*;

/// Maps a plan error by exhaustive match.
fn plan_error(err: PlanError) -> async_graphql::Error {
    match err {
        PlanError::Invalid { field, reason } => errors::bad_input(&field, reason),
        PlanError::IdempotencyConflict => {
            errors::coded(ErrorCode::Conflict, err.to_string(), Some("idempotencyKey"))
        }
        PlanError::AlreadyFinished(_) => errors::coded(ErrorCode::Conflict, err.to_string(), None),
        PlanError::Store(e) => errors::store(e),
    }
}

fn parse_ids(ids: &[ID], kind: &str) -> Result<Vec<Uuid>> {
    ids.iter().map(|id| parse_id(id, kind)).collect()
}

#[derive(Default)]
pub struct PlanQuery;

#[Object]
impl PlanQuery {
    /// Plans, newest first.
    async fn plans(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Page<PlanNode>> {
        let window = Window::new(first, after, last, before)?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        paged(
            window,
            |offset, limit| async move { scope.plans().page(offset, limit).await },
            PlanNode,
        )
        .await
    }

    async fn plan(&self, ctx: &Context<'_>, id: ID) -> Result<PlanNode> {
        let id = parse_id(&id, "Plan")?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        Ok(PlanNode(
            scope.plans().get(id).await.map_err(errors::store)?,
        ))
    }

    async fn plan_execution(&self, ctx: &Context<'_>, id: ID) -> Result<ExecutionNode> {
        let id = parse_id(&id, "PlanExecution")?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        Ok(ExecutionNode(
            scope.plans().execution(id).await.map_err(errors::store)?,
        ))
    }

    /// A device's executions, newest plan version first.
    async fn device_executions(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        first: Option<i32>,
    ) -> Result<Vec<ExecutionNode>> {
        let device_id = parse_id(&device_id, "Device")?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        scope
            .devices()
            .get(device_id)
            .await
            .map_err(errors::store)?;
        let limit = first.unwrap_or(50).clamp(1, MAX_PAGE) as u64;
        let rows = scope
            .plans()
            .executions_of_device(device_id, limit)
            .await
            .map_err(errors::store)?;
        Ok(rows.into_iter().map(ExecutionNode).collect())
    }
}

#[derive(Default)]
pub struct PlanMutation;

#[Object]
impl PlanMutation {
    /// Stores, signs and delivers a plan: one execution per target device.
    /// The same idempotency key with the same content answers the same
    /// plan; with different content it is CONFLICT.
    async fn apply_plan(
        &self,
        ctx: &Context<'_>,
        input: ApplyPlanInput,
    ) -> Result<ApplyPlanPayload> {
        let spec = PlanSpec {
            idempotency_key: input.idempotency_key,
            targets: PlanTargets {
                device_ids: parse_ids(&input.targets.device_ids, "Device")?,
                site_ids: parse_ids(&input.targets.site_ids, "Site")?,
                team_ids: parse_ids(&input.targets.team_ids, "Team")?,
            },
            operations: input
                .operations
                .into_iter()
                .map(|op| OperationSpec {
                    operation_id: op.operation_id,
                    kind: op.kind,
                    params: op.params.map(|p| p.0).unwrap_or(serde_json::json!({})),
                })
                .collect(),
        };
        let plans = ctx.data::<PlanServices>()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageDevices, None).await?;
        let applied = scope
            .plans()
            .apply(&principal.actor(), &plans.signer, spec)
            .await
            .map_err(plan_error)?;
        scope.commit().await.map_err(errors::store)?;
        if applied.created {
            for execution in &applied.executions {
                plans
                    .notifier
                    .notify(execution.tenant_id, execution.device_id);
            }
        }
        Ok(ApplyPlanPayload {
            plan: PlanNode(applied.plan),
            created: applied.created,
        })
    }

    /// Cancels one execution: a queued one at once, a running one is told
    /// to stop (its process group is killed) and reports CANCELLED.
    async fn cancel_execution(&self, ctx: &Context<'_>, id: ID) -> Result<ExecutionNode> {
        let id = parse_id(&id, "PlanExecution")?;
        let plans = ctx.data::<PlanServices>()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageDevices, None).await?;
        let execution = scope
            .plans()
            .cancel_execution(&principal.actor(), id)
            .await
            .map_err(plan_error)?;
        scope.commit().await.map_err(errors::store)?;
        plans
            .notifier
            .notify(execution.tenant_id, execution.device_id);
        plans
            .events
            .publish(PlanEvent::Status(Box::new(execution.clone())));
        Ok(ExecutionNode(execution))
    }

    /// Cancels every unfinished execution of a plan.
    async fn cancel_plan(&self, ctx: &Context<'_>, id: ID) -> Result<PlanNode> {
        let id = parse_id(&id, "Plan")?;
        let plans = ctx.data::<PlanServices>()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageDevices, None).await?;
        let cancelled = scope
            .plans()
            .cancel_plan(&principal.actor(), id)
            .await
            .map_err(errors::store)?;
        let plan = scope.plans().get(id).await.map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        for execution in cancelled {
            plans
                .notifier
                .notify(execution.tenant_id, execution.device_id);
            plans.events.publish(PlanEvent::Status(Box::new(execution)));
        }
        Ok(PlanNode(plan))
    }

    /// Drops a device's queued (not yet started) executions; answers how many.
    async fn purge_device_queue(&self, ctx: &Context<'_>, device_id: ID) -> Result<i32> {
        let device_id = parse_id(&device_id, "Device")?;
        let plans = ctx.data::<PlanServices>()?;
        let (principal, scope) =
            gate::write_on_device(ctx, Operation::ManageDevices, device_id).await?;
        let purged = scope
            .plans()
            .purge_device_queue(&principal.actor(), device_id)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        let count = purged.len() as i32;
        for execution in purged {
            plans
                .notifier
                .notify(execution.tenant_id, execution.device_id);
            plans.events.publish(PlanEvent::Status(Box::new(execution)));
        }
        Ok(count)
    }
}

#[derive(Default)]
pub struct PlanSubscription;

#[Subscription]
impl PlanSubscription {
    /// Status changes of executions (of one plan, when `planId` is given)
    /// committed on the server this subscription is connected to.
    async fn execution_updates(
        &self,
        ctx: &Context<'_>,
        plan_id: Option<ID>,
    ) -> Result<impl Stream<Item = ExecutionNode>> {
        let principal = gate::principal(ctx)?;
        principal
            .authorize(Operation::ViewDevices, None)
            .map_err(errors::denied)?;
        let plan = plan_id.map(|id| parse_id(&id, "Plan")).transpose()?;
        let tenant = principal.tenant_id;
        let feed = ctx.data::<PlanServices>()?.events.subscribe();
        Ok(
            BroadcastStream::new(feed).filter_map(move |event| async move {
                match event {
                    Ok(PlanEvent::Status(execution))
                        if execution.tenant_id == tenant
                            && plan.is_none_or(|p| p == execution.plan_id) =>
                    {
                        Some(ExecutionNode(*execution))
                    }
                    _ => None,
                }
            }),
        )
    }

    /// Output lines of one execution as they arrive: first the lines
    /// stored so far, then new ones.
    async fn execution_logs(
        &self,
        ctx: &Context<'_>,
        execution_id: ID,
    ) -> Result<impl Stream<Item = LogLineNode>> {
        let principal = gate::principal(ctx)?;
        principal
            .authorize(Operation::ViewDevices, None)
            .map_err(errors::denied)?;
        let execution_id = parse_id(&execution_id, "PlanExecution")?;
        let tenant = principal.tenant_id;
        // Subscribe before reading the backlog, so no line falls between.
        let feed = ctx.data::<PlanServices>()?.events.subscribe();
        let store = &ctx.data::<WriteStore>()?.0;
        let scope = store.begin(principal).await.map_err(errors::store)?;
        let execution = scope
            .plans()
            .execution(execution_id)
            .await
            .map_err(errors::store)?;
        let backlog = scope
            .plans()
            .logs(execution_id, 0, 100_000)
            .await
            .map_err(errors::store)?;
        drop(scope);
        let mut lines: Vec<LogLineNode> = Vec::with_capacity(backlog.len() + 1);
        if execution.log_dropped_bytes > 0 {
            lines.push(LogLineNode {
                seq: 0,
                stream: "marker".into(),
                time: execution.created_at,
                line: truncation_marker(execution.log_dropped_bytes),
            });
        }
        let last_seq = backlog.last().map_or(0, |row| row.seq);
        lines.extend(backlog.into_iter().map(LogLineNode::from));
        let live = BroadcastStream::new(feed)
            .filter_map(move |event| async move {
                match event {
                    Ok(PlanEvent::Logs {
                        tenant_id,
                        execution_id: id,
                        lines,
                    }) if tenant_id == tenant && id == execution_id => {
                        Some(futures_util::stream::iter(
                            lines
                                .into_iter()
                                .filter(move |row| row.seq > last_seq)
                                .map(LogLineNode::from)
                                .collect::<Vec<_>>(),
                        ))
                    }
                    _ => None,
                }
            })
            .flatten();
        Ok(futures_util::stream::iter(lines).chain(live))
    }
}
