//! Coalesced "latest time" writes: heartbeats' `last_seen_at`, API tokens'
//! `last_used_at`. Touching a row on every request would turn every read
//! into a write; instead the newest time per row is kept in memory and
//! written in one transaction per tenant when flushed (by a background
//! task, and at shutdown).

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Mutex;

use sea_orm::prelude::Uuid;

use super::{Store, StoreResult, SystemTask, TenantScope};

/// The newest time per row id, per tenant.
type Pending = HashMap<Uuid, HashMap<Uuid, chrono::DateTime<chrono::Utc>>>;

/// How one kind of coalesced time is written.
pub trait LatestTimes {
    /// The system task named in the flush's tenant scope.
    const TASK: &'static str;

    fn write(
        scope: &TenantScope,
        latest: Vec<(Uuid, chrono::DateTime<chrono::Utc>)>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}

/// Times waiting to be written, for one [`LatestTimes`] kind.
pub struct Coalesced<W> {
    pending: Mutex<Pending>,
    kind: PhantomData<fn() -> W>,
}

impl<W> Default for Coalesced<W> {
    fn default() -> Self {
        Coalesced {
            pending: Mutex::new(HashMap::new()),
            kind: PhantomData,
        }
    }
}

impl<W: LatestTimes> Coalesced<W> {
    /// Notes that `id` in `tenant_id` was seen or used now.
    pub fn record(&self, tenant_id: Uuid, id: Uuid) {
        if let Ok(mut pending) = self.pending.lock() {
            pending
                .entry(tenant_id)
                .or_default()
                .insert(id, chrono::Utc::now());
        }
    }

    /// Writes what accumulated; returns how many rows were written. A
    /// tenant whose write fails gets its times back, to be tried again.
    pub async fn flush(&self, store: &Store) -> StoreResult<usize> {
        let batch: Pending = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Ok(0),
        };
        let mut written = 0;
        let mut first_error = None;
        for (tenant, latest) in batch {
            let rows: Vec<_> = latest.iter().map(|(id, at)| (*id, *at)).collect();
            let count = rows.len();
            let result = async {
                let scope = store.begin(&SystemTask::new(W::TASK, tenant)).await?;
                W::write(&scope, rows).await?;
                scope.commit().await
            }
            .await;
            match result {
                Ok(()) => written += count,
                Err(err) => {
                    self.restore(tenant, latest);
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(written),
        }
    }

    /// Puts unwritten times back, keeping any newer one recorded meanwhile.
    fn restore(&self, tenant: Uuid, latest: HashMap<Uuid, chrono::DateTime<chrono::Utc>>) {
        if let Ok(mut pending) = self.pending.lock() {
            let entry = pending.entry(tenant).or_default();
            for (id, at) in latest {
                let slot = entry.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
    }
}
