//! Identity queries.

use super::types::*;
use crate::admin::graphql::prelude::*;

/// Queries of this area, merged into the root `Query`.
#[derive(Default)]
pub struct IdentityQuery;

#[Object]
impl IdentityQuery {
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
            team_id: principal.grants.token_team.map(|t| global_id("Team", t)),
        })
    }

    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Page<UserNode>> {
        let window = Window::new(first, after, last, before)?;
        let (_, scope) = gate::read(ctx, Operation::ViewUsers, None).await?;
        paged(
            window,
            |offset, limit| async move { scope.users().page(offset, limit).await },
            UserNode::from,
        )
        .await
    }

    async fn user(&self, ctx: &Context<'_>, id: ID) -> Result<UserNode> {
        let id = parse_id(&id, "User")?;
        let (_, scope) = gate::read(ctx, Operation::ViewUsers, None).await?;
        Ok(scope.users().get(id).await.map_err(errors::store)?.into())
    }

    /// The caller's own tokens; every token in the tenant for owners and admins.
    async fn api_tokens(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Page<ApiTokenNode>> {
        let window = Window::new(first, after, last, before)?;
        let (principal, scope) = gate::read(ctx, Operation::ManageOwnApiTokens, None).await?;
        let only = match principal.authorize(Operation::ManageAllApiTokens, None) {
            Ok(()) => None,
            Err(_) => Some(principal.user_id),
        };
        paged(
            window,
            |offset, limit| async move { scope.api_tokens().page(only, offset, limit).await },
            ApiTokenNode::from,
        )
        .await
    }
}
