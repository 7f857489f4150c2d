//! Background work beside the listeners, one loop per job: writing
//! coalesced heartbeat and API-token times, following revocations and CA
//! changes. Each runs in every server process; none needs to run once
//! across replicas yet (their writes are idempotent).

use std::sync::Arc;
use std::time::Duration;

use mobius_core::Store;
use mobius_core::devices::presence::{Presence, Revocations};
use mobius_core::identity::ApiTokenUsage;

use crate::device::Trust;

/// How often coalesced API-token use times are written.
const USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Heartbeats are recorded in memory; this writes them at least once a second.
pub async fn flush_presence_periodically(store: Store, presence: Arc<Presence>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(err) = presence.flush(&store).await {
            tracing::warn!(error = %err, "could not write device last-seen times");
        }
    }
}

/// Revocations made anywhere reach this listener within about a second.
pub async fn poll_revocations(
    store: Store,
    revocations: Arc<Revocations>,
    lookback: chrono::Duration,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(err) = revocations.poll(&store, lookback).await {
            tracing::warn!(error = %err, "could not poll device revocations");
        }
    }
}

/// Picks up CAs created or rotated by other servers (this server reloads
/// at once after its own changes).
pub async fn reload_trust_periodically(trust: Arc<Trust>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        if let Err(err) = trust.reload().await {
            tracing::warn!(error = %err, "could not reload trusted tenant CAs");
        }
    }
}

pub async fn flush_usage_periodically(store: Store, usage: Arc<ApiTokenUsage>) {
    let mut tick = tokio::time::interval(USAGE_FLUSH_INTERVAL);
    loop {
        tick.tick().await;
        if let Err(err) = usage.flush(&store).await {
            tracing::warn!(error = %err, "could not write API-token use times");
        }
    }
}
