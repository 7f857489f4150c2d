//! osquery hosts and the layered agent options both kinds of host get.
//!
//! - [`options`]: the global layer and per-team overrides, validated and
//!   merged (team over global) into one document with a version.
//! - [`enroll`]: enroll secrets (per team or global, stored as SHA-256),
//!   enrolling an osquery host as a device, and node keys.
//! - [`logs`]: result logs (event, batched and snapshot forms) and status
//!   logs as osquery's TLS logger ships them.

pub mod enroll;
pub(crate) mod entities;
pub mod logs;
pub mod options;

pub use enroll::{
    EnrollSecret, NewEnrollSecret, NodeEnrolled, Osquery, OsqueryEnrollRequest, OsqueryNode,
    enroll_host, open_node,
};
pub use logs::{
    ResultLogEntry, StatusLogEntry, parse_result_logs, parse_status_logs, purge_expired_logs,
};
pub use options::{AgentOptionLayers, MergedOptions, OptionLayer, merge, validate_document};

use crate::StoreError;

/// What the osquery area refuses, without HTTP status codes (the server
/// maps each variant).
#[derive(Debug, thiserror::Error)]
pub enum OsqueryError {
    /// A document or request field was refused; `field` names it.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The enroll secret is unknown or revoked (indistinguishable on
    /// purpose).
    #[error("unknown or revoked enroll secret")]
    UnknownSecret,
    /// The node key is unknown, or its device was revoked or deleted.
    #[error("unknown or revoked node key")]
    NodeInvalid,
    #[error(
        "this host's device was revoked; an administrator must delete it before it can enroll again"
    )]
    DeviceRevoked,
    #[error("the device limit of {limit} was reached")]
    DeviceLimit { limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for OsqueryError {
    fn from(err: sea_orm::DbErr) -> Self {
        OsqueryError::Store(err.into())
    }
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> OsqueryError {
    OsqueryError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}
