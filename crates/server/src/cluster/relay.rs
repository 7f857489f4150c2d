//! What crosses replicas today, all of it derived from committed audit
//! events (every change by an admin or a device writes one in its
//! transaction, so nothing that matters can commit unannounced):
//!
//! - [`announce_commits`] publishes each event this replica commits on
//!   [`topics::AUDIT`], plus [`topics::DEVICE_REVOKED`] for revocations and
//!   deletions and [`topics::TRUST_CHANGED`] for CA creation and rotation.
//! - [`apply_remote`] acts on other replicas' messages: reads the audit
//!   event (by id, in its tenant) and hands it to this replica's GraphQL
//!   subscribers, refuses revoked devices at once, reloads the trust store,
//!   and wakes the push streams this replica holds for devices that got
//!   work or a cancellation on another replica (`plan.applied`,
//!   `plan.execution_cancel_requested`).
//!
//! A replica that dies between its commit and its publish leaves the
//! others to their slower safety nets: the revocation poll and the trust
//! reload in `jobs`, which read the database itself.

use std::sync::Arc;

use mobius_core::Store;
use mobius_core::db::SystemTask;
use mobius_core::devices::presence::Revocations;
use tokio::sync::broadcast::error::RecvError;

use super::bus::{self, Bus, BusMessage};
use super::topics;
use crate::device::{Trust, WorkNotifier};

/// Publishes what this replica commits.
pub async fn announce_commits(store: Store, bus: Bus) {
    let mut committed = store.subscribe_audit();
    loop {
        let event = match committed.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "cluster bus: audit announcements lagged; some were not published"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let tenant = event.tenant_id;
        let mut messages = vec![(topics::AUDIT, format!("{tenant} {}", event.id))];
        match (event.action.as_str(), event.target_id) {
            ("device.revoked" | "device.deleted", Some(device)) => {
                messages.push((topics::DEVICE_REVOKED, format!("{tenant} {device}")));
            }
            ("tenant.ca_created" | "tenant.ca_rotated", _) => {
                messages.push((topics::TRUST_CHANGED, tenant.to_string()));
            }
            _ => {}
        }
        // Revocations first: they are the ones with a deadline.
        messages.reverse();
        for (topic, payload) in messages {
            if let Err(err) = bus.publish(topic, &payload).await {
                tracing::warn!(error = %err, topic, "cluster bus: cannot publish");
            }
        }
    }
}

/// Acts on other replicas' messages.
pub async fn apply_remote(
    store: Store,
    bus: Bus,
    revocations: Arc<Revocations>,
    trust: Arc<Trust>,
    work: Arc<WorkNotifier>,
) {
    let mut audit = bus.subscribe(topics::AUDIT);
    let mut revoked = bus.subscribe(topics::DEVICE_REVOKED);
    let mut trust_changed = bus.subscribe(topics::TRUST_CHANGED);
    loop {
        tokio::select! {
            message = revoked.recv() => {
                if let Some(message) = remote(message) {
                    let ids = bus::ids(&message.payload);
                    if let Some(device) = ids.get(1) {
                        revocations.insert(*device);
                        tracing::debug!(device_id = %device, "device revoked on another replica");
                    }
                }
            }
            message = trust_changed.recv() => {
                if remote(message).is_some()
                    && let Err(err) = trust.reload().await
                {
                    tracing::warn!(error = %err, "could not reload trusted tenant CAs");
                }
            }
            message = audit.recv() => {
                if let Some(message) = remote(message) {
                    relay_audit(&store, &message, &work).await;
                }
            }
        }
    }
}

/// Messages from other replicas; a lagging subscriber logs its gap.
fn remote(received: Result<BusMessage, RecvError>) -> Option<BusMessage> {
    match received {
        Ok(message) if !message.local => Some(message),
        Ok(_) => None,
        Err(RecvError::Lagged(missed)) => {
            tracing::warn!(missed, "cluster bus subscriber lagged");
            None
        }
        Err(RecvError::Closed) => None,
    }
}

async fn relay_audit(store: &Store, message: &BusMessage, work: &WorkNotifier) {
    let ids = bus::ids(&message.payload);
    let (Some(tenant), Some(event_id)) = (ids.first(), ids.get(1)) else {
        return;
    };
    let found = async {
        let scope = store
            .begin(&SystemTask::new("cluster-audit-relay", *tenant))
            .await?;
        let event = scope.audit().get(*event_id).await?;
        // Devices whose stream (if held here) must be woken: the targets
        // of a plan applied elsewhere, or the device of an execution
        // whose cancellation was asked for elsewhere.
        let mut woken = Vec::new();
        if let Some(event) = &event {
            match (event.action.as_str(), event.target_id) {
                ("plan.applied", Some(plan)) => {
                    let executions = scope.plans().executions_of_plan(plan).await?;
                    woken.extend(executions.iter().map(|e| e.device_id));
                }
                ("plan.execution_cancel_requested", Some(execution)) => {
                    woken.push(scope.plans().execution(execution).await?.device_id);
                }
                _ => {}
            }
        }
        scope.commit().await?;
        Ok::<_, mobius_core::db::StoreError>((event, woken))
    }
    .await;
    match found {
        Ok((Some(event), woken)) => {
            for device in woken {
                work.notify(event.tenant_id, device);
            }
            store.announce_remote_audit(event)
        }
        Ok((None, _)) => {}
        Err(err) => tracing::warn!(error = %err, "could not read a relayed audit event"),
    }
}
