//! `mobius backbone tokens list|create|revoke`: service tokens for tunnel
//! agents (`mobius-agent tunnel`), over the GraphQL API.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Context;
use crate::output::{self, Tabular, or_dash};

#[derive(Debug, Subcommand)]
pub enum BackboneCommand {
    /// Service tokens: what a tunnel agent parks its connection with
    #[command(subcommand)]
    Tokens(BackboneTokensCommand),
}

#[derive(Debug, Subcommand)]
pub enum BackboneTokensCommand {
    /// List service tokens (without their secrets); `--output json` for scripts
    List,
    /// Create a token for a service; it is printed once and cannot be shown again
    #[command(after_help = "Example:\n  mobius backbone tokens create myapp\n  \
        mobius-agent tunnel --server https://backbone.example.com --service myapp \\\n      \
        --to http://127.0.0.1:3000 --token-file myapp.token")]
    Create(CreateArgs),
    /// Revoke a token: tunnels parked with it close within a second
    Revoke {
        /// The token's ID (not the token itself), from `list`
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The service name: a DNS label (a-z, 0-9, '-'), reached at <service>.<backbone domain>
    pub service: String,
}

const FIELDS: &str = "id service createdAt lastUsedAt revokedAt";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceToken {
    pub id: String,
    pub service: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl Tabular for ServiceToken {
    fn columns() -> &'static [&'static str] {
        &["ID", "SERVICE", "CREATED", "LAST USED", "REVOKED"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.service.clone(),
            self.created_at.clone(),
            or_dash(self.last_used_at.as_deref()),
            or_dash(self.revoked_at.as_deref()),
        ]
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedServiceToken {
    pub token: String,
    pub service_token: ServiceToken,
}

impl Tabular for CreatedServiceToken {
    fn columns() -> &'static [&'static str] {
        &["ID", "SERVICE", "TOKEN"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.service_token.id.clone(),
            self.service_token.service.clone(),
            self.token.clone(),
        ]
    }
}

pub async fn run(ctx: &Context, command: BackboneCommand) -> Result<()> {
    let mut client = ctx.client()?;
    let BackboneCommand::Tokens(command) = command;
    match command {
        BackboneTokensCommand::List => {
            let rows: Vec<ServiceToken> = client
                .query(
                    "backboneServiceTokens",
                    &format!("query {{ backboneServiceTokens {{ {FIELDS} }} }}"),
                    json!({}),
                )
                .await?;
            ctx.output.list(&rows)
        }
        BackboneTokensCommand::Create(args) => {
            let created: CreatedServiceToken = client
                .query(
                    "createBackboneServiceToken",
                    &format!(
                        "mutation($s: String!) {{ createBackboneServiceToken(serviceName: $s) {{ token serviceToken {{ {FIELDS} }} }} }}"
                    ),
                    json!({ "s": args.service }),
                )
                .await?;
            ctx.output.item(&created)?;
            output::notice("store the token now: it will not be shown again");
            Ok(())
        }
        BackboneTokensCommand::Revoke { id } => {
            let revoked: ServiceToken = client
                .query(
                    "revokeBackboneServiceToken",
                    &format!("mutation($id: ID!) {{ revokeBackboneServiceToken(id: $id) {{ {FIELDS} }} }}"),
                    json!({ "id": id }),
                )
                .await?;
            ctx.output.item(&revoked)
        }
    }
}
