//! What device resolvers share: the heartbeat interval, batched site and
//! team loads for a page, reloading the listener's trust.

use super::types::DeviceNode;
use crate::admin::graphql::prelude::*;

/// The interval agents are told (the online/offline split follows it).
pub fn heartbeat_interval(ctx: &Context<'_>) -> u64 {
    ctx.data::<crate::admin::graphql::DeviceAdmin>()
        .map(|d| d.heartbeat_interval_secs)
        .unwrap_or(mobius_core::devices::HEARTBEAT_INTERVAL_SECS)
}

/// Loads the page's sites and teams in one batch each (when the query asks
/// for them), so the per-device resolvers hit the loaders' caches: a page
/// costs the same number of queries whatever its size, instead of depending
/// on how the loaders' batching windows happen to fall.
pub(crate) async fn prefetch_sites_and_teams(
    ctx: &Context<'_>,
    rows: &[mobius_core::devices::Device],
) -> Result<()> {
    let look = ctx.look_ahead();
    let wants = |field: &str| {
        look.field("nodes").field(field).exists()
            || look.field("edges").field("node").field(field).exists()
    };
    if wants("site") {
        let ids: std::collections::HashSet<_> = rows.iter().map(|d| d.site_id).collect();
        ctx.data::<SiteLoads>()?.load_many(ids).await?;
    }
    if wants("team") {
        let ids: std::collections::HashSet<_> = rows.iter().filter_map(|d| d.team_id).collect();
        ctx.data::<TeamLoads>()?.load_many(ids).await?;
    }
    Ok(())
}

pub(crate) async fn reload(devices: &DeviceAdmin) {
    if let Err(e) = devices.trust.reload().await {
        tracing::error!(error = %e, "reloading trusted tenant CAs");
    }
}

/// A device as the API shows it: its status judged from the newest of the
/// heartbeat this server holds in memory and the stored `last_seen_at`.
pub(crate) fn device_node(
    ctx: &Context<'_>,
    mut device: mobius_core::devices::Device,
    now: DateTime<Utc>,
) -> DeviceNode {
    if let Ok(admin) = ctx.data::<DeviceAdmin>() {
        admin.presence.overlay(&mut device);
    }
    DeviceNode::new(device, now, heartbeat_interval(ctx))
}
