//! Heartbeats and revocations on the device path, kept off the database's
//! hot path.
//!
//! - [`Presence`]: `last_seen_at` is not written per heartbeat. The newest
//!   time per device is kept in memory and written in batches (one
//!   transaction per tenant) at least once a second and at shutdown.
//! - [`Revocations`]: the set of revoked or deleted devices, refreshed from
//!   the store's revocation list every second, so a revoked device is
//!   refused within seconds without a query per request.

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};

use sea_orm::prelude::Uuid;

use crate::db::coalesce::{Coalesced, LatestTimes};
use crate::db::{Store, StoreResult, TenantScope};

/// Heartbeats waiting to be written as `last_seen_at`.
pub type Presence = Coalesced<DeviceLastSeen>;

/// Writes `devices.last_seen_at`.
pub struct DeviceLastSeen;

impl LatestTimes for DeviceLastSeen {
    const TASK: &'static str = "presence-flush";

    async fn write(
        scope: &TenantScope,
        latest: Vec<(Uuid, chrono::DateTime<chrono::Utc>)>,
    ) -> StoreResult<()> {
        scope.devices().record_last_seen(&latest).await
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
