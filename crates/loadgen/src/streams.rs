//! The idle push-channel scenario: every simulated agent opens its work
//! stream (`GET /api/v1/mobius/device/work/stream`, one mutual-TLS
//! connection each, as mobius-agent keeps it) and holds it, reading the
//! server's keep-alive frames, for a while. Reports how many streams were
//! opened, how many were still open and alive (a frame within the last two
//! keep-alive periods) at the end, and why the others ended.
//!
//! Several simulator processes can share one run (the open-file limit caps
//! each): `--ready-file` is written when this process has opened its
//! streams, and with `--start-file` the hold only begins once that file
//! exists, so every process holds over the same window.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::BodyExt;
use mobius_api::plans::{KEEPALIVE_SECS, WORK_STREAM_PATH};
use serde_json::json;
use tokio::time::Instant;

use crate::heartbeat::{Agent, for_each_agent, phase, unconnected};
use crate::identity::Identity;
use crate::report::{PhaseReport, Recorder};
use crate::tls::ServerTrust;
use crate::transport::{Failure, Target};
use crate::usage::Watch;

pub struct StreamsArgs<'a> {
    pub connect_concurrency: usize,
    pub hold: Duration,
    pub ready_file: Option<&'a Path>,
    pub start_file: Option<&'a Path>,
    /// Give up waiting for the start file after this long.
    pub start_timeout: Duration,
    pub server_pid: Option<u32>,
}

/// One held stream, as its reader task sees it.
#[derive(Default)]
struct Held {
    /// Milliseconds since the run began when the last frame arrived.
    last_frame_ms: AtomicU64,
    frames: AtomicU64,
    /// Why it ended, once it has.
    ended: Mutex<Option<String>>,
}

/// Runs the scenario: the stream-connect phase, then the hold.
pub async fn run(
    target: Arc<Target>,
    trust: &ServerTrust,
    identities: &[Identity],
    args: StreamsArgs<'_>,
) -> Result<Vec<PhaseReport>> {
    let agents = unconnected(trust, identities)?;
    let count = agents.len();
    let epoch = Instant::now();
    let held: Arc<Vec<Arc<Held>>> = Arc::new((0..count).map(|_| Arc::default()).collect());

    // Phase 1: open every stream; a reader task per stream from then on.
    let recorder = Arc::new(Recorder::new()?);
    let watch = Watch::start(args.server_pid);
    let started = Instant::now();
    let agents: Vec<Agent> = for_each_agent(agents, Some(args.connect_concurrency), |agent| {
        let target = target.clone();
        let recorder = recorder.clone();
        let held = held.clone();
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
                    if let Some(slot) = held.get(agent.index as usize) {
                        slot.last_frame_ms
                            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                        tokio::spawn(read(body, slot.clone(), epoch));
                    }
                }
                Err(failure) => {
                    recorder.error(failure.0.clone());
                    if let Some(slot) = held.get(agent.index as usize)
                        && let Ok(mut ended) = slot.ended.lock()
                    {
                        *ended = Some(format!("not opened: {}", failure.0));
                    }
                }
            }
            agent
        }
    })
    .await;
    let mut connected = recorder.finish(phase(
        "stream-connect",
        &agents,
        started.elapsed(),
        None,
        watch,
    ));
    // The agents' own connections are not used: the streams are the held ones.
    connected.connections_held = held.iter().filter(|h| is_open(h)).count();
    let opened = connected.ok;
    eprintln!(
        "mobius-loadgen: {opened} of {count} streams open ({} errors)",
        connected.errors
    );
    if let Some(path) = args.ready_file {
        write_atomically(
            path,
            &json!({ "agents": count, "opened": opened, "errors": connected.errors,
                     "errors_by_kind": connected.errors_by_kind })
            .to_string(),
        )?;
    }
    if let Some(path) = args.start_file {
        let deadline = Instant::now() + args.start_timeout;
        while !path.exists() {
            if Instant::now() > deadline {
                bail!(
                    "{} did not appear within {} s",
                    path.display(),
                    args.start_timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Phase 2: hold. Streams that end meanwhile are errors by their reason;
    // one that is open but heard nothing for two keep-alive periods is
    // counted as silent (the server or a balancer stopped passing it).
    let watch = Watch::start(args.server_pid);
    let started = Instant::now();
    let open_at_start = held.iter().filter(|h| is_open(h)).count();
    eprintln!(
        "mobius-loadgen: holding {open_at_start} streams for {} s",
        args.hold.as_secs()
    );
    tokio::time::sleep(args.hold).await;
    let recorder = Recorder::new()?;
    let now_ms = epoch.elapsed().as_millis() as u64;
    let silent_after_ms = 2 * KEEPALIVE_SECS * 1000 + 5000;
    let mut alive = 0usize;
    let mut frames = 0u64;
    for h in held.iter() {
        frames += h.frames.load(Ordering::Relaxed);
        let ended = h.ended.lock().ok().and_then(|e| e.clone());
        match ended {
            // Never opened: already an error of the connect phase.
            Some(reason) if reason.starts_with("not opened") => {}
            Some(reason) => recorder.error(reason),
            None if args.hold.as_millis() as u64 > silent_after_ms
                && now_ms.saturating_sub(h.last_frame_ms.load(Ordering::Relaxed))
                    > silent_after_ms =>
            {
                recorder.error("stream: silent for two keep-alive periods")
            }
            None => {
                alive += 1;
                recorder.ok(started.elapsed());
            }
        }
    }
    eprintln!(
        "mobius-loadgen: {alive} of {open_at_start} streams alive after the hold ({frames} frames received)"
    );
    let mut hold = recorder.finish(phase("stream-hold", &[], started.elapsed(), None, watch));
    hold.agents = count;
    hold.connections_held = alive;
    Ok(vec![connected, hold])
}

fn is_open(held: &Held) -> bool {
    held.ended.lock().map(|e| e.is_none()).unwrap_or(false)
}

/// Reads a stream until it ends, noting each frame's arrival.
async fn read(mut body: hyper::body::Incoming, held: Arc<Held>, epoch: Instant) {
    let reason = loop {
        match body.frame().await {
            None => break "stream: closed by the server".to_owned(),
            Some(Err(err)) => break Failure::new("stream", err).0,
            Some(Ok(_)) => {
                held.frames.fetch_add(1, Ordering::Relaxed);
                held.last_frame_ms
                    .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
    };
    if let Ok(mut ended) = held.ended.lock() {
        *ended = Some(reason);
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let temporary: PathBuf = path.with_extension("tmp");
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}
