//! Queries pushed by the server: live queries and policy checks
//! (`WorkFrame::Query`) run against the host tables and answered with
//! `POST /api/v1/mobius/device/queries/results`; option bundles
//! (`WorkFrame::Options`) saved and applied.
//!
//! Queries run beside plan executions, never behind them: a live query
//! must answer in seconds even while a long plan runs.

pub mod command;
pub mod options;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mobius_api::queries::{AgentOptions, QueryOutcome, QueryRequest, QueryResult};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::state::StateDir;
use crate::tables::{self, AgentInfo, Limits};
use crate::transport::CallError;

/// Queries running at once; more wait their turn (each holds a blocking
/// thread and an in-memory database).
const CONCURRENT_QUERIES: usize = 2;
/// Attempts to deliver one answer while the server is unreachable.
const DELIVERY_ATTEMPTS: u32 = 4;
/// The largest answer body sent. The server accepts 8 MiB; the byte cap
/// counts names and values only, so JSON quoting and escaping (or a cap
/// set high in the options) could otherwise push an answer past it and
/// lose it to a 413.
const MAX_ANSWER_BODY_BYTES: usize = 7 << 20;

/// Runs pushed queries and applies pushed options.
#[derive(Clone)]
pub struct QueryRunner {
    dir: StateDir,
    limits: Arc<RwLock<Limits>>,
    applied_version: Arc<Mutex<Option<i64>>>,
    running: Arc<Mutex<HashSet<Uuid>>>,
    slots: Arc<Semaphore>,
}

impl QueryRunner {
    /// Starts from the options saved by the last run.
    pub fn new(dir: StateDir) -> QueryRunner {
        let stored = options::stored(&dir);
        QueryRunner {
            limits: Arc::new(RwLock::new(options::limits(stored.as_ref()))),
            applied_version: Arc::new(Mutex::new(stored.map(|o| o.options_version))),
            running: Arc::new(Mutex::new(HashSet::new())),
            slots: Arc::new(Semaphore::new(CONCURRENT_QUERIES)),
            dir,
        }
    }

    fn limits(&self) -> Limits {
        match self.limits.read() {
            Ok(limits) => *limits,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Saves and applies a bundle newer than the one applied. Both the
    /// stream and heartbeats carry bundles, so an older one arriving late
    /// is ignored rather than undoing a newer one.
    pub fn apply_options(&self, bundle: AgentOptions) {
        let mut applied = match self.applied_version.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if applied.is_some_and(|version| bundle.options_version <= version) {
            tracing::debug!(
                options_version = bundle.options_version,
                "agent options already applied"
            );
            return;
        }
        if let Err(err) = options::save(&self.dir, &bundle) {
            tracing::error!(error = %format!("{err:#}"), "cannot save options.json; applying anyway");
        }
        let limits = options::limits(Some(&bundle));
        match self.limits.write() {
            Ok(mut current) => *current = limits,
            Err(poisoned) => *poisoned.into_inner() = limits,
        }
        *applied = Some(bundle.options_version);
        tracing::info!(
            options_version = bundle.options_version,
            query_timeout_ms = u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            query_max_rows = limits.max_rows,
            query_max_bytes = limits.max_bytes,
            "agent options applied"
        );
    }

    /// Runs the query in the background and delivers its answer. The same
    /// query arriving twice while it runs (stream and heartbeat) runs once.
    pub fn answer(&self, request: QueryRequest) {
        {
            let Ok(mut running) = self.running.lock() else {
                return;
            };
            if !running.insert(request.query_id) {
                tracing::debug!(query_id = %request.query_id, "query already running");
                return;
            }
        }
        let runner = self.clone();
        tokio::spawn(async move {
            let id = request.query_id;
            let result = runner.execute(request).await;
            if let Ok(mut running) = runner.running.lock() {
                running.remove(&id);
            }
            deliver(&runner.dir, &result).await;
        });
    }

    async fn execute(&self, request: QueryRequest) -> QueryResult {
        let _slot = self.slots.acquire().await;
        let mut limits = self.limits();
        if request.timeout_ms > 0 {
            limits.timeout = limits
                .timeout
                .min(Duration::from_millis(request.timeout_ms));
        }
        let started = Instant::now();
        let info = AgentInfo::load(&self.dir);
        let sql = request.sql.clone();
        let outcome = tokio::task::spawn_blocking(move || tables::run(&sql, &limits, &info)).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (outcome, answer, error) = match outcome {
            Ok(Ok(answer)) => (QueryOutcome::Ok, answer, None),
            Ok(Err(err)) => (
                QueryOutcome::Error,
                Default::default(),
                Some(err.to_string()),
            ),
            Err(join) => {
                tracing::error!(error = %join, "a query's task failed");
                (
                    QueryOutcome::Error,
                    Default::default(),
                    Some("the query failed on this agent".to_owned()),
                )
            }
        };
        tracing::info!(
            query_id = %request.query_id,
            kind = ?request.kind,
            rows = answer.rows.len(),
            truncated = answer.truncated,
            error = error.as_deref().unwrap_or(""),
            duration_ms,
            "query answered"
        );
        let mut result = QueryResult {
            query_id: request.query_id,
            kind: request.kind,
            outcome,
            rows: answer.rows,
            error,
            truncated: answer.truncated,
            duration_ms,
        };
        fit_body(&mut result, MAX_ANSWER_BODY_BYTES);
        result
    }
}

/// Drops trailing rows (and marks the answer truncated) until its JSON
/// body fits in `limit` bytes.
fn fit_body(result: &mut QueryResult, limit: usize) {
    if encoded(result) <= limit {
        return;
    }
    let rows = std::mem::take(&mut result.rows);
    let mut size = encoded(result);
    let mut kept = 0;
    for row in &rows {
        // The row and the comma before it.
        let next = size + encoded(row) + 1;
        if next > limit {
            break;
        }
        size = next;
        kept += 1;
    }
    result.rows = rows;
    result.rows.truncate(kept);
    result.truncated = true;
}

/// Serialized JSON length (unmeasurable counts as too big).
fn encoded<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len())
}

