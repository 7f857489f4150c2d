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
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Page<SiteNode>> {
        let window = Window::new(first, after, last, before)?;
        let (_, scope) = gate::read(ctx, Operation::ViewSites, None).await?;
        paged(
            window,
            |offset, limit| async move { scope.sites().page(offset, limit).await },
            SiteNode::from,
        )
        .await
    }

    async fn site(&self, ctx: &Context<'_>, id: ID) -> Result<SiteNode> {
        let id = parse_id(&id, "Site")?;
        let (_, scope) = gate::read(ctx, Operation::ViewSites, None).await?;
        Ok(scope.sites().get(id).await.map_err(errors::store)?.into())
    }

    async fn teams(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Page<TeamNode>> {
        let window = Window::new(first, after, last, before)?;
        let (_, scope) = gate::read(ctx, Operation::ViewTeams, None).await?;
        paged(
            window,
            |offset, limit| async move { scope.teams().page(offset, limit).await },
            TeamNode::from,
        )
        .await
    }

    async fn team(&self, ctx: &Context<'_>, id: ID) -> Result<TeamNode> {
        let id = parse_id(&id, "Team")?;
        let (_, scope) = gate::read(ctx, Operation::ViewTeams, None).await?;
        Ok(scope.teams().get(id).await.map_err(errors::store)?.into())
    }
}
