//! `sso saml get|set`: the tenant's SAML IdP configuration (cloud
//! edition, premium), through GraphQL `samlConfig`/`setSamlConfig`.

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{GroupRole, graphql_role, group_role_input};
use crate::cli::{SamlCommand, SamlSetArgs};
use crate::client::Client;
use crate::commands::Context;
use crate::output::{Tabular, label, or_dash};

const FIELDS: &str = "idpEntityId idpSsoUrl idpMetadataUrl idpCertFingerprints
  emailAttribute nameAttribute groupsAttribute
  groupRoles { group role teamId teamRole }
  allowedEmailDomains jitEnabled defaultRole allowIdpInitiated enabled
  metadataPath acsPath loginPath updatedAt";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SamlConfig {
    idp_entity_id: String,
    idp_sso_url: String,
    idp_metadata_url: Option<String>,
    idp_cert_fingerprints: Vec<String>,
    email_attribute: Option<String>,
    name_attribute: Option<String>,
    groups_attribute: Option<String>,
    group_roles: Vec<GroupRole>,
    allowed_email_domains: Vec<String>,
    jit_enabled: bool,
    default_role: String,
    allow_idp_initiated: bool,
    enabled: bool,
    metadata_path: String,
    acs_path: String,
    login_path: String,
    updated_at: String,
}

impl Tabular for SamlConfig {
    fn columns() -> &'static [&'static str] {
        &[
            "ENABLED",
            "IDP ENTITY ID",
            "IDP SSO URL",
            "METADATA URL",
            "CERT SHA-256",
            "EMAIL ATTRIBUTE",
            "NAME ATTRIBUTE",
            "GROUPS ATTRIBUTE",
            "GROUP ROLES",
            "ALLOWED DOMAINS",
            "JIT",
            "DEFAULT ROLE",
            "IDP-INITIATED",
            "SP METADATA",
            "ACS",
            "LOGIN",
            "UPDATED",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let list = |items: &[String]| {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.join(", ")
            }
        };
        let groups: Vec<String> = self
            .group_roles
            .iter()
            .map(|g| {
                let mut text = format!("{}=", g.group);
                if let Some(role) = &g.role {
                    text.push_str(&label(role));
                }
                if let (Some(team), Some(role)) = (&g.team_id, &g.team_role) {
                    text.push_str(&format!(" team {team}:{}", label(role)));
                }
                text
            })
            .collect();
        vec![
            self.enabled.to_string(),
            self.idp_entity_id.clone(),
            self.idp_sso_url.clone(),
            or_dash(self.idp_metadata_url.as_deref()),
            list(&self.idp_cert_fingerprints),
            or_dash(self.email_attribute.as_deref()),
            or_dash(self.name_attribute.as_deref()),
            or_dash(self.groups_attribute.as_deref()),
            list(&groups),
            list(&self.allowed_email_domains),
            self.jit_enabled.to_string(),
            label(&self.default_role),
            self.allow_idp_initiated.to_string(),
            self.metadata_path.clone(),
            self.acs_path.clone(),
            self.login_path.clone(),
            self.updated_at.clone(),
        ]
    }
}

pub async fn run(ctx: &Context, client: &mut Client, command: SamlCommand) -> Result<()> {
    match command {
        SamlCommand::Get => {
            let config: Option<SamlConfig> = client
                .query(
                    "samlConfig",
                    &format!("query SamlConfig {{ samlConfig {{ {FIELDS} }} }}"),
                    json!({}),
                )
                .await?;
            match config {
                Some(config) => ctx.output.item(&config),
                None => ctx.output.confirmation(
                    "SAML single sign-on is not configured (set it with `mobius sso saml set`)",
                    &serde_json::Value::Null,
                ),
            }
        }
        SamlCommand::Set(args) => {
            let input = set_input(&args)?;
            let config: SamlConfig = client
                .query(
                    "setSamlConfig",
                    &format!(
                        "mutation SetSamlConfig($input: SetSamlConfigInput!) {{ setSamlConfig(input: $input) {{ {FIELDS} }} }}"
                    ),
                    json!({ "input": input }),
                )
                .await?;
            ctx.output.item(&config)
        }
    }
}

fn set_input(args: &SamlSetArgs) -> Result<serde_json::Value> {
    let metadata_xml = match &args.metadata {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the IdP metadata {}", path.display()))?,
        ),
        None => None,
    };
    Ok(json!({
        "metadataXml": metadata_xml,
        "metadataUrl": args.metadata_url,
        "emailAttribute": args.email_attribute,
        "nameAttribute": args.name_attribute,
        "groupsAttribute": args.groups_attribute,
        "groupRoles": group_role_input(&args.group_roles, &args.group_team_roles)?,
        "allowedEmailDomains": args.allowed_domains,
        "jitEnabled": args.jit,
        "defaultRole": graphql_role(&args.default_role),
        "allowIdpInitiated": args.allow_idp_initiated,
        "enabled": !args.disabled,
    }))
}
