//! [`TenantScope`]: a transaction bound to one tenant, and the only value
//! that hands out repositories. Code that did not go through
//! [`crate::Store::begin`] has no way to name a repository, so it cannot
//! read or write tenant data. Each area defines its repository's accessor
//! (`impl TenantScope { pub fn devices(&self) ... }`) beside the repository.

use std::sync::Mutex;

use sea_orm::{DatabaseTransaction, prelude::Uuid};
use tokio::sync::broadcast;

use super::{Backend, StoreResult};
use crate::audit::AuditEvent;

/// One unit of tenant work. Dropping it without [`TenantScope::commit`]
/// rolls everything back, so an error half-way leaves nothing behind.
pub struct TenantScope {
    txn: DatabaseTransaction,
    tenant_id: Uuid,
    /// Set for callers limited to one team's devices; device reads apply it.
    team_restriction: Option<Uuid>,
    backend: Backend,
    /// Audit events written in this transaction, announced after commit
    /// (never before: a rolled-back change must not be seen).
    recorded: Mutex<Vec<AuditEvent>>,
    audit_feed: broadcast::Sender<AuditEvent>,
}

impl TenantScope {
    pub(crate) fn new(
        txn: DatabaseTransaction,
        tenant_id: Uuid,
        team_restriction: Option<Uuid>,
        backend: Backend,
        audit_feed: broadcast::Sender<AuditEvent>,
    ) -> TenantScope {
        TenantScope {
            txn,
            tenant_id,
            team_restriction,
            backend,
            recorded: Mutex::new(Vec::new()),
            audit_feed,
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn publish_on_commit(&self, event: AuditEvent) {
        if let Ok(mut recorded) = self.recorded.lock() {
            recorded.push(event);
        }
    }

    pub fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    pub(crate) fn connection(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// Limits a scope opened before the caller was known (authentication
    /// reads through one) to what the caller may see.
    pub(crate) fn restrict_to_team(&mut self, team: Option<Uuid>) {
        self.team_restriction = team;
    }

    /// The one team whose devices this caller may see, if it is limited
    /// to one (a team-scoped API token).
    pub fn team_restriction(&self) -> Option<Uuid> {
        self.team_restriction
    }

    pub async fn commit(self) -> StoreResult<()> {
        self.txn.commit().await?;
        let recorded = self.recorded.into_inner().unwrap_or_default();
        for event in recorded {
            // No subscribers is fine: the event is in the database.
            let _ = self.audit_feed.send(event);
        }
        Ok(())
    }
}
