//! A tenant's OIDC configuration: one row per tenant, written only by
//! owners (the server's gate), the client secret sealed at rest.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::entities::sso_config;
use super::{Sso, client_secret_context};
use crate::audit::{Actor, AuditRecord};
use crate::authz::{Role, TeamRole};
use crate::crypto::sealing::SecretSealer;
use crate::db::{StoreError, StoreResult};

/// One mapping from an IdP group to a tenant role and/or a team role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRole {
    /// The group's name as the IdP sends it in the groups claim.
    pub group: String,
    /// The tenant role members of the group get (the highest of all
    /// matching mappings wins; owner cannot be granted through SSO).
    pub role: Option<Role>,
    /// A team whose membership the group grants...
    pub team_id: Option<Uuid>,
    /// ...with this team role.
    pub team_role: Option<TeamRole>,
}

/// The JSON form of [`GroupRole`] in the `group_roles` column.
#[derive(Serialize, Deserialize)]
struct StoredGroupRole {
    group: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    team_id: Option<Uuid>,
    #[serde(default)]
    team_role: Option<String>,
}

/// A tenant's SSO configuration as the API shows it: the client secret is
/// never part of it (only whether one is set).
#[derive(Clone, Debug)]
pub struct SsoConfig {
    pub tenant_id: Uuid,
    pub issuer_url: String,
    pub client_id: String,
    pub has_client_secret: bool,
    pub scopes: Vec<String>,
    pub allowed_email_domains: Vec<String>,
    pub groups_claim: Option<String>,
    pub group_roles: Vec<GroupRole>,
    pub jit_enabled: bool,
    pub default_role: Role,
    pub sso_required: bool,
    pub break_glass_user_ids: Vec<Uuid>,
    pub allowed_redirect_origins: Vec<String>,
    pub enabled: bool,
    pub updated_at: DateTime<Utc>,
    sealed_client_secret: Option<Vec<u8>>,
}

impl SsoConfig {
    /// Opens the sealed client secret, for the token request only.
    pub async fn client_secret(&self, sealer: &dyn SecretSealer) -> StoreResult<Option<String>> {
        let Some(sealed) = &self.sealed_client_secret else {
            return Ok(None);
        };
        let plain = sealer
            .open(&client_secret_context(self.tenant_id), sealed)
            .await
            .map_err(StoreError::internal("opening the SSO client secret"))?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(StoreError::internal("SSO client secret is not UTF-8"))
    }

    /// Whether password login is refused for `user` (SSO required and the
    /// user is not an owner marked break-glass).
    pub fn refuses_password_login(&self, user_id: Uuid, role: Role) -> bool {
        self.enabled
            && self.sso_required
            && !(role == Role::Owner && self.break_glass_user_ids.contains(&user_id))
    }

    /// Whether `email`'s domain may sign in (an empty list allows all).
    pub fn allows_email(&self, email: &str) -> bool {
        domain_allowed(&self.allowed_email_domains, email)
    }

    fn from_row(row: sso_config::Model) -> StoreResult<SsoConfig> {
        let strings = |value: serde_json::Value, what: &'static str| {
            serde_json::from_value::<Vec<String>>(value).map_err(StoreError::internal(what))
        };
        let group_roles = read_group_roles(row.group_roles)?;
        Ok(SsoConfig {
            tenant_id: row.tenant_id,
            issuer_url: row.issuer_url,
            client_id: row.client_id,
            has_client_secret: row.sealed_client_secret.is_some(),
            scopes: strings(row.scopes, "reading SSO scopes")?,
            allowed_email_domains: strings(row.allowed_email_domains, "reading SSO domains")?,
            groups_claim: row.groups_claim,
            group_roles,
            jit_enabled: row.jit_enabled,
            default_role: row.default_role,
            sso_required: row.sso_required,
            break_glass_user_ids: serde_json::from_value(row.break_glass_user_ids)
                .map_err(StoreError::internal("reading SSO break-glass users"))?,
            allowed_redirect_origins: strings(
                row.allowed_redirect_origins,
                "reading SSO redirect origins",
            )?,
            enabled: row.enabled,
            updated_at: row.updated_at,
            sealed_client_secret: row.sealed_client_secret,
        })
    }
}

