//! SAML single sign-on configuration over GraphQL (owners, premium):
//! `samlConfig` and `setSamlConfig`, the same configuration as
//! `GET`/`PUT /api/v1/mobius/sso/saml/config`. The metadata is given as XML
//! or as a URL the server fetches once; the edition's SAML engine reads it
//! (the OSS edition has none and says so).

use mobius_core::authz::{Entitlements, Feature, TeamRole as CoreTeamRole};
use mobius_core::identity::sso::GroupRole;
use mobius_core::identity::sso::saml::{SamlConfig, SamlConfigInput, SamlProtocol};

use super::{SsoGroupRole, SsoGroupRoleInput, SsoTeamRole};
use crate::admin::graphql::identity::types::Role;
use crate::admin::graphql::prelude::*;

/// The edition's SAML engine, if it has one.
pub struct SamlEngine(pub Option<Arc<dyn SamlProtocol>>);

/// A tenant's SAML configuration.
#[derive(SimpleObject)]
pub struct SamlConfigNode {
    pub idp_entity_id: String,
    /// The IdP's HTTP-Redirect SingleSignOnService.
    pub idp_sso_url: String,
    /// Where the metadata was fetched from, when it came from a URL.
    pub idp_metadata_url: Option<String>,
    /// SHA-256 (hex) of each IdP signing certificate.
    pub idp_cert_fingerprints: Vec<String>,
    pub email_attribute: Option<String>,
    pub name_attribute: Option<String>,
    pub groups_attribute: Option<String>,
    pub group_roles: Vec<SsoGroupRole>,
    pub allowed_email_domains: Vec<String>,
    pub jit_enabled: bool,
    pub default_role: Role,
    pub allow_idp_initiated: bool,
    pub enabled: bool,
    /// This SP's metadata (its URL is the SP entity id), relative to the server.
    pub metadata_path: String,
    /// The ACS (HTTP-POST binding), relative to the server.
    pub acs_path: String,
    /// Where people start a sign-in, relative to the server.
    pub login_path: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(InputObject)]
pub struct SetSamlConfigInput {
    /// The IdP metadata XML (or give `metadataUrl`).
    pub metadata_xml: Option<String>,
    /// An https URL to fetch the IdP metadata from, once, now.
    pub metadata_url: Option<String>,
    /// The attribute with the email (unset: common names, then an
    /// emailAddress NameID).
    pub email_attribute: Option<String>,
    pub name_attribute: Option<String>,
    /// The attribute listing the person's groups.
    pub groups_attribute: Option<String>,
    #[graphql(default)]
    pub group_roles: Vec<SsoGroupRoleInput>,
    #[graphql(default)]
    pub allowed_email_domains: Vec<String>,
    #[graphql(default = false)]
    pub jit_enabled: bool,
    #[graphql(default_with = "Role::Observer")]
    pub default_role: Role,
    /// Accept responses no sign-in of ours asked for (off by default).
    #[graphql(default = false)]
    pub allow_idp_initiated: bool,
    #[graphql(default = true)]
    pub enabled: bool,
}

fn node(config: SamlConfig, slug: &str) -> SamlConfigNode {
    let base = format!("/api/v1/mobius/sso/{slug}/saml");
    SamlConfigNode {
        idp_entity_id: config.idp_entity_id,
        idp_sso_url: config.idp_sso_url,
        idp_metadata_url: config.idp_metadata_url,
        idp_cert_fingerprints: config.idp_cert_fingerprints,
        email_attribute: config.email_attribute,
        name_attribute: config.name_attribute,
        groups_attribute: config.groups_attribute,
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
        allowed_email_domains: config.allowed_email_domains,
        jit_enabled: config.jit_enabled,
        default_role: config.default_role.into(),
        allow_idp_initiated: config.allow_idp_initiated,
        enabled: config.enabled,
        metadata_path: format!("{base}/metadata"),
        acs_path: format!("{base}/acs"),
        login_path: format!("{base}/login"),
        updated_at: config.updated_at,
    }
}

/// The engine, after the premium gate.
fn engine(ctx: &Context<'_>, tenant_id: Uuid) -> Result<Arc<dyn SamlProtocol>> {
    let engine = ctx.data::<SamlEngine>()?.0.clone().ok_or_else(|| {
        errors::coded(
            ErrorCode::NotFound,
            "SAML single sign-on is part of the cloud edition; this server has no SAML",
            None,
        )
    })?;
    ctx.data::<Arc<dyn Entitlements>>()?
        .require(tenant_id, Feature::Saml)
        .map_err(errors::license_required)?;
    Ok(engine)
}

#[derive(Default)]
pub struct SamlQuery;

#[Object]
impl SamlQuery {
    /// The tenant's SAML configuration (owners only); null when none was set.
    async fn saml_config(&self, ctx: &Context<'_>) -> Result<Option<SamlConfigNode>> {
        let (principal, scope) = gate::read(ctx, Operation::ManageSso, None).await?;
        engine(ctx, principal.tenant_id)?;
        let slug = scope.tenant().get().await.map_err(errors::store)?.slug;
        let config = scope.sso().saml_config().await.map_err(errors::store)?;
        Ok(config.map(|c| node(c, &slug)))
    }
}

#[derive(Default)]
pub struct SamlMutation;

#[Object]
impl SamlMutation {
    /// Creates or replaces the tenant's SAML configuration (owners only;
    /// audited as `sso.saml_configured`).
    async fn set_saml_config(
        &self,
        ctx: &Context<'_>,
        input: SetSamlConfigInput,
    ) -> Result<SamlConfigNode> {
        let (principal, scope) = gate::write(ctx, Operation::ManageSso, None).await?;
        let engine = engine(ctx, principal.tenant_id)?;
        let (xml, url) = match (input.metadata_xml, input.metadata_url) {
            (Some(xml), None) => (xml, None),
            (None, Some(url)) => (
                crate::admin::rest::sso::fetch_saml_metadata(&url)
                    .await
                    .map_err(|e| errors::coded(e.code, e.message, Some("metadataUrl")))?,
                Some(url.trim().to_owned()),
            ),
            _ => {
                return Err(errors::bad_input(
                    "metadataXml",
                    "give exactly one of metadataXml and metadataUrl",
                ));
            }
        };
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
        let config = scope
            .sso()
            .put_saml_config(
                &principal.actor(),
                SamlConfigInput {
                    idp_metadata_xml: xml,
                    idp_metadata_url: url,
                    email_attribute: input.email_attribute,
                    name_attribute: input.name_attribute,
                    groups_attribute: input.groups_attribute,
                    group_roles,
                    allowed_email_domains: input.allowed_email_domains,
                    jit_enabled: input.jit_enabled,
                    default_role: input.default_role.into(),
                    allow_idp_initiated: input.allow_idp_initiated,
                    enabled: input.enabled,
                },
                engine.as_ref(),
            )
            .await
            .map_err(errors::store)?;
        let slug = scope.tenant().get().await.map_err(errors::store)?.slug;
        scope.commit().await.map_err(errors::store)?;
        Ok(node(config, &slug))
    }
}
