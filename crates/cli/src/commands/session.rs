//! `setup`, `login`, `logout` and `whoami`.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Context;
use super::users::User;
use crate::cli::{LoginArgs, SetupArgs};
use crate::client::Client;
use crate::output::{self, Tabular, label, or_dash};
use crate::password::{Confirm, read_password};
use crate::session::{self as operations, AuthPayload};

pub async fn setup(ctx: &Context, args: SetupArgs) -> Result<()> {
    let client = ctx.anonymous_client()?;
    let password = read_password(args.password_stdin, Confirm::Twice).await?;
    let variables = json!({
        "input": {
            "code": args.code,
            "email": args.email,
            "password": password.expose(),
            "displayName": args.display_name,
        }
    });
    let payload: AuthPayload = client
        .query_anonymously("setup", operations::SETUP, variables)
        .await?;
    save_session(ctx, &client, &payload)?;
    ctx.output.confirmation(
        &format!(
            "created the owner {} on {} and logged in",
            payload.user.email,
            client.server()
        ),
        &payload.user,
    )
}

pub async fn login(ctx: &Context, args: LoginArgs) -> Result<()> {
    let client = ctx.anonymous_client()?;
    let password = read_password(args.password_stdin, Confirm::Once).await?;
    let variables = json!({
        "input": {
            "email": args.email.unwrap_or_default(),
            "password": password.expose(),
            "tenant": args.tenant,
            "useCookie": false,
        }
    });
    let payload: AuthPayload = client
        .query_anonymously("login", operations::LOGIN, variables)
        .await?;
    save_session(ctx, &client, &payload)?;
    ctx.output.confirmation(
        &format!(
            "logged in to {} as {} ({})",
            client.server(),
            payload.user.email,
            label(&payload.user.role)
        ),
        &payload.user,
    )
}

pub(super) fn save_session(ctx: &Context, client: &Client, payload: &AuthPayload) -> Result<()> {
    ctx.store().save(&payload.new_credentials(client.server()))
}

/// Ends the session on the server if it can, and forgets it locally in any
/// case: a user who logs out expects the tokens gone from this machine
/// even when the server is down or the session already expired.
pub async fn logout(ctx: &Context) -> Result<()> {
    let client = match ctx.saved_session_client() {
        Ok(client) => client,
        Err(err) => {
            // An unreadable file is still a file to remove.
            output::notice(&format!("the saved login was unreadable: {err:#}"));
            None
        }
    };
    let Some(mut client) = client else {
        if ctx.store().delete()? {
            output::notice("removed the saved login");
        } else {
            output::notice("not logged in");
        }
        return Ok(());
    };

    let server = client.server().to_owned();
    let revoked = client.end_session().await;
    ctx.store().delete()?;
    match revoked {
        Ok(_) => output::notice(&format!("logged out of {server}")),
        Err(err) => output::notice(&format!(
            "removed the saved login, but could not end the session on {server}: {err:#}"
        )),
    }
    Ok(())
}

const VIEWER: &str = "query Viewer {
  viewer {
    kind role
    user { id email displayName role createdAt }
    tenant { id name slug }
  }
}";

/// Who the request is made as: a user, or an API token (which has no user).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Viewer {
    pub kind: String,
    pub role: String,
    pub user: Option<User>,
    pub tenant: Tenant,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub slug: String,
}

impl Tabular for Viewer {
    fn columns() -> &'static [&'static str] {
        &["KIND", "EMAIL", "NAME", "ROLE", "TENANT", "TENANT ID"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            label(&self.kind),
            or_dash(self.user.as_ref().map(|user| user.email.as_str())),
            or_dash(self.user.as_ref().map(|user| user.display_name.as_str())),
            label(&self.role),
            format!("{} ({})", self.tenant.name, self.tenant.slug),
            self.tenant.id.clone(),
        ]
    }
}

pub async fn whoami(ctx: &Context) -> Result<()> {
    let mut client = ctx.client()?;
    let viewer: Viewer = client.query("viewer", VIEWER, json!({})).await?;
    ctx.output.item(&viewer)
}
