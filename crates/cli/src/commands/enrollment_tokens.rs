//! `enroll-tokens list|create|revoke`.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Context;
use crate::cli::{CreateEnrollTokenArgs, EnrollTokensCommand};
use crate::output::{self, Tabular, or_dash};
use crate::pagination::fetch_list;

const LIST: &str = "query EnrollmentTokens($first: Int, $after: String) {
  enrollmentTokens(first: $first, after: $after) {
    nodes { id name siteId expiresAt maxUses uses allowedIps revokedAt createdAt }
    pageInfo { hasNextPage endCursor }
    totalCount
  }
}";

const CREATE: &str = "mutation CreateEnrollmentToken($input: CreateEnrollmentTokenInput!) {
  createEnrollmentToken(input: $input) {
    token
    enrollmentToken { id name siteId expiresAt maxUses uses allowedIps revokedAt createdAt }
  }
}";

const REVOKE: &str = "mutation RevokeEnrollmentToken($id: ID!) {
  revokeEnrollmentToken(id: $id) { id name siteId expiresAt maxUses uses allowedIps revokedAt createdAt }
}";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentToken {
    pub id: String,
    pub name: String,
    pub site_id: String,
    pub expires_at: String,
    pub max_uses: i64,
    pub uses: i64,
    pub allowed_ips: Vec<String>,
    pub revoked_at: Option<String>,
    pub created_at: String,
}

impl Tabular for EnrollmentToken {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "NAME",
            "SITE",
            "USES",
            "EXPIRES",
            "ALLOWED IPS",
            "REVOKED",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.site_id.clone(),
            format!("{}/{}", self.uses, self.max_uses),
            self.expires_at.clone(),
            if self.allowed_ips.is_empty() {
                "any".to_owned()
            } else {
                self.allowed_ips.join(", ")
            },
            or_dash(self.revoked_at.as_deref()),
        ]
    }
}

/// The token string with its row: the only time the secret is shown.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedEnrollmentToken {
    pub token: String,
    pub enrollment_token: EnrollmentToken,
}

impl Tabular for CreatedEnrollmentToken {
    fn columns() -> &'static [&'static str] {
        &["ID", "SITE", "USES", "EXPIRES", "TOKEN"]
    }

    fn cells(&self) -> Vec<String> {
        let t = &self.enrollment_token;
        vec![
            t.id.clone(),
            t.site_id.clone(),
            format!("{}/{}", t.uses, t.max_uses),
            t.expires_at.clone(),
            self.token.clone(),
        ]
    }
}

pub async fn run(ctx: &Context, command: EnrollTokensCommand) -> Result<()> {
    let mut client = ctx.client()?;
    match command {
        EnrollTokensCommand::List(args) => {
            let listing = fetch_list::<EnrollmentToken>(
                &mut client,
                "enrollmentTokens",
                LIST,
                Map::new(),
                args.limit,
            )
            .await?;
            ctx.output.list(&listing.rows)?;
            listing.note_truncation("enrollment tokens");
            Ok(())
        }
        EnrollTokensCommand::Create(args) => {
            let created: CreatedEnrollmentToken = client
                .query(
                    "createEnrollmentToken",
                    CREATE,
                    json!({ "input": create_input(&args) }),
                )
                .await?;
            ctx.output.item(&created)?;
            output::notice(
                "store the token now: it will not be shown again \
                 (use it with: mobius-agent enroll --server https://HOST:8443 --token TOKEN)",
            );
            Ok(())
        }
        EnrollTokensCommand::Revoke { id } => {
            let revoked: EnrollmentToken = client
                .query("revokeEnrollmentToken", REVOKE, json!({ "id": id }))
                .await?;
            ctx.output.item(&revoked)
        }
    }
}

fn create_input(args: &CreateEnrollTokenArgs) -> Value {
    json!({
        "siteId": args.site_id,
        "name": args.name,
        "ttlMinutes": args.ttl_minutes,
        "maxUses": args.max_uses,
        "allowedIps": args.allowed_ips,
    })
}
