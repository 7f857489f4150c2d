//! Every lookup that crosses tenants, in one file. Each answers one narrow
//! question (which tenant owns this secret hash, which users have this
//! login email, which tenant is the default) through a named SECURITY
//! DEFINER function on Postgres, and returns a [`FoundTenant`] proof that
//! [`Store::begin`] accepts. Nothing else in the crate reads across tenants.

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
    prelude::Uuid,
};

use super::entities::{certificate_authority, tenant};
use super::proof::FoundTenant;
use super::{Backend, Store, StoreError, StoreResult};

/// Secrets whose owning tenant can be looked up by hash before a tenant is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    EnrollmentToken,
    RefreshToken,
    Invitation,
    ApiToken,
    /// An osquery enroll secret that is not revoked.
    OsqueryEnrollSecret,
    /// An osquery node key.
    OsqueryNodeKey,
    /// A self-service portal token (link or session) that has not expired.
    PortalToken,
}

/// One login candidate: a user with this email in some tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginCandidate {
    pub tenant: FoundTenant,
    pub user_id: Uuid,
    pub tenant_slug: String,
}

impl Store {
    /// The oldest tenant, if any: the one an embedded install serves.
    /// On Postgres this goes through the `mobius_default_tenant_id()`
    /// SECURITY DEFINER function, since no tenant is set yet.
    pub async fn default_tenant(&self) -> StoreResult<Option<FoundTenant>> {
        let id = match self.backend() {
            Backend::Postgres => {
                self.lookup_one("SELECT mobius_default_tenant_id() AS id", Vec::new())
                    .await?
            }
            Backend::Sqlite => {
                tenant::Entity::find()
                    .order_by_asc(tenant::Column::CreatedAt)
                    .order_by_asc(tenant::Column::Id)
                    .select_only()
                    .column(tenant::Column::Id)
                    .into_tuple::<Uuid>()
                    .one(&self.db)
                    .await?
            }
        };
        Ok(id.map(FoundTenant::new))
    }

    /// The tenant owning a secret of `kind` whose SHA-256 is `hash`, through
    /// that kind's named SECURITY DEFINER function on Postgres.
    pub async fn tenant_by_secret_hash(
        &self,
        kind: SecretKind,
        hash: &[u8; 32],
    ) -> StoreResult<Option<FoundTenant>> {
        let (function, table) = match kind {
            SecretKind::EnrollmentToken => ("mobius_enrollment_token_tenant", "enrollment_tokens"),
            SecretKind::RefreshToken => ("mobius_refresh_token_tenant", "refresh_tokens"),
            SecretKind::Invitation => ("mobius_invitation_tenant", "invitations"),
            SecretKind::ApiToken => ("mobius_api_token_tenant", "api_tokens"),
            SecretKind::OsqueryEnrollSecret => (
                "mobius_osquery_enroll_secret_tenant",
                "osquery_enroll_secrets",
            ),
            SecretKind::OsqueryNodeKey => ("mobius_osquery_node_tenant", "osquery_nodes"),
            SecretKind::PortalToken => ("mobius_portal_token_tenant", "portal_tokens"),
        };
        // Both names come from the match above, never from input.
        let sql = match self.backend {
            Backend::Postgres => format!("SELECT {function}($1) AS id"),
            Backend::Sqlite => format!("SELECT tenant_id AS id FROM {table} WHERE token_hash = ?"),
        };
        Ok(self
            .lookup_one(&sql, vec![hash.to_vec().into()])
            .await?
            .map(FoundTenant::new))
    }

