//! The state several servers on one database share beyond tenant data
//! (migration `m20261207_000001_cluster`): the cluster bus's message log,
//! the scheduler's job records and claims, shared rate-limit counters, the
//! device listener's CA, and the embedded store's online backup. Nothing
//! here reads or writes tenant rows except `mobius_purge_expired`, the
//! cleanup job's one named cross-tenant delete.

use std::path::Path;

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, Statement, TransactionTrait, Value,
    prelude::Uuid,
};

use super::{Backend, Store, StoreError, StoreResult};

/// The Postgres channel the bus notifies on (payload: `<id> <topic>
/// <payload>`; payloads are ids, far below NOTIFY's 8,000-byte limit).
pub const BUS_CHANNEL: &str = "mobius_cluster";

/// A Postgres `LISTEN` connection, for the bus.
pub type BusListener = sea_orm::sqlx::postgres::PgListener;

/// One message on the cluster bus, as logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusMessage {
    pub id: Uuid,
    pub topic: String,
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

/// The scheduler's record of one job.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobRecord {
    pub name: String,
    pub next_due_at: DateTime<Utc>,
    pub last_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
    pub last_duration_ms: Option<i64>,
    pub last_outcome: Option<String>,
    pub last_node: Option<String>,
    pub runs: i64,
}

/// What [`mobius_purge_expired`] removed, per kind of row.
pub type PurgeCounts = Vec<(String, i64)>;

