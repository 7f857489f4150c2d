//! Wire types shared by the Mobius server, the agent and the tools. Plain
//! serde structs: no behaviour, no dependency on server internals.

use serde::{Deserialize, Serialize};

/// The body of every REST error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable code from the fixed list (`NOT_FOUND`, `CONFLICT`, ...).
    pub code: String,
    /// A human-readable explanation, safe to show to the client.
    pub message: String,
    /// The input field the error is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The body of `/healthz` and `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// `ok`, `ready` or `not_ready`.
    pub status: String,
    /// One entry per check that `/readyz` ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<HealthCheck>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

pub mod device;
pub mod license;
pub mod plans;
pub mod portal;
pub mod queries;
pub mod software;
