//! Queries on devices: live queries and policy checks pushed to agents on
//! the work stream, the rows they answer, and the layered agent options.
//!
//! | endpoint | auth | body |
//! |---|---|---|
//! | work stream frame `{"type":"query",...}` | client certificate | [`QueryRequest`] |
//! | work stream frame `{"type":"options",...}` | client certificate | [`AgentOptions`] |
//! | `POST /api/v1/mobius/device/queries/results` | client certificate | [`QueryResult`] → 204 |
//!
//! Rows follow osquery: every column is a string, so the same SQL and the
//! same result handling serve Mobius agents and osquery hosts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const QUERY_RESULTS_PATH: &str = "/api/v1/mobius/device/queries/results";

/// What a query answer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    /// A live query campaign; `query_id` is the campaign's id.
    Live,
    /// A policy check; `query_id` is the policy's id. The device passes
    /// when the query returns at least one row.
    Policy,
}

/// Run this read-only SQL against the host tables and answer with
/// [`QueryResult`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRequest {
    pub query_id: Uuid,
    pub kind: QueryKind,
    pub sql: String,
    /// The agent gives up (and answers an error) after this long.
    pub timeout_ms: u64,
}

/// One row: column name → value, every value a string (as osquery's).
pub type Row = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryOutcome {
    Ok,
    Error,
}

/// An agent's answer to a [`QueryRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryResult {
    pub query_id: Uuid,
    pub kind: QueryKind,
    pub outcome: QueryOutcome,
    #[serde(default)]
    pub rows: Vec<Row>,
    /// Why the query failed, in words safe to show an admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// True when the agent's row or byte cap cut the answer short.
    #[serde(default)]
    pub truncated: bool,
    pub duration_ms: u64,
}

/// The merged agent options (team layer over global), pushed on the work
/// stream when they change and as the first frame of every stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentOptions {
    /// Grows with every change to either layer that affects this device.
    pub options_version: i64,
    /// The merged document (`options`, `schedule`, `packs`, `agent`, ...),
    /// the same one osquery hosts get from `/api/osquery/config`.
    pub options: serde_json::Value,
}