impl Store {
    /// Appends a message to the bus log (`payload` must stay small: ids,
    /// never tenant data beyond ids) and, on Postgres, notifies every
    /// listener in the same autocommit statement, so a notification never
    /// announces a row that is not there.
    pub async fn bus_append(&self, topic: &str, payload: &str) -> StoreResult<BusMessage> {
        let id = Uuid::now_v7();
        let now = Utc::now();
        let statement = match self.backend {
            Backend::Postgres => Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH m AS (INSERT INTO cluster_messages (id, topic, payload, created_at) \
                 VALUES ($1, $2, $3, $4) RETURNING id, topic) \
                 SELECT pg_notify($5, m.id::text || ' ' || m.topic || ' ' || $3) FROM m",
                [
                    id.into(),
                    topic.into(),
                    payload.into(),
                    now.into(),
                    BUS_CHANNEL.into(),
                ],
            ),
            Backend::Sqlite => Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "INSERT INTO cluster_messages (id, topic, payload, created_at) VALUES (?, ?, ?, ?)",
                [id.into(), topic.into(), payload.into(), now.into()],
            ),
        };
        self.db.execute_raw(statement).await?;
        Ok(BusMessage {
            id,
            topic: topic.to_owned(),
            payload: payload.to_owned(),
            created_at: now,
        })
    }

    /// Messages logged after `since`, oldest first: the fallback poll that
    /// catches what a listener missed while it reconnected.
    pub async fn bus_since(&self, since: DateTime<Utc>) -> StoreResult<Vec<BusMessage>> {
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT id, topic, payload, created_at FROM cluster_messages \
                 WHERE created_at > $1 ORDER BY created_at, id LIMIT 10000"
            }
            Backend::Sqlite => {
                "SELECT id, topic, payload, created_at FROM cluster_messages \
                 WHERE created_at > ? ORDER BY created_at, id LIMIT 10000"
            }
        };
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                self.db_backend(),
                sql,
                [since.into()],
            ))
            .await?;
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            messages.push(BusMessage {
                id: row.try_get("", "id")?,
                topic: row.try_get("", "topic")?,
                payload: row.try_get("", "payload")?,
                created_at: row.try_get("", "created_at")?,
            });
        }
        Ok(messages)
    }

    /// A listener on the bus channel, holding one of the pool's
    /// connections (Postgres only; the embedded store's bus is in-process).
    pub async fn bus_listener(&self) -> StoreResult<Option<BusListener>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let pool = self.db.get_postgres_connection_pool();
        let mut listener = BusListener::connect_with(pool)
            .await
            .map_err(StoreError::internal("connecting the cluster bus listener"))?;
        listener
            .listen(BUS_CHANNEL)
            .await
            .map_err(StoreError::internal("listening on the cluster bus"))?;
        Ok(Some(listener))
    }

    /// Counts one hit on `key` in the window starting at `window_start`
    /// and returns the window's count so far, in one upsert: every replica
    /// counts in the same row.
    pub async fn count_rate_limit_hit(
        &self,
        key: &str,
        window_start: DateTime<Utc>,
    ) -> StoreResult<i64> {
        let sql = match self.backend {
            Backend::Postgres => {
                "INSERT INTO rate_limit_counters (key, window_start, hits) VALUES ($1, $2, 1) \
                 ON CONFLICT (key, window_start) DO UPDATE SET hits = rate_limit_counters.hits + 1 \
                 RETURNING hits"
            }
            Backend::Sqlite => {
                "INSERT INTO rate_limit_counters (key, window_start, hits) VALUES (?, ?, 1) \
                 ON CONFLICT (key, window_start) DO UPDATE SET hits = rate_limit_counters.hits + 1 \
                 RETURNING hits"
            }
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                self.db_backend(),
                sql,
                [key.into(), window_start.into()],
            ))
            .await?;
        let hits: i32 = match row {
            Some(row) => row.try_get("", "hits")?,
            None => 1,
        };
        Ok(i64::from(hits))
    }

    /// The device listener's shared CA (certificate PEM, sealed key), if
    /// one was stored.
    pub async fn device_listener_ca(&self) -> StoreResult<Option<(String, Vec<u8>)>> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                self.db_backend(),
                "SELECT cert_pem, key_sealed FROM device_listener_ca WHERE id = 'current'",
            ))
            .await?;
        match row {
            Some(row) => Ok(Some((
                row.try_get("", "cert_pem")?,
                row.try_get("", "key_sealed")?,
            ))),
            None => Ok(None),
        }
    }

    /// Stores the device listener's CA unless one is there already (two
    /// replicas starting at once: the first wins, both then read it back).
    pub async fn store_device_listener_ca(
        &self,
        cert_pem: &str,
        key_sealed: &[u8],
    ) -> StoreResult<()> {
        let sql = match self.backend {
            Backend::Postgres => {
                "INSERT INTO device_listener_ca (id, cert_pem, key_sealed, created_at) \
                 VALUES ('current', $1, $2, $3) ON CONFLICT (id) DO NOTHING"
            }
            Backend::Sqlite => {
                "INSERT INTO device_listener_ca (id, cert_pem, key_sealed, created_at) \
                 VALUES ('current', ?, ?, ?) ON CONFLICT (id) DO NOTHING"
            }
        };
        self.db
            .execute_raw(Statement::from_sql_and_values(
                self.db_backend(),
                sql,
                [
                    cert_pem.into(),
                    key_sealed.to_vec().into(),
                    Utc::now().into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Every job's record, by name.
    pub async fn job_records(&self) -> StoreResult<Vec<JobRecord>> {
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                self.db_backend(),
                "SELECT name, next_due_at, last_started_at, last_finished_at, last_duration_ms, \
                 last_outcome, last_node, runs FROM job_runs ORDER BY name",
            ))
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            records.push(JobRecord {
                name: row.try_get("", "name")?,
                next_due_at: row.try_get("", "next_due_at")?,
                last_started_at: row.try_get("", "last_started_at")?,
                last_finished_at: row.try_get("", "last_finished_at")?,
                last_duration_ms: row.try_get("", "last_duration_ms")?,
                last_outcome: row.try_get("", "last_outcome")?,
                last_node: row.try_get("", "last_node")?,
                runs: row.try_get("", "runs")?,
            });
        }
        Ok(records)
    }

    /// Creates the records of jobs not seen before, due at once.
    pub async fn register_jobs(&self, names: &[&str]) -> StoreResult<()> {
        let now = Utc::now();
        let sql = match self.backend {
            Backend::Postgres => {
                "INSERT INTO job_runs (name, next_due_at, updated_at) VALUES ($1, $2, $2) \
                 ON CONFLICT (name) DO NOTHING"
            }
            Backend::Sqlite => {
                "INSERT INTO job_runs (name, next_due_at, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (name) DO NOTHING"
            }
        };
        for name in names {
            let values: Vec<Value> = match self.backend {
                Backend::Postgres => vec![(*name).into(), now.into()],
                Backend::Sqlite => vec![(*name).into(), now.into(), now.into()],
            };
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    self.db_backend(),
                    sql,
                    values,
                ))
                .await?;
        }
        Ok(())
    }

    /// Claims job `name` if it is due, for one run across all servers.
    ///
    /// The claim is a transaction holding the job's row `FOR UPDATE SKIP
    /// LOCKED` (Postgres; the embedded store's single connection serializes
    /// anyway): a second server asking meanwhile gets `None`, and after
    /// [`JobClaim::finish`] commits the next due time, so does everyone
    /// until then. Work done through the claim ([`JobClaim::purge_expired`],
    /// [`JobClaim::prune_cluster_tables`]) commits with the record or not
    /// at all: a server killed mid-job leaves nothing half-done, and the
    /// job stays due for the next server's turn.
    pub async fn claim_job(&self, name: &str) -> StoreResult<Option<JobClaim>> {
        let now = Utc::now();
        let backend = self.db_backend();
        let txn = self.db.begin().await?;
        let (sql, values): (&str, Vec<Value>) = match self.backend {
            Backend::Postgres => (
                "SELECT name, now() AS started_at FROM job_runs \
                 WHERE name = $1 AND next_due_at <= now() FOR UPDATE SKIP LOCKED",
                vec![name.into()],
            ),
            Backend::Sqlite => (
                "SELECT name, ? AS started_at FROM job_runs WHERE name = ? AND next_due_at <= ?",
                vec![now.into(), name.into(), now.into()],
            ),
        };
        let row = txn
            .query_one_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
        let Some(row) = row else {
            txn.rollback().await?;
            return Ok(None);
        };
        let started_at: DateTime<Utc> = match self.backend {
            Backend::Postgres => row.try_get("", "started_at")?,
            Backend::Sqlite => now,
        };
        Ok(Some(JobClaim {
            txn,
            backend: self.backend,
            name: name.to_owned(),
            started_at,
            clock: std::time::Instant::now(),
        }))
    }

    /// Copies the embedded store into `path` while it is in use (SQLite's
    /// `VACUUM INTO`: a consistent snapshot, compacted). Refused on
    /// Postgres, whose backups are `pg_dump` or PITR.
    pub async fn backup_embedded_to(&self, path: &Path) -> StoreResult<()> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Invalid {
                field: "backup",
                reason: "the backup command copies the embedded SQLite store; back up Postgres \
                         with pg_dump or point-in-time recovery (docs/operations/backup.md)"
                    .into(),
            });
        }
        if path.exists() {
            return Err(StoreError::Invalid {
                field: "to",
                reason: format!("{} already exists; choose a new file", path.display()),
            });
        }
        let target = path.to_str().ok_or_else(|| StoreError::Invalid {
            field: "to",
            reason: "the backup path must be valid UTF-8".into(),
        })?;
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "VACUUM INTO ?",
                [target.into()],
            ))
            .await?;
        Ok(())
    }
}

