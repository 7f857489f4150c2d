//! Jobs that must run once per period across all replicas, not once per
//! replica: cleanup of expired rows, pruning of the cluster tables, the
//! audit chainer's sweep, plan-output retention.
//!
//! Each job has a row in `job_runs`. A replica that sees a job due claims
//! it with `SELECT ... FOR UPDATE SKIP LOCKED` in a transaction
//! ([`Store::claim_job`]), does the work in that same transaction where the
//! work is SQL, and commits the work together with the record of the run
//! and the next due time. So a job runs once per period whichever replicas
//! are up; a replica killed mid-job rolls back everything it did, and the
//! job, still due, is taken by the next replica to look. Replicas look every
//! [`TICK`] plus a random jitter, so they do not all ask at the same instant.
//!
//! The per-process loops in `jobs/mod.rs` (heartbeat and API-token-use
//! flushes, the revocation poll, the trust reload) stay per replica: they
//! write or read what that replica holds in memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mobius_core::Store;
use mobius_core::db::Backend;
use mobius_core::db::cluster::JobRecord;
use rand::Rng;

use crate::http::metrics::Metrics;

/// How often a replica looks for due jobs (before jitter).
pub const TICK: Duration = Duration::from_secs(2);
/// Up to this much is added to each tick at random.
pub const JITTER: Duration = Duration::from_millis(1000);
/// How long cluster bus messages are kept for replicas catching up.
const BUS_RETENTION: chrono::Duration = chrono::Duration::minutes(10);
/// Rate-limit windows are one minute; older ones are kept this long.
const COUNTER_RETENTION: chrono::Duration = chrono::Duration::minutes(5);

/// A job the scheduler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Expired enrollment tokens, refresh tokens (sessions) and
    /// invitations; revocation records older than one certificate lifetime.
    PurgeExpired,
    /// Old cluster bus messages and rate-limit windows.
    PruneCluster,
    /// Links audit events no server was woken for (the per-replica
    /// chainer links the rest as they commit).
    AuditChainSweep,
    /// Plan output lines older than `plan_log_retention_days`.
    PurgePlanLogs,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [
        JobKind::PurgeExpired,
        JobKind::PruneCluster,
        JobKind::AuditChainSweep,
        JobKind::PurgePlanLogs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobKind::PurgeExpired => "purge-expired",
            JobKind::PruneCluster => "prune-cluster",
            JobKind::AuditChainSweep => "audit-chain-sweep",
            JobKind::PurgePlanLogs => "purge-plan-logs",
        }
    }

    /// How often it runs unless `job_periods_secs` says otherwise.
    pub fn default_period(self) -> Duration {
        match self {
            JobKind::PurgeExpired => Duration::from_secs(3600),
            JobKind::PruneCluster => Duration::from_secs(300),
            JobKind::AuditChainSweep => Duration::from_secs(10),
            JobKind::PurgePlanLogs => Duration::from_secs(3600),
        }
    }
}

/// Runs the jobs that are due, once across replicas.
pub struct Scheduler {
    store: Store,
    node: String,
    jobs: Vec<(JobKind, Duration)>,
    revocation_lookback: chrono::Duration,
    plan_log_retention: chrono::Duration,
    metrics: Arc<Metrics>,
}

/// What the jobs keep and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Revocation records older than this (one certificate lifetime) go.
    pub revocation_lookback: chrono::Duration,
    /// Plan output lines older than this go.
    pub plan_logs: chrono::Duration,
}

impl Scheduler {
    /// `periods` overrides default periods by job name (seconds).
    pub fn new(
        store: Store,
        node: String,
        periods: &BTreeMap<String, u64>,
        retention: Retention,
        metrics: Arc<Metrics>,
    ) -> Scheduler {
        let jobs = JobKind::ALL
            .into_iter()
            // SQLite chains each event as it is written.
            .filter(|job| store.backend() == Backend::Postgres || *job != JobKind::AuditChainSweep)
            .map(|job| {
                let period = periods
                    .get(job.name())
                    .map(|secs| Duration::from_secs((*secs).max(1)))
                    .unwrap_or_else(|| job.default_period());
                (job, period)
            })
            .collect();
        Scheduler {
            store,
            node,
            jobs,
            revocation_lookback: retention.revocation_lookback,
            plan_log_retention: retention.plan_logs,
            metrics,
        }
    }

