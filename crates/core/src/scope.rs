//! [`TenantScope`]: a transaction bound to one tenant, and the only value
//! that hands out repositories. Code that did not go through
//! [`crate::Store::begin`] has no way to name a repository, so it cannot
//! read or write tenant data.

use sea_orm::{DatabaseTransaction, prelude::Uuid};

use crate::audit::AuditLog;
use crate::devices::Devices;
use crate::enrollment::EnrollmentTokens;
use crate::error::StoreResult;
use crate::teams::{Sites, TeamMemberships, Teams};
use crate::users::Users;

/// One unit of tenant work. Dropping it without [`TenantScope::commit`]
/// rolls everything back, so an error half-way leaves nothing behind.
pub struct TenantScope {
    txn: DatabaseTransaction,
    tenant_id: Uuid,
}

impl TenantScope {
    pub(crate) fn new(txn: DatabaseTransaction, tenant_id: Uuid) -> TenantScope {
        TenantScope { txn, tenant_id }
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

    pub async fn commit(self) -> StoreResult<()> {
        Ok(self.txn.commit().await?)
    }
}