/// What an owner sets. `client_secret: None` keeps the stored secret.
#[derive(Clone, Debug)]
pub struct SsoConfigInput {
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    pub allowed_email_domains: Vec<String>,
    pub groups_claim: Option<String>,
    pub group_roles: Vec<GroupRole>,
    pub jit_enabled: bool,
    pub default_role: Role,
    pub sso_required: bool,
    pub break_glass_user_ids: Vec<Uuid>,
    pub allowed_redirect_origins: Vec<String>,
    pub enabled: bool,
}

pub(super) fn invalid(field: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// An issuer must be https, except on a loopback host (a local IdP in
/// development and tests): tokens and codes travel over this connection.
fn valid_issuer(issuer: &str) -> StoreResult<String> {
    let url =
        url::Url::parse(issuer.trim()).map_err(|_| invalid("issuerUrl", "not a valid URL"))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(invalid("issuerUrl", "must be an https URL"));
    }
    Ok(issuer.trim().trim_end_matches('/').to_owned())
}

fn valid_origin(origin: &str) -> StoreResult<String> {
    let url = url::Url::parse(origin.trim())
        .map_err(|_| invalid("allowedRedirectOrigins", "not a URL"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(invalid(
            "allowedRedirectOrigins",
            "each must be an http(s) origin such as https://admin.example.com",
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// The allowed email domains, lower-cased and without a leading `@`.
pub(super) fn valid_domains(domains: &[String]) -> StoreResult<Vec<String>> {
    let mut valid = Vec::new();
    for domain in domains {
        let domain = domain.trim().trim_start_matches('@').to_ascii_lowercase();
        if domain.is_empty() || domain.contains(['@', '/', ' ']) {
            return Err(invalid(
                "allowedEmailDomains",
                "each must be a domain such as example.com",
            ));
        }
        valid.push(domain);
    }
    Ok(valid)
}

/// Whether `email`'s domain is in `domains` (an empty list allows all).
pub(super) fn domain_allowed(domains: &[String], email: &str) -> bool {
    let domain = email
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    domains.is_empty() || domains.contains(&domain)
}

/// Reads the `group_roles` JSON column (OIDC and SAML share its shape).
pub(super) fn read_group_roles(value: serde_json::Value) -> StoreResult<Vec<GroupRole>> {
    let stored: Vec<StoredGroupRole> =
        serde_json::from_value(value).map_err(StoreError::internal("reading SSO group roles"))?;
    stored
        .into_iter()
        .map(|g| {
            Ok(GroupRole {
                group: g.group,
                role: g
                    .role
                    .map(|r| r.parse::<Role>())
                    .transpose()
                    .map_err(StoreError::internal("reading an SSO group role"))?,
                team_id: g.team_id,
                team_role: g
                    .team_role
                    .map(|r| r.parse::<TeamRole>())
                    .transpose()
                    .map_err(StoreError::internal("reading an SSO team role"))?,
            })
        })
        .collect()
}

impl Sso<'_> {
    /// Checks group → role mappings (no owner, teams of this tenant) and
    /// gives their stored JSON form.
    pub(super) async fn valid_group_roles(
        &self,
        group_roles: &[GroupRole],
    ) -> StoreResult<serde_json::Value> {
        let mut stored_groups = Vec::new();
        for mapping in group_roles {
            if mapping.group.trim().is_empty() {
                return Err(invalid("groupRoles", "a mapping needs a group name"));
            }
            if mapping.role == Some(Role::Owner) {
                return Err(invalid(
                    "groupRoles",
                    "owner cannot be granted by single sign-on",
                ));
            }
            if mapping.team_id.is_some() != mapping.team_role.is_some() {
                return Err(invalid("groupRoles", "teamId and teamRole go together"));
            }
            if mapping.role.is_none() && mapping.team_id.is_none() {
                return Err(invalid(
                    "groupRoles",
                    "a mapping needs a role or a team role",
                ));
            }
            if let Some(team_id) = mapping.team_id {
                self.scope.teams().get(team_id).await.map_err(|_| {
                    invalid("groupRoles", format!("no team {team_id} in this tenant"))
                })?;
            }
            stored_groups.push(StoredGroupRole {
                group: mapping.group.trim().to_owned(),
                role: mapping.role.map(|r| r.as_str().to_owned()),
                team_id: mapping.team_id,
                team_role: mapping.team_role.map(|r| r.as_str().to_owned()),
            });
        }
        serde_json::to_value(&stored_groups)
            .map_err(StoreError::internal("writing SSO group roles"))
    }

    /// The tenant's configuration, if one was set.
    pub async fn config(&self) -> StoreResult<Option<SsoConfig>> {
        sso_config::Entity::find()
            .filter(sso_config::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .map(SsoConfig::from_row)
            .transpose()
    }

    /// Creates or replaces the configuration; audited as `sso.configured`
    /// (the secret itself never enters the audit log).
    pub async fn put_config(
        &self,
        actor: &Actor,
        input: SsoConfigInput,
        sealer: &dyn SecretSealer,
    ) -> StoreResult<SsoConfig> {
        let tenant_id = self.scope.tenant_id();
        let issuer_url = valid_issuer(&input.issuer_url)?;
        let client_id = input.client_id.trim().to_owned();
        if client_id.is_empty() || client_id.len() > 255 {
            return Err(invalid("clientId", "must be 1 to 255 characters"));
        }
        if input.default_role == Role::Owner {
            return Err(invalid(
                "defaultRole",
                "owner cannot be granted by single sign-on",
            ));
        }
        let domains = valid_domains(&input.allowed_email_domains)?;
        let stored_groups = self.valid_group_roles(&input.group_roles).await?;
        for user_id in &input.break_glass_user_ids {
            let user =
                self.scope.users().get(*user_id).await.map_err(|_| {
                    invalid("breakGlassUserIds", "each must be a user of this tenant")
                })?;
            if user.role != Role::Owner {
                return Err(invalid(
                    "breakGlassUserIds",
                    "only owners can be break-glass",
                ));
            }
        }
        let origins = input
            .allowed_redirect_origins
            .iter()
            .map(|o| valid_origin(o))
            .collect::<StoreResult<Vec<_>>>()?;
        let mut scopes: Vec<String> = input
            .scopes
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && s != "openid")
            .collect();
        if scopes.iter().any(|s| s.contains(char::is_whitespace)) {
            return Err(invalid("scopes", "a scope has no spaces"));
        }
        if scopes.is_empty() {
            scopes = vec!["email".into(), "profile".into()];
        }
        let groups_claim = input
            .groups_claim
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());

        let sealed = match &input.client_secret {
            Some(secret) if !secret.is_empty() => Some(
                sealer
                    .seal(&client_secret_context(tenant_id), secret.as_bytes())
                    .await
                    .map_err(StoreError::internal("sealing the SSO client secret"))?,
            ),
            _ => None,
        };
        let now = Utc::now();
        let existing = sso_config::Entity::find()
            .filter(sso_config::Column::TenantId.eq(tenant_id))
            .one(self.scope.connection())
            .await?;
        let is_new = existing.is_none();
        let mut row = match existing {
            Some(row) => {
                let mut active = row.into_active_model();
                if sealed.is_some() {
                    active.sealed_client_secret = Set(sealed);
                }
                active
            }
            None => sso_config::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(tenant_id),
                sealed_client_secret: Set(sealed),
                created_at: Set(now),
                ..Default::default()
            },
        };
        row.issuer_url = Set(issuer_url.clone());
        row.client_id = Set(client_id.clone());
        row.scopes = Set(serde_json::json!(scopes));
        row.allowed_email_domains = Set(serde_json::json!(domains));
        row.groups_claim = Set(groups_claim);
        row.group_roles = Set(stored_groups);
        row.jit_enabled = Set(input.jit_enabled);
        row.default_role = Set(input.default_role);
        row.sso_required = Set(input.sso_required);
        row.break_glass_user_ids = Set(serde_json::json!(input.break_glass_user_ids));
        row.allowed_redirect_origins = Set(serde_json::json!(origins));
        row.enabled = Set(input.enabled);
        row.updated_at = Set(now);
        // `save` would take a new row with its id set for an update.
        let saved = if is_new {
            row.insert(self.scope.connection()).await?
        } else {
            row.update(self.scope.connection()).await?
        };
        let config = SsoConfig::from_row(saved)?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("sso.configured", "tenant", Some(tenant_id)).with_details(
                    serde_json::json!({
                        "issuer_url": config.issuer_url,
                        "client_id": config.client_id,
                        "client_secret_changed": input.client_secret.as_deref().is_some_and(|s| !s.is_empty()),
                        "allowed_email_domains": config.allowed_email_domains,
                        "jit_enabled": config.jit_enabled,
                        "default_role": config.default_role.as_str(),
                        "sso_required": config.sso_required,
                        "break_glass_user_ids": config.break_glass_user_ids,
                        "enabled": config.enabled,
                    }),
                ),
            )
            .await?;
        Ok(config)
    }
}
