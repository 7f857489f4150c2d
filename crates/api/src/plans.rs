//! Device work: signed plan executions pushed to agents, and what agents
//! report back (status, per-operation results, output lines).
//!
//! | endpoint | auth | body |
//! |---|---|---|
//! | `GET /api/v1/mobius/device/work/stream` | client certificate | none → newline-delimited [`WorkFrame`]s, held open |
//! | `POST /api/v1/mobius/device/work/report` | client certificate | [`ExecutionReport`] → [`ReportResponse`] |
//!
//! The server signs each execution's payload with the tenant's Ed25519
//! plan-signing key; the agent learned the verification key at enrollment
//! and renewal and refuses anything that does not verify, or whose
//! `plan_version` is not newer than the last it accepted (a replay).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const WORK_STREAM_PATH: &str = "/api/v1/mobius/device/work/stream";
pub const WORK_REPORT_PATH: &str = "/api/v1/mobius/device/work/report";

/// Seconds between keep-alive frames on the work stream: well under the
/// 60 s idle timeout common to load balancers and NAT tables.
pub const KEEPALIVE_SECS: u64 = 15;

/// One line of the work stream (also the items of `PingResponse.work`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkFrame {
    /// Run this execution (again: a redelivery of one already finished
    /// is answered from the agent's journal).
    Work(SignedWork),
    /// Stop this execution if it is running; drop it if it is queued.
    Cancel { execution_id: Uuid },
    /// Run a read-only query against the host tables (live query or
    /// policy check) and post the rows to `QUERY_RESULTS_PATH`.
    Query(crate::queries::QueryRequest),
    /// The merged agent options changed (or the stream just opened).
    Options(crate::queries::AgentOptions),
    /// Nothing to do; keeps load balancers and NAT from closing the stream.
    KeepAlive,
}

/// An execution as delivered: the exact bytes that were signed, and the
/// signature over them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedWork {
    pub execution_id: Uuid,
    /// JSON of an [`ExecutionPayload`]; verified as these bytes, then parsed.
    pub payload: String,
    /// Ed25519 signature of `payload`, standard base64.
    pub signature: String,
}

/// What an execution tells an agent to do. Signed as a whole, so the
/// device, the version and every operation are covered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionPayload {
    pub tenant_id: Uuid,
    pub device_id: Uuid,
    pub plan_id: Uuid,
    pub execution_id: Uuid,
    /// Monotonic per device: the agent accepts only versions newer than
    /// the last one it accepted.
    pub plan_version: u64,
    /// SHA-256 (hex) of the plan's canonical content.
    pub plan_sha256: String,
    pub operations: Vec<Operation>,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// The agent never runs the same operation id twice.
    pub operation_id: String,
    /// `exec`, `script`, `file`, `service` (or `noop`, for load tests).
    pub kind: String,
    #[serde(default)]
    pub params: serde_json::Value,
}

/// Parameters of `exec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Default [`DEFAULT_TIMEOUT_SECS`], at most [`MAX_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Run as this local user (the agent must run as root to switch).
    #[serde(default)]
    pub user: Option<String>,
}

/// Parameters of `script`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptParams {
    /// `sh`, `bash` or `python3`.
    pub interpreter: String,
    pub body: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub user: Option<String>,
}

/// Parameters of `file`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileParams {
    /// Absolute path.
    pub path: String,
    pub content: String,
    /// Octal, e.g. `"0644"`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `user` or `user:group`.
    #[serde(default)]
    pub owner: Option<String>,
    /// Expected SHA-256 (hex) of `content`; checked before writing.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Parameters of `service`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceParams {
    pub unit: String,
    /// `start`, `stop`, `restart`, `enable` or `disable`.
    pub action: String,
}

pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
pub const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
pub const SCRIPT_INTERPRETERS: &[&str] = &["sh", "bash", "python3"];
pub const SERVICE_ACTIONS: &[&str] = &["start", "stop", "restart", "enable", "disable"];

/// The lifecycle of one execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
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

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 9] = [
        ExecutionStatus::Pending,
        ExecutionStatus::Delivered,
        ExecutionStatus::Running,
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Cancelled,
        ExecutionStatus::Interrupted,
        ExecutionStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Pending => "PENDING",
            ExecutionStatus::Delivered => "DELIVERED",
            ExecutionStatus::Running => "RUNNING",
            ExecutionStatus::Succeeded => "SUCCEEDED",
            ExecutionStatus::Failed => "FAILED",
            ExecutionStatus::TimedOut => "TIMED_OUT",
            ExecutionStatus::Cancelled => "CANCELLED",
            ExecutionStatus::Interrupted => "INTERRUPTED",
            ExecutionStatus::Rejected => "REJECTED",
        }
    }

    pub fn parse(text: &str) -> Option<ExecutionStatus> {
        ExecutionStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// A final status: nothing changes it any more.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            ExecutionStatus::Pending | ExecutionStatus::Delivered | ExecutionStatus::Running
        )
    }
}

/// A line of output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339.
    pub time: String,
    pub line: String,
}

/// One operation's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationReport {
    pub operation_id: String,
    /// A final [`ExecutionStatus`] (or `RUNNING` when it starts).
    pub status: ExecutionStatus,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// What an agent tells the server about one execution: any of a status
/// change, finished operations and output lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionReport {
    pub execution_id: Uuid,
    #[serde(default)]
    pub status: Option<ExecutionStatus>,
    #[serde(default)]
    pub operations: Vec<OperationReport>,
    #[serde(default)]
    pub logs: Vec<LogLine>,
    /// Why the execution failed or was refused.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportResponse {
    /// The execution was cancelled: stop it.
    #[serde(default)]
    pub cancel: bool,
}
