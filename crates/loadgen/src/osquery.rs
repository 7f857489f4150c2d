//! The osquery-poll scenario: N clients speak osquery's TLS remote
//! protocol to the admin listener, as stock osqueryd does. Each enrolls
//! with an enroll secret (POST /api/osquery/enroll, created here through
//! GraphQL createOsqueryEnrollSecret), then POSTs
//! /api/osquery/distributed/read every --interval seconds (±10% jitter,
//! open loop: each poll is due at a time set by the clock and its latency
//! counts from then) for --duration. Two phases: `osquery-enroll` (closed
//! loop, --enroll-concurrency at once) and `osquery-read`.
//!
//! The clients share one HTTP connection pool (keep-alive): the server
//! sees as many connections as polls in flight, not one per host.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use rand::Rng;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::heartbeat::phase;
use crate::report::{PhaseReport, Recorder};
use crate::usage::Watch;

const ENROLL_PATH: &str = "/api/osquery/enroll";
const READ_PATH: &str = "/api/osquery/distributed/read";

pub struct OsqueryArgs<'a> {
    pub admin: &'a str,
    pub access_token: &'a str,
    pub clients: usize,
    pub interval: Duration,
    pub duration: Duration,
    pub enroll_concurrency: usize,
    pub timeout: Duration,
    pub server_pid: Option<u32>,
}

/// Creates an enroll secret for the tenant's first site.
async fn create_secret(http: &reqwest::Client, admin: &str, token: &str) -> Result<String> {
    let response = http
        .post(format!("{admin}/api/graphql"))
        .bearer_auth(token)
        .json(&json!({
            "query": "mutation { createOsqueryEnrollSecret(input: {name: \"mobius-loadgen\"}) { secret } }"
        }))
        .send()
        .await
        .context("cannot reach the admin API")?;
    let body: Value = response
        .json()
        .await
        .context("the admin API answered without JSON")?;
    if let Some(errors) = body.get("errors").filter(|e| !e.is_null()) {
        bail!("createOsqueryEnrollSecret refused: {errors}");
    }
    body["data"]["createOsqueryEnrollSecret"]["secret"]
        .as_str()
        .map(str::to_owned)
        .context("createOsqueryEnrollSecret answered without a secret")
}

/// One POST; Ok(answer) for a 200 with `node_invalid` false, else the
/// failure's kind.
async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value, String> {
    let response = match http.post(url).json(body).send().await {
        Ok(response) => response,
        Err(err) if err.is_timeout() => return Err("timeout".into()),
        Err(err) if err.is_connect() => return Err("connect".into()),
        Err(_) => return Err("request".into()),
    };
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    let answer: Value = response.json().await.map_err(|_| "body".to_owned())?;
    if answer.get("node_invalid").and_then(Value::as_bool) == Some(true) {
        return Err("node_invalid".into());
    }
    Ok(answer)
}

pub async fn run(args: OsqueryArgs<'_>) -> Result<Vec<PhaseReport>> {
    let admin = args.admin.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(args.timeout)
        .pool_max_idle_per_host(args.clients.max(1))
        .build()
        .context("cannot set up the HTTP client")?;
    let secret = create_secret(&http, admin, args.access_token).await?;
    let run_id: u32 = rand::rng().random();

    // Enrollment: closed loop, enroll_concurrency at once.
    eprintln!(
        "mobius-loadgen: enrolling {} osquery clients ({} at once)",
        args.clients, args.enroll_concurrency
    );
    let enroll_url = format!("{admin}{ENROLL_PATH}");
    let recorder = Recorder::new()?;
    let watch = Watch::start(args.server_pid);
    let t0 = Instant::now();
    let node_keys: Vec<Option<String>> = futures_util::stream::iter(0..args.clients)
        .map(|i| {
            let http = &http;
            let url = &enroll_url;
            let secret = &secret;
            let recorder = &recorder;
            async move {
                let host = format!("loadgen-{run_id:08x}-{i}");
                let body = json!({
                    "enroll_secret": secret,
                    "host_identifier": host,
                    "host_details": {"system_info": {"hostname": host, "uuid": host}},
                });
                let began = Instant::now();
                match post(http, url, &body).await {
                    Ok(answer) => match answer.get("node_key").and_then(Value::as_str) {
                        Some(key) => {
                            recorder.ok(began.elapsed());
                            Some(key.to_owned())
                        }
                        None => {
                            recorder.error("no node_key");
                            None
                        }
                    },
                    Err(kind) => {
                        recorder.error(kind);
                        None
                    }
                }
            }
        })
        .buffer_unordered(args.enroll_concurrency.max(1))
        .collect()
        .await;
    let mut enroll = recorder.finish(phase("osquery-enroll", &[], t0.elapsed(), None, watch));
    enroll.agents = args.clients;
    let keys: Vec<String> = node_keys.into_iter().flatten().collect();
    if keys.is_empty() {
        bail!("no osquery client enrolled: {:?}", enroll.errors_by_kind);
    }

    // Polling: open loop, one task per client.
    eprintln!(
        "mobius-loadgen: {} osquery clients poll every {:.1} s for {:.0} s",
        keys.len(),
        args.interval.as_secs_f64(),
        args.duration.as_secs_f64()
    );
    let read_url = Arc::new(format!("{admin}{READ_PATH}"));
    let recorder = Arc::new(Recorder::new()?);
    let watch = Watch::start(args.server_pid);
    let start = Instant::now();
    let end = start + args.duration;
    let interval = args.interval.as_secs_f64();
    let mut tasks = tokio::task::JoinSet::new();
    for key in &keys {
        let http = http.clone();
        let url = read_url.clone();
        let recorder = recorder.clone();
        let body = json!({ "node_key": key });
        // Spread the first polls over one interval.
        let first = rand::rng().random_range(0.0..interval);
        tasks.spawn(async move {
            let mut due = start + Duration::from_secs_f64(first);
            while due < end {
                tokio::time::sleep_until(due).await;
                match post(&http, &url, &body).await {
                    Ok(_) => recorder.ok(due.elapsed()),
                    Err(kind) => recorder.error(kind),
                }
                let jitter = rand::rng().random_range(0.9..1.1);
                due += Duration::from_secs_f64(interval * jitter);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let offered = keys.len() as f64 / interval;
    let mut read = recorder.finish(phase("osquery-read", &[], elapsed, Some(offered), watch));
    read.agents = keys.len();
    Ok(vec![enroll, read])
}
