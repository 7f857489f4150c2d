//! Plan object types.

use mobius_api::plans::ExecutionStatus as WireStatus;
use mobius_core::plans::{Execution, LogRow, OperationResult, Plan};

use crate::admin::graphql::prelude::*;

/// The lifecycle of an execution.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExecutionStatus {
    Pending,
    Delivered,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Interrupted,
    Rejected,
}

impl From<WireStatus> for ExecutionStatus {
    fn from(status: WireStatus) -> Self {
        match status {
            WireStatus::Pending => ExecutionStatus::Pending,
            WireStatus::Delivered => ExecutionStatus::Delivered,
            WireStatus::Running => ExecutionStatus::Running,
            WireStatus::Succeeded => ExecutionStatus::Succeeded,
            WireStatus::Failed => ExecutionStatus::Failed,
            WireStatus::TimedOut => ExecutionStatus::TimedOut,
            WireStatus::Cancelled => ExecutionStatus::Cancelled,
            WireStatus::Interrupted => ExecutionStatus::Interrupted,
            WireStatus::Rejected => ExecutionStatus::Rejected,
        }
    }
}

/// A stored, immutable plan.
pub struct PlanNode(pub Plan);

/// One step of a plan.
#[derive(SimpleObject)]
pub struct PlanOperation {
    pub operation_id: String,
    pub kind: String,
    pub params: Json<serde_json::Value>,
}

/// What a plan targeted, as submitted.
#[derive(SimpleObject)]
pub struct PlanTargets {
    pub device_ids: Vec<ID>,
    pub site_ids: Vec<ID>,
    pub team_ids: Vec<ID>,
}

#[derive(SimpleObject)]
pub struct StatusCount {
    pub status: ExecutionStatus,
    pub count: i64,
}

fn ids(value: &serde_json::Value, kind: &str) -> Vec<ID> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str()?.parse::<Uuid>().ok())
                .map(|id| global_id(kind, id))
                .collect()
        })
        .unwrap_or_default()
}

