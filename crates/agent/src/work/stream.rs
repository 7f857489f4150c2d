//! The push channel, agent side: holds the work stream open, hands each
//! frame to the runner, and reconnects with backoff when it breaks. A
//! stream silent for three keep-alive periods is treated as dead (a
//! half-open connection after a NAT or balancer dropped it).

use std::time::Duration;

use mobius_api::plans::{KEEPALIVE_SECS, WORK_STREAM_PATH, WorkFrame};
use tokio::sync::mpsc;

use crate::heartbeat::backoff;
use crate::state::StateDir;

const SILENCE_LIMIT: Duration = Duration::from_secs(3 * KEEPALIVE_SECS);
const MAX_RECONNECT: Duration = Duration::from_secs(60);

/// Runs until the runner goes away.
pub async fn hold(dir: StateDir, frames: mpsc::UnboundedSender<WorkFrame>) {
    let mut failures = 0u32;
    loop {
        match once(&dir, &frames).await {
            Ok(()) => failures = 0,
            Err(err) => {
                failures = failures.saturating_add(1);
                tracing::debug!(error = %err, "work stream ended");
            }
        }
        if frames.is_closed() {
            return;
        }
        let wait = backoff(
            Duration::from_secs(1),
            failures.max(1),
            MAX_RECONNECT,
            &mut rand::rng(),
        );
        tokio::time::sleep(wait).await;
    }
}

async fn once(dir: &StateDir, frames: &mpsc::UnboundedSender<WorkFrame>) -> anyhow::Result<()> {
    let client = super::client(dir)?;
    let mut response = client.open_stream(WORK_STREAM_PATH).await?;
    tracing::info!("work stream connected");
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(SILENCE_LIMIT, response.chunk()).await {
            Err(_) => anyhow::bail!(
                "the work stream was silent for {} s",
                SILENCE_LIMIT.as_secs()
            ),
            Ok(Err(err)) => return Err(err.into()),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(chunk))) => chunk,
        };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<WorkFrame>(&line[..line.len() - 1]) {
                Ok(WorkFrame::KeepAlive) => {}
                Ok(frame) => {
                    if frames.send(frame).is_err() {
                        return Ok(());
                    }
                }
                Err(err) => tracing::warn!(error = %err, "unreadable work frame skipped"),
            }
        }
        if pending.len() > 16 * 1024 * 1024 {
            anyhow::bail!("a work frame exceeded 16 MiB");
        }
    }
}
