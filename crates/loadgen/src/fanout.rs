//! The plan fan-out scenario: every simulated agent holds the push stream
//! (and a second kept-alive connection for its reports, as the agent's
//! HTTP client would have), one plan with a no-op operation targets them
//! all, and each answers SUCCEEDED as soon as its execution arrives. The
//! latency of an agent is from just before `applyPlan` is sent until the
//! server acknowledged its SUCCEEDED report (committed), so the phase's
//! p99 and maximum are the times until 99% and 100% of executions were
//! SUCCEEDED.
//!
//! The same held streams serve the live-query benchmark: every agent
//! answers each pushed query with a fixed row set ([`serve_queries`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mobius_api::plans::{
    ExecutionPayload, ExecutionReport, ExecutionStatus, OperationReport, ReportResponse,
    WORK_REPORT_PATH, WORK_STREAM_PATH, WorkFrame,
};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::heartbeat::{Agent, for_each_agent, phase, unconnected};
use crate::identity::Identity;
use crate::queries::{self, FrameReader};
use crate::report::{PhaseReport, Recorder};
use crate::tls::ServerTrust;
use crate::transport::{Connection, Failure, Target};
use crate::usage::Watch;

/// One agent with its stream open.
struct Streaming {
    agent: Agent,
    body: Option<hyper::body::Incoming>,
}

pub struct FanoutArgs<'a> {
    pub admin: &'a str,
    pub access_token: &'a str,
    pub connect_concurrency: usize,
    pub wait: Duration,
    pub server_pid: Option<u32>,
}

/// Runs the scenario; answers the stream-connect phase (server memory per
/// held stream) and the fan-out phase.
pub async fn run(
    target: Arc<Target>,
    trust: &ServerTrust,
    identities: &[Identity],
    args: FanoutArgs<'_>,
) -> Result<Vec<PhaseReport>> {
    let (mut reports, streaming) = connect_streams(
        target.clone(),
        trust,
        identities,
        args.connect_concurrency,
        args.server_pid,
    )
    .await?;
    let count = streaming.len();
    reports.push(fan_out(target, streaming, &args, count).await?);
    Ok(reports)
}

/// Phases 1 and 2: every agent opens its work stream, then the
/// connection it reports on.
async fn connect_streams(
    target: Arc<Target>,
    trust: &ServerTrust,
    identities: &[Identity],
    connect_concurrency: usize,
    server_pid: Option<u32>,
) -> Result<(Vec<PhaseReport>, Vec<Streaming>)> {
    let agents = unconnected(trust, identities)?;
    let count = agents.len();

    // Phase 1: open every agent's work stream.
    let recorder = Arc::new(Recorder::new()?);
    let watch = Watch::start(server_pid);
    let started = Instant::now();
    let streams: Arc<std::sync::Mutex<Vec<Option<hyper::body::Incoming>>>> =
        Arc::new(std::sync::Mutex::new((0..count).map(|_| None).collect()));
    let agents = for_each_agent(agents, Some(connect_concurrency), |agent| {
        let target = target.clone();
        let recorder = recorder.clone();
        let streams = streams.clone();
        async move {
            let began = Instant::now();
            let opened = tokio::time::timeout(target.timeout, async {
                let mut connection = target.connect(agent.tls.clone()).await?;
                connection.open_stream(&target, WORK_STREAM_PATH).await
            })
            .await
            .unwrap_or_else(|_| Err(Failure::timeout()));
            match opened {
                Ok(body) => {
                    recorder.ok(began.elapsed());
                    if let Ok(mut s) = streams.lock()
                        && let Some(slot) = s.get_mut(agent.index as usize)
                    {
                        *slot = Some(body);
                    }
                }
                Err(failure) => recorder.error(failure.0),
            }
            agent
        }
    })
    .await;
    let mut reports = vec![recorder.finish(phase(
        "stream-connect",
        &agents,
        started.elapsed(),
        None,
        watch,
    ))];

    // Phase 2: the report connections.
    let recorder = Arc::new(Recorder::new()?);
    let watch = Watch::start(server_pid);
    let started = Instant::now();
    let agents = for_each_agent(agents, Some(connect_concurrency), |mut agent| {
        let target = target.clone();
        let recorder = recorder.clone();
        async move {
            let began = Instant::now();
            match tokio::time::timeout(target.timeout, target.connect(agent.tls.clone())).await {
                Ok(Ok(connection)) => {
                    agent.connection = Some(connection);
                    recorder.ok(began.elapsed());
                }
                Ok(Err(failure)) => recorder.error(failure.0),
                Err(_) => recorder.error(Failure::timeout().0),
            }
            agent
        }
    })
    .await;
    reports.push(recorder.finish(phase(
        "report-connect",
        &agents,
        started.elapsed(),
        None,
        watch,
    )));

    let mut bodies = match streams.lock() {
        Ok(mut s) => std::mem::take(&mut *s),
        Err(_) => bail!("the stream table is poisoned"),
    };
    let streaming: Vec<Streaming> = agents
        .into_iter()
        .map(|agent| {
            let body = bodies.get_mut(agent.index as usize).and_then(Option::take);
            Streaming { agent, body }
        })
        .collect();
    Ok((reports, streaming))
}

