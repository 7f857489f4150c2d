//! Simulated agents answering live queries and policy checks: every
//! `WorkFrame::Query` gets the same small row set back (what a real agent
//! answers for a one-row inventory query), posted as a `QueryResult` on
//! the agent's report connection. The server's cost of a campaign is then
//! measured without the simulator spending CPU on SQL.

use std::time::Instant;

use http_body_util::BodyExt;
use mobius_api::plans::WorkFrame;
use mobius_api::queries::{QUERY_RESULTS_PATH, QueryOutcome, QueryRequest, QueryResult, Row};

use crate::heartbeat::Agent;
use crate::transport::{Connection, Failure, Target};

/// The rows every simulated agent answers: two rows of three columns,
/// about the size of `SELECT name, version, arch FROM os_version` plus one.
pub fn fixed_rows(agent: &Agent) -> Vec<Row> {
    let hostname = agent.identity.hostname.clone();
    let mut first = Row::new();
    first.insert("hostname".into(), hostname.clone());
    first.insert("name".into(), "Debian GNU/Linux".into());
    first.insert("version".into(), "12 (bookworm)".into());
    let mut second = Row::new();
    second.insert("hostname".into(), hostname);
    second.insert("name".into(), "mobius-agent".into());
    second.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    vec![first, second]
}

/// Answers one query with [`fixed_rows`]; opens a new report connection
/// first if the kept-alive one was closed (its handshake then counts).
pub async fn answer(
    target: &Target,
    agent: &mut Agent,
    request: &QueryRequest,
    received: Instant,
) -> Result<(), Failure> {
    let result = QueryResult {
        query_id: request.query_id,
        kind: request.kind,
        outcome: QueryOutcome::Ok,
        rows: fixed_rows(agent),
        error: None,
        truncated: false,
        duration_ms: u64::try_from(received.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    if !agent.connection.as_ref().is_some_and(Connection::is_open) {
        agent.connection = Some(target.connect(agent.tls.clone()).await?);
    }
    let Some(connection) = agent.connection.as_mut() else {
        return Err(Failure("query: not connected".into()));
    };
    connection
        .post_accepted(target, QUERY_RESULTS_PATH, &result)
        .await
}

/// Reads the work stream's newline-delimited frames one at a time.
pub struct FrameReader {
    body: hyper::body::Incoming,
    pending: Vec<u8>,
}

impl FrameReader {
    pub fn new(body: hyper::body::Incoming) -> FrameReader {
        FrameReader {
            body,
            pending: Vec::new(),
        }
    }

    /// The next frame this simulator understands (unknown or unreadable
    /// lines are skipped, as the agent skips them); an error when the
    /// stream ends.
    pub async fn next(&mut self) -> Result<WorkFrame, Failure> {
        loop {
            while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if let Ok(frame) = serde_json::from_slice::<WorkFrame>(&line[..line.len() - 1]) {
                    return Ok(frame);
                }
            }
            let Some(frame) = self.body.frame().await else {
                return Err(Failure("stream: closed".into()));
            };
            let frame = frame.map_err(|e| Failure::new("stream", e))?;
            if let Some(data) = frame.data_ref() {
                self.pending.extend_from_slice(data);
            }
        }
    }
}
