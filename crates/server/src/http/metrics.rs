//! Prometheus metrics: request counts and latency histograms by route and
//! status, and connection-pool figures read at scrape time. The registry
//! belongs to the app instance (no global recorder), so several servers can
//! run in one test process.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use mobius_core::db::PoolStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

pub struct Metrics {
    registry: Registry,
    job_last_run: Family<JobLabels, Gauge>,
    job_runs: Family<JobLabels, Gauge>,
    job_last_duration_ms: Family<JobLabels, Gauge>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    pool_size: Gauge,
    pool_idle: Gauge,
    pool_max: Gauge,
    statements: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("mobius");
        let requests = Family::<RequestLabels, Counter>::default();
        // 0.5 ms to ~16 s in 16 doublings: heartbeats sit at the low end,
        // GraphQL pages at the high end.
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let pool_size = Gauge::default();
        let pool_idle = Gauge::default();
        let pool_max = Gauge::default();
        let statements = Counter::default();
        registry.register("http_requests", "HTTP requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Open database connections",
            pool_size.clone(),
        );
        registry.register(
            "db_pool_idle_connections",
            "Idle database connections",
            pool_idle.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Database pool limit",
            pool_max.clone(),
        );
        registry.register(
            "db_statements",
            "SQL statements sent to the database",
            statements.clone(),
        );
        let job_last_run = Family::<JobLabels, Gauge>::default();
        let job_runs = Family::<JobLabels, Gauge>::default();
        let job_last_duration_ms = Family::<JobLabels, Gauge>::default();
        registry.register(
            "job_last_run_timestamp_seconds",
            "When each scheduled job last started, on any replica (Unix time)",
            job_last_run.clone(),
        );
        registry.register(
            "job_runs",
            "Runs of each scheduled job so far, across replicas",
            job_runs.clone(),
        );
        registry.register(
            "job_last_duration_milliseconds",
            "How long each scheduled job's last run took",
            job_last_duration_ms.clone(),
        );
        Arc::new(Metrics {
            registry,
            job_last_run,
            job_runs,
            job_last_duration_ms,
            requests,
            latency,
            pool_size,
            pool_idle,
            pool_max,
            statements,
        })
    }

    /// The Prometheus text exposition, with pool figures as of now.
    /// Shows a job's record (read from the shared store by the scheduler,
    /// so every replica reports the cluster's last runs).
    pub fn record_job(&self, record: &mobius_core::db::cluster::JobRecord) {
        let labels = JobLabels {
            job: record.name.clone(),
        };
        if let Some(started) = record.last_started_at {
            self.job_last_run
                .get_or_create(&labels)
                .set(started.timestamp());
        }
        self.job_runs.get_or_create(&labels).set(record.runs);
        if let Some(ms) = record.last_duration_ms {
            self.job_last_duration_ms.get_or_create(&labels).set(ms);
        }
    }

    pub fn render(&self, pool: PoolStats, statements: u64) -> String {
        // The store counts; the counter catches up to it at scrape time.
        let seen = self.statements.get();
        self.statements.inc_by(statements.saturating_sub(seen));
        self.pool_size.set(i64::from(pool.size));
        self.pool_idle.set(i64::from(pool.idle));
        self.pool_max.set(i64::from(pool.max));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Middleware: times every request and counts it under its route template
/// (`/api/v1/...`, never the raw path, so ids do not explode cardinality).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = RequestLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