    /// The users a login email belongs to, one per tenant (compared
    /// case-insensitively): the login form's one cross-tenant lookup.
    pub async fn find_login_candidates(&self, email: &str) -> StoreResult<Vec<LoginCandidate>> {
        crate::db::no_nul("email", email)?;
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT tenant_id, user_id, tenant_slug FROM mobius_login_candidates($1)"
            }
            Backend::Sqlite => {
                "SELECT u.tenant_id, u.id AS user_id, t.slug AS tenant_slug \
                 FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE lower(u.email) = lower(?)"
            }
        };
        let rows = self.lookup_rows(sql, [email.into()]).await?;
        rows.iter()
            .map(|row| {
                Ok(LoginCandidate {
                    tenant: FoundTenant::new(row.try_get("", "tenant_id")?),
                    user_id: row.try_get("", "user_id")?,
                    tenant_slug: row.try_get("", "tenant_slug")?,
                })
            })
            .collect()
    }

    /// The tenant a public slug names (sign-in URLs carry it), through
    /// `mobius_tenant_by_slug` on Postgres.
    pub async fn tenant_by_slug(&self, slug: &str) -> StoreResult<Option<FoundTenant>> {
        crate::db::no_nul("tenant", slug)?;
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_tenant_by_slug($1) AS id",
            Backend::Sqlite => "SELECT id FROM tenants WHERE slug = ?",
        };
        Ok(self
            .lookup_one(sql, vec![slug.into()])
            .await?
            .map(FoundTenant::new))
    }

    /// The tenants with osquery log entries stored before `before` (ids
    /// only), for the retention job, through `mobius_osquery_log_tenants`.
    pub async fn osquery_log_tenants(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<FoundTenant>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT tenant_id FROM mobius_osquery_log_tenants($1)",
            Backend::Sqlite => {
                "SELECT tenant_id FROM osquery_result_logs WHERE created_at < ?1 \
                 UNION SELECT tenant_id FROM osquery_status_logs WHERE created_at < ?1"
            }
        };
        let rows = self.lookup_rows(sql, [before.into()]).await?;
        rows.iter()
            .map(|row| Ok(FoundTenant::new(row.try_get("", "tenant_id")?)))
            .collect()
    }

    /// Every row a lookup answers (its SQL chosen per backend by the caller).
    async fn lookup_rows(
        &self,
        sql: &str,
        values: impl IntoIterator<Item = sea_orm::Value>,
    ) -> StoreResult<Vec<sea_orm::QueryResult>> {
        Ok(self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                self.db_backend(),
                sql,
                values,
            ))
            .await?)
    }

    async fn lookup_one(
        &self,
        sql: &str,
        values: Vec<sea_orm::Value>,
    ) -> StoreResult<Option<Uuid>> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                self.db_backend(),
                sql,
                values,
            ))
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<Uuid>>("", "id")?,
            None => None,
        })
    }
}

/// A CA the device listener trusts.
#[derive(Clone, Debug)]
pub struct TrustedCa {
    pub tenant_id: Uuid,
    pub ca_id: Uuid,
    pub cert_pem: String,
    /// Rotated away from: still trusted, no longer signing.
    pub retiring: bool,
}

/// Every tenant's trusted CA certificates, for the device listener's trust
/// store (one narrow cross-tenant lookup; certificates are public).
impl Store {
    pub async fn trusted_device_cas(&self) -> StoreResult<Vec<TrustedCa>> {
        let store = self;
        let db = store.connection();
        let rows = match store.backend() {
            Backend::Postgres => {
                db.query_all_raw(Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    "SELECT tenant_id, ca_id, cert_pem, retiring FROM mobius_trusted_device_cas()",
                    Vec::<sea_orm::Value>::new(),
                ))
                .await?
            }
            Backend::Sqlite => {
                db.query_all_raw(Statement::from_string(
                    sea_orm::DbBackend::Sqlite,
                    "SELECT tenant_id, id AS ca_id, cert_pem, retire_after IS NOT NULL AS retiring \
                 FROM certificate_authorities",
                ))
                .await?
            }
        };
        let now = chrono::Utc::now();
        let mut trusted = Vec::new();
        for row in &rows {
            trusted.push(TrustedCa {
                tenant_id: row.try_get("", "tenant_id")?,
                ca_id: row.try_get("", "ca_id")?,
                cert_pem: row.try_get("", "cert_pem")?,
                retiring: row.try_get("", "retiring")?,
            });
        }
        // SQLite keeps retired CAs in the table; the expiry check is ours.
        if store.backend() == Backend::Sqlite {
            let scoped: std::collections::HashSet<Uuid> = certificate_authority::Entity::find()
                .filter(
                    sea_orm::Condition::any()
                        .add(certificate_authority::Column::RetireAfter.is_null())
                        .add(certificate_authority::Column::RetireAfter.gt(now)),
                )
                .all(store.connection())
                .await?
                .into_iter()
                .map(|ca| ca.id)
                .collect();
            trusted.retain(|ca| scoped.contains(&ca.ca_id));
        }
        Ok(trusted)
    }
}

impl Store {
    /// Devices revoked or deleted after `since`, in every tenant: what the
    /// device listener refuses (ids only).
    pub async fn revoked_devices_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<Uuid>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT device_id FROM mobius_revoked_devices_since($1)",
            Backend::Sqlite => "SELECT device_id FROM revoked_devices WHERE revoked_at > ?",
        };
        let rows = self.lookup_rows(sql, [since.into()]).await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get("", "device_id").ok())
            .collect())
    }
}

