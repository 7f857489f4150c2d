//! Single sign-on configuration over GraphQL (owners only): `ssoConfig`
//! and `setSsoConfig`. The client secret is write-only: sealed with the
//! SecretSealer on the way in, never read back (only `hasClientSecret`).

use mobius_core::authz::TeamRole as CoreTeamRole;
use mobius_core::crypto::sealing::SecretSealer;
use mobius_core::identity::sso::{GroupRole, SsoConfig, SsoConfigInput};

use super::identity::types::Role;
use crate::admin::graphql::prelude::*;

mod saml;
pub use saml::{SamlEngine, SamlMutation, SamlQuery};

/// The sealer the SSO mutation seals client secrets with.
pub struct SsoSealer(pub Arc<dyn SecretSealer>);

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum SsoTeamRole {
    Maintainer,
    Observer,
}

#[derive(SimpleObject, Clone)]
pub struct SsoGroupRole {
    pub group: String,
    pub role: Option<Role>,
    pub team_id: Option<ID>,
    pub team_role: Option<SsoTeamRole>,
}

#[derive(InputObject)]
pub struct SsoGroupRoleInput {
    /// The group's name in the groups claim.
    pub group: String,
    /// The tenant role the group grants (not OWNER).
    pub role: Option<Role>,
    /// A team the group grants membership of, with `teamRole`.
    pub team_id: Option<ID>,
    pub team_role: Option<SsoTeamRole>,
}

/// A tenant's OIDC configuration. The client secret is never returned.
#[derive(SimpleObject)]
pub struct SsoConfigNode {
    pub issuer_url: String,
    pub client_id: String,
    /// Whether a client secret is stored (sealed); the secret itself is
    /// write-only.
    pub has_client_secret: bool,
    pub scopes: Vec<String>,
    pub allowed_email_domains: Vec<String>,
    pub groups_claim: Option<String>,
    pub group_roles: Vec<SsoGroupRole>,
    pub jit_enabled: bool,
    pub default_role: Role,
    pub sso_required: bool,
    pub break_glass_user_ids: Vec<ID>,
    pub allowed_redirect_origins: Vec<String>,
    pub enabled: bool,
    /// Where to send people to sign in (relative to the server).
    pub start_path: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(InputObject)]
pub struct SetSsoConfigInput {
    /// The IdP's issuer URL (https; http only on a loopback host).
    pub issuer_url: String,
    pub client_id: String,
    /// Write-only. Omit to keep the stored secret.
    pub client_secret: Option<String>,
    /// Scopes besides `openid`; default `email profile`.
    #[graphql(default)]
    pub scopes: Vec<String>,
    /// Only these email domains may sign in (empty: any).
    #[graphql(default)]
    pub allowed_email_domains: Vec<String>,
    /// The ID-token claim that lists the person's groups, e.g. `groups`.
    pub groups_claim: Option<String>,
    #[graphql(default)]
    pub group_roles: Vec<SsoGroupRoleInput>,
    /// Create unknown people on their first sign-in.
    #[graphql(default = false)]
    pub jit_enabled: bool,
    /// The role of people no group mapping matches.
    #[graphql(default_with = "Role::Observer")]
    pub default_role: Role,
    /// Refuse password login for everyone but break-glass owners.
    #[graphql(default = false)]
    pub sso_required: bool,
    /// Owners who may still sign in with a password when SSO is required.
    #[graphql(default)]
    pub break_glass_user_ids: Vec<ID>,
    /// Origins (besides this server) a sign-in may redirect back to.
    #[graphql(default)]
    pub allowed_redirect_origins: Vec<String>,
    #[graphql(default = true)]
    pub enabled: bool,
}

fn node(config: SsoConfig, slug: &str) -> SsoConfigNode {
    SsoConfigNode {
        issuer_url: config.issuer_url,
        client_id: config.client_id,
        has_client_secret: config.has_client_secret,
        scopes: config.scopes,
        allowed_email_domains: config.allowed_email_domains,
        groups_claim: config.groups_claim,
        group_roles: config
            .group_roles
            .into_iter()
            .map(|g| SsoGroupRole {
                group: g.group,
                role: g.role.map(Role::from),
                team_id: g.team_id.map(|id| global_id("Team", id)),
                team_role: g.team_role.map(|r| match r {
                    CoreTeamRole::Maintainer => SsoTeamRole::Maintainer,
                    CoreTeamRole::Observer => SsoTeamRole::Observer,
                }),
            })
            .collect(),
        jit_enabled: config.jit_enabled,
        default_role: config.default_role.into(),
        sso_required: config.sso_required,
        break_glass_user_ids: config
            .break_glass_user_ids
            .into_iter()
            .map(|id| global_id("User", id))
            .collect(),
        allowed_redirect_origins: config.allowed_redirect_origins,
        enabled: config.enabled,
        start_path: format!("/api/v1/mobius/sso/{slug}/oidc/start"),
        updated_at: config.updated_at,
    }
}

#[derive(Default)]
pub struct SsoQuery;

#[Object]
impl SsoQuery {
    /// The tenant's single sign-on configuration (owners only); null when
    /// none was set.
    async fn sso_config(&self, ctx: &Context<'_>) -> Result<Option<SsoConfigNode>> {
        let (_, scope) = gate::read(ctx, Operation::ManageSso, None).await?;
        let slug = scope.tenant().get().await.map_err(errors::store)?.slug;
        let config = scope.sso().config().await.map_err(errors::store)?;
        Ok(config.map(|c| node(c, &slug)))
    }
}

#[derive(Default)]
pub struct SsoMutation;

#[Object]
impl SsoMutation {
    /// Creates or replaces the tenant's single sign-on configuration
    /// (owners only; audited as `sso.configured`).
    async fn set_sso_config(
        &self,
        ctx: &Context<'_>,
        input: SetSsoConfigInput,
    ) -> Result<SsoConfigNode> {
        let (principal, scope) = gate::write(ctx, Operation::ManageSso, None).await?;
        let sealer = ctx.data::<SsoSealer>()?;
        let mut group_roles = Vec::new();
        for g in input.group_roles {
            group_roles.push(GroupRole {
                group: g.group,
                role: g.role.map(CoreRole::from),
                team_id: g
                    .team_id
                    .as_ref()
                    .map(|id| parse_id(id, "Team"))
                    .transpose()?,
                team_role: g.team_role.map(|r| match r {
                    SsoTeamRole::Maintainer => CoreTeamRole::Maintainer,
                    SsoTeamRole::Observer => CoreTeamRole::Observer,
                }),
            });
        }
        let break_glass_user_ids = input
            .break_glass_user_ids
            .iter()
            .map(|id| parse_id(id, "User"))
            .collect::<Result<Vec<_>>>()?;
        let config = scope
            .sso()
            .put_config(
                &principal.actor(),
                SsoConfigInput {
                    issuer_url: input.issuer_url,
                    client_id: input.client_id,
                    client_secret: input.client_secret,
                    scopes: input.scopes,
                    allowed_email_domains: input.allowed_email_domains,
                    groups_claim: input.groups_claim,
                    group_roles,
                    jit_enabled: input.jit_enabled,
                    default_role: input.default_role.into(),
                    sso_required: input.sso_required,
                    break_glass_user_ids,
                    allowed_redirect_origins: input.allowed_redirect_origins,
                    enabled: input.enabled,
                },
                sealer.0.as_ref(),
            )
            .await
            .map_err(errors::store)?;
        let slug = scope.tenant().get().await.map_err(errors::store)?.slug;
        scope.commit().await.map_err(errors::store)?;
        Ok(node(config, &slug))
    }
}
