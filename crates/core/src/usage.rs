//! Coalesced "last used" writes. Touching a row on every request would turn
//! every read into a write; instead the newest time per id is kept in
//! memory and written in one transaction per tenant when flushed.

use std::collections::HashMap;
use std::sync::Mutex;

use sea_orm::prelude::Uuid;

use crate::error::StoreResult;
use crate::store::Store;

type Pending = HashMap<Uuid, HashMap<Uuid, chrono::DateTime<chrono::Utc>>>;

/// API-token uses waiting to be written.
#[derive(Default)]
pub struct ApiTokenUsage {
    pending: Mutex<Pending>,
}

impl ApiTokenUsage {
    pub fn record(&self, tenant_id: Uuid, token_id: Uuid) {
        if let Ok(mut pending) = self.pending.lock() {
            pending
                .entry(tenant_id)
                .or_default()
                .insert(token_id, chrono::Utc::now());
        }
    }

    /// Writes what accumulated; returns how many tokens were updated.
    pub async fn flush(&self, store: &Store) -> StoreResult<usize> {
        let batch: Pending = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Ok(0),
        };
        let mut written = 0;
        for (tenant, uses) in batch {
            let uses: Vec<_> = uses.into_iter().collect();
            let scope = store.begin(tenant).await?;
            scope.api_tokens().record_last_used(&uses).await?;
            scope.commit().await?;
            written += uses.len();
        }
        Ok(written)
    }
}