impl Store {
    /// Tenants with audit events the chainer has not linked yet (ids only),
    /// through `mobius_audit_unchained_tenants()` on Postgres. SQLite chains
    /// each event as it is written, so there are none.
    pub async fn tenants_with_unchained_audit(&self) -> StoreResult<Vec<Uuid>> {
        if self.backend != Backend::Postgres {
            return Ok(Vec::new());
        }
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT mobius_audit_unchained_tenants() AS id",
            ))
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<Uuid>("", "id")?))
            .collect()
    }
}

/// An enrollment token found by the hash of its secret, and whether a use
/// of it was just claimed.
#[derive(Clone, Debug)]
pub struct TokenClaim {
    pub tenant: FoundTenant,
    pub token_id: Uuid,
    pub site_id: Uuid,
    pub allowed_ips: Option<serde_json::Value>,
    pub expired: bool,
    pub revoked: bool,
    pub used_up: bool,
    /// One use was taken (and must be given back if the enrollment fails).
    pub claimed: bool,
}

impl Store {
    /// Finds the enrollment token whose secret hashes to `hash` and takes
    /// one use of it if it has one left and is neither revoked nor expired,
    /// in one autocommit statement (`mobius_claim_enrollment_token`), so
    /// the token row is locked for that statement only. `None`: no such
    /// token. Postgres only; the embedded store claims inside a scope.
    pub(crate) async fn claim_enrollment_token_pg(
        &self,
        hash: &[u8; 32],
    ) -> StoreResult<Option<TokenClaim>> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT tenant_id, token_id, site_id, allowed_ips, expired, revoked, used_up, claimed \
                 FROM mobius_claim_enrollment_token($1)",
                [hash.to_vec().into()],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(TokenClaim {
            tenant: FoundTenant::new(row.try_get("", "tenant_id")?),
            token_id: row.try_get("", "token_id")?,
            site_id: row.try_get("", "site_id")?,
            allowed_ips: row.try_get("", "allowed_ips")?,
            expired: row.try_get("", "expired")?,
            revoked: row.try_get("", "revoked")?,
            used_up: row.try_get("", "used_up")?,
            claimed: row.try_get("", "claimed")?,
        }))
    }

    /// Tenants with plan output lines created before `cutoff`, for the
    /// log retention job (ids only).
    pub async fn plan_log_tenants(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<FoundTenant>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT tenant_id FROM mobius_plan_log_tenants($1)",
            Backend::Sqlite => {
                "SELECT DISTINCT tenant_id FROM plan_execution_logs WHERE created_at < ?"
            }
        };
        let rows = self.lookup_rows(sql, [cutoff.into()]).await?;
        rows.iter()
            .map(|row| Ok(FoundTenant::new(row.try_get("", "tenant_id")?)))
            .collect()
    }
}

/// The software install-expiry job's lookup.
impl Store {
    /// Tenants with installs PENDING since before `cutoff` (ids only).
    pub(crate) async fn stale_install_tenants(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<FoundTenant>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT tenant_id FROM mobius_software_stale_install_tenants($1)",
            Backend::Sqlite => {
                "SELECT DISTINCT tenant_id FROM software_installs WHERE status = 'PENDING' AND created_at < ?"
            }
        };
        let rows = self.lookup_rows(sql, [cutoff.into()]).await?;
        rows.iter()
            .map(|row| Ok(FoundTenant::new(row.try_get("", "tenant_id")?)))
            .collect()
    }
}

