//! Heartbeats and revocations on the device path, kept off the database's
//! hot path.
//!
//! - [`Presence`]: `last_seen_at` is not written per heartbeat. The newest
//!   time per device is kept in memory; a device's time is written (in
//!   batches, one transaction per tenant, checked at least once a second)
//!   only when what this server last wrote for it is older than a threshold
//!   (the `last_seen_write_after_secs` setting, 60 s by default), and at
//!   shutdown. At a 15 s heartbeat that is one row update per device a
//!   minute instead of four. Online/offline still follows the heartbeat
//!   interval: it is judged from the newest of this server's in-memory time
//!   and the database's (see [`Presence::overlay`] and
//!   [`Presence::online_here`]).
//!
//!   With several servers, a server that does not hold a device's
//!   connection knows only the database time, which may be up to the
//!   threshold old: it may show a device offline that another server sees
//!   online, when the threshold exceeds three heartbeat intervals. Keep the
//!   threshold below three intervals where several servers answer the
//!   admin API, or route a device's admin reads to its server.
//! - [`Revocations`]: the set of revoked or deleted devices, refreshed from
//!   the store's revocation list every second, so a revoked device is
//!   refused within seconds without a query per request.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use sea_orm::prelude::Uuid;

use super::Device;
use crate::db::{Store, StoreResult, SystemTask};

/// How long a device this server has written stays in memory after its
/// last heartbeat (the database then has its time).
const FORGET_AFTER_MINUTES: i64 = 10;

type Time = chrono::DateTime<chrono::Utc>;

/// One device's heartbeat as this server knows it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    tenant_id: Uuid,
    at: Time,
    /// The time this server last wrote to `last_seen_at`.
    written: Option<Time>,
}

/// Heartbeats in memory, and when each was last written.
pub struct Presence {
    write_after: chrono::Duration,
    devices: Mutex<HashMap<Uuid, Seen>>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence::new(std::time::Duration::from_secs(LAST_SEEN_WRITE_AFTER_SECS))
    }
}

/// Default for how stale a device's stored `last_seen_at` may become
/// before a heartbeat is written.
pub const LAST_SEEN_WRITE_AFTER_SECS: u64 = 60;

impl Presence {
    /// Writes a device's time when the stored one is older than `write_after`.
    pub fn new(write_after: std::time::Duration) -> Presence {
        Presence {
            write_after: chrono::Duration::from_std(write_after)
                .unwrap_or(chrono::Duration::seconds(LAST_SEEN_WRITE_AFTER_SECS as i64)),
            devices: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that `device_id` in `tenant_id` was seen now.
    pub fn record(&self, tenant_id: Uuid, device_id: Uuid) {
        let now = chrono::Utc::now();
        if let Ok(mut devices) = self.devices.lock() {
            devices
                .entry(device_id)
                .and_modify(|seen| seen.at = seen.at.max(now))
                .or_insert(Seen {
                    tenant_id,
                    at: now,
                    written: None,
                });
        }
    }

    /// The device's last heartbeat on this server, if it is remembered.
    pub fn last_seen(&self, device_id: Uuid) -> Option<Time> {
        self.devices
            .lock()
            .ok()
            .and_then(|d| d.get(&device_id).map(|seen| seen.at))
    }

    /// Sets `device.last_seen_at` to the newest of the stored time and this
    /// server's, which is what its status is judged from.
    pub fn overlay(&self, device: &mut Device) {
        if let Some(at) = self.last_seen(device.id) {
            device.last_seen_at = Some(device.last_seen_at.map_or(at, |db| db.max(at)));
        }
    }

    /// The tenant's devices this server saw after `since` although what it
    /// wrote for them is not that recent: a status filter must count them
    /// as seen after `since` whatever the database says.
    pub fn online_here(&self, tenant_id: Uuid, since: Time) -> Vec<Uuid> {
        self.devices
            .lock()
            .map(|d| {
                d.iter()
                    .filter(|(_, seen)| {
                        seen.tenant_id == tenant_id
                            && seen.at > since
                            && seen.written.is_none_or(|w| w <= since)
                    })
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes the times that are due (what this server last wrote is older
    /// than the threshold); returns how many rows were written.
    pub async fn flush(&self, store: &Store) -> StoreResult<usize> {
        self.write(store, false).await
    }

    /// Writes every time newer than what was written (at shutdown).
    pub async fn flush_all(&self, store: &Store) -> StoreResult<usize> {
        self.write(store, true).await
    }

    async fn write(&self, store: &Store, everything: bool) -> StoreResult<usize> {
        let now = chrono::Utc::now();
        let mut due: HashMap<Uuid, Vec<(Uuid, Time)>> = HashMap::new();
        if let Ok(mut devices) = self.devices.lock() {
            devices.retain(|_, seen| {
                seen.written != Some(seen.at)
                    || seen.at > now - chrono::Duration::minutes(FORGET_AFTER_MINUTES)
            });
            for (id, seen) in devices.iter() {
                let is_due = match seen.written {
                    None => true,
                    Some(written) if everything => seen.at > written,
                    Some(written) => seen.at - written >= self.write_after,
                };
                if is_due {
                    due.entry(seen.tenant_id).or_default().push((*id, seen.at));
                }
            }
        }
        let mut written = 0;
        let mut first_error = None;
        for (tenant, rows) in due {
            let result = async {
                let scope = store
                    .begin(&SystemTask::new("presence-flush", tenant))
                    .await?;
                scope.devices().record_last_seen(&rows).await?;
                scope.commit().await
            }
            .await;
            match result {
                Ok(()) => {
                    written += rows.len();
                    if let Ok(mut devices) = self.devices.lock() {
                        for (id, at) in rows {
                            if let Some(seen) = devices.get_mut(&id) {
                                seen.written = Some(seen.written.map_or(at, |w| w.max(at)));
                            }
                        }
                    }
                }
                // Still due: tried again on the next flush.
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(written),
        }
    }
}

/// Revoked or deleted devices, by id.
#[derive(Default)]
pub struct Revocations {
    revoked: RwLock<HashSet<Uuid>>,
    polled_until: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
}

impl Revocations {
    pub fn is_revoked(&self, device_id: Uuid) -> bool {
        self.revoked
            .read()
            .map(|r| r.contains(&device_id))
            .unwrap_or(true)
    }

    /// Marks a device revoked here at once (the poll catches other servers up).
    pub fn insert(&self, device_id: Uuid) {
        if let Ok(mut revoked) = self.revoked.write() {
            revoked.insert(device_id);
        }
    }

    /// Adds revocations recorded since the last poll. The first poll reads
    /// back `lookback` (a certificate lifetime: older revocations only
    /// concern certificates that have expired anyway).
    pub async fn poll(&self, store: &Store, lookback: chrono::Duration) -> StoreResult<usize> {
        let since = self
            .polled_until
            .lock()
            .ok()
            .and_then(|p| *p)
            .unwrap_or_else(|| chrono::Utc::now() - lookback);
        // Rows committed slightly out of order are caught by overlapping.
        let poll_started = chrono::Utc::now() - chrono::Duration::seconds(5);
        let ids = store.revoked_devices_since(since).await?;
        if let Ok(mut revoked) = self.revoked.write() {
            revoked.extend(ids.iter().copied());
        }
        if let Ok(mut polled) = self.polled_until.lock() {
            *polled = Some(poll_started.max(since));
        }
        Ok(ids.len())
    }
}
