//! Queries. Each resolver names its operation at the gate before reading.

use async_graphql::{Context, ID, Object, Result};
use mobius_core::authz::Operation;
use mobius_core::devices::{DeviceFilter, DeviceOrder as CoreOrder};

use super::WriteStore;
use super::errors;
use super::gate;
use super::types::*;

pub struct Query;

#[Object]
impl Query {
    /// Who is calling: the user (or the API token's creator), role and tenant.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<Viewer> {
        let (principal, scope) = gate::read(ctx, Operation::ViewTenant, None).await?;
        let user = scope
            .users()
            .get(principal.user_id)
            .await
            .map_err(errors::store)?;
        let tenant = scope.tenant().get().await.map_err(errors::store)?;
        Ok(Viewer {
            kind: if principal.api_token_id.is_some() {
                "api_token"
            } else {
                "user"
            }
            .into(),
            role: principal.grants.role.into(),
            user: user.into(),
            tenant: tenant.into(),
            team_id: principal.grants.token_team.map(|t| ID(t.to_string())),
        })
    }

    async fn tenant(&self, ctx: &Context<'_>) -> Result<TenantNode> {
        let (_, scope) = gate::read(ctx, Operation::ViewTenant, None).await?;
        Ok(scope.tenant().get().await.map_err(errors::store)?.into())
    }

    async fn sites(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<SiteNode>> {
        let (offset, limit) = page_window(first, after.as_deref())?;
        let (_, scope) = gate::read(ctx, Operation::ViewSites, None).await?;
        let (rows, total) = scope
            .sites()
            .page(offset, limit)
            .await
            .map_err(errors::store)?;
        Ok(page(rows, total, offset, SiteNode::from))
    }

    async fn site(&self, ctx: &Context<'_>, id: ID) -> Result<SiteNode> {
        let id = parse_id(&id, "site")?;
        let (_, scope) = gate::read(ctx, Operation::ViewSites, None).await?;
        Ok(scope.sites().get(id).await.map_err(errors::store)?.into())
    }

    async fn teams(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<TeamNode>> {
        let (offset, limit) = page_window(first, after.as_deref())?;
        let (_, scope) = gate::read(ctx, Operation::ViewTeams, None).await?;
        let (rows, total) = scope
            .teams()
            .page(offset, limit)
            .await
            .map_err(errors::store)?;
        Ok(page(rows, total, offset, TeamNode::from))
    }

    async fn team(&self, ctx: &Context<'_>, id: ID) -> Result<TeamNode> {
        let id = parse_id(&id, "team")?;
        let (_, scope) = gate::read(ctx, Operation::ViewTeams, None).await?;
        Ok(scope.teams().get(id).await.map_err(errors::store)?.into())
    }

    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<UserNode>> {
        let (offset, limit) = page_window(first, after.as_deref())?;
        let (_, scope) = gate::read(ctx, Operation::ViewUsers, None).await?;
        let (rows, total) = scope
            .users()
            .page(offset, limit)
            .await
            .map_err(errors::store)?;
        Ok(page(rows, total, offset, UserNode::from))
    }

    async fn user(&self, ctx: &Context<'_>, id: ID) -> Result<UserNode> {
        let id = parse_id(&id, "user")?;
        let (_, scope) = gate::read(ctx, Operation::ViewUsers, None).await?;
        Ok(scope.users().get(id).await.map_err(errors::store)?.into())
    }

    /// The caller's own tokens; every token in the tenant for owners and admins.
    async fn api_tokens(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<ApiTokenNode>> {
        let (offset, limit) = page_window(first, after.as_deref())?;
        let (principal, scope) = gate::read(ctx, Operation::ManageOwnApiTokens, None).await?;
        let only = match principal.authorize(Operation::ManageAllApiTokens, None) {
            Ok(()) => None,
            Err(_) => Some(principal.user_id),
        };
        let (rows, total) = scope
            .api_tokens()
            .page(only, offset, limit)
            .await
            .map_err(errors::store)?;
        Ok(page(rows, total, offset, ApiTokenNode::from))
    }

    /// Devices, filtered and ordered. Team-scoped callers see their team only.
    #[allow(clippy::too_many_arguments)]
    async fn devices(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        site_id: Option<ID>,
        team_id: Option<ID>,
        status: Option<DeviceStatus>,
        hostname_search: Option<String>,
        os_name: Option<String>,
        order_by: Option<DeviceOrder>,
    ) -> Result<Page<DeviceNode>> {
        let (offset, limit) = page_window(first, after.as_deref())?;
        let principal = gate::principal(ctx)?;
        let now = chrono::Utc::now();
        let interval = heartbeat_interval(ctx);
        let presence = ctx.data::<super::DeviceAdmin>().ok().map(|d| &d.presence);
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
                .map(|id| parse_id(id, "site"))
                .transpose()?,
            team_id: team_id
                .as_ref()
                .map(|id| parse_id(id, "team"))
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
        let (rows, total) = scope
            .devices()
            .page(&filter, order, offset, limit)
            .await
            .map_err(errors::store)?;
        prefetch_sites_and_teams(ctx, &rows).await?;
        Ok(page(rows, total, offset, |mut d| {
            if let Some(presence) = presence {
                presence.overlay(&mut d);
            }
            DeviceNode::new(d, now, interval)
        }))
    }

    async fn enrollment_tokens(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<super::devices::EnrollmentTokenNode>> {
        super::devices::enrollment_tokens(ctx, first, after).await
    }

    async fn device(&self, ctx: &Context<'_>, id: ID) -> Result<DeviceNode> {
        let id = parse_id(&id, "device")?;
        let principal = gate::principal(ctx)?;
        let (_, scope) =
            gate::read(ctx, Operation::ViewDevices, principal.grants.token_team).await?;
        // Another team's device is NOT_FOUND for a team-scoped caller:
        // the scope's device reads see its team only.
        let mut device = scope.devices().get(id).await.map_err(errors::store)?;
        if let Ok(admin) = ctx.data::<super::DeviceAdmin>() {
            admin.presence.overlay(&mut device);
        }
        Ok(DeviceNode::new(
            device,
            chrono::Utc::now(),
            heartbeat_interval(ctx),
        ))
    }

    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Page<AuditEventNode>> {
        let (offset, limit) = page_window(first, after.as_deref())?;
        let (_, scope) = gate::read(ctx, Operation::ViewAuditLog, None).await?;
        let (rows, total) = scope
            .audit()
            .page(offset, limit)
            .await
            .map_err(errors::store)?;
        Ok(page(rows, total, offset, AuditEventNode::from))
    }

    /// Recomputes the tenant's audit hash chain; `firstBrokenSeq` is null
    /// when every event is intact.
    async fn audit_chain(&self, ctx: &Context<'_>) -> Result<AuditChain> {
        let (principal, scope) = gate::read(ctx, Operation::ViewAuditLog, None).await?;
        // Link what has committed but not been chained yet, so the answer
        // covers every event written before this query.
        ctx.data::<WriteStore>()?
            .0
            .chain_tenant_audit(principal)
            .await
            .map_err(errors::store)?;
        let report = scope.audit().verify_chain().await.map_err(errors::store)?;
        Ok(AuditChain {
            events: report.events as i64,
            intact: report.is_intact(),
            first_broken_seq: report.first_broken_seq,
        })
    }
}

/// The interval agents are told (the online/offline split follows it).
pub fn heartbeat_interval(ctx: &Context<'_>) -> u64 {
    ctx.data::<super::DeviceAdmin>()
        .map(|d| d.heartbeat_interval_secs)
        .unwrap_or(mobius_core::devices::HEARTBEAT_INTERVAL_SECS)
}

/// Loads the page's sites and teams in one batch each (when the query asks
/// for them), so the per-device resolvers hit the loaders' caches: a page
/// costs the same number of queries whatever its size, instead of depending
/// on how the loaders' batching windows happen to fall.
async fn prefetch_sites_and_teams(
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

#[derive(async_graphql::SimpleObject)]
pub struct AuditChain {
    pub events: i64,
    pub intact: bool,
    pub first_broken_seq: Option<i64>,
}
