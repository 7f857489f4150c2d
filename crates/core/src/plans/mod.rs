//! Device work: immutable plans of ordered operations, one signed
//! execution per target device, per-operation results and output lines.
//!
//! A plan is stored once per idempotency key (24 h): the same key with the
//! same content answers the stored plan, different content is refused.
//! Each execution carries the device's next `plan_version` and an Ed25519
//! signature over its payload, so an agent can refuse a forged or replayed
//! one. Every transition writes an audit event in its transaction.

mod entities;
mod signing;
pub mod workloads;

use std::collections::{BTreeSet, HashMap};

use mobius_api::plans::{
    ExecutionPayload, ExecutionReport, ExecutionStatus, Operation, SignedWork, WorkFrame,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use entities::execution::Model as Execution;
pub use entities::log_line::Model as LogRow;
pub use entities::operation_result::Model as OperationResult;
pub use entities::plan::Model as Plan;
pub use signing::PlanSigner;
pub(crate) use signing::reseal_signing_keys;

use crate::Uuid;
use crate::audit::{Actor, AuditRecord};
use crate::db::entities::device;
use crate::db::locks::TenantLock;
use crate::db::{Store, StoreError, StoreResult, SystemTask, TenantScope};
use entities::{execution, log_line, operation_result, plan};

/// An idempotency key identifies one plan for this long.
pub const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;
/// Default per-execution output cap (the tail is kept beyond it).
pub const DEFAULT_LOG_CAP_BYTES: u64 = 1024 * 1024;
/// Operations per plan: a plan is a short, reviewable list of steps.
pub const MAX_OPERATIONS: usize = 100;
/// Rows per multi-row insert (Postgres allows 65535 bound values).
const INSERT_CHUNK: usize = 1000;

/// What can go wrong with a plan request, mapped to stable codes by the server.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A field of the plan is refused; `field` is its path.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The idempotency key names a plan (from the last 24 h) with other content.
    #[error(
        "idempotencyKey is already used by a plan with different content (keys identify one plan for 24 h)"
    )]
    IdempotencyConflict,
    /// The execution has already finished.
    #[error("the execution has already finished ({0})")]
    AlreadyFinished(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for PlanError {
    fn from(err: sea_orm::DbErr) -> Self {
        PlanError::Store(err.into())
    }
}

pub type PlanResult<T> = Result<T, PlanError>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A plan as an admin submits it.
#[derive(Clone, Debug, Default)]
pub struct PlanSpec {
    pub idempotency_key: String,
    pub targets: PlanTargets,
    pub operations: Vec<OperationSpec>,
}

#[derive(Clone, Debug, Default)]
pub struct PlanTargets {
    pub device_ids: Vec<Uuid>,
    pub site_ids: Vec<Uuid>,
    pub team_ids: Vec<Uuid>,
}

#[derive(Clone, Debug)]
pub struct OperationSpec {
    /// Generated (a UUIDv7) when absent.
    pub operation_id: Option<String>,
    pub kind: String,
    pub params: serde_json::Value,
}

/// The result of [`Plans::apply`].
#[derive(Clone, Debug)]
pub struct Applied {
    pub plan: Plan,
    pub executions: Vec<Execution>,
    /// False when the idempotency key answered an existing plan.
    pub created: bool,
}

/// What a report changed, for the caller to announce after commit.
#[derive(Clone, Debug)]
pub struct Reported {
    pub execution: Execution,
    /// The status changed with this report.
    pub status_changed: bool,
    pub lines: Vec<LogRow>,
    /// The agent should stop the execution.
    pub cancel: bool,
}

/// A device's outstanding work, from [`Plans::take_work`].
#[derive(Clone, Debug, Default)]
pub struct Work {
    pub frames: Vec<WorkFrame>,
    /// Executions that became DELIVERED with this call.
    pub delivered: Vec<Execution>,
}

/// Per-status execution counts of a plan.
pub type StatusCounts = Vec<(ExecutionStatus, u64)>;

pub struct Plans<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn plans(&self) -> Plans<'_> {
        Plans { scope: self }
    }
}

