//! The audit log: who changed what, written in the same transaction as the
//! change so one never exists without the other.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    prelude::Uuid,
};
use serde_json::Value;

use crate::entities::audit_event;
use crate::error::StoreResult;
use crate::scope::TenantScope;

pub type AuditEvent = audit_event::Model;

/// Who made a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorKind {
    /// The server itself (bootstrap, background jobs).
    System,
    User,
    ApiToken,
    Device,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::System => "system",
            ActorKind::User => "user",
            ActorKind::ApiToken => "api_token",
            ActorKind::Device => "device",
        }
    }
}

/// The author of a change and where the request came from.
#[derive(Clone, Debug)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            kind: ActorKind::System,
            id: None,
            ip: None,
            user_agent: None,
        }
    }
}

/// What happened, to what.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    pub action: &'static str,
    pub target_kind: &'static str,
    pub target_id: Option<Uuid>,
    pub details: Value,
}

impl AuditRecord {
    pub fn new(action: &'static str, target_kind: &'static str, target_id: Option<Uuid>) -> Self {
        AuditRecord {
            action,
            target_kind,
            target_id,
            details: Value::Object(Default::default()),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

pub struct AuditLog<'s> {
    scope: &'s TenantScope,
}

impl<'s> AuditLog<'s> {
    pub(crate) fn new(scope: &'s TenantScope) -> Self {
        AuditLog { scope }
    }

    pub async fn record(&self, actor: &Actor, record: AuditRecord) -> StoreResult<AuditEvent> {
        let now = chrono::Utc::now();
        Ok(audit_event::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            actor_kind: Set(actor.kind.as_str().to_owned()),
            actor_id: Set(actor.id),
            action: Set(record.action.to_owned()),
            target_kind: Set(record.target_kind.to_owned()),
            target_id: Set(record.target_id),
            ip: Set(actor.ip.clone()),
            user_agent: Set(actor.user_agent.clone()),
            details: Set(record.details),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await?)
    }

    /// The newest `limit` events, newest first (ids are UUIDv7, so they
    /// order by time).
    pub async fn recent(&self, limit: u64) -> StoreResult<Vec<AuditEvent>> {
        Ok(audit_event::Entity::find()
            .filter(audit_event::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(audit_event::Column::Id)
            .limit(limit)
            .all(self.scope.connection())
            .await?)
    }
}
