//! The platform operator's work on whole tenants (cloud edition): the
//! tenant list with usage, suspending and resuming a tenant, and
//! offboarding (a dry-run report, then removal of every row). The operator
//! is nobody's user: it reads tenants only through the named lookup
//! `mobius_platform_tenants()` and the `platform-*` [`SystemTask`]s here,
//! and each of its actions is written to `platform_operator_log`.
//!
//! Also here: the in-memory set of tenants closed to users and devices
//! ([`TenantBlocks`]), which [`Store::begin`] consults so that a suspended
//! (or not yet verified) tenant is refused on every path at once, with no
//! query on the hot path.

use std::collections::HashMap;
use std::sync::RwLock;

use sea_orm::{ActiveModelTrait, ConnectionTrait, IntoActiveModel, Set, Statement, prelude::Uuid};

use crate::audit::{Actor, AuditRecord};
use crate::db::PlatformTenant;
use crate::db::{Backend, Store, StoreError, StoreResult, SystemTask};

/// Why a tenant is closed to users and devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantBlock {
    Suspended,
    AwaitingVerification,
}

impl std::fmt::Display for TenantBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TenantBlock::Suspended => {
                "this tenant is suspended by the platform operator: its data is kept, but sign-in \
                 and device traffic are refused until it is resumed"
            }
            TenantBlock::AwaitingVerification => {
                "this tenant's sign-up is not verified yet: follow the link in the verification email"
            }
        })
    }
}

/// Tenants closed to users and devices, by id. Refreshed from the store
/// every second by a background job (so every replica follows within
/// about a second) and updated at once by the replica that made a change.
#[derive(Debug, Default)]
pub struct TenantBlocks(RwLock<HashMap<Uuid, TenantBlock>>);

impl TenantBlocks {
    pub fn get(&self, tenant: Uuid) -> Option<TenantBlock> {
        self.0.read().ok().and_then(|m| m.get(&tenant).copied())
    }

    pub(crate) fn set(&self, tenant: Uuid, block: Option<TenantBlock>) {
        if let Ok(mut map) = self.0.write() {
            match block {
                Some(block) => map.insert(tenant, block),
                None => map.remove(&tenant),
            };
        }
    }

    fn replace(&self, blocks: HashMap<Uuid, TenantBlock>) {
        if let Ok(mut map) = self.0.write() {
            *map = blocks;
        }
    }
}

/// What offboarding a tenant removes: rows per table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OffboardingReport {
    pub tenant_id: Uuid,
    pub name: String,
    pub slug: String,
    /// `(table, rows)`, every tenant table, zeros included.
    pub tables: Vec<(String, u64)>,
    /// Sealed CA private keys among those rows.
    pub sealed_keys: u64,
}

/// Who acted, for the operator log.
#[derive(Clone, Debug, Default)]
pub struct OperatorRequest {
    pub ip: Option<String>,
}

impl Store {
    /// Whether (and why) the tenant is closed to users and devices, from
    /// memory: for paths that answer without opening a scope.
    pub fn tenant_block(&self, tenant: Uuid) -> Option<TenantBlock> {
        self.blocks.get(tenant)
    }

    /// Reloads which tenants are closed (the background job's poll).
    pub async fn refresh_tenant_blocks(&self) -> StoreResult<()> {
        let blocks = self
            .blocked_tenants()
            .await?
            .into_iter()
            .map(|(id, suspended)| {
                let block = if suspended {
                    TenantBlock::Suspended
                } else {
                    TenantBlock::AwaitingVerification
                };
                (id, block)
            })
            .collect();
        self.blocks.replace(blocks);
        Ok(())
    }

    /// Every tenant with its usage, and the listing logged.
    pub async fn operator_list_tenants(
        &self,
        request: &OperatorRequest,
    ) -> StoreResult<Vec<PlatformTenant>> {
        let tenants = self.platform_tenants().await?;
        self.operator_log(
            request,
            "tenants.listed",
            None,
            serde_json::json!({ "count": tenants.len() }),
        )
        .await?;
        Ok(tenants)
    }

