//! `login --sso` and `sso get|set`.
//!
//! `mobius login --sso` follows RFC 8252 (OAuth for native apps): it
//! listens on 127.0.0.1 on a free port, sends the browser to the server's
//! `oidc/start` with that port and the S256 challenge of a verifier only
//! it knows, and, when the browser comes back with a one-time code,
//! redeems code + verifier at `oidc/cli-token` for a session. A code
//! caught on the way is worthless without the verifier.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod saml;

use super::Context;
use crate::cli::{LoginArgs, SsoCommand, SsoSetArgs};
use crate::credentials::Credentials;
use crate::output::{self, Tabular, label, or_dash};
use crate::password::{Confirm, read_password};

/// How long the CLI waits for the browser to come back.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CliSession {
    access_token: String,
    access_token_expires_at: String,
    refresh_token: String,
    email: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

pub async fn login(ctx: &Context, args: LoginArgs) -> Result<()> {
    let server = ctx
        .anonymous_client()?
        .server()
        .trim_end_matches('/')
        .to_owned();
    let tenant = args.tenant.unwrap_or_else(|| "default".to_owned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1 for the browser to come back")?;
    let port = listener.local_addr()?.port();
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let url = format!(
        "{server}/api/v1/mobius/sso/{tenant}/oidc/start?cli_port={port}&cli_challenge={challenge}"
    );
    output::notice(&format!("Open this URL in a browser to sign in:\n  {url}"));
    if !args.no_browser {
        open_browser(&url);
    }
    let code = tokio::time::timeout(SIGN_IN_TIMEOUT, wait_for_code(&listener))
        .await
        .map_err(|_| {
            anyhow!(
                "no sign-in within {} s; run `mobius login --sso` again",
                SIGN_IN_TIMEOUT.as_secs()
            )
        })??;

    let http = reqwest::Client::builder()
        .user_agent(concat!("mobius-cli/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .build()?;
    let response = http
        .post(format!(
            "{server}/api/v1/mobius/sso/{tenant}/oidc/cli-token"
        ))
        .json(&json!({ "code": code, "code_verifier": verifier }))
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    if !response.status().is_success() {
        let status = response.status();
        match response.json::<ErrorBody>().await {
            Ok(body) => bail!("{} ({})", body.error.message, body.error.code),
            Err(_) => bail!("the server answered {status}"),
        }
    }
    let session: CliSession = response.json().await.context("unexpected answer")?;
    ctx.store().save(&Credentials {
        server: server.clone(),
        access_token: session.access_token.into(),
        access_token_expires_at: session.access_token_expires_at,
        refresh_token: Some(session.refresh_token.into()),
        email: session.email.clone(),
    })?;
    ctx.output.confirmation(
        &format!(
            "logged in to {server} as {} (single sign-on)",
            session.email
        ),
        &json!({ "server": server, "email": session.email }),
    )
}

/// Best effort: the URL is printed anyway.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Accepts connections on the loopback listener until one is the
/// browser's `GET /callback?code=...` (or `?error=...`), and answers it.
async fn wait_for_code(listener: &tokio::net::TcpListener) -> Result<String> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut buffer = vec![0u8; 8192];
        let mut read = 0;
        while read < buffer.len() {
            let n = stream.read(&mut buffer[read..]).await?;
            if n == 0 {
                break;
            }
            read += n;
            if buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buffer[..read]).into_owned();
        let target = head
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("GET "))
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or("");
        let Some(query) = target.strip_prefix("/callback?") else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            continue;
        };
        let param = |name: &str| {
            query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == name).then(|| v.to_owned())
            })
        };
        let (body, result) = match (param("code"), param("error")) {
            (Some(code), _) => (
                "Signed in to Mobius. You can close this window and return to the terminal.",
                Ok(code),
            ),
            (None, error) => (
                "Sign-in failed. Return to the terminal for details.",
                Err(anyhow!(
                    "the sign-in failed: {}",
                    error.unwrap_or_else(|| "no code came back".into())
                )),
            ),
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        return result;
    }
}

/// Parses GROUP=ROLE and GROUP=TEAM_ID:ROLE mappings into GraphQL input.
fn group_role_input(roles: &[String], team_roles: &[String]) -> Result<Vec<serde_json::Value>> {
    let mut group_roles = Vec::new();
    for mapping in roles {
        let (group, role) = mapping
            .split_once('=')
            .ok_or_else(|| anyhow!("--group-role {mapping}: expected GROUP=ROLE"))?;
        group_roles.push(json!({ "group": group, "role": graphql_role(role) }));
    }
    for mapping in team_roles {
        let parsed = mapping
            .split_once('=')
            .and_then(|(group, rest)| Some((group, rest.split_once(':')?)));
        let Some((group, (team, role))) = parsed else {
            bail!("--group-team-role {mapping}: expected GROUP=TEAM_ID:ROLE");
        };
        group_roles.push(json!({ "group": group, "teamId": team, "teamRole": graphql_role(role) }));
    }
    Ok(group_roles)
}