#[Object(name = "Plan")]
impl PlanNode {
    async fn id(&self) -> ID {
        global_id("Plan", self.0.id)
    }
    /// Cleared 24 h after the plan was applied, when the key may be reused.
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    /// SHA-256 (hex) of the plan's canonical content; also on every execution.
    async fn payload_sha256(&self) -> &str {
        &self.0.payload_sha256
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn operations(&self) -> Vec<PlanOperation> {
        serde_json::from_value::<Vec<mobius_api::plans::Operation>>(
            self.0.content["operations"].clone(),
        )
        .unwrap_or_default()
        .into_iter()
        .map(|op| PlanOperation {
            operation_id: op.operation_id,
            kind: op.kind,
            params: Json(op.params),
        })
        .collect()
    }
    async fn targets(&self) -> PlanTargets {
        let targets = &self.0.content["targets"];
        PlanTargets {
            device_ids: ids(&targets["device_ids"], "Device"),
            site_ids: ids(&targets["site_ids"], "Site"),
            team_ids: ids(&targets["team_ids"], "Team"),
        }
    }
    /// One per target device.
    async fn executions(&self, ctx: &Context<'_>) -> Result<Vec<ExecutionNode>> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        let rows = scope
            .plans()
            .executions_of_plan(self.0.id)
            .await
            .map_err(errors::store)?;
        Ok(rows.into_iter().map(ExecutionNode).collect())
    }
    async fn status_counts(&self, ctx: &Context<'_>) -> Result<Vec<StatusCount>> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        let counts = scope
            .plans()
            .status_counts(self.0.id)
            .await
            .map_err(errors::store)?;
        Ok(counts
            .into_iter()
            .map(|(status, count)| StatusCount {
                status: status.into(),
                count: count as i64,
            })
            .collect())
    }
}

/// One device's run of a plan.
#[derive(Clone)]
pub struct ExecutionNode(pub Execution);

#[Object(name = "PlanExecution")]
impl ExecutionNode {
    async fn id(&self) -> ID {
        global_id("PlanExecution", self.0.id)
    }
    async fn plan_id(&self) -> ID {
        global_id("Plan", self.0.plan_id)
    }
    async fn device_id(&self) -> ID {
        global_id("Device", self.0.device_id)
    }
    /// Monotonic per device; agents refuse anything not newer than the
    /// last version they accepted.
    async fn plan_version(&self) -> i64 {
        self.0.plan_version
    }
    async fn status(&self) -> ExecutionStatus {
        mobius_core::plans::status_of(&self.0).into()
    }
    /// The plan's SHA-256, as signed into this execution's payload.
    async fn payload_sha256(&self) -> &str {
        &self.0.payload_sha256
    }
    async fn cancel_requested(&self) -> bool {
        self.0.cancel_requested
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn delivered_at(&self) -> Option<DateTime<Utc>> {
        self.0.delivered_at
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    /// Bytes of output dropped from the head to keep the tail within the
    /// per-execution cap (0: nothing was dropped).
    async fn log_truncated_bytes(&self) -> i64 {
        self.0.log_dropped_bytes
    }
    async fn results(&self, ctx: &Context<'_>) -> Result<Vec<OperationResultNode>> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        let rows = scope
            .plans()
            .operation_results(self.0.id)
            .await
            .map_err(errors::store)?;
        Ok(rows.into_iter().map(OperationResultNode).collect())
    }
    /// Output lines after `afterSeq`, oldest first; when the head was
    /// dropped, the first line is a marker saying how much.
    async fn logs(
        &self,
        ctx: &Context<'_>,
        after_seq: Option<i64>,
        first: Option<i32>,
    ) -> Result<Vec<LogLineNode>> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        let after = after_seq.unwrap_or(0);
        let limit = first.unwrap_or(10_000).clamp(1, 10_000) as u64;
        let rows = scope
            .plans()
            .logs(self.0.id, after, limit)
            .await
            .map_err(errors::store)?;
        let mut lines = Vec::with_capacity(rows.len() + 1);
        if after == 0 && self.0.log_dropped_bytes > 0 {
            lines.push(LogLineNode {
                seq: 0,
                stream: "marker".into(),
                time: self.0.created_at,
                line: truncation_marker(self.0.log_dropped_bytes),
            });
        }
        lines.extend(rows.into_iter().map(LogLineNode::from));
        Ok(lines)
    }
}

pub fn truncation_marker(dropped: i64) -> String {
    format!("[output truncated: the first {dropped} bytes were dropped to keep the last part]")
}

pub struct OperationResultNode(pub OperationResult);

#[Object(name = "OperationResult")]
impl OperationResultNode {
    async fn operation_id(&self) -> &str {
        &self.0.operation_id
    }
    async fn status(&self) -> ExecutionStatus {
        WireStatus::parse(&self.0.status)
            .unwrap_or(WireStatus::Failed)
            .into()
    }
    async fn exit_code(&self) -> Option<i32> {
        self.0.exit_code
    }
    async fn duration_ms(&self) -> Option<i64> {
        self.0.duration_ms
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}

/// A line of output.
#[derive(SimpleObject, Clone)]
#[graphql(name = "LogLine")]
pub struct LogLineNode {
    /// Position in the execution's output, from 1 (0: the truncation marker).
    pub seq: i64,
    /// `stdout`, `stderr`, or `marker`.
    pub stream: String,
    pub time: DateTime<Utc>,
    pub line: String,
}

impl From<LogRow> for LogLineNode {
    fn from(row: LogRow) -> Self {
        LogLineNode {
            seq: row.seq,
            stream: row.stream,
            time: row.logged_at,
            line: row.line,
        }
    }
}

#[derive(InputObject)]
pub struct PlanTargetsInput {
    #[graphql(default)]
    pub device_ids: Vec<ID>,
    #[graphql(default)]
    pub site_ids: Vec<ID>,
    #[graphql(default)]
    pub team_ids: Vec<ID>,
}

#[derive(InputObject)]
pub struct PlanOperationInput {
    /// Generated when absent; the agent never runs one id twice.
    pub operation_id: Option<String>,
    /// `exec`, `script`, `file`, `service`.
    pub kind: String,
    /// The workload's parameters (see docs/operations/plans.md).
    pub params: Option<Json<serde_json::Value>>,
}

#[derive(InputObject)]
pub struct ApplyPlanInput {
    /// Required; identifies this plan for 24 h.
    pub idempotency_key: String,
    pub targets: PlanTargetsInput,
    pub operations: Vec<PlanOperationInput>,
}

#[derive(SimpleObject)]
pub struct ApplyPlanPayload {
    pub plan: PlanNode,
    /// False when the idempotency key answered an existing plan.
    pub created: bool,
}