    /// Every tenant's recorded daily usage from `from` to `to` inclusive
    /// (device and active-device counts, for metered billing), and the
    /// export logged.
    pub async fn operator_usage(
        &self,
        request: &OperatorRequest,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> StoreResult<Vec<crate::billing::UsageDay>> {
        let rows = self.billing_usage(from, to).await?;
        self.operator_log(
            request,
            "usage.exported",
            None,
            serde_json::json!({ "from": from, "to": to, "rows": rows.len() }),
        )
        .await?;
        Ok(rows)
    }

    /// Suspends (`true`) or resumes (`false`) a tenant: recorded in the
    /// tenant's own audit log and in the operator log, in one transaction.
    pub async fn operator_set_suspended(
        &self,
        request: &OperatorRequest,
        tenant_id: Uuid,
        suspended: bool,
    ) -> StoreResult<PlatformTenant> {
        self.require_postgres()?;
        let name = if suspended {
            "platform-suspend"
        } else {
            "platform-resume"
        };
        let scope = self.begin(&SystemTask::new(name, tenant_id)).await?;
        let tenant = scope.tenant().get().await?;
        let was_suspended = tenant.suspended_at.is_some();
        let awaiting = tenant.verification_hash.is_some();
        if was_suspended != suspended {
            let mut row = tenant.into_active_model();
            let now = chrono::Utc::now();
            row.suspended_at = Set(suspended.then_some(now));
            row.updated_at = Set(now);
            row.update(scope.connection()).await?;
            let action = if suspended {
                "tenant.suspended"
            } else {
                "tenant.resumed"
            };
            scope
                .audit()
                .record(
                    &Actor::system(),
                    AuditRecord::new(action, "tenant", Some(tenant_id))
                        .with_details(serde_json::json!({ "by": "platform operator" })),
                )
                .await?;
            insert_operator_log(
                scope.connection(),
                request,
                action,
                Some(tenant_id),
                serde_json::json!({}),
            )
            .await?;
        }
        scope.commit().await?;
        self.blocks.set(
            tenant_id,
            if suspended {
                Some(TenantBlock::Suspended)
            } else if awaiting {
                Some(TenantBlock::AwaitingVerification)
            } else {
                None
            },
        );
        self.platform_tenants()
            .await?
            .into_iter()
            .find(|t| t.id == tenant_id)
            .ok_or(StoreError::NotFound { entity: "tenant" })
    }

    /// What deleting the tenant would remove, changing nothing (the dry
    /// run is logged too: the operator looked).
    pub async fn operator_offboarding_report(
        &self,
        request: &OperatorRequest,
        tenant_id: Uuid,
    ) -> StoreResult<OffboardingReport> {
        self.require_postgres()?;
        let scope = self
            .begin(&SystemTask::new("platform-offboarding-report", tenant_id))
            .await?;
        let report = offboarding_report(&scope, tenant_id).await?;
        insert_operator_log(
            scope.connection(),
            request,
            "tenant.offboarding_reported",
            Some(tenant_id),
            serde_json::to_value(&report).unwrap_or_default(),
        )
        .await?;
        scope.commit().await?;
        Ok(report)
    }

    /// Removes the tenant and every row it owns (its sealed CA keys and
    /// its audit log with them), and records the removal, with the report
    /// of what went, in the operator log: one transaction.
    pub async fn operator_delete_tenant(
        &self,
        request: &OperatorRequest,
        tenant_id: Uuid,
    ) -> StoreResult<OffboardingReport> {
        self.require_postgres()?;
        let scope = self
            .begin(&SystemTask::new("platform-offboarding", tenant_id))
            .await?;
        let report = offboarding_report(&scope, tenant_id).await?;
        // Children first, so RESTRICT references (devices -> sites) never
        // trip; the audit log (append-only for this role) and any table
        // added later go with the tenant row, by ON DELETE CASCADE.
        for table in mobius_migrations::TENANT_TABLES.iter().rev() {
            if *table == "audit_events" {
                continue;
            }
            // Table names come from the constant list, never from input.
            scope
                .connection()
                .execute_raw(Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    format!("DELETE FROM {table} WHERE tenant_id = $1"),
                    [tenant_id.into()],
                ))
                .await?;
        }
        scope
            .connection()
            .execute_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "DELETE FROM tenants WHERE id = $1",
                [tenant_id.into()],
            ))
            .await?;
        insert_operator_log(
            scope.connection(),
            request,
            "tenant.deleted",
            Some(tenant_id),
            serde_json::to_value(&report).unwrap_or_default(),
        )
        .await?;
        scope.commit().await?;
        self.blocks.set(tenant_id, None);
        Ok(report)
    }

    /// The operator log, newest first.
    pub async fn operator_log_entries(&self, limit: u64) -> StoreResult<Vec<serde_json::Value>> {
        self.require_postgres()?;
        let rows = self
            .connection()
            .query_all_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT json_build_object('id', id, 'created_at', created_at, 'action', action, \
                 'tenant_id', target_tenant, 'ip', ip, 'details', details) AS entry \
                 FROM platform_operator_log ORDER BY created_at DESC, id DESC LIMIT $1",
                [(limit as i64).into()],
            ))
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<serde_json::Value>("", "entry")?))
            .collect()
    }

    async fn operator_log(
        &self,
        request: &OperatorRequest,
        action: &str,
        tenant: Option<Uuid>,
        details: serde_json::Value,
    ) -> StoreResult<()> {
        insert_operator_log(self.connection(), request, action, tenant, details).await
    }

    fn require_postgres(&self) -> StoreResult<()> {
        match self.backend() {
            Backend::Postgres => Ok(()),
            Backend::Sqlite => Err(StoreError::MultiTenantRequiresPostgres),
        }
    }
}

async fn offboarding_report(
    scope: &crate::TenantScope,
    tenant_id: Uuid,
) -> StoreResult<OffboardingReport> {
    let tenant = scope.tenant().get().await?;
    let mut tables = Vec::new();
    let mut sealed_keys = 0;
    for table in mobius_migrations::TENANT_TABLES {
        // Table names come from the constant list, never from input.
        let row = scope
            .connection()
            .query_one_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                format!("SELECT count(*) AS n FROM {table} WHERE tenant_id = $1"),
                [tenant_id.into()],
            ))
            .await?;
        let n = row
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0)
            .max(0) as u64;
        if *table == "certificate_authorities" {
            sealed_keys = n;
        }
        tables.push(((*table).to_owned(), n));
    }
    Ok(OffboardingReport {
        tenant_id,
        name: tenant.name,
        slug: tenant.slug,
        tables,
        sealed_keys,
    })
}

async fn insert_operator_log(
    db: &impl ConnectionTrait,
    request: &OperatorRequest,
    action: &str,
    tenant: Option<Uuid>,
    details: serde_json::Value,
) -> StoreResult<()> {
    db.execute_raw(Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "INSERT INTO platform_operator_log (id, created_at, action, target_tenant, ip, details) \
         VALUES ($1, now(), $2, $3, $4, $5)",
        [
            Uuid::now_v7().into(),
            action.into(),
            tenant.into(),
            request.ip.clone().into(),
            details.into(),
        ],
    ))
    .await?;
    Ok(())
}
