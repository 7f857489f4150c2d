//! Several `mobius-server` processes on one Postgres: what one replica
//! changes, the others hear about through the [`Bus`] (Postgres
//! `LISTEN/NOTIFY`, backed by a message log that a fallback poll reads, since
//! notifications sent while a listener reconnects are lost). On the embedded
//! store (one server) the bus is in-process.
//!
//! - [`bus`]: `publish(topic, payload)` / `subscribe(topic)`.
//! - [`relay`]: what flows over it today: committed audit events (GraphQL
//!   subscriptions on every replica), device revocations and deletions
//!   (refused everywhere at once), tenant CA creation and rotation (trust
//!   reloaded everywhere).
//! - [`limits`]: rate-limit counters shared by the replicas.
//! - [`identity`]: the device listener's CA from the shared store.

pub mod bus;
pub mod identity;
pub mod limits;
pub mod relay;

pub use bus::{Bus, BusMessage};

/// Topics published today. Payloads are space-separated ids, never tenant
/// data beyond ids.
pub mod topics {
    /// `<tenant_id> <audit_event_id>`: an audit event committed.
    pub const AUDIT: &str = "audit";
    /// `<tenant_id> <device_id>`: a device was revoked or deleted.
    pub const DEVICE_REVOKED: &str = "device.revoked";
    /// `<tenant_id>`: a tenant CA was created or rotated.
    pub const TRUST_CHANGED: &str = "pki.trust";
    /// `<tenant_id>`: a layer of the tenant's agent options changed.
    pub const AGENT_OPTIONS: &str = "agent_options";
}
