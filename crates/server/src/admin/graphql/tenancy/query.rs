//! Tenancy queries.

use super::types::*;
use crate::admin::graphql::prelude::*;

/// Queries of this area, merged into the root `Query`.
#[derive(Default)]
pub struct TenancyQuery;

#[Object]
impl TenancyQuery {
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
}