/// Posts the answer, retrying while the server is unreachable; a refusal
/// (the campaign is over, the query unknown) is final.
async fn deliver(dir: &StateDir, result: &QueryResult) {
    for attempt in 0..DELIVERY_ATTEMPTS {
        let sent = match crate::work::client(dir) {
            Ok(client) => client.submit_query_result(result).await,
            Err(err) => Err(CallError::Unreachable(format!("{err:#}"))),
        };
        match sent {
            Ok(()) => return,
            Err(CallError::Unreachable(err)) => {
                tracing::warn!(query_id = %result.query_id, error = %err, attempt,
                    "could not deliver a query answer");
                if attempt + 1 < DELIVERY_ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
            Err(err) => {
                tracing::warn!(query_id = %result.query_id, error = %err,
                    "the server refused a query answer");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeDelta, Utc};
    use mobius_api::device::PingResponse;
    use mobius_api::plans::WorkFrame;
    use mobius_api::queries::{QUERY_RESULTS_PATH, QueryKind};
    use serde_json::json;

    use super::*;
    use crate::cli::{EnrollArgs, EnrollOutput, RunArgs, StateDirArg};
    use crate::testing::{FakeMobius, PingScript, ping_ok};

    fn request(n: u128, kind: QueryKind, sql: &str) -> QueryRequest {
        QueryRequest {
            query_id: Uuid::from_u128(n),
            kind,
            sql: sql.into(),
            timeout_ms: 5_000,
        }
    }

    /// Queries and an options bundle arriving in a heartbeat's work list
    /// are answered over mTLS, with the bundle's limits applied first.
    #[tokio::test]
    async fn work_list_queries_are_answered_under_the_pushed_options() {
        let bundle = AgentOptions {
            options_version: 4,
            options: json!({"agent": {"query_max_rows": 1}, "options": {"distributed_interval": 10}}),
        };
        let work: Vec<serde_json::Value> = [
            WorkFrame::Options(bundle.clone()),
            WorkFrame::Query(request(
                1,
                QueryKind::Live,
                "SELECT hostname FROM system_info",
            )),
            WorkFrame::Query(request(2, QueryKind::Policy, "DELETE FROM users")),
            WorkFrame::Query(request(3, QueryKind::Live, "SELECT pid FROM processes")),
        ]
        .iter()
        .map(|frame| serde_json::to_value(frame).unwrap())
        .collect();
        let script: PingScript = Arc::new(move |n| {
            let renew_after = (Utc::now() + TimeDelta::minutes(30)).to_rfc3339();
            if n == 0 {
                let response = PingResponse {
                    interval_secs: 60,
                    renew_after,
                    work: work.clone(),
                };
                (200, serde_json::to_string(&response).unwrap())
            } else {
                ping_ok(60, Utc::now() + TimeDelta::minutes(30))
            }
        });
        let server = FakeMobius::start(script).await;
        let root = tempfile::tempdir().unwrap();
        crate::enrollment::enroll(EnrollArgs {
            server: server.url.clone(),
            token: server.token.clone(),
            state: StateDirArg {
                state_dir: root.path().to_path_buf(),
            },
            host_fingerprint: Some("queries-host".into()),
            output: EnrollOutput::Json,
        })
        .await
        .unwrap();
        let agent = tokio::spawn(crate::heartbeat::run(RunArgs {
            state: StateDirArg {
                state_dir: root.path().to_path_buf(),
            },
            max_interval_secs: Some(1),
            max_backoff_secs: 1,
            portal: crate::cli::PortalFileArg { portal_file: None },
        }));

        let deadline = Instant::now() + Duration::from_secs(20);
        let answers = loop {
            let posted = server.requests_to(QUERY_RESULTS_PATH);
            if posted.len() >= 3 || Instant::now() > deadline {
                break posted;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        agent.abort();
        assert_eq!(answers.len(), 3, "three answers expected");
        assert!(answers.iter().all(|a| a.client_certificate.is_some()));
        let mut results: Vec<QueryResult> = answers
            .iter()
            .map(|a| serde_json::from_str(&a.body).unwrap())
            .collect();
        results.sort_by_key(|r| r.query_id);

        assert_eq!(results[0].outcome, QueryOutcome::Ok);
        assert_eq!(results[0].kind, QueryKind::Live);
        assert_eq!(results[0].rows.len(), 1);
        assert!(!results[0].rows[0]["hostname"].is_empty());

        assert_eq!(results[1].outcome, QueryOutcome::Error);
        assert_eq!(results[1].kind, QueryKind::Policy);
        assert_eq!(
            results[1].error.as_deref(),
            Some("write statements are not allowed")
        );
        assert!(results[1].rows.is_empty());

        // query_max_rows = 1 from the bundle.
        assert_eq!(results[2].rows.len(), 1);
        assert!(results[2].truncated);

        let dir = StateDir::new(root.path());
        assert_eq!(options::stored(&dir), Some(bundle));
        let status = crate::status::StatusReport::load(&dir, Utc::now()).unwrap();
        assert_eq!(status.options_version, Some(4));
    }

    #[test]
    fn an_answer_too_big_for_the_server_loses_its_last_rows() {
        let row = |n: usize| {
            let mut row = mobius_api::queries::Row::new();
            row.insert("n".into(), "x".repeat(n));
            row
        };
        let mut result = QueryResult {
            query_id: Uuid::from_u128(5),
            kind: QueryKind::Live,
            outcome: QueryOutcome::Ok,
            rows: (0..10).map(|_| row(100)).collect(),
            error: None,
            truncated: false,
            duration_ms: 1,
        };
        let whole = serde_json::to_vec(&result).unwrap().len();
        let mut untouched = result.clone();
        fit_body(&mut untouched, whole);
        assert_eq!(untouched, result);

        fit_body(&mut result, whole - 50);
        assert_eq!(result.rows.len(), 9);
        assert!(result.truncated);
        assert!(serde_json::to_vec(&result).unwrap().len() <= whole - 50);
    }

    #[tokio::test]
    async fn an_older_bundle_does_not_undo_a_newer_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::new(root.path());
        let runner = QueryRunner::new(dir.clone());
        runner.apply_options(AgentOptions {
            options_version: 9,
            options: json!({"agent": {"query_timeout_ms": 1234}}),
        });
        runner.apply_options(AgentOptions {
            options_version: 8,
            options: json!({"agent": {"query_timeout_ms": 99}}),
        });
        assert_eq!(runner.limits().timeout, Duration::from_millis(1234));
        assert_eq!(options::stored_version(&dir), Some(9));
        // A restart starts from the saved bundle.
        let again = QueryRunner::new(dir);
        assert_eq!(again.limits().timeout, Duration::from_millis(1234));
    }
}
