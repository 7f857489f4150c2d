//! Background work beside the listeners.
//!
//! - Here, one loop per task that runs in every server process, because
//!   it writes or reads what that process holds in memory: coalesced
//!   heartbeat and API-token times, the revocation poll and trust reload
//!   (safety nets behind the cluster bus), the audit chainer woken by this
//!   process's commits.
//! - [`scheduler`]: jobs that run once per period across all replicas.

pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use mobius_core::Store;
use mobius_core::devices::presence::{Presence, Revocations};
use mobius_core::identity::ApiTokenUsage;

use crate::device::Trust;

/// How often coalesced API-token use times are written.
const USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Says once at start-up and then once a day where the license stands, at
/// warn level from 30 days before expiry (expiring, grace, expired), so an
/// operator reading only the logs is told before anything stops.
pub async fn log_license_daily(
    entitlements: Arc<dyn mobius_core::authz::Entitlements>,
    tenant_id: mobius_core::Uuid,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
    loop {
        tick.tick().await;
        let now = chrono::Utc::now();
        let status = entitlements.status(tenant_id);
        let state = status.state.name();
        let tier = status.tier.name();
        let days_left = status.days_left(now);
        match status.warning(now) {
            Some(warning) => tracing::warn!(
                state,
                tier,
                days_left,
                expires_at = ?status.expires_at,
                "license: {warning}"
            ),
            None => tracing::info!(
                state,
                tier,
                days_left,
                device_limit = status.device_limit,
                "license"
            ),
        }
    }
}

/// Suspensions and verifications made on any replica reach this one
/// within about a second.
pub async fn refresh_tenant_blocks(store: Store) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(err) = store.refresh_tenant_blocks().await {
            tracing::warn!(error = %err, "could not reload suspended tenants");
        }
    }
}

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

/// How often revocations are read from the database. Other replicas'
/// revocations arrive over the cluster bus within a second; this catches
/// any whose announcement was lost (a replica killed between its commit
/// and its publish).
const REVOCATION_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Revocations made anywhere reach this listener within
/// [`REVOCATION_POLL_INTERVAL`] even without the cluster bus.
pub async fn poll_revocations(
    store: Store,
    revocations: Arc<Revocations>,
    lookback: chrono::Duration,
) {
    let mut tick = tokio::time::interval(REVOCATION_POLL_INTERVAL);
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
/// by a server that stopped before chaining them) when it runs without the
/// scheduler (the `api` role); with it, the `audit-chain-sweep` job sweeps
/// once across replicas.
const AUDIT_CHAIN_SWEEP: Duration = Duration::from_secs(60);

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
