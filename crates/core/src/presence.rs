//! Heartbeats and revocations on the device path, kept off the database's
//! hot path.
//!
//! - [`Presence`]: `last_seen_at` is not written per heartbeat. The newest
//!   time per device is kept in memory and written in batches (one
//!   transaction per tenant) at least once a second and at shutdown.
//! - [`Revocations`]: the set of revoked or deleted devices, refreshed from
//!   the store's revocation list every second, so a revoked device is
//!   refused within seconds without a query per request.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use sea_orm::{ConnectionTrait, DbBackend, Statement, prelude::Uuid};

use crate::error::StoreResult;
use crate::store::{Backend, Store};

type Pending = HashMap<Uuid, HashMap<Uuid, chrono::DateTime<chrono::Utc>>>;

#[derive(Default)]
pub struct Presence {
    pending: Mutex<Pending>,
}

impl Presence {
    pub fn record(&self, tenant_id: Uuid, device_id: Uuid) {
        if let Ok(mut pending) = self.pending.lock() {
            pending
                .entry(tenant_id)
                .or_default()
                .insert(device_id, chrono::Utc::now());
        }
    }

    /// Writes what accumulated; returns how many devices were updated.
    pub async fn flush(&self, store: &Store) -> StoreResult<usize> {
        let batch: Pending = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Ok(0),
        };
        let mut written = 0;
        for (tenant, seen) in batch {
            let seen: Vec<_> = seen.into_iter().collect();
            let scope = store.begin(tenant).await?;
            scope.devices().record_last_seen(&seen).await?;
            scope.commit().await?;
            written += seen.len();
        }
        Ok(written)
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
        let db = store.connection();
        let rows = match store.backend() {
            Backend::Postgres => {
                db.query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT device_id FROM mobius_revoked_devices_since($1)",
                    [since.into()],
                ))
                .await?
            }
            Backend::Sqlite => {
                db.query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    "SELECT device_id FROM revoked_devices WHERE revoked_at > ?",
                    [since.into()],
                ))
                .await?
            }
        };
        let ids: Vec<Uuid> = rows
            .iter()
            .filter_map(|r| r.try_get("", "device_id").ok())
            .collect();
        if let Ok(mut revoked) = self.revoked.write() {
            revoked.extend(ids.iter().copied());
        }
        if let Ok(mut polled) = self.polled_until.lock() {
            *polled = Some(poll_started.max(since));
        }
        Ok(ids.len())
    }
}