/// One claimed run of a job; see [`Store::claim_job`]. Dropping it without
/// [`JobClaim::finish`] rolls back everything done through it.
pub struct JobClaim {
    txn: DatabaseTransaction,
    backend: Backend,
    name: String,
    started_at: DateTime<Utc>,
    clock: std::time::Instant,
}

impl JobClaim {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn db_backend(&self) -> DbBackend {
        match self.backend {
            Backend::Postgres => DbBackend::Postgres,
            Backend::Sqlite => DbBackend::Sqlite,
        }
    }

    /// Deletes expired enrollment tokens, refresh tokens (sessions) and
    /// unaccepted invitations, and revocation records older than
    /// `revoked_before` (one certificate lifetime ago), across tenants.
    pub async fn purge_expired(&self, revoked_before: DateTime<Utc>) -> StoreResult<PurgeCounts> {
        match self.backend {
            Backend::Postgres => {
                let rows = self
                    .txn
                    .query_all_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT kind, removed FROM mobius_purge_expired($1)",
                        [revoked_before.into()],
                    ))
                    .await?;
                let mut counts = Vec::with_capacity(rows.len());
                for row in rows {
                    counts.push((row.try_get("", "kind")?, row.try_get("", "removed")?));
                }
                Ok(counts)
            }
            Backend::Sqlite => {
                let now = Utc::now();
                let mut counts = Vec::new();
                for (kind, sql, at) in [
                    (
                        "enrollment_tokens",
                        "DELETE FROM enrollment_tokens WHERE expires_at < ?",
                        now,
                    ),
                    (
                        "refresh_tokens",
                        "DELETE FROM refresh_tokens WHERE expires_at < ?",
                        now,
                    ),
                    (
                        "invitations",
                        "DELETE FROM invitations WHERE expires_at < ? AND accepted_at IS NULL",
                        now,
                    ),
                    (
                        "revoked_devices",
                        "DELETE FROM revoked_devices WHERE revoked_at < ?",
                        revoked_before,
                    ),
                ] {
                    let result = self
                        .txn
                        .execute_raw(Statement::from_sql_and_values(
                            DbBackend::Sqlite,
                            sql,
                            [at.into()],
                        ))
                        .await?;
                    counts.push((kind.to_owned(), result.rows_affected() as i64));
                }
                Ok(counts)
            }
        }
    }

    /// Deletes bus messages logged before `messages_before` and rate-limit
    /// windows that started before `counters_before`.
    pub async fn prune_cluster_tables(
        &self,
        messages_before: DateTime<Utc>,
        counters_before: DateTime<Utc>,
    ) -> StoreResult<PurgeCounts> {
        let (messages, counters) = match self.backend {
            Backend::Postgres => (
                "DELETE FROM cluster_messages WHERE created_at < $1",
                "DELETE FROM rate_limit_counters WHERE window_start < $1",
            ),
            Backend::Sqlite => (
                "DELETE FROM cluster_messages WHERE created_at < ?",
                "DELETE FROM rate_limit_counters WHERE window_start < ?",
            ),
        };
        let m = self
            .txn
            .execute_raw(Statement::from_sql_and_values(
                self.db_backend(),
                messages,
                [messages_before.into()],
            ))
            .await?;
        let c = self
            .txn
            .execute_raw(Statement::from_sql_and_values(
                self.db_backend(),
                counters,
                [counters_before.into()],
            ))
            .await?;
        Ok(vec![
            ("cluster_messages".to_owned(), m.rows_affected() as i64),
            ("rate_limit_counters".to_owned(), c.rows_affected() as i64),
        ])
    }

    /// Records the run (outcome, this node, duration), sets the next due
    /// time `period` after this run started, and commits it together with
    /// the work done through the claim.
    pub async fn finish(
        self,
        period: std::time::Duration,
        node: &str,
        outcome: &str,
    ) -> StoreResult<JobRecord> {
        let duration_ms = self.clock.elapsed().as_millis() as i64;
        let next_due_at = self.started_at
            + chrono::Duration::from_std(period).unwrap_or(chrono::Duration::minutes(1));
        let now = Utc::now();
        let sql = match self.backend {
            Backend::Postgres => {
                "UPDATE job_runs SET next_due_at = $1, last_started_at = $2, last_finished_at = $3, \
                 last_duration_ms = $4, last_outcome = $5, last_node = $6, runs = runs + 1, \
                 updated_at = $3 WHERE name = $7"
            }
            Backend::Sqlite => {
                "UPDATE job_runs SET next_due_at = ?, last_started_at = ?, last_finished_at = ?, \
                 last_duration_ms = ?, last_outcome = ?, last_node = ?, runs = runs + 1, \
                 updated_at = ? WHERE name = ?"
            }
        };
        let values: Vec<Value> = match self.backend {
            Backend::Postgres => vec![
                next_due_at.into(),
                self.started_at.into(),
                now.into(),
                duration_ms.into(),
                outcome.into(),
                node.into(),
                self.name.clone().into(),
            ],
            Backend::Sqlite => vec![
                next_due_at.into(),
                self.started_at.into(),
                now.into(),
                duration_ms.into(),
                outcome.into(),
                node.into(),
                now.into(),
                self.name.clone().into(),
            ],
        };
        self.txn
            .execute_raw(Statement::from_sql_and_values(
                self.db_backend(),
                sql,
                values,
            ))
            .await?;
        self.txn.commit().await?;
        Ok(JobRecord {
            name: self.name,
            next_due_at,
            last_started_at: Some(self.started_at),
            last_finished_at: Some(now),
            last_duration_ms: Some(duration_ms),
            last_outcome: Some(outcome.to_owned()),
            last_node: Some(node.to_owned()),
            runs: 0,
        })
    }
}
