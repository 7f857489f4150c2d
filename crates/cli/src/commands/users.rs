//! `users`: list, invite, remove.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::Context;
use crate::cli::UsersCommand;
use crate::output::{self, Tabular, label, or_dash};
use crate::pagination::fetch_list;

const LIST: &str = "query Users($first: Int, $after: String) {
  users(first: $first, after: $after) {
    nodes { id email displayName role createdAt }
    pageInfo { hasNextPage endCursor }
    totalCount
  }
}";

const INVITE: &str = "mutation InviteUser($input: InviteUserInput!) {
  inviteUser(input: $input) { id email role expiresAt code }
}";

const REMOVE: &str = "mutation RemoveUser($id: ID!) { removeUser(id: $id) }";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub role: String,
    pub created_at: String,
}

impl Tabular for User {
    fn columns() -> &'static [&'static str] {
        &["ID", "EMAIL", "NAME", "ROLE", "CREATED"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.email.clone(),
            self.display_name.clone(),
            label(&self.role),
            self.created_at.clone(),
        ]
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invitation {
    pub id: String,
    pub email: String,
    pub role: String,
    pub expires_at: String,
    /// The secret the invitee redeems; the server shows it only once.
    pub code: Option<String>,
}

impl Tabular for Invitation {
    fn columns() -> &'static [&'static str] {
        &["ID", "EMAIL", "ROLE", "EXPIRES", "CODE"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.email.clone(),
            label(&self.role),
            self.expires_at.clone(),
            or_dash(self.code.as_deref()),
        ]
    }
}

pub async fn run(ctx: &Context, command: UsersCommand) -> Result<()> {
    let mut client = ctx.client()?;
    match command {
        UsersCommand::List(args) => {
            let listing =
                fetch_list::<User>(&mut client, "users", LIST, Map::new(), args.limit).await?;
            ctx.output.list(&listing.rows)?;
            listing.note_truncation("users");
            Ok(())
        }
        UsersCommand::Invite { email, role } => {
            let variables = json!({ "input": { "email": email, "role": role.as_graphql() } });
            let invitation: Invitation = client.query("inviteUser", INVITE, variables).await?;
            ctx.output.item(&invitation)?;
            if invitation.code.is_some() {
                output::notice(&format!(
                    "send the code to {}; it will not be shown again",
                    invitation.email
                ));
            }
            Ok(())
        }
        UsersCommand::Delete { id } => {
            let removed: String = client
                .query("removeUser", REMOVE, json!({ "id": id }))
                .await?;
            ctx.output.confirmation(
                &format!("removed user {removed}"),
                &json!({ "id": removed }),
            )
        }
    }
}
