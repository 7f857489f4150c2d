//! OIDC single sign-on end to end: the real `mobius-server` against a real
//! OpenID provider (npm `oidc-provider`, `tests/peers/oidc.mjs`), with the
//! browser's part of the flow driven over plain HTTP (redirects followed
//! by hand, cookies kept per host).
//!
//! Covers: JIT provisioning with the mapped role, a group change taking
//! effect on the next sign-in, an email domain outside the allow-list, a
//! wrong `state`, a replayed callback and a replayed code, an ID token for
//! another client id, an expired ID token, and "SSO required" refusing
//! password login (except a break-glass owner). Every refusal is audited.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use mobius_tests::{ServerProcess, TestDatabase, uuid_of};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const OWNER_EMAIL: &str = "owner@example.com";
const OWNER_PASSWORD: &str = "correct horse battery staple";

/// The OpenID provider process; killed on drop.
struct OidcProvider {
    child: Child,
    issuer: String,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    fn start(redirect_uri: &str) -> OidcProvider {
        let peers = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
        assert!(
            peers.join("node_modules/oidc-provider").exists(),
            "tests/peers/node_modules is missing: run `npm ci` in tests/peers (.ci/run does)"
        );
        let mut child = Command::new("node")
            .current_dir(&peers)
            .args(["oidc.mjs", "--redirect-uri", redirect_uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node tests/peers/oidc.mjs (is Node.js installed?)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let issuer = loop {
            let line = lines
                .next()
                .expect("oidc.mjs exited before printing its issuer")
                .expect("read oidc.mjs output");
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(issuer) = v["issuer"].as_str()
            {
                break issuer.to_owned();
            }
        };
        // Keep reading, so a later line never meets a closed pipe.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        OidcProvider { child, issuer }
    }
}

/// A browser: no automatic redirects, cookies per host:port.
struct Browser {
    http: reqwest::Client,
    jar: HashMap<String, HashMap<String, String>>,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: HashMap::new(),
        }
    }