const GET: &str = "query SsoConfig { ssoConfig {
  issuerUrl clientId hasClientSecret scopes allowedEmailDomains groupsClaim
  groupRoles { group role teamId teamRole }
  jitEnabled defaultRole ssoRequired breakGlassUserIds allowedRedirectOrigins enabled startPath updatedAt
} }";

const SET: &str = "mutation SetSsoConfig($input: SetSsoConfigInput!) { setSsoConfig(input: $input) {
  issuerUrl clientId hasClientSecret scopes allowedEmailDomains groupsClaim
  groupRoles { group role teamId teamRole }
  jitEnabled defaultRole ssoRequired breakGlassUserIds allowedRedirectOrigins enabled startPath updatedAt
} }";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupRole {
    group: String,
    role: Option<String>,
    team_id: Option<String>,
    team_role: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SsoConfig {
    issuer_url: String,
    client_id: String,
    has_client_secret: bool,
    scopes: Vec<String>,
    allowed_email_domains: Vec<String>,
    groups_claim: Option<String>,
    group_roles: Vec<GroupRole>,
    jit_enabled: bool,
    default_role: String,
    sso_required: bool,
    break_glass_user_ids: Vec<String>,
    allowed_redirect_origins: Vec<String>,
    enabled: bool,
    start_path: String,
    updated_at: String,
}

impl Tabular for SsoConfig {
    fn columns() -> &'static [&'static str] {
        &[
            "ENABLED",
            "ISSUER",
            "CLIENT ID",
            "CLIENT SECRET",
            "SCOPES",
            "ALLOWED DOMAINS",
            "GROUPS CLAIM",
            "GROUP ROLES",
            "JIT",
            "DEFAULT ROLE",
            "SSO REQUIRED",
            "BREAK-GLASS",
            "REDIRECT ORIGINS",
            "START",
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
            self.issuer_url.clone(),
            self.client_id.clone(),
            if self.has_client_secret {
                "set (sealed)"
            } else {
                "-"
            }
            .to_owned(),
            list(&self.scopes),
            list(&self.allowed_email_domains),
            or_dash(self.groups_claim.as_deref()),
            list(&groups),
            self.jit_enabled.to_string(),
            label(&self.default_role),
            self.sso_required.to_string(),
            list(&self.break_glass_user_ids),
            list(&self.allowed_redirect_origins),
            self.start_path.clone(),
            self.updated_at.clone(),
        ]
    }
}

pub async fn run(ctx: &Context, command: SsoCommand) -> Result<()> {
    let mut client = ctx.client()?;
    match command {
        SsoCommand::Get => {
            let config: Option<SsoConfig> = client.query("ssoConfig", GET, json!({})).await?;
            match config {
                Some(config) => ctx.output.item(&config),
                None => ctx.output.confirmation(
                    "single sign-on is not configured (set it with `mobius sso set`)",
                    &serde_json::Value::Null,
                ),
            }
        }
        SsoCommand::Saml(command) => saml::run(ctx, &mut client, command).await,
        SsoCommand::Set(args) => {
            let input = set_input(&args).await?;
            let config: SsoConfig = client
                .query("setSsoConfig", SET, json!({ "input": input }))
                .await?;
            ctx.output.item(&config)
        }
    }
}

fn graphql_role(role: &str) -> String {
    role.trim().to_ascii_uppercase()
}

async fn set_input(args: &SsoSetArgs) -> Result<serde_json::Value> {
    let secret = if args.client_secret_stdin {
        Some(
            read_password(true, Confirm::Once)
                .await?
                .expose()
                .to_owned(),
        )
    } else {
        None
    };
    let group_roles = group_role_input(&args.group_roles, &args.group_team_roles)?;
    Ok(json!({
        "issuerUrl": args.issuer_url,
        "clientId": args.client_id,
        "clientSecret": secret,
        "scopes": args.scopes,
        "allowedEmailDomains": args.allowed_domains,
        "groupsClaim": args.groups_claim,
        "groupRoles": group_roles,
        "jitEnabled": args.jit,
        "defaultRole": graphql_role(&args.default_role),
        "ssoRequired": args.sso_required,
        "breakGlassUserIds": args.break_glass,
        "allowedRedirectOrigins": args.redirect_origins,
        "enabled": !args.disabled,
    }))
}
