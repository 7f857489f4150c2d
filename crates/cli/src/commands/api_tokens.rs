//! `api-tokens`: list, create (the token is shown once), revoke.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Context;
use crate::cli::{ApiTokensCommand, CreateApiTokenArgs};
use crate::credentials::Secret;
use crate::output::{self, Tabular, label, or_dash};
use crate::pagination::fetch_list;

const LIST: &str = "query ApiTokens($first: Int, $after: String) {
  apiTokens(first: $first, after: $after) {
    nodes { id name role teamId expiresAt lastUsedAt revokedAt createdAt }
    pageInfo { hasNextPage endCursor }
    totalCount
  }
}";

const CREATE: &str = "mutation CreateApiToken($input: CreateApiTokenInput!) {
  createApiToken(input: $input) {
    token
    apiToken { id name role teamId expiresAt lastUsedAt revokedAt createdAt }
  }
}";

const REVOKE: &str = "mutation RevokeApiToken($id: ID!) {
  revokeApiToken(id: $id) { id name role teamId expiresAt lastUsedAt revokedAt createdAt }
}";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: String,
    pub team_id: Option<String>,
    pub expires_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    pub created_at: String,
}

const API_TOKEN_COLUMNS: [&str; 8] = [
    "ID",
    "NAME",
    "ROLE",
    "TEAM ID",
    "EXPIRES",
    "LAST USED",
    "REVOKED",
    "CREATED",
];

impl Tabular for ApiToken {
    fn columns() -> &'static [&'static str] {
        &API_TOKEN_COLUMNS
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            label(&self.role),
            or_dash(self.team_id.as_deref()),
            self.expires_at.clone(),
            or_dash(self.last_used_at.as_deref()),
            or_dash(self.revoked_at.as_deref()),
            self.created_at.clone(),
        ]
    }
}

/// A new token with its secret, which the server will never show again.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiToken {
    pub token: Secret,
    pub api_token: ApiToken,
}

impl Tabular for CreatedApiToken {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "NAME",
            "ROLE",
            "TEAM ID",
            "EXPIRES",
            "LAST USED",
            "REVOKED",
            "CREATED",
            "TOKEN",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let mut cells = self.api_token.cells();
        cells.push(self.token.expose().to_owned());
        cells
    }
}

pub async fn run(ctx: &Context, command: ApiTokensCommand) -> Result<()> {
    let mut client = ctx.client()?;
    match command {
        ApiTokensCommand::List(args) => {
            let listing =
                fetch_list::<ApiToken>(&mut client, "apiTokens", LIST, Map::new(), args.limit)
                    .await?;
            ctx.output.list(&listing.rows)?;
            listing.note_truncation("API tokens");
            Ok(())
        }
        ApiTokensCommand::Create(args) => {
            let created: CreatedApiToken = client
                .query(
                    "createApiToken",
                    CREATE,
                    json!({ "input": create_input(&args) }),
                )
                .await?;
            ctx.output.item(&created)?;
            output::notice("store the token now: it will not be shown again");
            Ok(())
        }
        ApiTokensCommand::Delete { id } => {
            let revoked: ApiToken = client
                .query("revokeApiToken", REVOKE, json!({ "id": id }))
                .await?;
            ctx.output.item(&revoked)
        }
    }
}

/// Optional fields are left out rather than sent as null, so the server's
/// defaults apply.
fn create_input(args: &CreateApiTokenArgs) -> Value {
    let mut input = Map::new();
    input.insert("name".to_owned(), args.name.clone().into());
    input.insert("role".to_owned(), args.role.as_graphql().into());
    if let Some(team_id) = &args.team_id {
        input.insert("teamId".to_owned(), team_id.clone().into());
    }
    if let Some(days) = args.expires_in_days {
        input.insert("expiresInDays".to_owned(), days.into());
    }
    Value::Object(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Role;

    #[test]
    fn absent_options_are_left_out_of_the_input() {
        let args = CreateApiTokenArgs {
            name: "ci".to_owned(),
            role: Role::Gitops,
            team_id: None,
            expires_in_days: Some(30),
        };
        assert_eq!(
            create_input(&args),
            json!({ "name": "ci", "role": "GITOPS", "expiresInDays": 30 })
        );
    }
}
