//! Device queries.

use super::types::*;
use crate::admin::graphql::prelude::*;

/// Queries of this area, merged into the root `Query`.
#[derive(Default)]
pub struct DeviceQuery;

#[Object]
impl DeviceQuery {
    /// Devices, filtered and ordered. Team-scoped callers see their team only.
    #[allow(clippy::too_many_arguments)]
    async fn devices(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        site_id: Option<ID>,
        team_id: Option<ID>,
        status: Option<DeviceStatus>,
        hostname_search: Option<String>,
        os_name: Option<String>,
        order_by: Option<DeviceOrder>,
    ) -> Result<Page<DeviceNode>> {
        let window = Window::new(first, after, last, before)?;
        let principal = gate::principal(ctx)?;
        let now = Utc::now();
        let interval = heartbeat_interval(ctx);
        let presence = ctx.data::<DeviceAdmin>().ok().map(|d| &d.presence);
        // What this server saw but has not written yet counts for the
        // filter exactly as it does for the status shown.
        let seen_here = presence
            .map(|p| {
                p.online_here(
                    principal.tenant_id,
                    mobius_core::devices::offline_threshold(now, interval),
                )
            })
            .unwrap_or_default();
        let filter = DeviceFilter {
            site_id: site_id
                .as_ref()
                .map(|id| parse_id(id, "Site"))
                .transpose()?,
            team_id: team_id
                .as_ref()
                .map(|id| parse_id(id, "Team"))
                .transpose()?,
            status: status.map(Into::into),
            hostname_search,
            os_name,
            heartbeat_interval_secs: Some(interval),
            seen_here,
        };
        // A team-scoped caller is authorized for its team; the scope then
        // filters every device read to that team by itself.
        let team = filter.team_id.or(principal.grants.token_team);
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, team).await?;
        let order = match order_by.unwrap_or_default() {
            DeviceOrder::Hostname => CoreOrder::Hostname,
            DeviceOrder::LastSeen => CoreOrder::LastSeen,
        };
        let filter = &filter;
        let (rows, total, offset) = window
            .fetch(|offset, limit| async move {
                scope.devices().page(filter, order, offset, limit).await
            })
            .await?;
        prefetch_sites_and_teams(ctx, &rows).await?;
        Ok(page(rows, total, offset, |mut d| {
            if let Some(presence) = presence {
                presence.overlay(&mut d);
            }
            DeviceNode::new(d, now, interval)
        }))
    }

    async fn device(&self, ctx: &Context<'_>, id: ID) -> Result<DeviceNode> {
        let id = parse_id(&id, "Device")?;
        let principal = gate::principal(ctx)?;
        let (_, scope) =
            gate::read(ctx, Operation::ViewDevices, principal.grants.token_team).await?;
        // Another team's device is NOT_FOUND for a team-scoped caller:
        // the scope's device reads see its team only.
        let device = scope.devices().get(id).await.map_err(errors::store)?;
        Ok(device_node(ctx, device, Utc::now()))
    }
}