    async fn get(&mut self, url: &str) -> reqwest::Response {
        let parsed = url::Url::parse(url).unwrap();
        let host = format!(
            "{}:{}",
            parsed.host_str().unwrap(),
            parsed.port().unwrap_or(80)
        );
        let mut request = self.http.get(url);
        if let Some(cookies) = self.jar.get(&host)
            && !cookies.is_empty()
        {
            let header: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.header(COOKIE, header.join("; "));
        }
        let response = request.send().await.expect("browser GET");
        for value in response.headers().get_all(SET_COOKIE) {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                let cookies = self.jar.entry(host.clone()).or_default();
                if v.is_empty()
                    || text.contains("Max-Age=0")
                    || text.contains("expires=Thu, 01 Jan 1970")
                {
                    cookies.remove(k);
                } else {
                    cookies.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        response
    }

    /// Follows redirects from `url` until one points at `stop_prefix`
    /// (returned, not followed) or a page answers without redirecting.
    async fn follow_until(
        &mut self,
        url: &str,
        stop_prefix: &str,
    ) -> Result<String, reqwest::Response> {
        let mut url = url.to_owned();
        for _ in 0..20 {
            if url.starts_with(stop_prefix) {
                return Ok(url);
            }
            let response = self.get(&url).await;
            let Some(location) = response.headers().get(LOCATION) else {
                return Err(response);
            };
            let next = url::Url::parse(&url)
                .unwrap()
                .join(location.to_str().unwrap())
                .unwrap();
            url = next.to_string();
        }
        panic!("too many redirects");
    }
}

struct Harness {
    server: ServerProcess,
    _db: Option<TestDatabase>,
    provider: OidcProvider,
    http: reqwest::Client,
    owner_token: String,
    owner_id: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A fresh server: the embedded SQLite store, or Postgres (row-level
    /// security, the slug lookup function) with a request role of its own.
    async fn start(postgres: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = if postgres {
            Some(TestDatabase::create().await)
        } else {
            None
        };
        let server = match &db {
            Some(db) => ServerProcess::start(
                dir.path(),
                &["--database-url", db.owner_url().expose_secret()],
                &[("MOBIUS_DATABASE_APP_ROLE", "mobius_sso_e2e_app")],
            ),
            None => ServerProcess::start(dir.path(), &[], &[]),
        };
        let provider = OidcProvider::start(&server.url("/api/v1/mobius/sso/default/oidc/callback"));
        let http = reqwest::Client::new();
        let code = server.setup_code.clone().expect("setup code");
        let setup = graphql(
            &http,
            &server,
            None,
            "mutation($i: SetupInput!) { setup(input: $i) { accessToken user { id } } }",
            json!({ "i": { "code": code, "email": OWNER_EMAIL, "password": OWNER_PASSWORD, "displayName": "Owner" } }),
        )
        .await;
        let owner_token = setup["data"]["setup"]["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let owner_id = setup["data"]["setup"]["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        Harness {
            server,
            _db: db,
            provider,
            http,
            owner_token,
            owner_id,
            _dir: dir,
        }
    }

    async fn owner(&self, query: &str, variables: Value) -> Value {
        graphql(
            &self.http,
            &self.server,
            Some(&self.owner_token),
            query,
            variables,
        )
        .await
    }

    async fn configure(&self, client_id: &str, extra: Value) -> Value {
        let mut input = json!({
            "issuerUrl": self.provider.issuer,
            "clientId": client_id,
            "clientSecret": format!("{client_id}-secret"),
            "scopes": ["email", "profile", "groups"],
            "allowedEmailDomains": ["example.com"],
            "groupsClaim": "groups",
            "groupRoles": [{ "group": "mobius-admins", "role": "ADMIN" }],
            "jitEnabled": true,
            "defaultRole": "OBSERVER",
        });
        for (k, v) in extra.as_object().unwrap() {
            input[k] = v.clone();
        }
        let answer = self
            .owner(
                "mutation($i: SetSsoConfigInput!) { setSsoConfig(input: $i) { clientId hasClientSecret startPath } }",
                json!({ "i": input }),
            )
            .await;
        let errors: Vec<Value> = self
            .server
            .log_events()
            .into_iter()
            .filter(|e| e["level"] == "ERROR")
            .collect();
        assert!(answer["errors"].is_null(), "{answer} {errors:?}");
        answer
    }

    /// Signs `account` in at the provider and returns the URL the provider
    /// redirected back to (Mobius's callback, not yet visited).
    async fn provider_round_trip(&self, browser: &mut Browser, account: Value) -> String {
        let response = self
            .http
            .post(format!("{}/test/next-login", self.provider.issuer))
            .json(&account)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        let start = self
            .server
            .url("/api/v1/mobius/sso/default/oidc/start?redirect_to=/devices");
        let callback_prefix = self.server.url("/api/v1/mobius/sso/default/oidc/callback");
        let first = browser.get(&start).await;
        assert_eq!(first.status(), 303, "start redirects to the IdP");
        let location = first.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(location.starts_with(&self.provider.issuer), "{location}");
        assert!(
            location.contains("code_challenge_method=S256"),
            "{location}"
        );
        assert!(location.contains("nonce="), "{location}");
        match browser.follow_until(&location, &callback_prefix).await {
            Ok(url) => url,
            Err(response) => panic!(
                "provider stopped at {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
        }
    }

    async fn refused_events(&self) -> Vec<Value> {
        let answer = self
            .owner(
                "{ auditEvents(last: 100) { nodes { action details } } }",
                json!({}),
            )
            .await;
        answer["data"]["auditEvents"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "sso.sign_in_refused")
            .cloned()
            .collect()
    }
}

async fn graphql(
    http: &reqwest::Client,
    server: &ServerProcess,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut request = http
        .post(server.url("/api/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

fn cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let text = v.to_str().ok()?;
        let (k, rest) = text.split_once('=')?;
        (k == name).then(|| rest.split(';').next().unwrap_or("").to_owned())
    })
}

/// Visits the callback; on success returns the viewer the session cookie
/// signs in as (through `refreshSession` with the CSRF double submit).
async fn finish(h: &Harness, browser: &mut Browser, callback: &str) -> Result<Value, (u16, Value)> {
    let response = browser.get(callback).await;
    let status = response.status().as_u16();
    if status != 303 {
        return Err((status, response.json().await.unwrap_or(Value::Null)));
    }
    assert_eq!(response.headers()[LOCATION], "/devices");
    let refresh = cookie(&response, "mobius_refresh").expect("refresh cookie");
    let csrf = cookie(&response, "mobius_csrf").expect("csrf cookie");
    let answer: Value = h
        .http
        .post(h.server.url("/api/graphql"))
        .header(
            COOKIE,
            format!("mobius_refresh={refresh}; mobius_csrf={csrf}"),
        )
        .header("x-csrf-token", csrf)
        .json(
            &json!({ "query": "mutation { refreshSession { accessToken user { email role } } }" }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer["errors"].is_null(), "{answer}");
    Ok(answer["data"]["refreshSession"].clone())
}

fn account(sub: &str, email: &str, groups: &[&str]) -> Value {
    json!({ "sub": sub, "email": email, "email_verified": true, "name": sub, "groups": groups })
}

#[tokio::test]
async fn oidc_sign_in_on_the_embedded_store() {
    oidc_sign_in_provisions_maps_groups_and_refuses_what_it_must(Harness::start(false).await).await;
}

#[tokio::test]
async fn oidc_sign_in_on_postgres() {
    oidc_sign_in_provisions_maps_groups_and_refuses_what_it_must(Harness::start(true).await).await;
}

async fn oidc_sign_in_provisions_maps_groups_and_refuses_what_it_must(h: Harness) {
    let team = h
        .owner(
            "mutation { createTeam(input: { name: \"ops\" }) { id } }",
            json!({}),
        )
        .await["data"]["createTeam"]["id"]
        .clone();
    let configured = h
        .configure(
            "mobius",
            json!({ "groupRoles": [
                { "group": "mobius-admins", "role": "ADMIN" },
                { "group": "ops", "teamId": team, "teamRole": "MAINTAINER" },
            ] }),
        )
        .await;
    assert_eq!(configured["data"]["setSsoConfig"]["hasClientSecret"], true);
    // The secret is write-only: the schema has no field that returns it.
    let read = h.owner("{ ssoConfig { clientSecret } }", json!({})).await;
    assert!(!read["errors"].is_null(), "{read}");

    // 1. JIT: a new person in mobius-admins becomes an admin.
    let mut browser = Browser::new();
    let callback = h
        .provider_round_trip(
            &mut browser,
            account("ada", "ada@example.com", &["mobius-admins", "ops"]),
        )
        .await;
    let viewer = finish(&h, &mut browser, &callback)
        .await
        .expect("ada signs in");
    assert_eq!(viewer["user"]["email"], "ada@example.com");
    assert_eq!(viewer["user"]["role"], "ADMIN");

    // 2. The same callback again: the state was consumed.
    let (status, body) = finish(&h, &mut browser, &callback)
        .await
        .expect_err("replayed callback");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "BAD_USER_INPUT");

    // 3. Leaving the group at the IdP demotes at the next sign-in.
    let mut browser = Browser::new();
    let callback = h
        .provider_round_trip(&mut browser, account("ada", "ada@example.com", &[]))
        .await;
    let viewer = finish(&h, &mut browser, &callback)
        .await
        .expect("ada signs in again");
    assert_eq!(viewer["user"]["role"], "OBSERVER");

    // 3b. The IdP rotates its signing key: the new `kid` is unknown to the
    // cached JWKS, which Mobius fetches again instead of refusing.
    let rotated = h
        .http
        .post(format!("{}/test/rotate-key", h.provider.issuer))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 204);
    let mut browser = Browser::new();
    let after_rotation = h
        .provider_round_trip(&mut browser, account("ada", "ada@example.com", &[]))
        .await;
    let viewer = finish(&h, &mut browser, &after_rotation)
        .await
        .expect("a token signed with the rotated key verifies");
    assert_eq!(viewer["user"]["email"], "ada@example.com");

    // 3c. Redirect targets outside the allow-list are refused up front.
    for target in ["https://evil.example/", "//evil.example/x"] {
        let response = Browser::new()
            .get(&format!(
                "{}?redirect_to={}",
                h.server.url("/api/v1/mobius/sso/default/oidc/start"),
                url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
            ))
            .await;
        assert_eq!(response.status(), 400, "{target}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["field"], "redirect_to", "{body}");
    }

    // 4. A replayed code under a fresh state: the IdP refuses it.
    let old_code = url::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let mut browser = Browser::new();
    let fresh = h
        .provider_round_trip(&mut browser, account("ada", "ada@example.com", &[]))
        .await;
    let mut replayed = url::Url::parse(&fresh).unwrap();
    let state = replayed
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    replayed
        .query_pairs_mut()
        .clear()
        .append_pair("code", &old_code)
        .append_pair("state", &state);
    let (status, body) = finish(&h, &mut browser, replayed.as_str())
        .await
        .expect_err("replayed code");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{body}"
    );

    // 5. A state this server never issued.
    let (status, body) = finish(
        &h,
        &mut Browser::new(),
        &h.server
            .url("/api/v1/mobius/sso/default/oidc/callback?code=abc&state=forged"),
    )
    .await
    .expect_err("wrong state");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "state");

    // 6. An email domain outside the allow-list.
    let mut browser = Browser::new();
    let callback = h
        .provider_round_trip(
            &mut browser,
            account("eve", "eve@evil.test", &["mobius-admins"]),
        )
        .await;
    let (status, body) = finish(&h, &mut browser, &callback)
        .await
        .expect_err("foreign domain");
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("evil.test"),
        "{body}"
    );

    // 7. An ID token issued for another client id.
    h.configure("mobius-otheraud", json!({})).await;
    let mut browser = Browser::new();
    let callback = h
        .provider_round_trip(&mut browser, account("bob", "bob@example.com", &[]))
        .await;
    let (status, body) = finish(&h, &mut browser, &callback)
        .await
        .expect_err("other audience");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another client"),
        "{body}"
    );

    // 8. An expired ID token.
    h.configure("mobius-expired", json!({})).await;
    let mut browser = Browser::new();
    let callback = h
        .provider_round_trip(&mut browser, account("bob", "bob@example.com", &[]))
        .await;
    let (status, body) = finish(&h, &mut browser, &callback)
        .await
        .expect_err("expired");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // Every refusal above is in the audit log with its reason; no one
    // else was created.
    let refused = h.refused_events().await;
    let reasons: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["details"]["reason"].as_str())
        .collect();
    for reason in [
        "invalid_state",
        "provider_refused",
        "email_domain_not_allowed",
        "invalid_id_token",
    ] {
        assert!(
            reasons.contains(&reason),
            "{reason} not audited: {reasons:?}"
        );
    }
    let users = h.owner("{ users { totalCount } }", json!({})).await;
    assert_eq!(
        users["data"]["users"]["totalCount"], 2,
        "owner and ada only"
    );