/// The execution's status; a stored value we did not write reads as FAILED.
pub fn status_of(execution: &Execution) -> ExecutionStatus {
    ExecutionStatus::parse(&execution.status).unwrap_or(ExecutionStatus::Failed)
}

const OPEN: [&str; 2] = ["PENDING", "DELIVERED"];

impl<'s> Plans<'s> {
    /// Validates, stores and signs a plan: one execution per target device.
    pub async fn apply(
        &self,
        actor: &Actor,
        signer: &PlanSigner,
        spec: PlanSpec,
    ) -> PlanResult<Applied> {
        let key = spec.idempotency_key.trim().to_owned();
        if key.is_empty() || key.len() > 200 || key.contains('\0') {
            return Err(invalid("idempotencyKey", "must be 1 to 200 characters"));
        }
        if spec.operations.is_empty() || spec.operations.len() > MAX_OPERATIONS {
            return Err(invalid(
                "operations",
                format!("must list 1 to {MAX_OPERATIONS} operations"),
            ));
        }
        let mut seen_ids = BTreeSet::new();
        for (i, op) in spec.operations.iter().enumerate() {
            let at = format!("operations[{i}]");
            if let Some(id) = &op.operation_id {
                if id.is_empty()
                    || id.len() > 128
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
                {
                    return Err(invalid(
                        format!("{at}.operationId"),
                        "must be 1 to 128 letters, digits, '.', '_', ':' or '-'",
                    ));
                }
                if !seen_ids.insert(id.clone()) {
                    return Err(invalid(
                        format!("{at}.operationId"),
                        "is used twice in this plan",
                    ));
                }
            }
            workloads::validate(&op.kind, &op.params, &at)
                .map_err(|(field, reason)| invalid(field, reason))?;
        }
        let targets = &spec.targets;
        if targets.device_ids.is_empty()
            && targets.site_ids.is_empty()
            && targets.team_ids.is_empty()
        {
            return Err(invalid("targets", "name at least one device, site or team"));
        }
        let canonical = json!({
            "targets": {
                "device_ids": targets.device_ids.iter().collect::<BTreeSet<_>>(),
                "site_ids": targets.site_ids.iter().collect::<BTreeSet<_>>(),
                "team_ids": targets.team_ids.iter().collect::<BTreeSet<_>>(),
            },
            "operations": spec.operations.iter().map(|op| json!({
                "operation_id": op.operation_id,
                "kind": op.kind,
                "params": op.params,
            })).collect::<Vec<_>>(),
        });
        // serde_json's maps are sorted (no preserve_order): this is canonical.
        let sha256 = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));

        let db = self.scope.connection();
        self.scope.lock(TenantLock::PlanApply).await?;
        let now = chrono::Utc::now();
        if let Some(existing) = plan::Entity::find()
            .filter(plan::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(plan::Column::IdempotencyKey.eq(key.as_str()))
            .one(db)
            .await?
        {
            if existing.created_at > now - chrono::Duration::hours(IDEMPOTENCY_WINDOW_HOURS) {
                if existing.payload_sha256 != sha256 {
                    return Err(PlanError::IdempotencyConflict);
                }
                let executions = self.executions_of_plan(existing.id).await?;
                return Ok(Applied {
                    plan: existing,
                    executions,
                    created: false,
                });
            }
            // Expired: the key is free again.
            let mut row = existing.into_active_model();
            row.idempotency_key = Set(None);
            row.update(db).await?;
        }

        let devices = self.resolve_targets(targets).await?;
        if devices.is_empty() {
            return Err(invalid("targets", "match no enrolled device"));
        }

        let operations: Vec<Operation> = spec
            .operations
            .iter()
            .map(|op| Operation {
                operation_id: op
                    .operation_id
                    .clone()
                    .unwrap_or_else(|| Uuid::now_v7().to_string()),
                kind: op.kind.clone(),
                params: op.params.clone(),
            })
            .collect();
        let plan_id = Uuid::now_v7();
        let content = json!({
            "targets": canonical["targets"],
            "operations": operations,
        });
        let plan_row = plan::ActiveModel {
            id: Set(plan_id),
            tenant_id: Set(self.scope.tenant_id()),
            idempotency_key: Set(Some(key.clone())),
            payload_sha256: Set(sha256.clone()),
            content: Set(content),
            actor_kind: Set(actor.kind.as_str().to_owned()),
            actor_id: Set(actor.id),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(db)
        .await?;

        let versions = self.latest_versions(&devices).await?;
        let key_pair = signer.key(self.scope, actor).await?;
        let mut rows = Vec::with_capacity(devices.len());
        for device_id in &devices {
            let execution_id = Uuid::now_v7();
            let plan_version = versions.get(device_id).copied().unwrap_or(0) + 1;
            let payload = ExecutionPayload {
                tenant_id: self.scope.tenant_id(),
                device_id: *device_id,
                plan_id,
                execution_id,
                plan_version: u64::try_from(plan_version).unwrap_or(0),
                plan_sha256: sha256.clone(),
                operations: operations.clone(),
            };
            let payload = serde_json::to_string(&payload)
                .map_err(StoreError::internal("serializing an execution payload"))?;
            let signature = PlanSigner::sign(&key_pair, payload.as_bytes());
            rows.push(Execution {
                id: execution_id,
                tenant_id: self.scope.tenant_id(),
                plan_id,
                device_id: *device_id,
                plan_version,
                status: ExecutionStatus::Pending.as_str().to_owned(),
                payload,
                signature,
                payload_sha256: sha256.clone(),
                cancel_requested: false,
                error: None,
                log_bytes: 0,
                log_dropped_bytes: 0,
                log_seq: 0,
                delivered_at: None,
                started_at: None,
                finished_at: None,
                created_at: now,
                updated_at: now,
            });
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            execution::Entity::insert_many(
                chunk
                    .iter()
                    .cloned()
                    .map(IntoActiveModel::into_active_model),
            )
            .exec_without_returning(db)
            .await
            .map_err(crate::db::conflict_on("execution", "planVersion"))?;
        }
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("plan.applied", "plan", Some(plan_id)).with_details(json!({
                    "idempotency_key": key,
                    "payload_sha256": sha256,
                    "executions": rows.len(),
                    "operations": operations.len(),
                })),
            )
            .await?;
        Ok(Applied {
            plan: plan_row,
            executions: rows,
            created: true,
        })
    }

    /// The devices a plan targets: each named device (NOT_FOUND when it is
    /// not the tenant's or not visible to the caller), and the enrolled,
    /// unrevoked devices of each named site and team.
    pub(crate) async fn resolve_targets(&self, targets: &PlanTargets) -> PlanResult<Vec<Uuid>> {
        let db = self.scope.connection();
        let mut visible = Condition::all().add(device::Column::TenantId.eq(self.scope.tenant_id()));
        if let Some(team) = self.scope.team_restriction() {
            visible = visible.add(device::Column::TeamId.eq(team));
        }
        let mut found = BTreeSet::new();
        for id in &targets.device_ids {
            let row = device::Entity::find_by_id(*id)
                .filter(visible.clone())
                .one(db)
                .await?
                .ok_or(StoreError::NotFound { entity: "device" })?;
            if row.revoked_at.is_some() {
                return Err(invalid(
                    "targets.deviceIds",
                    format!("device {id} is revoked"),
                ));
            }
            found.insert(row.id);
        }
        for id in &targets.site_ids {
            self.scope.sites().get(*id).await?;
        }
        for id in &targets.team_ids {
            self.scope.teams().get(*id).await?;
        }
        if !targets.site_ids.is_empty() || !targets.team_ids.is_empty() {
            let mut by_group = Condition::any();
            if !targets.site_ids.is_empty() {
                by_group = by_group.add(device::Column::SiteId.is_in(targets.site_ids.clone()));
            }
            if !targets.team_ids.is_empty() {
                by_group = by_group.add(device::Column::TeamId.is_in(targets.team_ids.clone()));
            }
            let ids: Vec<Uuid> = device::Entity::find()
                .select_only()
                .column(device::Column::Id)
                .filter(visible)
                .filter(device::Column::RevokedAt.is_null())
                .filter(by_group)
                .into_tuple()
                .all(db)
                .await?;
            found.extend(ids);
        }
        Ok(found.into_iter().collect())
    }

    /// Each device's latest plan version.
    async fn latest_versions(&self, devices: &[Uuid]) -> StoreResult<HashMap<Uuid, i64>> {
        let mut versions = HashMap::new();
        for chunk in devices.chunks(5000) {
            let rows: Vec<(Uuid, Option<i64>)> = execution::Entity::find()
                .select_only()
                .column(execution::Column::DeviceId)
                .column_as(execution::Column::PlanVersion.max(), "v")
                .filter(execution::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(execution::Column::DeviceId.is_in(chunk.to_vec()))
                .group_by(execution::Column::DeviceId)
                .into_tuple()
                .all(self.scope.connection())
                .await?;
            for (device, version) in rows {
                versions.insert(device, version.unwrap_or(0));
            }
        }
        Ok(versions)
    }

    /// Plans, newest first, and the total.
    pub async fn page(&self, offset: u64, limit: u64) -> StoreResult<(Vec<Plan>, u64)> {
        let query = plan::Entity::find()
            .filter(plan::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(plan::Column::Id);
        let total = query.clone().count(self.scope.connection()).await?;
        let rows = query
            .offset(offset)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        Ok((rows, total))
    }

    pub async fn get(&self, id: Uuid) -> StoreResult<Plan> {
        plan::Entity::find_by_id(id)
            .filter(plan::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound { entity: "plan" })
    }

    pub async fn executions_of_plan(&self, plan_id: Uuid) -> StoreResult<Vec<Execution>> {
        Ok(execution::Entity::find()
            .filter(execution::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(execution::Column::PlanId.eq(plan_id))
            .order_by_asc(execution::Column::Id)
            .all(self.scope.connection())
            .await?)
    }

    /// Per-status counts of a plan's executions.
    pub async fn status_counts(&self, plan_id: Uuid) -> StoreResult<StatusCounts> {
        let rows: Vec<(String, i64)> = execution::Entity::find()
            .select_only()
            .column(execution::Column::Status)
            .column_as(execution::Column::Id.count(), "n")
            .filter(execution::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(execution::Column::PlanId.eq(plan_id))
            .group_by(execution::Column::Status)
            .into_tuple()
            .all(self.scope.connection())
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(status, n)| {
                Some((ExecutionStatus::parse(&status)?, u64::try_from(n).ok()?))
            })
            .collect())
    }

    /// A device's executions, newest first.
    pub async fn executions_of_device(
        &self,
        device_id: Uuid,
        limit: u64,
    ) -> StoreResult<Vec<Execution>> {
        Ok(execution::Entity::find()
            .filter(execution::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(execution::Column::DeviceId.eq(device_id))
            .order_by_desc(execution::Column::PlanVersion)
            .limit(limit)
            .all(self.scope.connection())
            .await?)
    }

    pub async fn execution(&self, id: Uuid) -> StoreResult<Execution> {
        execution::Entity::find_by_id(id)
            .filter(execution::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound {
                entity: "execution",
            })
    }

    pub async fn operation_results(&self, execution_id: Uuid) -> StoreResult<Vec<OperationResult>> {
        Ok(operation_result::Entity::find()
            .filter(operation_result::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(operation_result::Column::ExecutionId.eq(execution_id))
            .order_by_asc(operation_result::Column::Id)
            .all(self.scope.connection())
            .await?)
    }

    /// Output lines after `after_seq`, oldest first.
    pub async fn logs(
        &self,
        execution_id: Uuid,
        after_seq: i64,
        limit: u64,
    ) -> StoreResult<Vec<LogRow>> {
        Ok(log_line::Entity::find()
            .filter(log_line::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(log_line::Column::ExecutionId.eq(execution_id))
            .filter(log_line::Column::Seq.gt(after_seq))
            .order_by_asc(log_line::Column::Seq)
            .limit(limit)
            .all(self.scope.connection())
            .await?)
    }

    /// Cancels one execution: a queued one is CANCELLED at once, a running
    /// one is marked so its agent is told to stop (it reports CANCELLED).
    pub async fn cancel_execution(&self, actor: &Actor, id: Uuid) -> PlanResult<Execution> {
        let execution = self.execution(id).await?;
        let status = status_of(&execution);
        if status.is_final() {
            return Err(PlanError::AlreadyFinished(status.as_str()));
        }
        Ok(self.cancel(actor, execution).await?)
    }

    async fn cancel(&self, actor: &Actor, execution: Execution) -> StoreResult<Execution> {
        let now = chrono::Utc::now();
        let id = execution.id;
        let running = status_of(&execution) == ExecutionStatus::Running;
        let mut row = execution.into_active_model();
        row.cancel_requested = Set(true);
        row.updated_at = Set(now);
        if !running {
            row.status = Set(ExecutionStatus::Cancelled.as_str().to_owned());
            row.finished_at = Set(Some(now));
        }
        let updated = row.update(self.scope.connection()).await?;
        let action = if running {
            "plan.execution_cancel_requested"
        } else {
            "plan.execution_cancelled"
        };
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(action, "plan_execution", Some(id)).with_details(
                    json!({ "plan_id": updated.plan_id, "device_id": updated.device_id }),
                ),
            )
            .await?;
        Ok(updated)
    }

    /// Cancels every unfinished execution of a plan.
    pub async fn cancel_plan(&self, actor: &Actor, plan_id: Uuid) -> StoreResult<Vec<Execution>> {
        self.get(plan_id).await?;
        let open = execution::Entity::find()
            .filter(execution::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(execution::Column::PlanId.eq(plan_id))
            .filter(execution::Column::Status.is_in(["PENDING", "DELIVERED", "RUNNING"]))
            .all(self.scope.connection())
            .await?;
        let mut cancelled = Vec::with_capacity(open.len());
        for execution in open {
            cancelled.push(self.cancel(actor, execution).await?);
        }
        Ok(cancelled)
    }

    /// Drops a device's queued (not yet started) executions.
    pub async fn purge_device_queue(
        &self,
        actor: &Actor,
        device_id: Uuid,
    ) -> StoreResult<Vec<Execution>> {
        let queued = execution::Entity::find()
            .filter(execution::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(execution::Column::DeviceId.eq(device_id))
            .filter(execution::Column::Status.is_in(OPEN))
            .all(self.scope.connection())
            .await?;
        let mut purged = Vec::with_capacity(queued.len());
        for execution in queued {
            purged.push(self.cancel(actor, execution).await?);
        }
        Ok(purged)
    }

    /// The device's outstanding work as frames: its queued executions
    /// (oldest version first; PENDING ones become DELIVERED here) and stop
    /// orders for running ones being cancelled.
    pub async fn take_work(&self, actor: &Actor, device_id: Uuid) -> StoreResult<Work> {
        let db = self.scope.connection();
        let open = execution::Entity::find()
            .filter(execution::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(execution::Column::DeviceId.eq(device_id))
            .filter(
                Condition::any()
                    .add(execution::Column::Status.is_in(OPEN))
                    .add(
                        Condition::all()
                            .add(execution::Column::Status.eq("RUNNING"))
                            .add(execution::Column::CancelRequested.eq(true)),
                    ),
            )
            .order_by_asc(execution::Column::PlanVersion)
            .all(db)
            .await?;
        let now = chrono::Utc::now();
        let mut frames = Vec::with_capacity(open.len());
        let mut delivered = Vec::new();
        for execution in open {
            match status_of(&execution) {
                ExecutionStatus::Running => frames.push(WorkFrame::Cancel {
                    execution_id: execution.id,
                }),
                status => {
                    frames.push(WorkFrame::Work(SignedWork {
                        execution_id: execution.id,
                        payload: execution.payload.clone(),
                        signature: execution.signature.clone(),
                    }));
                    if status == ExecutionStatus::Pending {
                        let id = execution.id;
                        let plan_id = execution.plan_id;
                        let mut row = execution.into_active_model();
                        row.status = Set(ExecutionStatus::Delivered.as_str().to_owned());
                        row.delivered_at = Set(Some(now));
                        row.updated_at = Set(now);
                        delivered.push(row.update(db).await?);
                        self.scope
                            .audit()
                            .record(
                                actor,
                                AuditRecord::new(
                                    "plan.execution_delivered",
                                    "plan_execution",
                                    Some(id),
                                )
                                .with_details(
                                    json!({ "plan_id": plan_id, "device_id": device_id }),
                                ),
                            )
                            .await?;
                    }
                }
            }
        }
        Ok(Work { frames, delivered })
    }

    /// Records what a device reports about one of its executions: a
    /// status change, operation results and output lines (beyond
    /// `log_cap_bytes` the oldest lines are dropped and the drop counted).
    pub async fn report(
        &self,
        actor: &Actor,
        device_id: Uuid,
        report: &ExecutionReport,
        log_cap_bytes: u64,
    ) -> PlanResult<Reported> {
        let db = self.scope.connection();
        let execution = execution::Entity::find_by_id(report.execution_id)
            .filter(execution::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(execution::Column::DeviceId.eq(device_id))
            .one(db)
            .await?
            .ok_or(StoreError::NotFound {
                entity: "execution",
            })?;
        let now = chrono::Utc::now();
        let current = status_of(&execution);
        let mut cancel = execution.cancel_requested;
        let mut status_changed = false;
        let mut row = execution.clone().into_active_model();
        if let Some(new) = report.status {
            match new {
                _ if current.is_final() => {}
                ExecutionStatus::Pending | ExecutionStatus::Delivered => {
                    return Err(invalid(
                        "status",
                        "an agent reports RUNNING or a final status",
                    ));
                }
                ExecutionStatus::Running if current == ExecutionStatus::Running => {}
                ExecutionStatus::Running if execution.cancel_requested => cancel = true,
                ExecutionStatus::Running => {
                    row.status = Set(new.as_str().to_owned());
                    row.started_at = Set(Some(now));
                    status_changed = true;
                }
                final_status => {
                    row.status = Set(final_status.as_str().to_owned());
                    row.finished_at = Set(Some(now));
                    row.error = Set(report.error.as_ref().map(|e| clean_text(e, 4096)));
                    status_changed = true;
                }
            }
            if status_changed {
                let action = match new {
                    ExecutionStatus::Running => "plan.execution_started",
                    ExecutionStatus::Rejected => "plan.execution_rejected",
                    ExecutionStatus::Cancelled => "plan.execution_cancelled",
                    _ => "plan.execution_finished",
                };
                self.scope
                    .audit()
                    .record(
                        actor,
                        AuditRecord::new(action, "plan_execution", Some(execution.id))
                            .with_details(json!({
                                "plan_id": execution.plan_id,
                                "device_id": device_id,
                                "status": new.as_str(),
                                "error": report.error.as_ref().map(|e| clean_text(e, 512)),
                            })),
                    )
                    .await?;
            }
        }
        if current == ExecutionStatus::Cancelled {
            cancel = true;
        }

        for op in &report.operations {
            let existing = operation_result::Entity::find()
                .filter(operation_result::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(operation_result::Column::ExecutionId.eq(execution.id))
                .filter(operation_result::Column::OperationId.eq(op.operation_id.as_str()))
                .one(db)
                .await?;
            let duration = op.duration_ms.and_then(|d| i64::try_from(d).ok());
            let error = op.error.as_ref().map(|e| clean_text(e, 4096));
            match existing {
                Some(found) => {
                    let mut result = found.into_active_model();
                    result.status = Set(op.status.as_str().to_owned());
                    result.exit_code = Set(op.exit_code);
                    result.duration_ms = Set(duration);
                    result.error = Set(error);
                    result.updated_at = Set(now);
                    result.update(db).await?;
                }
                None => {
                    operation_result::ActiveModel {
                        id: Set(Uuid::now_v7()),
                        tenant_id: Set(self.scope.tenant_id()),
                        execution_id: Set(execution.id),
                        operation_id: Set(clean_text(&op.operation_id, 128)),
                        status: Set(op.status.as_str().to_owned()),
                        exit_code: Set(op.exit_code),
                        duration_ms: Set(duration),
                        error: Set(error),
                        created_at: Set(now),
                        updated_at: Set(now),
                    }
                    .insert(db)
                    .await?;
                }
            }
        }

        let mut lines = Vec::with_capacity(report.logs.len());
        let mut seq = execution.log_seq;
        let mut log_bytes = execution.log_bytes;
        for log in &report.logs {
            seq += 1;
            let text = clean_text(&log.line, 64 * 1024);
            let bytes = i32::try_from(text.len()).unwrap_or(i32::MAX);
            log_bytes += i64::from(bytes);
            let logged_at = chrono::DateTime::parse_from_rfc3339(&log.time)
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or(now);
            lines.push(LogRow {
                id: Uuid::now_v7(),
                tenant_id: self.scope.tenant_id(),
                execution_id: execution.id,
                seq,
                stream: if log.stream == "stderr" {
                    "stderr"
                } else {
                    "stdout"
                }
                .to_owned(),
                logged_at,
                line: text,
                bytes,
                created_at: now,
                updated_at: now,
            });
        }
        for chunk in lines.chunks(INSERT_CHUNK) {
            log_line::Entity::insert_many(
                chunk
                    .iter()
                    .cloned()
                    .map(IntoActiveModel::into_active_model),
            )
            .exec_without_returning(db)
            .await?;
        }
        let cap = i64::try_from(log_cap_bytes).unwrap_or(i64::MAX);
        let mut dropped = execution.log_dropped_bytes;
        if log_bytes > cap {
            // Keep the tail: drop the oldest lines until the rest fits.
            let sizes: Vec<(Uuid, i32)> = log_line::Entity::find()
                .select_only()
                .column(log_line::Column::Id)
                .column(log_line::Column::Bytes)
                .filter(log_line::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(log_line::Column::ExecutionId.eq(execution.id))
                .order_by_asc(log_line::Column::Seq)
                .into_tuple()
                .all(db)
                .await?;
            let mut doomed = Vec::new();
            for (id, bytes) in sizes {
                if log_bytes <= cap {
                    break;
                }
                log_bytes -= i64::from(bytes);
                dropped += i64::from(bytes);
                doomed.push(id);
            }
            for chunk in doomed.chunks(INSERT_CHUNK) {
                log_line::Entity::delete_many()
                    .filter(log_line::Column::TenantId.eq(self.scope.tenant_id()))
                    .filter(log_line::Column::Id.is_in(chunk.to_vec()))
                    .exec(db)
                    .await?;
            }
            lines.retain(|line| !doomed.contains(&line.id));
        }
        row.log_seq = Set(seq);
        row.log_bytes = Set(log_bytes);
        row.log_dropped_bytes = Set(dropped);
        row.updated_at = Set(now);
        let execution = row.update(db).await?;
        Ok(Reported {
            execution,
            status_changed,
            lines,
            cancel,
        })
    }
}

/// Text from an agent, made storable: no NUL (Postgres refuses it), at
/// most `max` bytes (cut on a character boundary).
fn clean_text(text: &str, max: usize) -> String {
    let mut text = text.replace('\0', "\u{fffd}");
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl Store {
    /// Deletes output lines older than `cutoff` in every tenant that has
    /// any; returns how many went.
    pub async fn purge_plan_logs(&self, cutoff: chrono::DateTime<chrono::Utc>) -> StoreResult<u64> {
        let mut removed = 0;
        for tenant in self.plan_log_tenants(cutoff).await? {
            let scope = self
                .begin(&SystemTask::new("plan log retention", tenant.id()))
                .await?;
            removed += log_line::Entity::delete_many()
                .filter(log_line::Column::TenantId.eq(tenant.id()))
                .filter(log_line::Column::CreatedAt.lt(cutoff))
                .exec(scope.connection())
                .await?
                .rows_affected;
            scope.commit().await?;
        }
        Ok(removed)
    }
}
