//! The store: one connection pool (Postgres or embedded SQLite), migrations,
//! and [`Store::begin`], the only way to reach tenant data.

use std::path::Path;
use std::time::Duration;

use mobius_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend,
    EntityTrait, QueryOrder, QuerySelect, Set, Statement, TransactionTrait, prelude::Uuid,
};
use secrecy::{ExposeSecret, SecretString};

use crate::audit::{Actor, AuditRecord};
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
        Ok(Store {
            db,
            backend: Backend::Sqlite,
            max_connections: 1,
        })
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
        Ok(Store {
            db,
            backend: Backend::Postgres,
            max_connections,
        })
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
        Ok(TenantScope::new(txn, tenant_id))
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
        let sql = match self.backend {
            Backend::Postgres => "SELECT mobius_enrollment_token_tenant($1) AS id",
            Backend::Sqlite => "SELECT tenant_id AS id FROM enrollment_tokens WHERE token_hash = ?",
        };
        self.lookup_one(sql, vec![token_hash.to_vec().into()]).await
    }

    /// The `(tenant_id, user_id)` pairs a login email belongs to (compared
    /// case-insensitively): the login form's one cross-tenant lookup.
    pub async fn find_login_candidates(&self, email: &str) -> StoreResult<Vec<(Uuid, Uuid)>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT tenant_id, user_id FROM mobius_login_candidates($1)",
            Backend::Sqlite => {
                "SELECT tenant_id, id AS user_id FROM users WHERE lower(email) = lower(?)"
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
            .map(|row| Ok((row.try_get("", "tenant_id")?, row.try_get("", "user_id")?)))
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