/// Billing's cross-tenant lookups (cloud): the tenant of a Stripe
/// customer, whether a tenant id exists, the plans changed since a time,
/// every tenant's id, and the usage rows for the operator's export.
impl Store {
    /// The tenant whose plan carries this Stripe customer id
    /// (`mobius_billing_customer_tenant`).
    pub(crate) async fn tenant_by_stripe_customer(
        &self,
        customer_id: &str,
    ) -> StoreResult<Option<FoundTenant>> {
        crate::db::no_nul("customer", customer_id)?;
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_billing_customer_tenant($1) AS id",
            Backend::Sqlite => {
                "SELECT tenant_id AS id FROM billing_plans WHERE stripe_customer_id = ?"
            }
        };
        Ok(self
            .lookup_one(sql, vec![customer_id.into()])
            .await?
            .map(FoundTenant::new))
    }

    /// `id` as a proof if such a tenant exists (`mobius_billing_tenant_exists`).
    pub(crate) async fn existing_tenant(&self, id: Uuid) -> StoreResult<Option<FoundTenant>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_billing_tenant_exists($1) AS id",
            Backend::Sqlite => "SELECT id FROM tenants WHERE id = ?",
        };
        Ok(self
            .lookup_one(sql, vec![id.into()])
            .await?
            .map(FoundTenant::new))
    }

    /// Every tenant's id (`mobius_billing_tenants`), for jobs that visit
    /// each tenant in its own scope.
    pub async fn billing_tenant_ids(&self) -> StoreResult<Vec<Uuid>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_billing_tenants() AS id",
            Backend::Sqlite => "SELECT id FROM tenants ORDER BY id",
        };
        let rows = self.lookup_rows(sql, []).await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<Uuid>("", "id")?))
            .collect()
    }

    /// Plans written after `since` (`mobius_billing_plans_since`), for
    /// the cloud entitlement cache.
    pub async fn billing_plans_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<crate::billing::PlanSnapshot>> {
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT tenant_id, tier, device_limit, features, status, grace_until, updated_at \
                 FROM mobius_billing_plans_since($1)"
            }
            Backend::Sqlite => {
                "SELECT tenant_id, tier, device_limit, features, status, grace_until, updated_at \
                 FROM billing_plans WHERE updated_at > ?"
            }
        };
        let rows = self.lookup_rows(sql, [since.into()]).await?;
        rows.iter()
            .map(|row| {
                Ok(crate::billing::snapshot_from_parts(
                    row.try_get("", "tenant_id")?,
                    row.try_get("", "tier")?,
                    row.try_get("", "device_limit")?,
                    &row.try_get::<String>("", "features")?,
                    &row.try_get::<String>("", "status")?,
                    row.try_get("", "grace_until")?,
                    row.try_get("", "updated_at")?,
                ))
            })
            .collect()
    }

    /// Every tenant's daily usage from `from` to `to` inclusive
    /// (`mobius_billing_usage`), for the operator's export.
    pub async fn billing_usage(
        &self,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> StoreResult<Vec<crate::billing::UsageDay>> {
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT tenant_id, tenant_slug, day, devices, active_devices \
                 FROM mobius_billing_usage($1, $2)"
            }
            Backend::Sqlite => {
                "SELECT u.tenant_id, t.slug AS tenant_slug, u.day, u.devices, u.active_devices \
                 FROM billing_usage_days u JOIN tenants t ON t.id = u.tenant_id \
                 WHERE u.day BETWEEN ? AND ? ORDER BY u.day, t.slug"
            }
        };
        let rows = self.lookup_rows(sql, [from.into(), to.into()]).await?;
        rows.iter()
            .map(|row| {
                Ok(crate::billing::UsageDay {
                    tenant_id: row.try_get("", "tenant_id")?,
                    tenant_slug: row.try_get("", "tenant_slug")?,
                    day: row.try_get("", "day")?,
                    devices: row.try_get("", "devices")?,
                    active_devices: row.try_get("", "active_devices")?,
                })
            })
            .collect()
    }
}

/// One tenant as the platform operator sees it: names, state and usage
/// counts, never its users' or devices' rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformTenant {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub suspended_at: Option<chrono::DateTime<chrono::Utc>>,
    pub awaiting_verification: bool,
    pub devices: i64,
    pub users: i64,
}

impl Store {
    /// Tenants closed to users and devices, with whether each is suspended
    /// (else: awaiting sign-up verification), through
    /// `mobius_blocked_tenants()` on Postgres.
    pub async fn blocked_tenants(&self) -> StoreResult<Vec<(Uuid, bool)>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT id, suspended FROM mobius_blocked_tenants()",
            Backend::Sqlite => {
                "SELECT id, suspended_at IS NOT NULL AS suspended FROM tenants \
                 WHERE suspended_at IS NOT NULL OR verification_hash IS NOT NULL"
            }
        };
        let rows = self.lookup_rows(sql, []).await?;
        rows.iter()
            .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "suspended")?)))
            .collect()
    }

    /// Every tenant with its usage, for the platform operator, through
    /// `mobius_platform_tenants()` (Postgres only: the operator surface is
    /// the multi-tenant cloud edition's).
    pub async fn platform_tenants(&self) -> StoreResult<Vec<PlatformTenant>> {
        if self.backend != Backend::Postgres {
            return Err(StoreError::MultiTenantRequiresPostgres);
        }
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT id, name, slug, created_at, suspended_at, awaiting_verification, devices, users \
                 FROM mobius_platform_tenants()",
            ))
            .await?;
        rows.iter()
            .map(|row| {
                Ok(PlatformTenant {
                    id: row.try_get("", "id")?,
                    name: row.try_get("", "name")?,
                    slug: row.try_get("", "slug")?,
                    created_at: row.try_get("", "created_at")?,
                    suspended_at: row.try_get("", "suspended_at")?,
                    awaiting_verification: row.try_get("", "awaiting_verification")?,
                    devices: row.try_get("", "devices")?,
                    users: row.try_get("", "users")?,
                })
            })
            .collect()
    }
}

