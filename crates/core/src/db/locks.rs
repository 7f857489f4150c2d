//! Postgres advisory locks, defined once: which locks exist, and the one
//! function that takes them. Every lock here is transaction-level, so it
//! is released at commit or rollback and can never leak.

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::{Backend, StoreResult, TenantScope};

/// A lock held by one tenant's transaction. The key is
/// `hashtextextended('<name>:<tenant>', 727)`, so different tenants and
/// different locks never contend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantLock {
    /// Serializes the device-limit count and insert of concurrent
    /// enrollments, so a limit of N admits exactly N devices.
    DeviceLimit,
    /// Serializes appends to the tenant's audit hash chain.
    AuditChain,
    /// Serializes plan applies, so each device's next `plan_version` is
    /// read and used by one apply at a time (and a reused idempotency key
    /// is settled before either insert).
    PlanApply,
}

impl TenantLock {
    fn name(self) -> &'static str {
        match self {
            TenantLock::DeviceLimit => "devices",
            TenantLock::AuditChain => "audit",
            TenantLock::PlanApply => "plans",
        }
    }
}

impl TenantScope {
    /// Takes `lock` for this scope's tenant until the transaction ends. On
    /// SQLite this is a no-op: its single writer serializes already.
    pub(crate) async fn lock(&self, lock: TenantLock) -> StoreResult<()> {
        if self.backend() == Backend::Postgres {
            self.connection()
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 727))",
                    [format!("{}:{}", lock.name(), self.tenant_id()).into()],
                ))
                .await?;
        }
        Ok(())
    }
}
