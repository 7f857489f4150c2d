//! Background work beside the listeners, one loop per job: writing
//! coalesced heartbeat and API-token times, following revocations and CA
//! changes. Each runs in every server process; none needs to run once
//! across replicas yet (their writes are idempotent).

pub mod plan_logs;

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

/// How long the chainer gathers events after the first one commits, so
/// it links them in batches: well inside the second within which events
/// should be chained.
const AUDIT_CHAIN_GATHER: Duration = Duration::from_millis(200);
/// How often the chainer looks for events no server woke it for (written
/// by a server that stopped before chaining them).
const AUDIT_CHAIN_SWEEP: Duration = Duration::from_secs(10);

/// Links audit events into their tenants' hash chains after they commit
/// (events are written unchained so audited writes do not queue on one
/// per-tenant lock). Woken by this server's own commits, so an idle server
/// issues no statements; a slow sweep catches the rest. Several servers
/// may run this; they take turns per tenant.
pub async fn chain_audit_periodically(store: Store) {
    let mut committed = store.subscribe_audit();
    loop {
        let woken = tokio::time::timeout(AUDIT_CHAIN_SWEEP, committed.recv()).await;
        if let Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) = woken {
            return;
        }
        tokio::time::sleep(AUDIT_CHAIN_GATHER).await;
        // Everything received so far is covered by the pass below.
        committed = committed.resubscribe();
        if let Err(err) = store.chain_audit_events().await {
            tracing::warn!(error = %err, "could not chain audit events");
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
