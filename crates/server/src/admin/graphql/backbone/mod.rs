//! Backbone service tokens in the admin API: list, create (the secret is
//! shown once), revoke. Principals and grants are on the backbone's own
//! REST API (`/admin/api/*`), as the seed defines them.

use crate::admin::graphql::prelude::*;

/// A token a tunnel agent parks with (`mosb_<service>_...`); the secret
/// itself is only in [`CreatedBackboneServiceToken`].
#[derive(SimpleObject)]
pub struct BackboneServiceToken {
    pub id: ID,
    /// The service it opens: reachable at `<service>.<backbone domain>`.
    pub service: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<mobius_core::backbone::ServiceToken> for BackboneServiceToken {
    fn from(token: mobius_core::backbone::ServiceToken) -> Self {
        BackboneServiceToken {
            id: global_id("BackboneServiceToken", token.id),
            service: token.service,
            created_at: token.created_at,
            last_used_at: token.last_used_at,
            revoked_at: token.revoked_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct CreatedBackboneServiceToken {
    /// The secret, shown this once.
    pub token: String,
    pub service_token: BackboneServiceToken,
}

#[derive(Default)]
pub struct BackboneQuery;

#[Object]
impl BackboneQuery {
    /// The tenant's backbone service tokens, newest first.
    async fn backbone_service_tokens(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<BackboneServiceToken>> {
        let (_, scope) = gate::read(ctx, Operation::ManageBackbone, None).await?;
        let tokens = scope
            .backbone()
            .service_tokens()
            .await
            .map_err(errors::store)?;
        Ok(tokens.into_iter().map(Into::into).collect())
    }
}

#[derive(Default)]
pub struct BackboneMutation;

#[Object]
impl BackboneMutation {
    /// Creates a service token (and the service, on first use). The
    /// answer holds the secret once.
    async fn create_backbone_service_token(
        &self,
        ctx: &Context<'_>,
        service_name: String,
    ) -> Result<CreatedBackboneServiceToken> {
        let (principal, scope) = gate::write(ctx, Operation::ManageBackbone, None).await?;
        let (secret, token) = scope
            .backbone()
            .create_service_token(&principal.actor(), &service_name, Some(principal.user_id))
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(CreatedBackboneServiceToken {
            token: secret,
            service_token: token.into(),
        })
    }

    /// Revokes a service token; tunnels parked with it close within a
    /// second on every server node.
    async fn revoke_backbone_service_token(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<BackboneServiceToken> {
        let id = parse_id(&id, "BackboneServiceToken")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageBackbone, None).await?;
        let token = scope
            .backbone()
            .revoke_service_token(&principal.actor(), id)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(token.into())
    }
}
