//! The parked-connection registry: which tunnels this node holds, per
//! service. Several parked connections per service are normal (an agent
//! keeps two, and may run on several devices); requests go round-robin
//! over the ones still open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use hyper::client::conn::http2::SendRequest;
use mobius_core::Uuid;
use mobius_core::db::FoundTenant;
use serde::Serialize;
use tokio::sync::Notify;

/// One parked tunnel connection.
pub struct Parked {
    pub id: Uuid,
    /// The tenant that owns the service (proved by the token lookup).
    pub tenant: FoundTenant,
    pub service_id: Uuid,
    pub service: String,
    pub require_identity: bool,
    pub token_id: Uuid,
    pub since: chrono::DateTime<chrono::Utc>,
    pub remote: String,
    pub sender: SendRequest<Body>,
    pub requests: AtomicU64,
    /// Notified to close the connection (revoked token, shutdown).
    pub close: Notify,
}

/// A parked connection as `GET /admin/api/services` shows it.
#[derive(Serialize)]
pub struct ParkedView {
    pub id: Uuid,
    pub since: chrono::DateTime<chrono::Utc>,
    pub remote: String,
    pub token_id: Uuid,
    pub requests_served: u64,
}

#[derive(Default)]
pub struct Registry {
    services: Mutex<HashMap<String, Vec<Arc<Parked>>>>,
    next: AtomicUsize,
}

impl Registry {
    pub fn park(&self, parked: Arc<Parked>) {
        if let Ok(mut services) = self.services.lock() {
            services
                .entry(parked.service.clone())
                .or_default()
                .push(parked);
        }
    }

    pub fn unpark(&self, service: &str, id: Uuid) {
        if let Ok(mut services) = self.services.lock()
            && let Some(list) = services.get_mut(service)
        {
            list.retain(|p| p.id != id);
            if list.is_empty() {
                services.remove(service);
            }
        }
    }

    /// The open tunnels of `service`, starting at the next in rotation.
    pub fn tunnels(&self, service: &str) -> Vec<Arc<Parked>> {
        let list: Vec<Arc<Parked>> = match self.services.lock() {
            Ok(services) => services
                .get(service)
                .map(|l| {
                    l.iter()
                        .filter(|p| !p.sender.is_closed())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        if list.len() > 1 {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
            let mut rotated = list[start..].to_vec();
            rotated.extend_from_slice(&list[..start]);
            return rotated;
        }
        list
    }

    /// Closes every tunnel parked with one of `tokens`; returns how many.
    pub fn close_tokens(&self, tokens: &[Uuid]) -> usize {
        let mut closed = 0;
        if let Ok(services) = self.services.lock() {
            for parked in services.values().flatten() {
                if tokens.contains(&parked.token_id) {
                    parked.close.notify_one();
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Every parked connection of `tenant`, by service.
    pub fn view(&self, tenant: Uuid) -> Vec<(String, Vec<ParkedView>)> {
        let Ok(services) = self.services.lock() else {
            return Vec::new();
        };
        let mut out: Vec<(String, Vec<ParkedView>)> = services
            .iter()
            .filter_map(|(name, list)| {
                let mine: Vec<ParkedView> = list
                    .iter()
                    .filter(|p| p.tenant.id() == tenant)
                    .map(|p| ParkedView {
                        id: p.id,
                        since: p.since,
                        remote: p.remote.clone(),
                        token_id: p.token_id,
                        requests_served: p.requests.load(Ordering::Relaxed),
                    })
                    .collect();
                (!mine.is_empty()).then(|| (name.clone(), mine))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Parked token ids (for the revocation poll).
    pub fn count(&self) -> usize {
        self.services
            .lock()
            .map(|s| s.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}