    // 9. SSO required: password login is refused except for a break-glass owner.
    let invite = h
        .owner(
            "mutation { inviteUser(input: { email: \"carol@example.com\", role: MAINTAINER }) { code } }",
            json!({}),
        )
        .await;
    let code = invite["data"]["inviteUser"]["code"].as_str().unwrap();
    let accepted = graphql(
        &h.http,
        &h.server,
        None,
        "mutation($c: String!) { acceptInvitation(input: { code: $c, password: \"carol's long password\", displayName: \"Carol\" }) { accessToken } }",
        json!({ "c": code }),
    )
    .await;
    assert!(accepted["errors"].is_null(), "{accepted}");
    h.configure(
        "mobius",
        json!({ "ssoRequired": true, "breakGlassUserIds": [h.owner_id] }),
    )
    .await;
    let login = "mutation($e: String!, $p: String!) { login(input: { email: $e, password: $p }) { accessToken } }";
    let carol = graphql(
        &h.http,
        &h.server,
        None,
        login,
        json!({ "e": "carol@example.com", "p": "carol's long password" }),
    )
    .await;
    assert_eq!(
        carol["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{carol}"
    );
    assert!(
        carol["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("single sign-on")
    );
    let owner = graphql(
        &h.http,
        &h.server,
        None,
        login,
        json!({ "e": OWNER_EMAIL, "p": OWNER_PASSWORD }),
    )
    .await;
    assert!(
        owner["errors"].is_null(),
        "break-glass owner signs in: {owner}"
    );
    let _ = uuid_of(&h.owner_id);
}

/// `mobius login --sso`: the CLI prints the sign-in URL, the browser
/// comes back to the CLI's loopback listener, and the CLI ends up with a
/// working saved session. `mobius sso get` shows the configuration to an
/// owner without the secret.
#[tokio::test]
async fn the_cli_signs_in_through_the_identity_provider() {
    let h = Harness::start(false).await;
    h.configure("mobius", json!({})).await;
    let config_dir = tempfile::tempdir().unwrap();
    let mobius = |args: &[&str]| {
        let mut command = Command::new(mobius_tests::workspace_binary("mobius"));
        command
            .args(args)
            .env("MOBIUS_SERVER", h.server.url(""))
            .env("MOBIUS_CONFIG_DIR", config_dir.path())
            .env_remove("MOBIUS_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };

    let mut login = mobius(&["login", "--sso", "--no-browser"]).spawn().unwrap();
    let stderr = BufReader::new(login.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let url = loop {
        let line = lines
            .next()
            .expect("mobius exited before printing the sign-in URL")
            .unwrap();
        if let Some(url) = line.trim().strip_prefix("http") {
            break format!("http{url}");
        }
    };
    assert!(
        url.contains("/api/v1/mobius/sso/default/oidc/start?cli_port="),
        "{url}"
    );
    let response = h
        .http
        .post(format!("{}/test/next-login", h.provider.issuer))
        .json(&account("dan", "dan@example.com", &["mobius-admins"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let mut browser = Browser::new();
    let callback = browser
        .follow_until(
            &url,
            &h.server.url("/api/v1/mobius/sso/default/oidc/callback"),
        )
        .await
        .unwrap_or_else(|r| panic!("provider stopped at {}", r.status()));
    let back = browser.get(&callback).await;
    assert_eq!(back.status(), 303);
    let loopback = back.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(loopback.starts_with("http://127.0.0.1:"), "{loopback}");
    // The one-time code alone (without the CLI's verifier) is refused.
    let code = url::Url::parse(&loopback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let stolen = h
        .http
        .post(h.server.url("/api/v1/mobius/sso/default/oidc/cli-token"))
        .json(&json!({ "code": code, "code_verifier": "guessed-verifier-guessed-verifier-guessed-ve" }))
        .send()
        .await
        .unwrap();
    assert_eq!(stolen.status(), 401);
    let page = browser.get(&loopback).await;
    assert_eq!(page.status(), 200);
    let output = tokio::task::spawn_blocking(move || login.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "mobius login --sso: {stdout}");
    assert!(
        stdout.contains("logged in to") && stdout.contains("dan@example.com"),
        "{stdout}"
    );

    let whoami = mobius(&["whoami", "--output", "json"]).output().unwrap();
    let viewer: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(viewer["user"]["email"], "dan@example.com", "{viewer}");
    assert_eq!(viewer["role"], "ADMIN", "{viewer}");

    // An admin may not read the SSO configuration; the owner may, and
    // never sees the secret.
    let denied = mobius(&["sso", "get"]).output().unwrap();
    assert!(!denied.status.success());
    let get = mobius(&["sso", "get", "--output", "json"])
        .env("MOBIUS_TOKEN", &h.owner_token)
        .output()
        .unwrap();
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    let shown = String::from_utf8_lossy(&get.stdout);
    let config: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(config["clientId"], "mobius");
    assert_eq!(config["hasClientSecret"], true);
    assert!(!shown.contains("mobius-secret"), "{shown}");
}

/// SAML single sign-on end to end: the real `mobius-server-cloud` (the
/// edition with the samael engine) against a real SAML IdP (pysaml2 with
/// Debian xmlsec1, `tests/peers/saml_idp.py`), the browser's part (the
/// redirect to the IdP, the auto-posted form back) driven over HTTP.
mod saml {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    use mobius_tests::{ServerProcess, TestDatabase};
    use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
    use secrecy::ExposeSecret;
    use serde_json::{Value, json};

    use super::{OWNER_PASSWORD, cookie, graphql};

    const OWNER: &str = "owner@saml.test";

    /// The pysaml2 IdP process; killed on drop.
    struct SamlIdp {
        child: Child,
        base: String,
    }

    impl Drop for SamlIdp {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl SamlIdp {
        fn start() -> SamlIdp {
            let venv = std::env::var("MOBIUS_PEERS_VENV")
                .unwrap_or_else(|_| "/var/cache/mobius/peers-venv".to_owned());
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/saml_idp.py");
            let mut child = Command::new(format!("{venv}/bin/python"))
                .arg(script)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start tests/peers/saml_idp.py (run tests/peers/install.sh for pysaml2)");
            let stdout = child.stdout.take().expect("piped stdout");
            let mut lines = BufReader::new(stdout).lines();
            let base = loop {
                let line = lines
                    .next()
                    .expect("saml_idp.py exited before listening (is pysaml2 installed?)")
                    .expect("read saml_idp.py output");
                if let Some(base) = line.strip_prefix("listening on ") {
                    break base.trim().to_owned();
                }
            };
            std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
            SamlIdp { child, base }
        }
    }

    struct Cloud {
        server: ServerProcess,
        _db: TestDatabase,
        _dir: tempfile::TempDir,
        http: reqwest::Client,
        token: String,
    }

    impl Cloud {
        async fn start(config: &str) -> Cloud {
            let db = TestDatabase::create().await;
            let dir = tempfile::tempdir().unwrap();
            let config_path = dir.path().join("cloud.toml");
            std::fs::write(&config_path, config).unwrap();
            let server = ServerProcess::start_binary(
                "mobius-server-cloud",
                dir.path(),
                &[
                    "--database-url",
                    db.owner_url().expose_secret(),
                    "--config",
                    config_path.to_str().unwrap(),
                ],
                &[],
            );
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let code = server.setup_code.clone().expect("setup code");
            let setup = graphql(
                &http,
                &server,
                None,
                "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
                json!({ "i": { "code": code, "email": OWNER, "password": OWNER_PASSWORD, "displayName": "Owner" } }),
            )
            .await;
            let token = setup["data"]["setup"]["accessToken"]
                .as_str()
                .unwrap_or_else(|| panic!("{setup}"))
                .to_owned();
            Cloud {
                server,
                _db: db,
                _dir: dir,
                http,
                token,
            }
        }

        async fn gql(&self, query: &str, variables: Value) -> Value {
            graphql(
                &self.http,
                &self.server,
                Some(&self.token),
                query,
                variables,
            )
            .await
        }

        async fn put_config(&self, body: Value) -> (u16, Value) {
            let response = self
                .http
                .put(self.server.url("/api/v1/mobius/sso/saml/config"))
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }

        async fn audit(&self, action: &str) -> Vec<Value> {
            let answer = self
                .gql(
                    "{ auditEvents(last: 200) { nodes { action details } } }",
                    json!({}),
                )
                .await;
            answer["data"]["auditEvents"]["nodes"]
                .as_array()
                .unwrap_or_else(|| panic!("{answer}"))
                .iter()
                .filter(|e| e["action"] == action)
                .cloned()
                .collect()
        }

        async fn user_emails(&self) -> Vec<String> {
            let answer = self.gql("{ users { nodes { email } } }", json!({})).await;
            answer["data"]["users"]["nodes"]
                .as_array()
                .unwrap_or_else(|| panic!("{answer}"))
                .iter()
                .map(|u| u["email"].as_str().unwrap().to_owned())
                .collect()
        }

        /// SP-initiated: asks Mobius to start, checks the AuthnRequest
        /// redirect, and lets the IdP answer with `idp_params` (`case`,
        /// `email`, `groups`). Returns the ACS URL and form fields.
        async fn sp_initiated(
            &self,
            idp: &SamlIdp,
            idp_params: &str,
        ) -> (String, Vec<(String, String)>) {
            let start = self
                .http
                .get(
                    self.server
                        .url("/api/v1/mobius/sso/default/saml/login?redirect_to=/devices"),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(start.status(), 303, "login redirects to the IdP");
            let location = start.headers()[LOCATION].to_str().unwrap().to_owned();
            assert!(
                location.starts_with(&format!("{}/sso?", idp.base)),
                "{location}"
            );
            assert!(location.contains("SAMLRequest="), "{location}");
            assert!(location.contains("RelayState="), "{location}");
            idp_form(&self.http, &format!("{location}&{idp_params}")).await
        }

        async fn post_acs(&self, acs: &str, fields: &[(String, String)]) -> reqwest::Response {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish();
            self.http
                .post(acs)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
        }

        /// The signed-in viewer behind an ACS answer's session cookies.
        async fn viewer(&self, response: &reqwest::Response) -> Value {
            let refresh = cookie(response, "mobius_refresh").expect("refresh cookie");
            let csrf = cookie(response, "mobius_csrf").expect("csrf cookie");
            let answer: Value = self
                .http
                .post(self.server.url("/api/graphql"))
                .header(COOKIE, format!("mobius_refresh={refresh}; mobius_csrf={csrf}"))
                .header("x-csrf-token", csrf)
                .json(&json!({ "query": "mutation { refreshSession { user { email role displayName } } }" }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(answer["errors"].is_null(), "{answer}");
            answer["data"]["refreshSession"]["user"].clone()
        }
    }

    /// Reads the IdP's auto-post form: its action and hidden fields.
    async fn idp_form(http: &reqwest::Client, url: &str) -> (String, Vec<(String, String)>) {
        let response = http.get(url).send().await.unwrap();
        let status = response.status();
        let page = response.text().await.unwrap();
        assert_eq!(status, 200, "{page}");
        let attr = |tag: &str, name: &str| {
            let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
            let end = tag[at..].find('"')? + at;
            Some(tag[at..end].replace("&amp;", "&").replace("&quot;", "\""))
        };
        let form_tag = page.split("<form").nth(1).unwrap();
        let action = attr(form_tag, "action").unwrap();
        let fields = page
            .split("<input")
            .skip(1)
            .filter_map(|tag| Some((attr(tag, "name")?, attr(tag, "value")?)))
            .collect();
        (action, fields)
    }

    /// Asserts a refusal: status 401, the message, no session cookie.
    async fn refused(response: reqwest::Response, needle: &str) -> Value {
        let status = response.status().as_u16();
        assert!(
            response
                .headers()
                .get_all(SET_COOKIE)
                .iter()
                .next()
                .is_none(),
            "a refused response sets no cookie"
        );
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "expected `{needle}` in: {message}"
        );
        body
    }

    #[tokio::test]
    async fn saml_sign_in_against_a_pysaml2_idp() {
        let idp = SamlIdp::start();
        let cloud = Cloud::start("").await;

        // The SP metadata the IdP admin needs: entity id and ACS.
        let metadata = cloud
            .http
            .get(cloud.server.url("/api/v1/mobius/sso/default/saml/metadata"))
            .send()
            .await
            .unwrap();
        assert_eq!(metadata.status(), 200);
        let metadata = metadata.text().await.unwrap();
        let acs_url = cloud.server.url("/api/v1/mobius/sso/default/saml/acs");
        assert!(
            metadata.contains(&format!(
                "entityID=\"{}\"",
                cloud.server.url("/api/v1/mobius/sso/default/saml/metadata")
            )),
            "{metadata}"
        );
        assert!(
            metadata.contains(&format!("Location=\"{acs_url}\"")),
            "{metadata}"
        );
        assert!(!metadata.contains("SingleLogoutService"), "{metadata}");

        // Not configured yet: sign-in says so.
        let early = cloud
            .http
            .get(cloud.server.url("/api/v1/mobius/sso/default/saml/login"))
            .send()
            .await
            .unwrap();
        assert_eq!(early.status(), 404);

        // Bad metadata is refused with a field.
        let (status, body) = cloud
            .put_config(json!({ "metadata_xml": "<not-metadata/>" }))
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "BAD_USER_INPUT");

        // Configure from the IdP's metadata URL.
        let (status, config) = cloud
            .put_config(json!({
                "metadata_url": format!("{}/metadata", idp.base),
                "groups_attribute": "groups",
                "name_attribute": "displayName",
                "group_roles": [{ "group": "mobius-admins", "role": "admin" }],
                "allowed_email_domains": ["example.com"],
                "jit_enabled": true,
                "default_role": "observer",
            }))
            .await;
        assert_eq!(status, 200, "{config}");
        assert_eq!(config["idp_entity_id"], format!("{}/metadata", idp.base));
        assert_eq!(config["idp_cert_fingerprints"].as_array().unwrap().len(), 1);
        assert_eq!(config["acs_url"], acs_url);
        assert_eq!(config["allow_idp_initiated"], false);
        assert_eq!(cloud.audit("sso.saml_configured").await.len(), 1);

        // 1. A good signed response: JIT user with the mapped role, a
        //    session, an audit event.
        let (acs, fields) = cloud
            .sp_initiated(
                &idp,
                "case=good&email=ada@example.com&groups=mobius-admins&name=Ada",
            )
            .await;
        assert_eq!(acs, acs_url);
        let response = cloud.post_acs(&acs, &fields).await;
        assert_eq!(response.status(), 303, "{:?}", response.headers());
        assert_eq!(response.headers()[LOCATION], "/devices");
        let viewer = cloud.viewer(&response).await;
        assert_eq!(viewer["email"], "ada@example.com");
        assert_eq!(viewer["role"], "ADMIN");
        assert_eq!(viewer["displayName"], "Ada");
        let signed_in = cloud.audit("user.sso_signed_in").await;
        assert_eq!(signed_in.len(), 1);
        assert_eq!(signed_in[0]["details"]["protocol"], "saml");
        assert_eq!(signed_in[0]["details"]["provisioned"], true);

        // 2. The same form posted again: its request was answered.
        let again = cloud.post_acs(&acs, &fields).await;
        refused(again, "unsolicited").await;

        // 3. Each forged or stale response is refused, audited, no session.
        let cases = [
            ("unsigned", "not signed by the IdP's configured certificate"),
            (
                "other-key",
                "not signed by the IdP's configured certificate",
            ),
            ("wrapped", "exactly one is accepted"),
            ("expired", "expired"),
            ("audience", "another audience"),
            ("recipient", "Recipient is not this tenant's ACS URL"),
        ];
        for (case, needle) in cases {
            let before = cloud.audit("sso.sign_in_refused").await.len();
            let (acs, fields) = cloud
                .sp_initiated(
                    &idp,
                    &format!("case={case}&email=mallory@example.com&groups=mobius-admins"),
                )
                .await;
            refused(cloud.post_acs(&acs, &fields).await, needle).await;
            let refusals = cloud.audit("sso.sign_in_refused").await;
            assert_eq!(refusals.len(), before + 1, "{case}: one refusal audited");
            assert!(
                refusals.iter().any(|e| e["details"]["protocol"] == "saml"
                    && e["details"]["reason"] == "invalid_assertion"
                    && e["details"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(needle)),
                "{case}: {refusals:?}"
            );
        }
        assert!(
            !cloud
                .user_emails()
                .await
                .iter()
                .any(|e| e.starts_with("mallory")),
            "no forged response created a user"
        );

        // InResponseTo: a response to one sign-in, posted with the
        // RelayState of another, answers a request it was not made for.
        let other = cloud
            .http
            .get(cloud.server.url("/api/v1/mobius/sso/default/saml/login"))
            .send()
            .await
            .unwrap();
        let other_location = url::Url::parse(other.headers()[LOCATION].to_str().unwrap()).unwrap();
        let other_relay = other_location
            .query_pairs()
            .find(|(k, _)| k == "RelayState")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let (acs, mut fields) = cloud
            .sp_initiated(&idp, "case=good&email=carol@example.com")
            .await;
        for (name, value) in fields.iter_mut() {
            if name == "RelayState" {
                *value = other_relay.clone();
            }
        }
        refused(
            cloud.post_acs(&acs, &fields).await,
            "does not answer the sign-in this server started",
        )
        .await;

        // An XML comment slipped into the signed NameID and email must
        // not shorten `eve@example.com.evil.test` to `eve@example.com`
        // (the 2018 comment-truncation bug of several SAML libraries).
        // The signature alone still verifies (`xmlsec1 --verify` accepts
        // it: comments are outside the canonical form), but samael's
        // reduction to the verified content refuses the altered element.
        let (acs, fields) = cloud
            .sp_initiated(&idp, "case=comment&email=eve@example.com.evil.test&cut=15")
            .await;
        refused(
            cloud.post_acs(&acs, &fields).await,
            "not signed by the IdP's configured certificate",
        )
        .await;
        assert!(
            !cloud
                .user_emails()
                .await
                .iter()
                .any(|e| e.starts_with("eve")),
            "no user from the comment trick"
        );

        // 4. IdP-initiated is off: an unsolicited good response is refused.
        let unsolicited_url = format!(
            "{}/unsolicited?acs={}&audience={}&case=good&email=bob@example.com",
            idp.base,
            acs_url,
            cloud.server.url("/api/v1/mobius/sso/default/saml/metadata"),
        );
        let (acs, fields) = idp_form(&cloud.http, &unsolicited_url).await;
        refused(
            cloud.post_acs(&acs, &fields).await,
            "IdP-initiated sign-in is off",
        )
        .await;

        // 5. Turned on (through the CLI, GraphQL `setSamlConfig`), it signs
        //    in; the same response replayed is refused by the assertion-id
        //    replay cache.
        let metadata_file = tempfile::NamedTempFile::new().unwrap();
        let idp_metadata = cloud
            .http
            .get(format!("{}/metadata", idp.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        std::fs::write(metadata_file.path(), idp_metadata).unwrap();
        let output = Command::new(mobius_tests::workspace_binary("mobius"))
            .args(["-o", "json", "sso", "saml", "set", "--metadata"])
            .arg(metadata_file.path())
            .args([
                "--jit",
                "--allow-idp-initiated",
                "--group-role",
                "mobius-admins=admin",
            ])
            .env("MOBIUS_SERVER", cloud.server.url(""))
            .env("MOBIUS_TOKEN", &cloud.token)
            .env("MOBIUS_CONFIG_DIR", cloud._dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let set: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(set["allowIdpInitiated"], true, "{set}");
        assert_eq!(set["idpMetadataUrl"], Value::Null, "{set}");
        assert_eq!(set["acsPath"], "/api/v1/mobius/sso/default/saml/acs");
        let read = cloud
            .gql(
                "{ samlConfig { allowIdpInitiated jitEnabled groupRoles { group role } } }",
                json!({}),
            )
            .await;
        assert_eq!(
            read["data"]["samlConfig"]["allowIdpInitiated"], true,
            "{read}"
        );
        assert_eq!(
            read["data"]["samlConfig"]["groupRoles"][0]["role"], "ADMIN",
            "{read}"
        );
        // Without metadata the CLI refuses before asking the server.
        let missing = Command::new(mobius_tests::workspace_binary("mobius"))
            .args(["sso", "saml", "set", "--jit"])
            .env("MOBIUS_SERVER", cloud.server.url(""))
            .env("MOBIUS_TOKEN", &cloud.token)
            .output()
            .unwrap();
        assert!(!missing.status.success());
        assert!(
            String::from_utf8_lossy(&missing.stderr).contains("--metadata"),
            "{}",
            String::from_utf8_lossy(&missing.stderr)
        );
        let (acs, fields) = idp_form(&cloud.http, &unsolicited_url).await;
        let response = cloud.post_acs(&acs, &fields).await;
        assert_eq!(response.status(), 303);
        assert_eq!(cloud.viewer(&response).await["email"], "bob@example.com");
        refused(cloud.post_acs(&acs, &fields).await, "already used").await;
        assert!(
            cloud
                .audit("sso.sign_in_refused")
                .await
                .iter()
                .any(|e| e["details"]["reason"] == "replayed"),
            "the replay is audited"
        );
    }

    /// The OSS binary has no SAML engine (samael is cloud-only): its SAML
    /// endpoints say so instead of pretending to work.
    #[tokio::test]
    async fn the_oss_edition_answers_that_saml_is_in_the_cloud_edition() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(dir.path(), &[], &[]);
        let http = reqwest::Client::new();
        for path in ["metadata", "login"] {
            let response = http
                .get(server.url(&format!("/api/v1/mobius/sso/default/saml/{path}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{path}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "NOT_FOUND");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("cloud edition"),
                "{body}"
            );
        }
    }

    /// A tenant whose plan lacks SAML gets LICENSE_REQUIRED, naming the
    /// feature, from every SAML endpoint.
    #[tokio::test]
    async fn saml_needs_a_plan_with_it() {
        let cloud = Cloud::start(
            r#"
[billing]
webhook_secrets = ["whsec_0123456789abcdef0123"]

[billing.free]
tier = "free"
device_limit = 5
features = []
"#,
        )
        .await;
        let (status, body) = cloud
            .put_config(json!({ "metadata_xml": "<md:EntityDescriptor/>" }))
            .await;
        assert_eq!(status, 402, "{body}");
        assert_eq!(body["error"]["code"], "LICENSE_REQUIRED");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("SAML single sign-on"), "{message}");
        assert!(message.contains("premium"), "{message}");
        let gql = cloud.gql("{ samlConfig { enabled } }", json!({})).await;
        assert_eq!(
            gql["errors"][0]["extensions"]["code"], "LICENSE_REQUIRED",
            "{gql}"
        );
        for path in ["metadata", "login"] {
            let response = cloud
                .http
                .get(
                    cloud
                        .server
                        .url(&format!("/api/v1/mobius/sso/default/saml/{path}")),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 402, "{path}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "LICENSE_REQUIRED", "{path}");
        }
        let response = cloud
            .http
            .post(cloud.server.url("/api/v1/mobius/sso/default/saml/acs"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("SAMLResponse=PHg%2B")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 402);
    }
}
