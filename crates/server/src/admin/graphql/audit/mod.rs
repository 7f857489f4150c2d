//! The audit log in the admin API: events, the chain check, and the live
//! subscription.

mod query;
mod subscription;
pub mod types;

pub use query::AuditQuery;
pub use subscription::AuditSubscription;
