//! Getting an enrollment token from the admin API (GraphQL): finish a
//! fresh server's setup with its one-time code, or act with a given access
//! token, then create a token good for a whole benchmark.

use anyhow::{Context, Result, anyhow, bail};
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::AdminArgs;

/// The most uses and the longest lifetime the server allows.
const TOKEN_MAX_USES: u64 = 100_000;
const TOKEN_TTL_MINUTES: u64 = 7 * 24 * 60;
/// The owner created with a setup code.
const SETUP_EMAIL: &str = "loadgen@mobius.invalid";

#[derive(Debug, Serialize)]
pub struct CreatedToken {
    /// The enrollment token (mobius1.<secret>.<pin>).
    pub token: String,
    /// The access token used to create it (from setup, or as given).
    pub access_token: String,
    pub site_id: String,
}

struct Admin {
    http: reqwest::Client,
    endpoint: String,
}

impl Admin {
    async fn call(&self, bearer: Option<&str>, query: &str, variables: Value) -> Result<Value> {
        let mut request = self
            .http
            .post(&self.endpoint)
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.endpoint))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("the admin API answered {status} without JSON"))?;
        if let Some(errors) = body.get("errors").filter(|e| !e.is_null()) {
            bail!("the admin API refused: {errors}");
        }
        Ok(body["data"].clone())
    }
}

/// Creates a token with `args` (which must name --admin and either
/// --setup-code or --admin-token).
pub async fn create_token(args: &AdminArgs) -> Result<CreatedToken> {
    let base = args.admin.as_deref().context(
        "no enrollment token: give --token, or --admin URL with --setup-code or --admin-token",
    )?;
    let admin = Admin {
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("cannot set up the HTTP client")?,
        endpoint: format!("{}/api/graphql", base.trim_end_matches('/')),
    };
    let access_token = match (&args.setup_code, &args.admin_token) {
        (_, Some(token)) => token.clone(),
        (Some(code), None) => {
            let password = Alphanumeric.sample_string(&mut rand::rng(), 24);
            let data = admin
                .call(
                    None,
                    "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
                    json!({ "i": { "code": code, "email": SETUP_EMAIL, "password": password, "displayName": "mobius-loadgen" } }),
                )
                .await
                .context("finishing setup with --setup-code")?;
            data["setup"]["accessToken"]
                .as_str()
                .context("setup answered without an access token")?
                .to_owned()
        }
        (None, None) => bail!("--admin needs --setup-code (a fresh server) or --admin-token"),
    };
    let site_id = match &args.site {
        Some(site) => site.clone(),
        None => {
            let data = admin
                .call(Some(&access_token), "{ sites { nodes { id } } }", json!({}))
                .await
                .context("listing sites")?;
            data["sites"]["nodes"][0]["id"]
                .as_str()
                .ok_or_else(|| anyhow!("the tenant has no site to enroll into"))?
                .to_owned()
        }
    };
    let data = admin
        .call(
            Some(&access_token),
            "mutation($i: CreateEnrollmentTokenInput!) { createEnrollmentToken(input: $i) { token } }",
            json!({ "i": { "siteId": site_id, "name": "mobius-loadgen", "maxUses": TOKEN_MAX_USES, "ttlMinutes": TOKEN_TTL_MINUTES } }),
        )
        .await
        .context("creating the enrollment token")?;
    let token = data["createEnrollmentToken"]["token"]
        .as_str()
        .context("createEnrollmentToken answered without a token")?
        .to_owned();
    Ok(CreatedToken {
        token,
        access_token,
        site_id,
    })
}
