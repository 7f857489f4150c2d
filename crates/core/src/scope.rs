//! [`TenantScope`]: a transaction bound to one tenant, and the only value
//! that hands out repositories. Code that did not go through
//! [`crate::Store::begin`] has no way to name a repository, so it cannot
//! read or write tenant data.

use std::sync::Mutex;

use sea_orm::{DatabaseTransaction, prelude::Uuid};
use tokio::sync::broadcast;

use crate::api_tokens::ApiTokens;
use crate::audit::{AuditEvent, AuditLog};
use crate::devices::Devices;
use crate::enrollment::EnrollmentTokens;
use crate::error::StoreResult;
use crate::invitations::Invitations;
use crate::sessions::RefreshTokens;
use crate::store::Backend;
use crate::teams::{Sites, TeamMemberships, Teams};
use crate::tenants::TenantSettings;
use crate::users::Users;

/// One unit of tenant work. Dropping it without [`TenantScope::commit`]
/// rolls everything back, so an error half-way leaves nothing behind.
pub struct TenantScope {
    txn: DatabaseTransaction,
    tenant_id: Uuid,
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
        backend: Backend,
        audit_feed: broadcast::Sender<AuditEvent>,
    ) -> TenantScope {
        TenantScope {
            txn,
            tenant_id,
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

    pub fn sites(&self) -> Sites<'_> {
        Sites::new(self)
    }

    pub fn teams(&self) -> Teams<'_> {
        Teams::new(self)
    }

    pub fn team_memberships(&self) -> TeamMemberships<'_> {
        TeamMemberships::new(self)
    }

    pub fn users(&self) -> Users<'_> {
        Users::new(self)
    }

    pub fn devices(&self) -> Devices<'_> {
        Devices::new(self)
    }

    pub fn enrollment_tokens(&self) -> EnrollmentTokens<'_> {
        EnrollmentTokens::new(self)
    }

    pub fn audit(&self) -> AuditLog<'_> {
        AuditLog::new(self)
    }

    pub fn tenant(&self) -> TenantSettings<'_> {
        TenantSettings::new(self)
    }

    pub fn refresh_tokens(&self) -> RefreshTokens<'_> {
        RefreshTokens::new(self)
    }

    pub fn invitations(&self) -> Invitations<'_> {
        Invitations::new(self)
    }

    pub fn api_tokens(&self) -> ApiTokens<'_> {
        ApiTokens::new(self)
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
