//! The store: one connection pool (Postgres or embedded SQLite), migrations,
//! and [`Store::begin`], the only way to reach tenant data.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mobius_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend,
    EntityTrait, QueryOrder, QuerySelect, Set, Statement, TransactionTrait, prelude::Uuid,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::broadcast;

use crate::audit::{Actor, AuditEvent, AuditRecord};
use crate::entities::tenant;
use crate::error::{StoreError, StoreResult, conflict_on, valid_name};
use crate::scope::TenantScope;

pub type Tenant = tenant::Model;

/// Which database the store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Connection-pool figures for `/metrics`.
#[derive(Clone, Copy, Debug)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// The name of the site created with every new tenant.
pub const DEFAULT_SITE: &str = "default";
/// The slug of the tenant created on an empty store.
pub const DEFAULT_TENANT_SLUG: &str = "default";

#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    backend: Backend,
    max_connections: u32,
    /// Statements sent to the database, for `/metrics` and for tests that
    /// check a page costs a constant number of queries.
    statements: Arc<AtomicU64>,
    audit_feed: broadcast::Sender<AuditEvent>,
}

/// One login candidate: a user with this email in some tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginCandidate {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub tenant_slug: String,
}

impl Store {
    /// Opens (creating if needed) the embedded SQLite store at `path`.
    ///
    /// The pool holds a single connection: SQLite allows one writer at a
    /// time, and a single connection turns what would be `SQLITE_BUSY`
    /// errors under concurrent writes into an orderly queue.
    pub async fn open_sqlite(path: &Path) -> StoreResult<Store> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Invalid {
                field: "data_dir",
                reason: format!("cannot create {}: {e}", parent.display()),
            })?;
        }
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(1)
            .min_connections(1)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5))
            });
        let db = Database::connect(options).await?;
        Ok(Store::wrap(db, Backend::Sqlite, 1))
    }

    /// Connects to Postgres at `url` with a pool of at most `max_connections`.
    pub async fn open_postgres(url: &SecretString, max_connections: u32) -> StoreResult<Store> {
        let mut options = ConnectOptions::new(url.expose_secret().to_owned());
        options
            .max_connections(max_connections)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        let db = Database::connect(options).await?;
        Ok(Store::wrap(db, Backend::Postgres, max_connections))
    }

    fn wrap(mut db: DatabaseConnection, backend: Backend, max_connections: u32) -> Store {
        let statements = Arc::new(AtomicU64::new(0));
        let counter = statements.clone();
        db.set_metric_callback(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let (audit_feed, _) = broadcast::channel(1024);
        Store {
            db,
            backend,
            max_connections,
            statements,
            audit_feed,
        }
    }

    /// Statements sent so far through this store's pool.
    pub fn statement_count(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Audit events as their transactions commit, from this process.
    pub fn subscribe_audit(&self) -> broadcast::Receiver<AuditEvent> {
        self.audit_feed.subscribe()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations. On Postgres this must run as the role
    /// that owns the schema, never as the request-path role.
    pub async fn migrate(&self) -> StoreResult<()> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// Names of migrations not yet applied, read without DDL so the
    /// request-path role can answer `/readyz`.
    pub async fn pending_migrations(&self) -> StoreResult<Vec<String>> {
        Ok(Migrator::get_pending_migrations_read_only(&self.db)
            .await?
            .iter()
            .map(|m| m.name().to_owned())
            .collect())
    }

    pub async fn ping(&self) -> StoreResult<()> {
        Ok(self.db.ping().await?)
    }

    pub fn pool_stats(&self) -> PoolStats {
        let (size, idle) = match self.backend {
            Backend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                (pool.size(), pool.num_idle() as u32)
            }
            Backend::Sqlite => {
                let pool = self.db.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle() as u32)
            }
        };
        PoolStats {
            size,
            idle,
            max: self.max_connections,
        }
    }

    pub async fn close(self) -> StoreResult<()> {
        Ok(self.db.close().await?)
    }

    /// Opens a transaction scoped to `tenant_id`: the one place the tenant
    /// is set. Its first statement is the bound
    /// `set_config('app.tenant_id', $1, true)`, local to the transaction so
    /// a pooled connection never carries a tenant into the next request.
    pub async fn begin(&self, tenant_id: Uuid) -> StoreResult<TenantScope> {
        let txn = self.db.begin().await?;
        if self.backend == Backend::Postgres {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT set_config('app.tenant_id', $1, true)",
                [tenant_id.to_string().into()],
            ))
            .await?;
        }
        Ok(TenantScope::new(
            txn,
            tenant_id,
            self.backend,
            self.audit_feed.clone(),
        ))
    }

    /// Creates a tenant with its default site, in one transaction scoped to
    /// the new tenant's id (so the RLS `WITH CHECK` accepts the insert
    /// without any bypass). The embedded store refuses a second tenant.
    pub async fn create_tenant(
        &self,
        actor: &Actor,
        name: &str,
        slug: &str,
    ) -> StoreResult<Tenant> {
        let name = valid_name("name", name)?;
        let slug = valid_slug(slug)?;
        if self.backend == Backend::Sqlite && self.default_tenant_id().await?.is_some() {
            return Err(StoreError::MultiTenantRequiresPostgres);
        }
        let id = Uuid::now_v7();
        let scope = self.begin(id).await?;
        let now = chrono::Utc::now();
        let tenant = tenant::ActiveModel {
            id: Set(id),
            name: Set(name),
            slug: Set(slug),
            setup_code_hash: Set(None),
            api_token_max_days: Set(365),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(scope.connection())
        .await
        .map_err(conflict_on("tenant", "slug"))?;
        scope
            .audit()
            .record(
                actor,
                AuditRecord::new("tenant.created", "tenant", Some(id))
                    .with_details(serde_json::json!({ "name": tenant.name, "slug": tenant.slug })),
            )
            .await?;
        scope.sites().create(actor, DEFAULT_SITE).await?;
        scope.commit().await?;
        Ok(tenant)
    }

    /// The oldest tenant, if any: the one an embedded install serves.
    /// On Postgres this goes through the `mobius_default_tenant_id()`
    /// SECURITY DEFINER function, since no tenant is set yet.
    pub async fn default_tenant_id(&self) -> StoreResult<Option<Uuid>> {
        match self.backend {
            Backend::Postgres => {
                self.lookup_one("SELECT mobius_default_tenant_id() AS id", Vec::new())
                    .await
            }
            Backend::Sqlite => Ok(tenant::Entity::find()
                .order_by_asc(tenant::Column::CreatedAt)
                .order_by_asc(tenant::Column::Id)
                .select_only()
                .column(tenant::Column::Id)
                .into_tuple::<Uuid>()
                .one(&self.db)
                .await?),
        }
    }

    /// Creates the default tenant (and its default site) on an empty store.
    /// Returns the tenant's id and whether it was created now. Safe when
    /// several servers start at once: the loser of the slug race re-reads.
    pub async fn ensure_default_tenant(&self) -> StoreResult<(Uuid, bool)> {
        if let Some(id) = self.default_tenant_id().await? {
            return Ok((id, false));
        }
        match self
            .create_tenant(&Actor::system(), "Default", DEFAULT_TENANT_SLUG)
            .await
        {
            Ok(tenant) => Ok((tenant.id, true)),
            Err(StoreError::Conflict { .. }) | Err(StoreError::MultiTenantRequiresPostgres) => {
                let id = self
                    .default_tenant_id()
                    .await?
                    .ok_or(StoreError::NotFound { entity: "tenant" })?;
                Ok((id, false))
            }
            Err(other) => Err(other),
        }
    }

    /// The tenant that owns the enrollment token whose secret hashes to
    /// `token_hash`: the enroll endpoint's one cross-tenant lookup.
    pub async fn find_enrollment_token_tenant(
        &self,
        token_hash: &[u8; 32],
    ) -> StoreResult<Option<Uuid>> {
        self.tenant_by_secret_hash(SecretKind::EnrollmentToken, token_hash)
            .await
    }

    /// The tenant owning a secret of `kind` whose SHA-256 is `hash`, through
    /// that kind's named SECURITY DEFINER function on Postgres.
    pub async fn tenant_by_secret_hash(
        &self,
        kind: SecretKind,
        hash: &[u8; 32],
    ) -> StoreResult<Option<Uuid>> {
        let (function, table) = match kind {
            SecretKind::EnrollmentToken => ("mobius_enrollment_token_tenant", "enrollment_tokens"),
            SecretKind::RefreshToken => ("mobius_refresh_token_tenant", "refresh_tokens"),
            SecretKind::Invitation => ("mobius_invitation_tenant", "invitations"),
            SecretKind::ApiToken => ("mobius_api_token_tenant", "api_tokens"),
        };
        // Both names come from the match above, never from input.
        let sql = match self.backend {
            Backend::Postgres => format!("SELECT {function}($1) AS id"),
            Backend::Sqlite => format!("SELECT tenant_id AS id FROM {table} WHERE token_hash = ?"),
        };
        self.lookup_one(&sql, vec![hash.to_vec().into()]).await
    }

    /// The users a login email belongs to, one per tenant (compared
    /// case-insensitively): the login form's one cross-tenant lookup.
    pub async fn find_login_candidates(&self, email: &str) -> StoreResult<Vec<LoginCandidate>> {
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT tenant_id, user_id, tenant_slug FROM mobius_login_candidates($1)"
            }
            Backend::Sqlite => {
                "SELECT u.tenant_id, u.id AS user_id, t.slug AS tenant_slug \
                 FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE lower(u.email) = lower(?)"
            }
        };
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                self.db_backend(),
                sql,
                [email.into()],
            ))
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LoginCandidate {
                    tenant_id: row.try_get("", "tenant_id")?,
                    user_id: row.try_get("", "user_id")?,
                    tenant_slug: row.try_get("", "tenant_slug")?,
                })
            })
            .collect()
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

    fn db_backend(&self) -> DbBackend {
        match self.backend {
            Backend::Postgres => DbBackend::Postgres,
            Backend::Sqlite => DbBackend::Sqlite,
        }
    }

    /// The underlying connection, for the Postgres role checks in this crate.
    pub(crate) fn connection(&self) -> &DatabaseConnection {
        &self.db
    }
}

/// Secrets whose owning tenant can be looked up by hash before a tenant is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    EnrollmentToken,
    RefreshToken,
    Invitation,
    ApiToken,
}

/// Tenant slugs: 1 to 63 characters of `a-z`, `0-9` and `-`, starting with a
/// letter or digit (they appear in URLs and certificate names).
fn valid_slug(slug: &str) -> StoreResult<String> {
    let ok = !slug.is_empty()
        && slug.len() <= 63
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-');
    if ok {
        Ok(slug.to_owned())
    } else {
        Err(StoreError::Invalid {
            field: "slug",
            reason: "use 1 to 63 characters of a-z, 0-9 and '-', not starting with '-'".into(),
        })
    }
}
