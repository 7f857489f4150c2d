//! The live-query scenario: every simulated agent holds the push stream
//! and a report connection (as in plan-fanout), an admin starts one live
//! query to all of them and follows `liveQueryResults` over graphql-ws,
//! and each agent answers a fixed small row set as soon as its `query`
//! frame arrives. An agent's latency is from just before `runLiveQuery` is
//! sent until its ANSWERED result reached the admin's subscription, so the
//! phase's p99 and maximum are the times until 99% and 100% of results
//! were at the admin (`live_query_p99_s`, `live_query_all_s`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use mobius_api::plans::WorkFrame;
use mobius_api::queries::{QUERY_RESULTS_PATH, QueryOutcome, QueryResult, Row};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::fanout::{Streaming, open_streams};
use crate::heartbeat::{Agent, phase};
use crate::identity::Identity;
use crate::report::{PhaseReport, Recorder};
use crate::tls::ServerTrust;
use crate::transport::{Connection, Failure, Target};
use crate::usage::Watch;

pub struct LiveQueryArgs<'a> {
    pub admin: &'a str,
    pub access_token: &'a str,
    pub connect_concurrency: usize,
    pub wait: Duration,
    pub server_pid: Option<u32>,
}

/// What each simulated agent answers: three rows, as a small
/// `SELECT name, pid FROM processes` would.
fn rows() -> Vec<Row> {
    ["init", "sshd", "mobius-agent"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Row::from([
                ("name".to_owned(), (*name).to_owned()),
                ("pid".to_owned(), (i + 1).to_string()),
            ])
        })
        .collect()
}

pub async fn run(
    target: Arc<Target>,
    trust: &ServerTrust,
    identities: &[Identity],
    args: LiveQueryArgs<'_>,
) -> Result<Vec<PhaseReport>> {
    let count = identities.len();
    let (mut reports, streaming) = open_streams(
        target.clone(),
        trust,
        identities,
        args.connect_concurrency,
        args.server_pid,
    )
    .await?;
    let device_ids: Vec<String> = streaming
        .iter()
        .map(|s| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("Device:{}", s.agent.identity.device_id))
        })
        .collect();

    // The agents wait on their streams and answer the query frame.
    let mut tasks = tokio::task::JoinSet::new();
    for s in streaming {
        let target = target.clone();
        let deadline = args.wait;
        tasks.spawn(async move {
            let Streaming { mut agent, body } = s;
            let Some(body) = body else {
                return;
            };
            let answered =
                tokio::time::timeout(deadline, answer_query(&target, &mut agent, body)).await;
            if let Ok(Err(failure)) = answered {
                eprintln!("mobius-loadgen: agent {}: {}", agent.index, failure.0);
            }
        });
    }

    let recorder = Arc::new(Recorder::new()?);
    let watch = Watch::start(args.server_pid);
    let t0 = Instant::now();
    let id = start(args.admin, args.access_token, &device_ids).await?;
    let arrivals = follow(args.admin, args.access_token, &id, count, args.wait).await?;
    let elapsed = t0.elapsed();
    for device in &device_ids {
        match arrivals.get(device) {
            Some(Ok(at)) => recorder.ok(at.duration_since(t0)),
            Some(Err(status)) => recorder.error(status),
            None => recorder.error("no result at the subscription"),
        }
    }
    tasks.abort_all();
    let usage_agents: Vec<Agent> = Vec::new();
    let mut phase_report =
        recorder.finish(phase("live-query", &usage_agents, elapsed, None, watch));
    phase_report.agents = count;
    reports.push(phase_report);
    Ok(reports)
}

/// Reads the stream until a query frame, then posts the rows.
async fn answer_query(
    target: &Target,
    agent: &mut Agent,
    mut body: hyper::body::Incoming,
) -> Result<(), Failure> {
    let mut pending = Vec::new();
    loop {
        let Some(frame) = body.frame().await else {
            return Err(Failure("stream: closed".into()));
        };
        let frame = frame.map_err(|e| Failure::new("stream", e))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Ok(WorkFrame::Query(request)) =
                serde_json::from_slice::<WorkFrame>(&line[..line.len() - 1])
            {
                let result = QueryResult {
                    query_id: request.query_id,
                    kind: request.kind,
                    outcome: QueryOutcome::Ok,
                    rows: rows(),
                    error: None,
                    truncated: false,
                    duration_ms: 1,
                };
                if !agent.connection.as_ref().is_some_and(Connection::is_open) {
                    agent.connection = Some(target.connect(agent.tls.clone()).await?);
                }
                let Some(connection) = agent.connection.as_mut() else {
                    return Err(Failure("report: not connected".into()));
                };
                connection
                    .post_no_content(target, QUERY_RESULTS_PATH, &result)
                    .await?;
                return Ok(());
            }
        }
    }
}

async fn start(admin: &str, access_token: &str, device_ids: &[String]) -> Result<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let body: Value = http
        .post(format!("{}/api/graphql", admin.trim_end_matches('/')))
        .bearer_auth(access_token)
        .json(&json!({
            "query": "mutation($i: RunLiveQueryInput!) { runLiveQuery(input: $i) { id } }",
            "variables": { "i": {
                "sql": "SELECT name, pid FROM processes LIMIT 3",
                "targets": { "deviceIds": device_ids },
                "timeoutSecs": 120,
            } },
        }))
        .send()
        .await
        .context("runLiveQuery")?
        .json()
        .await
        .context("runLiveQuery answered without JSON")?;
    match body["data"]["runLiveQuery"]["id"].as_str() {
        Some(id) => Ok(id.to_owned()),
        None => bail!("runLiveQuery refused: {}", body["errors"]),
    }
}

/// Follows the campaign over graphql-ws; answers when each device's
/// final state arrived (Err: a status other than ANSWERED).
async fn follow(
    admin: &str,
    access_token: &str,
    id: &str,
    count: usize,
    wait: Duration,
) -> Result<HashMap<String, Result<Instant, String>>> {
    let url = format!("{}/api/graphql", admin.trim_end_matches('/'))
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "graphql-transport-ws".parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("connecting the admin's subscription")?;
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {access_token}") } });
    socket.send(Message::Text(init.to_string().into())).await?;
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "subscription($id: ID!) { liveQueryResults(id: $id) { deviceId status } }",
        "variables": { "id": id },
    } });
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await?;
    let mut arrivals = HashMap::new();
    let deadline = Instant::now() + wait;
    while arrivals.len() < count {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, socket.next()).await else {
            break;
        };
        let Message::Text(text) = message? else {
            continue;
        };
        let value: Value = serde_json::from_str(&text)?;
        match value["type"].as_str() {
            Some("next") => {
                let item = &value["payload"]["data"]["liveQueryResults"];
                let (Some(device), Some(status)) =
                    (item["deviceId"].as_str(), item["status"].as_str())
                else {
                    bail!("the subscription failed: {value}");
                };
                match status {
                    "PENDING" => {}
                    "ANSWERED" => {
                        arrivals.insert(device.to_owned(), Ok(Instant::now()));
                    }
                    other => {
                        arrivals.insert(device.to_owned(), Err(other.to_lowercase()));
                    }
                }
            }
            Some("complete") => break,
            Some("error") => bail!("the subscription failed: {value}"),
            _ => {}
        }
    }
    Ok(arrivals)
}
