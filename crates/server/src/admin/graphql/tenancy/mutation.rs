//! Tenancy mutations: each passes the gate with its operation, writes in
//! one transaction (audit event included) and commits.

use super::types::*;
use crate::admin::graphql::prelude::*;

/// Mutations of this area, merged into the root `Mutation`.
#[derive(Default)]
pub struct TenancyMutation;

#[Object]
impl TenancyMutation {
    /// Renames the tenant or changes its API-token policy (owners and admins).
    async fn update_tenant(&self, ctx: &Context<'_>, input: TenantInput) -> Result<TenantNode> {
        let (principal, scope) = gate::write(ctx, Operation::ManageTenant, None).await?;
        let tenant = scope
            .tenant()
            .update(
                &principal.actor(),
                input.name.as_deref(),
                input.api_token_max_days,
            )
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(tenant.into())
    }

    async fn create_site(&self, ctx: &Context<'_>, input: SiteInput) -> Result<SiteNode> {
        let (principal, scope) = gate::write(ctx, Operation::ManageSites, None).await?;
        let site = scope
            .sites()
            .create(&principal.actor(), &input.name)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(site.into())
    }

    async fn update_site(&self, ctx: &Context<'_>, id: ID, input: SiteInput) -> Result<SiteNode> {
        let id = parse_id(&id, "Site")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageSites, None).await?;
        let site = scope
            .sites()
            .rename(&principal.actor(), id, &input.name)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(site.into())
    }

    /// Deletes an empty site (one with devices is a CONFLICT).
    async fn delete_site(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let uuid = parse_id(&id, "Site")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageSites, None).await?;
        scope
            .sites()
            .delete(&principal.actor(), uuid)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(id)
    }

    async fn create_team(&self, ctx: &Context<'_>, input: TeamInput) -> Result<TeamNode> {
        let (principal, scope) = gate::write(ctx, Operation::ManageTeams, None).await?;
        let team = scope
            .teams()
            .create(&principal.actor(), &input.name)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(team.into())
    }

    async fn update_team(&self, ctx: &Context<'_>, id: ID, input: TeamInput) -> Result<TeamNode> {
        let id = parse_id(&id, "Team")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageTeams, None).await?;
        let team = scope
            .teams()
            .rename(&principal.actor(), id, &input.name)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(team.into())
    }

    async fn delete_team(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let uuid = parse_id(&id, "Team")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageTeams, None).await?;
        scope
            .teams()
            .delete(&principal.actor(), uuid)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(id)
    }
}
