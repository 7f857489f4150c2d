//! Audit object and input types, built from core rows.

use crate::admin::graphql::prelude::*;

#[derive(SimpleObject, Clone)]
#[graphql(name = "AuditEvent")]
pub struct AuditEventNode {
    pub id: ID,
    /// Position in the tenant's hash chain; null until the chainer has linked
    /// the event (within about a second of its commit).
    pub seq: Option<i64>,
    pub actor_kind: String,
    pub actor_id: Option<ID>,
    pub action: String,
    pub target_kind: String,
    pub target_id: Option<ID>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

impl From<mobius_core::audit::AuditEvent> for AuditEventNode {
    fn from(e: mobius_core::audit::AuditEvent) -> Self {
        let actor_id = e
            .actor_id
            .zip(type_of_kind(&e.actor_kind))
            .map(|(id, kind)| global_id(kind, id));
        let target_id = e
            .target_id
            .zip(type_of_kind(&e.target_kind))
            .map(|(id, kind)| global_id(kind, id));
        AuditEventNode {
            id: global_id("AuditEvent", e.id),
            seq: e.seq,
            actor_kind: e.actor_kind,
            actor_id,
            action: e.action,
            target_kind: e.target_kind,
            target_id,
            ip: e.ip,
            user_agent: e.user_agent,
            details: Json(e.details),
            created_at: e.created_at,
        }
    }
}

#[derive(async_graphql::SimpleObject)]
pub struct AuditChain {
    pub events: i64,
    pub intact: bool,
    pub first_broken_seq: Option<i64>,
}