/// Phase 3: one plan to all; each agent answers its execution (and any
/// live query that arrives meanwhile).
async fn fan_out(
    target: Arc<Target>,
    streaming: Vec<Streaming>,
    args: &FanoutArgs<'_>,
    count: usize,
) -> Result<PhaseReport> {
    let device_ids: Vec<String> = streaming
        .iter()
        .map(|s| URL_SAFE_NO_PAD.encode(format!("Device:{}", s.agent.identity.device_id)))
        .collect();
    let recorder = Arc::new(Recorder::new()?);
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let mut tasks = tokio::task::JoinSet::new();
    for s in streaming {
        let target = target.clone();
        let recorder = recorder.clone();
        let mut go = go_rx.clone();
        let deadline = args.wait;
        tasks.spawn(async move {
            let Streaming { mut agent, body } = s;
            let Some(body) = body else {
                recorder.error("no stream");
                return;
            };
            let answered = tokio::time::timeout(deadline, async {
                let mut frames = FrameReader::new(body);
                loop {
                    match frames.next().await? {
                        WorkFrame::Work(work) => {
                            answer(&target, &mut agent, &work.payload, work.execution_id).await?;
                            return Ok::<(), Failure>(());
                        }
                        WorkFrame::Query(request) => {
                            queries::answer(
                                &target,
                                &mut agent,
                                &request,
                                std::time::Instant::now(),
                            )
                            .await?;
                        }
                        _ => {}
                    }
                }
            })
            .await;
            let _ = go.wait_for(Option::is_some).await;
            let t0 = (*go.borrow()).unwrap_or_else(Instant::now);
            match answered {
                Ok(Ok(())) => recorder.ok(t0.elapsed()),
                Ok(Err(failure)) => recorder.error(failure.0),
                Err(_) => recorder.error("timeout"),
            }
        });
    }
    // Every task is waiting on its stream: apply.
    let watch = Watch::start(args.server_pid);
    let t0 = Instant::now();
    go_tx.send_replace(Some(t0));
    apply(args.admin, args.access_token, &device_ids).await?;
    while tasks.join_next().await.is_some() {}
    let elapsed = t0.elapsed();
    let usage_agents: Vec<Agent> = Vec::new();
    let mut fanout = recorder.finish(phase("plan-fanout", &usage_agents, elapsed, None, watch));
    fanout.agents = count;
    Ok(fanout)
}

pub struct ServeQueriesArgs {
    pub connect_concurrency: usize,
    pub duration: Duration,
    pub server_pid: Option<u32>,
}

