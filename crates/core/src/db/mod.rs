//! The store: one connection pool (Postgres or embedded SQLite), migrations,
//! and [`Store::begin`], the only way to reach tenant data. Cross-tenant
//! lookups live in [`lookups`], the tenant proofs `begin` takes in
//! [`proof`], advisory-lock keys in [`locks`].

pub mod cluster;
pub(crate) mod coalesce;
pub(crate) mod entities;
mod error;
pub(crate) mod locks;
mod lookups;
pub mod postgres_roles;
mod proof;
mod scope;

pub use error::{StoreError, StoreResult, no_nul, no_nul_in_json};
pub(crate) use error::{conflict_on, in_use_by, valid_name};
pub use lookups::{LoginCandidate, PlatformTenant, SecretKind, TokenClaim, TrustedCa};
pub use proof::{FoundTenant, SystemTask, TenantProof};
pub use scope::TenantScope;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mobius_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
    TransactionTrait, prelude::Uuid,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::broadcast;

use crate::audit::AuditEvent;

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

#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    backend: Backend,
    max_connections: u32,
    /// Statements sent to the database, for `/metrics` and for tests that
    /// check a page costs a constant number of queries.
    statements: Arc<AtomicU64>,
    audit_feed: broadcast::Sender<AuditEvent>,
    /// Tenants closed to users and devices (suspended, unverified), kept
    /// in memory and refreshed by a poll, so the check costs no query.
    pub(crate) blocks: Arc<crate::platform::TenantBlocks>,
    /// Audit events other replicas committed, relayed by the cluster bus.
    remote_audit_feed: broadcast::Sender<AuditEvent>,
}

/// Creates `path` with mode 0600, or tightens an existing file to 0600,
/// before SQLite opens it: the database holds every secret of the
/// installation, and SQLite gives its WAL and shared-memory files the
/// database file's mode.
fn make_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    options.open(path)?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the embedded SQLite store at `path`.
    ///
    /// The pool holds a single connection: SQLite allows one writer at a
    /// time, and a single connection turns what would be `SQLITE_BUSY`
    /// errors under concurrent writes into an orderly queue.
    pub async fn open_sqlite(path: &Path) -> StoreResult<Store> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Internal {
                context: "creating the data directory",
                source: format!("cannot create {}: {e}", parent.display()).into(),
            })?;
        }
        make_private_file(path).map_err(|e| StoreError::Invalid {
            field: "data_dir",
            reason: format!("cannot create {}: {e}", path.display()),
        })?;
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
        let (remote_audit_feed, _) = broadcast::channel(1024);
        Store {
            db,
            backend,
            max_connections,
            statements,
            audit_feed,
            blocks: Arc::default(),
            remote_audit_feed,
        }
    }

    /// Statements sent so far through this store's pool.
    pub fn statement_count(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Announces an audit event committed by another server (the cluster
    /// bus relays it) to [`Store::subscribe_remote_audit`] receivers. Kept
    /// apart from this process's own commits so the audit chainer and the
    /// bus announcer, which follow only those, never see it.
    pub fn announce_remote_audit(&self, event: AuditEvent) {
        let _ = self.remote_audit_feed.send(event);
    }

    /// Audit events other replicas committed, as the cluster bus relays them.
    pub fn subscribe_remote_audit(&self) -> broadcast::Receiver<AuditEvent> {
        self.remote_audit_feed.subscribe()
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

    /// Opens a transaction scoped to the tenant that `proof` establishes:
    /// the one place the tenant is set. The proof is an authenticated
    /// principal, a device identity from a verified certificate, the
    /// answer of a named cross-tenant lookup, or a named system task; a
    /// bare id is not accepted, so no caller can wander into a tenant it
    /// did not prove. The first statement is the bound
    /// `set_config('app.tenant_id', $1, true)`, local to the transaction so
    /// a pooled connection never carries a tenant into the next request.
    pub async fn begin(&self, proof: &impl TenantProof) -> StoreResult<TenantScope> {
        if !proof.enters_blocked_tenants()
            && let Some(block) = self.blocks.get(proof.tenant_id())
        {
            return Err(StoreError::TenantBlocked(block));
        }
        self.begin_tenant(proof.tenant_id(), proof.team_restriction())
            .await
    }

    /// [`Store::begin`] for a tenant this crate has just created (its id
    /// comes from `Uuid::now_v7`, not from any input).
    pub(crate) async fn begin_tenant(
        &self,
        tenant_id: Uuid,
        team_restriction: Option<Uuid>,
    ) -> StoreResult<TenantScope> {
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
            team_restriction,
            self.backend,
            self.audit_feed.clone(),
        ))
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