impl Store {
    /// How many tenants were signed up with `email` (lower-cased), through
    /// `mobius_signups_for_email(text)`: the per-email sign-up limit.
    pub async fn signups_for_email(&self, email: &str) -> StoreResult<u64> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_signups_for_email($1) AS n",
            Backend::Sqlite => "SELECT count(*) AS n FROM tenants WHERE signup_email = lower(?)",
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                self.db_backend(),
                sql,
                [email.into()],
            ))
            .await?;
        let n: i64 = match row {
            Some(row) => row.try_get("", "n")?,
            None => 0,
        };
        Ok(n.max(0) as u64)
    }

    /// The tenant a sign-up verification secret (its SHA-256) belongs to,
    /// while the link is valid, through
    /// `mobius_signup_verification_tenant(bytea)`.
    pub(crate) async fn signup_verification_tenant(
        &self,
        hash: &[u8; 32],
    ) -> StoreResult<Option<Uuid>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_signup_verification_tenant($1) AS id",
            Backend::Sqlite => {
                "SELECT id FROM tenants WHERE verification_hash = ? \
                 AND verification_expires_at > CURRENT_TIMESTAMP"
            }
        };
        self.lookup_one(sql, vec![hash.to_vec().into()]).await
    }
}

/// The backbone's lookups: which tenant owns a presented service token or
/// principal credential (by SHA-256), which tenant a host name's service
/// belongs to, which tenant a self-registration joins (by slug, only if it
/// allows registration), and service tokens revoked since a time (ids).
impl Store {
    pub async fn backbone_token_tenant(&self, hash: &[u8; 32]) -> StoreResult<Option<FoundTenant>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_backbone_service_token_tenant($1) AS id",
            Backend::Sqlite => {
                "SELECT tenant_id AS id FROM backbone_service_tokens WHERE token_hash = ?"
            }
        };
        Ok(self
            .lookup_one(sql, vec![hash.to_vec().into()])
            .await?
            .map(FoundTenant::new))
    }

    pub async fn backbone_principal_tenant(
        &self,
        hash: &[u8; 32],
    ) -> StoreResult<Option<FoundTenant>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_backbone_principal_tenant($1) AS id",
            Backend::Sqlite => {
                "SELECT tenant_id AS id FROM backbone_principals WHERE credential_hash = ?"
            }
        };
        Ok(self
            .lookup_one(sql, vec![hash.to_vec().into()])
            .await?
            .map(FoundTenant::new))
    }

    pub async fn backbone_service_tenant(&self, name: &str) -> StoreResult<Option<FoundTenant>> {
        crate::db::no_nul("service", name)?;
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_backbone_service_tenant($1) AS id",
            Backend::Sqlite => "SELECT tenant_id AS id FROM backbone_services WHERE name = ?",
        };
        Ok(self
            .lookup_one(sql, vec![name.into()])
            .await?
            .map(FoundTenant::new))
    }

    pub async fn backbone_registration_tenant(
        &self,
        slug: &str,
    ) -> StoreResult<Option<FoundTenant>> {
        crate::db::no_nul("tenant", slug)?;
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_backbone_registration_tenant($1) AS id",
            Backend::Sqlite => {
                "SELECT t.id AS id FROM tenants t LEFT JOIN backbone_tenants b ON b.tenant_id = t.id \
                 WHERE t.slug = ? AND coalesce(b.open_registration, 1)"
            }
        };
        Ok(self
            .lookup_one(sql, vec![slug.into()])
            .await?
            .map(FoundTenant::new))
    }

    /// Service tokens revoked after `since`, in every tenant (ids only).
    pub async fn backbone_revoked_tokens_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<(Uuid, chrono::DateTime<chrono::Utc>)>> {
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT token_id, revoked_at FROM mobius_backbone_revoked_tokens_since($1)"
            }
            Backend::Sqlite => {
                "SELECT id AS token_id, revoked_at FROM backbone_service_tokens WHERE revoked_at > ?"
            }
        };
        let rows = self.lookup_rows(sql, [since.into()]).await?;
        rows.iter()
            .map(|row| Ok((row.try_get("", "token_id")?, row.try_get("", "revoked_at")?)))
            .collect()
    }
}