    pub async fn run(self) {
        let names: Vec<&str> = self.jobs.iter().map(|(job, _)| job.name()).collect();
        while let Err(err) = self.store.register_jobs(&names).await {
            tracing::warn!(error = %err, "scheduler: cannot register jobs; retrying");
            tokio::time::sleep(TICK).await;
        }
        tracing::info!(node = %self.node, jobs = ?names, "job scheduler running");
        loop {
            match self.store.job_records().await {
                Ok(records) => {
                    let now = chrono::Utc::now();
                    for record in &records {
                        self.metrics.record_job(record);
                    }
                    for (job, period) in &self.jobs {
                        let due = records
                            .iter()
                            .find(|r| r.name == job.name())
                            .is_none_or(|r| r.next_due_at <= now);
                        if due {
                            self.run_if_claimed(*job, *period).await;
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "scheduler: cannot read job records"),
            }
            let jitter = rand::rng().random_range(0..=JITTER.as_millis() as u64);
            tokio::time::sleep(TICK + Duration::from_millis(jitter)).await;
        }
    }

    async fn run_if_claimed(&self, job: JobKind, period: Duration) {
        let claim = match self.store.claim_job(job.name()).await {
            Ok(Some(claim)) => claim,
            // Another replica has it, or it is no longer due.
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, job = job.name(), "scheduler: cannot claim job");
                return;
            }
        };
        let now = chrono::Utc::now();
        let work = match job {
            JobKind::PurgeExpired => claim
                .purge_expired(now - self.revocation_lookback)
                .await
                .map(|counts| describe(&counts)),
            JobKind::PruneCluster => claim
                .prune_cluster_tables(now - BUS_RETENTION, now - COUNTER_RETENTION)
                .await
                .map(|counts| describe(&counts)),
            JobKind::AuditChainSweep => self
                .store
                .chain_audit_events()
                .await
                .map(|linked| format!("linked={linked}")),
            // Per tenant, each in its own transaction: a deletion of
            // expired rows is idempotent, so a replica killed half way
            // leaves only rows the next run deletes.
            JobKind::PurgePlanLogs => self
                .store
                .purge_plan_logs(now - self.plan_log_retention)
                .await
                .map(|removed| format!("plan_log_lines={removed}")),
        };
        let outcome = match work {
            Ok(outcome) => outcome,
            Err(err) => {
                // Dropping the claim rolls back its work; the job stays due.
                tracing::warn!(error = %err, job = job.name(), "job failed; it stays due");
                return;
            }
        };
        match claim.finish(period, &self.node, &outcome).await {
            Ok(record) => {
                tracing::info!(
                    job = job.name(),
                    node = %self.node,
                    started_at = %record.last_started_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    duration_ms = record.last_duration_ms.unwrap_or_default(),
                    outcome = %outcome,
                    "job ran"
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, job = job.name(), "could not record a job run; it stays due");
            }
        }
    }
}

fn describe(counts: &[(String, i64)]) -> String {
    counts
        .iter()
        .map(|(kind, n)| format!("{kind}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The job records as the `jobs` command prints them.
pub fn render_table(records: &[JobRecord]) -> String {
    let mut out = format!(
        "{:<20} {:>6} {:<20} {:<20} {:>8}  {:<24} {}\n",
        "JOB", "RUNS", "LAST STARTED (UTC)", "NEXT DUE (UTC)", "MS", "NODE", "OUTCOME"
    );
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    for r in records {
        out.push_str(&format!(
            "{:<20} {:>6} {:<20} {:<20} {:>8}  {:<24} {}\n",
            r.name,
            r.runs,
            r.last_started_at
                .map(time)
                .unwrap_or_else(|| "never".into()),
            time(r.next_due_at),
            r.last_duration_ms
                .map(|ms| ms.to_string())
                .unwrap_or_default(),
            r.last_node.clone().unwrap_or_default(),
            r.last_outcome.clone().unwrap_or_default(),
        ));
    }
    out
}
