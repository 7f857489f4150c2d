//! Plan output retention: lines older than the retention period (30 days
//! by default, setting `plan_log_retention_days`) are deleted hourly.
//! Deleting is idempotent, so every replica may run it.

use std::time::Duration;

use mobius_core::Store;

const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

pub async fn purge_periodically(store: Store, retention_days: u32) {
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tick.tick().await;
        let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
        match store.purge_plan_logs(cutoff).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "deleted expired plan output lines"),
            Err(err) => tracing::warn!(error = %err, "could not delete expired plan output lines"),
        }
    }
}