/// The agent side of a live-query benchmark: every agent holds its work
/// stream and answers each query pushed to it with the fixed row set,
/// for `duration`. Whoever runs the campaign (the admin side) measures
/// the time to results; this reports each answer's time from its frame
/// arriving to the server accepting the result, and the server's CPU and
/// memory while it fanned out.
pub async fn serve_queries(
    target: Arc<Target>,
    trust: &ServerTrust,
    identities: &[Identity],
    args: ServeQueriesArgs,
) -> Result<Vec<PhaseReport>> {
    let (mut reports, streaming) = connect_streams(
        target.clone(),
        trust,
        identities,
        args.connect_concurrency,
        args.server_pid,
    )
    .await?;
    let count = streaming.len();
    let recorder = Arc::new(Recorder::new()?);
    let watch = Watch::start(args.server_pid);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let duration = args.duration;
    for s in streaming {
        let target = target.clone();
        let recorder = recorder.clone();
        tasks.spawn(async move {
            let Streaming { mut agent, body } = s;
            let Some(body) = body else {
                recorder.error("no stream");
                return;
            };
            let mut frames = FrameReader::new(body);
            let until = tokio::time::sleep(duration);
            tokio::pin!(until);
            loop {
                let frame = tokio::select! {
                    () = &mut until => return,
                    frame = frames.next() => frame,
                };
                match frame {
                    Ok(WorkFrame::Query(request)) => {
                        let received = std::time::Instant::now();
                        match queries::answer(&target, &mut agent, &request, received).await {
                            Ok(()) => recorder.ok(received.elapsed()),
                            Err(failure) => {
                                agent.connection = None;
                                recorder.error(failure.0);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(failure) => {
                        recorder.error(failure.0);
                        return;
                    }
                }
            }
        });
    }
    eprintln!(
        "mobius-loadgen: {count} agents hold their work streams and answer queries for {} s",
        duration.as_secs()
    );
    while tasks.join_next().await.is_some() {}
    let usage_agents: Vec<Agent> = Vec::new();
    let mut answers = recorder.finish(phase(
        "query-answers",
        &usage_agents,
        started.elapsed(),
        None,
        watch,
    ));
    answers.agents = count;
    reports.push(answers);
    Ok(reports)
}

/// Reports SUCCEEDED for the execution (a no-op workload).
async fn answer(
    target: &Target,
    agent: &mut Agent,
    payload: &str,
    execution_id: uuid::Uuid,
) -> Result<(), Failure> {
    let payload: ExecutionPayload =
        serde_json::from_str(payload).map_err(|e| Failure::new("payload", e))?;
    let report = ExecutionReport {
        execution_id,
        status: Some(ExecutionStatus::Succeeded),
        operations: payload
            .operations
            .iter()
            .map(|op| OperationReport {
                operation_id: op.operation_id.clone(),
                status: ExecutionStatus::Succeeded,
                exit_code: Some(0),
                duration_ms: Some(0),
                error: None,
            })
            .collect(),
        logs: Vec::new(),
        error: None,
    };
    // The server closes a kept-alive connection left idle past its
    // read timeout; the agent's HTTP client then opens a new one, and so
    // does this (its handshake counts in the latency).
    if !agent.connection.as_ref().is_some_and(Connection::is_open) {
        agent.connection = Some(target.connect(agent.tls.clone()).await?);
    }
    let Some(connection) = agent.connection.as_mut() else {
        return Err(Failure("report: not connected".into()));
    };
    let _: ReportResponse = connection.post(target, WORK_REPORT_PATH, &report).await?;
    Ok(())
}

async fn apply(admin: &str, access_token: &str, device_ids: &[String]) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let key = format!("loadgen-fanout-{}", uuid::Uuid::now_v7());
    let body: serde_json::Value = http
        .post(format!("{}/api/graphql", admin.trim_end_matches('/')))
        .bearer_auth(access_token)
        .json(&json!({
            "query": "mutation($i: ApplyPlanInput!) { applyPlan(input: $i) { created } }",
            "variables": { "i": {
                "idempotencyKey": key,
                "targets": { "deviceIds": device_ids },
                "operations": [{ "kind": "noop" }],
            } },
        }))
        .send()
        .await
        .context("applyPlan")?
        .json()
        .await
        .context("applyPlan answered without JSON")?;
    if body["errors"].is_array() {
        bail!("applyPlan refused: {}", body["errors"]);
    }
    Ok(())
}
