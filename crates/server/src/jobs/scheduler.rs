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
    /// Pushes due policies to online devices (see `queries::jobs`).
    PolicySchedule,
    /// Ends overdue live queries, deletes expired ones.
    LiveQueryMaintenance,
    /// Posts due policy webhook deliveries.
    WebhookDelivery,
    /// Plan output lines older than `plan_log_retention_days`.
    PurgePlanLogs,
    /// Software installs still pending after `software_install_pending_days`
    /// (their device offline that long) fail with "device offline too long".
    ExpirePendingInstalls,
    /// osquery result and status logs older than
    /// `osquery_log_retention_days`.
    OsqueryLogRetention,
}

impl JobKind {
    pub const ALL: [JobKind; 9] = [
        JobKind::PurgeExpired,
        JobKind::PruneCluster,
        JobKind::AuditChainSweep,
        JobKind::PolicySchedule,
        JobKind::LiveQueryMaintenance,
        JobKind::WebhookDelivery,
        JobKind::PurgePlanLogs,
        JobKind::OsqueryLogRetention,
        JobKind::ExpirePendingInstalls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobKind::PurgeExpired => "purge-expired",
            JobKind::PruneCluster => "prune-cluster",
            JobKind::AuditChainSweep => "audit-chain-sweep",
            JobKind::PolicySchedule => "policy-schedule",
            JobKind::LiveQueryMaintenance => "live-query-maintenance",
            JobKind::WebhookDelivery => "webhook-delivery",
            JobKind::PurgePlanLogs => "purge-plan-logs",
            JobKind::ExpirePendingInstalls => "expire-pending-installs",
            JobKind::OsqueryLogRetention => "osquery-log-retention",
        }
    }

    /// Whether its work runs in the claim's own transaction (SQL across
    /// tenants through the owner's functions) rather than in transactions
    /// of its own.
    pub fn works_in_claim(self) -> bool {
        matches!(self, JobKind::PurgeExpired | JobKind::PruneCluster)
    }

    /// How often it runs unless `job_periods_secs` says otherwise.
    pub fn default_period(self) -> Duration {
        match self {
            JobKind::PurgeExpired => Duration::from_secs(3600),
            JobKind::PruneCluster => Duration::from_secs(300),
            JobKind::AuditChainSweep => Duration::from_secs(10),
            JobKind::PolicySchedule => Duration::from_secs(10),
            JobKind::LiveQueryMaintenance => Duration::from_secs(60),
            // Retries back off from 2 s: the period bounds how late a
            // first attempt can be.
            JobKind::WebhookDelivery => Duration::from_secs(2),
            JobKind::PurgePlanLogs => Duration::from_secs(3600),
            JobKind::ExpirePendingInstalls => Duration::from_secs(3600),
            JobKind::OsqueryLogRetention => Duration::from_secs(3600),
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
    /// For the query jobs; without it they record that they had nothing to do.
    queries: Option<(crate::queries::QueryServices, reqwest::Client)>,
    /// How long osquery logs are kept.
    osquery_log_retention: chrono::Duration,
    /// Days a software install may stay pending, and the streams to wake
    /// when one is failed (its execution cancelled).
    software_expiry: Option<(u32, Arc<crate::device::WorkNotifier>)>,
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
    /// Gives the query jobs what they need.
    pub fn with_queries(mut self, services: crate::queries::QueryServices) -> Scheduler {
        self.queries = Some((services, crate::queries::jobs::webhook_client()));
        self
    }

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
            queries: None,
            osquery_log_retention: chrono::Duration::days(7),
            software_expiry: None,
        }
    }

    /// Fails software installs pending longer than `days`; `notifier`
    /// tells their devices' streams that the execution was cancelled.
    pub fn with_software_expiry(
        mut self,
        days: u32,
        notifier: Arc<crate::device::WorkNotifier>,
    ) -> Scheduler {
        self.software_expiry = Some((days, notifier));
        self
    }

    /// Keeps osquery logs for `days` (default 7).
    pub fn with_osquery_log_retention(mut self, days: u32) -> Scheduler {
        self.osquery_log_retention = chrono::Duration::days(i64::from(days.max(1)));
        self
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
        // The embedded store has one connection, which the claim's
        // transaction would hold while a job that opens its own
        // transactions waited for it forever. One process owns an embedded
        // store (the data-directory lock), so there is nobody to race: the
        // work runs first and the claim only records it.
        let done_before_claim = if self.store.backend() == Backend::Sqlite && !job.works_in_claim()
        {
            Some(self.work_outside_claim(job).await)
        } else {
            None
        };
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
        let work = match (job, done_before_claim) {
            (_, Some(done)) => done,
            (JobKind::PurgeExpired, None) => claim
                .purge_expired(now - self.revocation_lookback)
                .await
                .map(|counts| describe(&counts)),
            (JobKind::PruneCluster, None) => claim
                .prune_cluster_tables(now - BUS_RETENTION, now - COUNTER_RETENTION)
                .await
                .map(|counts| describe(&counts)),
            (other, None) => self.work_outside_claim(other).await,
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

    /// The jobs whose work opens its own transactions (each tenant's
    /// scope, or none); the claim's row lock still makes them run once.
    async fn work_outside_claim(&self, job: JobKind) -> mobius_core::StoreResult<String> {
        let now = chrono::Utc::now();
        match job {
            JobKind::AuditChainSweep => self
                .store
                .chain_audit_events()
                .await
                .map(|linked| format!("linked={linked}")),
            JobKind::PolicySchedule => match &self.queries {
                Some((services, _)) => crate::queries::jobs::run_due_policies(services).await,
                None => Ok("no query services".into()),
            },
            JobKind::LiveQueryMaintenance => match &self.queries {
                Some((services, _)) => crate::queries::jobs::maintain_live_queries(services).await,
                None => Ok("no query services".into()),
            },
            JobKind::WebhookDelivery => match &self.queries {
                Some((services, client)) => {
                    crate::queries::jobs::deliver_webhooks(services, client).await
                }
                None => Ok("no query services".into()),
            },
            // Per tenant, each in its own transaction: a deletion of
            // expired rows is idempotent, so a replica killed half way
            // leaves only rows the next run deletes.
            JobKind::PurgePlanLogs => self
                .store
                .purge_plan_logs(now - self.plan_log_retention)
                .await
                .map(|removed| format!("plan_log_lines={removed}")),
            // Idempotent deletes in each tenant's own scope (not in the
            // claim's transaction, which has no tenant).
            JobKind::OsqueryLogRetention => mobius_core::osquery::purge_expired_logs(
                &self.store,
                now - self.osquery_log_retention,
            )
            .await
            .map(|removed| format!("removed={removed}")),
            JobKind::ExpirePendingInstalls => match &self.software_expiry {
                Some((days, notifier)) => {
                    let cutoff = now - chrono::Duration::days(i64::from(*days));
                    self.store
                        .fail_stale_software_installs(cutoff, *days)
                        .await
                        .map(|failed| {
                            for install in &failed {
                                notifier.notify(install.tenant_id, install.device_id);
                            }
                            format!("failed_installs={}", failed.len())
                        })
                }
                None => Ok("no software services".into()),
            },
            // These run in their claim's transaction (`run_if_claimed`).
            JobKind::PurgeExpired | JobKind::PruneCluster => Ok(String::new()),
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
