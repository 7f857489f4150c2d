//! Licenses end to end: the real `mobius-server` on Postgres, given
//! licenses signed with the test key (trusted only by debug builds, and
//! only with `license_trust_test_key`), and asked through REST, GraphQL,
//! the CLI and its log what it grants.

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mobius_tests::{ServerProcess, TestDatabase, workspace_binary};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const ISSUER: &str = "https://licenses.mobius.dev";

/// The test key's private half (PKCS#8 DER). Public on purpose: only a
/// debug build told `license_trust_test_key` trusts it.
const TEST_PRIVATE_KEY: &str = "MC4CAQAwBQYDK2VwBCIEIKE4JCyumrQhEQEvV15+uv3jepXla891dTvbzsqf5AKV";

/// A license signed with the test key, expiring `exp_days` from now.
fn license(tier: &str, devices: u64, exp_days: i64) -> String {
    license_with(json!({ "tier": tier, "devices": devices }), exp_days)
}

fn license_with(overrides: Value, exp_days: i64) -> String {
    let exp = Utc::now() + chrono::Duration::days(exp_days);
    let mut claims = json!({
        "iss": ISSUER, "sub": "Acme Corp", "tier": "premium", "devices": 100,
        "iat": (exp - chrono::Duration::days(365)).timestamp(),
        "exp": exp.timestamp(), "jti": "lic-test-0001",
    });
    for (k, v) in overrides.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let der = STANDARD.decode(TEST_PRIVATE_KEY).unwrap();
    jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &claims,
        &EncodingKey::from_ed_der(&der),
    )
    .unwrap()
}

/// A server on its own Postgres database, set up with an owner.
struct Licensed {
    db: TestDatabase,
    server: ServerProcess,
    data_dir: tempfile::TempDir,
    http: reqwest::Client,
    token: String,
}

impl Licensed {
    /// `license_key`: given as the setting; `license_file`: written to
    /// `license.key` in the data directory before start.
    async fn start(license_key: Option<&str>, license_file: Option<&str>) -> Licensed {
        Licensed::start_binary("mobius-server", license_key, license_file, &[]).await
    }

    async fn start_binary(
        binary: &str,
        license_key: Option<&str>,
        license_file: Option<&str>,
        extra_env: &[(&str, &str)],
    ) -> Licensed {
        let db = TestDatabase::create().await;
        let data_dir = tempfile::tempdir().unwrap();
        if let Some(file) = license_file {
            let dir = data_dir.path().join("mobius-data");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("license.key"), format!("{file}\n")).unwrap();
        }
        let mut env = vec![("MOBIUS_LICENSE_TRUST_TEST_KEY", "true")];
        if let Some(key) = license_key {
            env.push(("MOBIUS_LICENSE_KEY", key));
        }
        env.extend_from_slice(extra_env);
        let server = ServerProcess::start_binary(
            binary,
            data_dir.path(),
            &["--database-url", db.owner_url().expose_secret()],
            &env,
        );
        let http = reqwest::Client::new();
        let code = server.setup_code.clone().expect("setup code");
        let setup: Value = http
            .post(server.url("/api/graphql"))
            .json(&json!({
                "query": "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
                "variables": { "i": { "code": code, "email": "owner@acme.test", "password": PASSWORD, "displayName": "O" } },
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = setup["data"]["setup"]["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("{setup}"))
            .to_owned();
        Licensed {
            db,
            server,
            data_dir,
            http,
            token,
        }
    }

    async fn gql(&self, query: &str, variables: Value) -> Value {
        self.http
            .post(self.server.url("/api/graphql"))
            .bearer_auth(&self.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /api/v1/mobius/license/status` as the owner.
    async fn status(&self) -> Value {
        let response = self
            .http
            .get(self.server.url("/api/v1/mobius/license/status"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// `mobius license status` with the owner's token.
    fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let output = Command::new(workspace_binary("mobius"))
            .args(["--server", &self.server.url("")])
            .args(args)
            .env("MOBIUS_TOKEN", &self.token)
            .env("MOBIUS_CONFIG_DIR", self.data_dir.path().join("cli"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Enrolls a device with a fresh enrollment token; the status and body.
    async fn enroll(&self, fingerprint: &str) -> (u16, Value) {
        let (code, body, _) = self.enroll_with_key(fingerprint).await;
        (code, body)
    }

    /// An HTTPS client for the device listener, with a client identity.
    fn device_client(&self, identity_pem: Option<&str>) -> reqwest::Client {
        let ca = std::fs::read(self.data_dir.path().join("mobius-data/device-ca.pem")).unwrap();
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]);
        if let Some(pem) = identity_pem {
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }

    /// A heartbeat with the device's identity (certificate and key PEM).
    async fn ping(&self, identity_pem: &str) -> (u16, Value) {
        let response = self
            .device_client(Some(identity_pem))
            .post(format!(
                "https://{}/api/mobius/device/ping",
                self.server.device_addr
            ))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// As [`Licensed::enroll`], also returning the identity PEM on success.
    async fn enroll_with_key(&self, fingerprint: &str) -> (u16, Value, String) {
        let sites = self.gql("{ sites { nodes { id } } }", json!({})).await;
        let site = sites["data"]["sites"]["nodes"][0]["id"].as_str().unwrap();
        let created = self
            .gql(
                "mutation($i: CreateEnrollmentTokenInput!) { createEnrollmentToken(input: $i) { token } }",
                json!({ "i": { "siteId": site, "maxUses": 1 } }),
            )
            .await;
        let token = created["data"]["createEnrollmentToken"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{created}"));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(vec!["ignored.example".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let response = self
            .device_client(None)
            .post(format!(
                "https://{}/api/v1/mobius/device/enroll",
                self.server.device_addr
            ))
            .json(&json!({
                "token": token, "csr_pem": csr, "host_fingerprint": fingerprint,
                "facts": { "hostname": fingerprint, "os_name": "Debian", "os_version": "12", "kernel_version": "6.1",
                           "architecture": "x86_64", "cpu_model": "test", "cpu_cores": 2, "memory_bytes": 1024,
                           "uptime_secs": 1, "kvm_available": false, "agent_version": "test" }
            }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let identity = format!(
            "{}{}",
            body["certificate_pem"].as_str().unwrap_or_default(),
            key.serialize_pem()
        );
        (status, body, identity)
    }
}

const LICENSE_QUERY: &str = "{ license { source tier state effectiveTier organization deviceLimit deviceCount expiresAt daysLeft licenseId signedByTestKey features { name tier available } warning } }";

#[tokio::test]
async fn without_a_license_the_free_tier_applies_everywhere() {
    let server = Licensed::start(None, None).await;
    let status = server.status().await;
    assert_eq!(status["state"], "free", "{status}");
    assert_eq!(status["tier"], "free");
    assert_eq!(status["source"], "license");
    assert!(
        status["device_limit"].is_null(),
        "the free tier has no device limit: {status}"
    );
    assert_eq!(status["device_count"], 0);
    assert!(status["expires_at"].is_null() && status["warning"].is_null());
    assert!(
        status["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["available"] == false && f["tier"] == "premium"),
        "{status}"
    );

    let graphql = server.gql(LICENSE_QUERY, json!({})).await;
    assert_eq!(graphql["data"]["license"]["state"], "free", "{graphql}");
    assert!(
        graphql["data"]["license"]["deviceLimit"].is_null(),
        "{graphql}"
    );

    let (code, stdout, stderr) = server.cli(&["license", "status", "--output", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let cli: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(cli["state"], "free");
    assert_eq!(cli["deviceCount"], 0);
    let (code, stdout, _) = server.cli(&["license", "status"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("free") && stdout.contains("0 of no limit"),
        "{stdout}"
    );

    // PUT never changes the license: it says how to.
    let put = server
        .http
        .put(server.server.url("/api/v1/mobius/license"))
        .bearer_auth(&server.token)
        .body("eyJ...")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 409);
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["error"]["code"], "CONFLICT");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("license_key") && message.contains("restart"),
        "{message}"
    );

    // Admins only: no credential, no status.
    let anonymous = server
        .http
        .get(server.server.url("/api/v1/mobius/license/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED");
    let garbage = server
        .http
        .get(server.server.url("/api/v1/mobius/license/status"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 401);
}

/// Runs `mobius-server serve` on the embedded store with `env`; it must
/// exit with an error within 30 s. Returns its stderr.
fn refused_start(env: &[(&str, &str)], license_file: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    if let Some(file) = license_file {
        std::fs::write(dir.path().join("license.key"), file).unwrap();
    }
    let mut child = Command::new(workspace_binary("mobius-server"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--device-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            assert_ne!(output.status.code(), Some(0));
            return format!(
                "{}{}",
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("mobius-server started with env {env:?}; it must refuse");
}

#[test]
fn a_license_that_does_not_verify_stops_start_up_naming_the_problem() {
    let good = license("premium", 10, 100);

    // Signed by the test key, which is not trusted unless asked for.
    let out = refused_start(&[("MOBIUS_LICENSE_KEY", &good)], None);
    assert!(
        out.contains("invalid license (from the setting `license_key`)")
            && out.contains("signed by a key this binary does not trust"),
        "{out}"
    );

    // Malformed, from the file.
    let out = refused_start(&[], Some("this is not a license"));
    assert!(
        out.contains("invalid license (from the file") && out.contains("not a well-formed JWT"),
        "{out}"
    );

    // Tampered: the claims changed after signing.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let tampered_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"iss": ISSUER, "sub": "Acme Corp", "tier": "enterprise", "devices": 1_000_000,
               "iat": 1, "exp": 4_000_000_000_i64, "jti": "x"})
        .to_string(),
    );
    parts[1] = tampered_claims;
    let out = refused_start(
        &[
            ("MOBIUS_LICENSE_KEY", &parts.join(".")),
            ("MOBIUS_LICENSE_TRUST_TEST_KEY", "true"),
        ],
        None,
    );
    assert!(out.contains("does not trust"), "{out}");

    // The right key, the wrong issuer.
    let wrong_iss = license_with(json!({ "iss": "https://example.com" }), 100);
    let out = refused_start(
        &[
            ("MOBIUS_LICENSE_KEY", &wrong_iss),
            ("MOBIUS_LICENSE_TRUST_TEST_KEY", "true"),
        ],
        None,
    );
    assert!(
        out.contains("issuer (`iss`) is \"https://example.com\""),
        "{out}"
    );

    // An unknown tier.
    let gold = license_with(json!({ "tier": "gold" }), 100);
    let out = refused_start(
        &[
            ("MOBIUS_LICENSE_KEY", &gold),
            ("MOBIUS_LICENSE_TRUST_TEST_KEY", "true"),
        ],
        None,
    );
    assert!(out.contains("claim `tier` is invalid"), "{out}");
    // The token's text never appears in the message.
    assert!(!out.contains(&gold), "{out}");
}

#[tokio::test]
async fn an_expiring_license_warns_in_status_graphql_cli_and_log() {
    // From the file in the data directory, 10 days left.
    let key = license("premium", 50, 10);
    let server = Licensed::start(None, Some(&key)).await;
    let status = server.status().await;
    assert_eq!(status["state"], "expiring", "{status}");
    assert_eq!(status["tier"], "premium");
    assert_eq!(status["effective_tier"], "premium");
    assert_eq!(status["organization"], "Acme Corp");
    assert_eq!(status["license_id"], "lic-test-0001");
    assert_eq!(status["device_limit"], 50);
    assert_eq!(status["signed_by_test_key"], true);
    let days = status["days_left"].as_i64().unwrap();
    assert!((9..=10).contains(&days), "{status}");
    let warning = status["warning"].as_str().unwrap();
    assert!(
        warning.contains("expires on") && warning.contains("renew"),
        "{warning}"
    );
    assert!(
        status["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["available"] == true),
        "{status}"
    );

    let graphql = server.gql(LICENSE_QUERY, json!({})).await;
    assert_eq!(graphql["data"]["license"]["state"], "expiring", "{graphql}");
    assert_eq!(graphql["data"]["license"]["warning"], warning);

    let (code, stdout, stderr) = server.cli(&["license", "status"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("expiring") && stdout.contains("Acme Corp"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: the premium license expires on"),
        "{stderr}"
    );

    // The daily log line, written at start-up first.
    let logged = server.server.log_events().into_iter().any(|e| {
        e["level"] == "WARN"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("license: the premium license expires on"))
            && e["state"] == "expiring"
    });
    assert!(logged, "{:?}", server.server.log_events());
}

#[tokio::test]
async fn in_grace_everything_works_and_the_licensed_device_limit_holds() {
    let server = Licensed::start(Some(&license("premium", 2, -5)), None).await;
    let status = server.status().await;
    assert_eq!(status["state"], "grace", "{status}");
    assert_eq!(status["effective_tier"], "premium");
    assert!(status["days_left"].as_i64().unwrap() <= -4);
    assert!(
        status["warning"]
            .as_str()
            .unwrap()
            .contains("everything keeps working until"),
        "{status}"
    );
    assert!(
        status["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["available"] == true)
    );
    assert_eq!(server.enroll("grace-1").await.0, 200);
    assert_eq!(server.enroll("grace-2").await.0, 200);
    let (code, body) = server.enroll("grace-3").await;
    assert_eq!(code, 402, "{body}");
    assert_eq!(body["error"]["code"], "LICENSE_REQUIRED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("device limit of 2"),
        "{body}"
    );
    assert_eq!(server.status().await["device_count"], 2);
}

#[tokio::test]
async fn after_grace_premium_features_stop_while_reads_and_devices_go_on() {
    let server = Licensed::start(Some(&license("enterprise", 3, -20)), None).await;
    let status = server.status().await;
    assert_eq!(status["state"], "expired", "{status}");
    assert_eq!(status["tier"], "enterprise");
    assert_eq!(status["effective_tier"], "free");
    assert_eq!(status["device_limit"], 3, "the licensed limit still holds");
    assert!(
        status["features"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["available"] == false),
        "{status}"
    );
    assert!(
        status["warning"]
            .as_str()
            .unwrap()
            .contains("premium features refuse with LICENSE_REQUIRED"),
        "{status}"
    );
    // Device traffic, enrollments within the licensed limit and reads keep
    // working.
    let mut identities = Vec::new();
    for i in 0..3 {
        let (code, body, identity) = server.enroll_with_key(&format!("expired-{i}")).await;
        assert_eq!(code, 200, "{body}");
        identities.push(identity);
    }
    let (code, body) = server.enroll("expired-3").await;
    assert_eq!(code, 402, "{body}");
    for identity in &identities {
        assert_eq!(server.ping(identity).await.0, 200);
    }
    let tenant = server
        .gql("{ tenant { name } devices { totalCount } }", json!({}))
        .await;
    assert!(tenant["errors"].is_null(), "{tenant}");
    assert_eq!(tenant["data"]["devices"]["totalCount"], 3);
}

const OPERATOR_TOKEN: &str = "mob_op_4fJ9kQ2xV7wZ1pL8sT3nR6yB0cE5hU";

fn operator_hash() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(OPERATOR_TOKEN.as_bytes()))
}

impl Licensed {
    /// A platform request with the operator token (or `token`).
    async fn platform(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self.http.request(
            method,
            self.server.url(&format!("/api/v1/mobius/platform{path}")),
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn login(&self) -> Value {
        self.http
            .post(self.server.url("/api/graphql"))
            .json(&json!({
                "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                "variables": { "i": { "email": "owner@acme.test", "password": PASSWORD } },
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn the_operator_lists_suspends_resumes_and_offboards_tenants() {
    let hash = operator_hash();
    let installers = tempfile::tempdir().unwrap();
    let cloud = Licensed::start_binary(
        "mobius-server-cloud",
        None,
        None,
        &[
            ("MOBIUS_PLATFORM_OPERATOR_TOKEN_SHA256", &hash),
            (
                "MOBIUS_SOFTWARE_LOCAL_DIR",
                installers.path().to_str().unwrap(),
            ),
        ],
    )
    .await;
    let (code, _, identity) = cloud.enroll_with_key("acme-host").await;
    assert_eq!(code, 200);
    // A second tenant, with a site and a device's worth of rows to remove.
    let store = cloud.db.app_store().await;
    let beta = store
        .create_tenant(&mobius_core::audit::Actor::system(), "Beta", "beta")
        .await
        .unwrap();
    // Installers stored for each tenant (as uploads name them:
    // `<tenant id>/<object id>`); only beta's go with beta.
    let beta_dir = installers.path().join(beta.id.simple().to_string());
    let other_dir = installers
        .path()
        .join(uuid::Uuid::now_v7().simple().to_string());
    for dir in [&beta_dir, &other_dir] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join(uuid::Uuid::now_v7().simple().to_string()),
            b"installer",
        )
        .unwrap();
    }

    // Only the operator token opens the surface.
    use reqwest::Method;
    assert_eq!(cloud.platform(Method::GET, "/tenants", None).await.0, 401);
    let (code, body) = cloud
        .platform(Method::GET, "/tenants", Some(&cloud.token))
        .await;
    assert_eq!(
        code, 401,
        "a tenant owner's token is not the operator's: {body}"
    );
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED");

    let (code, tenants) = cloud
        .platform(Method::GET, "/tenants", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(code, 200, "{tenants}");
    let tenants = tenants.as_array().unwrap().clone();
    assert_eq!(tenants.len(), 2, "{tenants:?}");
    let acme = tenants.iter().find(|t| t["slug"] == "default").unwrap();
    assert_eq!(acme["devices"], 1);
    assert_eq!(acme["users"], 1);
    assert_eq!(acme["state"], "active");
    let acme_id = acme["id"].as_str().unwrap().to_owned();

    // Suspended: sign-in, API calls and device traffic refused, clearly.
    let (code, suspended) = cloud
        .platform(
            Method::POST,
            &format!("/tenants/{acme_id}/suspend"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(code, 200, "{suspended}");
    assert_eq!(suspended["state"], "suspended");
    let login = cloud.login().await;
    assert_eq!(
        login["errors"][0]["extensions"]["code"], "TENANT_SUSPENDED",
        "{login}"
    );
    let read = cloud.gql("{ tenant { name } }", json!({})).await;
    assert_eq!(
        read["errors"][0]["extensions"]["code"], "TENANT_SUSPENDED",
        "{read}"
    );
    let (code, body) = cloud.ping(&identity).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["code"], "TENANT_SUSPENDED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("suspended by the platform operator"),
        "{body}"
    );
    let status = cloud
        .http
        .get(cloud.server.url("/api/v1/mobius/license/status"))
        .bearer_auth(&cloud.token)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 403);

    // Resumed: everything as before, nothing lost.
    let (code, resumed) = cloud
        .platform(
            Method::POST,
            &format!("/tenants/{acme_id}/resume"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(code, 200, "{resumed}");
    assert_eq!(resumed["state"], "active");
    assert!(cloud.login().await["errors"].is_null());
    let read = cloud.gql("{ devices { totalCount } }", json!({})).await;
    assert_eq!(read["data"]["devices"]["totalCount"], 1, "{read}");
    assert_eq!(cloud.ping(&identity).await.0, 200);
    // In the cloud, entitlements come from the plan.
    let put = cloud
        .http
        .put(cloud.server.url("/api/v1/mobius/license"))
        .bearer_auth(&cloud.token)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 409);
    let put: Value = put.json().await.unwrap();
    assert!(
        put["error"]["message"]
            .as_str()
            .unwrap()
            .contains("billing plan"),
        "{put}"
    );

    // Offboarding: a dry run first, then deletion confirmed by the slug.
    let beta_path = format!("/tenants/{}", beta.id);
    let (code, report) = cloud
        .platform(
            Method::DELETE,
            &format!("{beta_path}?dry_run=true"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["deleted"], false);
    assert_eq!(report["slug"], "beta");
    assert_eq!(report["rows"]["sites"], 1);
    assert!(report["rows"]["audit_events"].as_u64().unwrap() >= 2);
    let (code, refused) = cloud
        .platform(Method::DELETE, &beta_path, Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(code, 400, "{refused}");
    assert_eq!(refused["error"]["field"], "confirm");
    let (code, deleted) = cloud
        .platform(
            Method::DELETE,
            &format!("{beta_path}?confirm=beta"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(code, 200, "{deleted}");
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["installers_deleted"], 1, "{deleted}");
    assert!(!beta_dir.exists(), "beta's installers are gone");
    assert!(other_dir.exists(), "another tenant's installers stay");
    let (_, tenants) = cloud
        .platform(Method::GET, "/tenants", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(tenants.as_array().unwrap().len(), 1, "{tenants}");
    // Every row is gone, the audit log included (counted as the owner).
    use sea_orm::sqlx::Connection;
    let mut owner = sea_orm::sqlx::PgConnection::connect(cloud.db.owner_url().expose_secret())
        .await
        .unwrap();
    for table in mobius_migrations::TENANT_TABLES {
        // Table names from the migrations' constant list.
        let (n,): (i64,) = sea_orm::sqlx::query_as(sea_orm::sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1"
        )))
        .bind(beta.id)
        .fetch_one(&mut owner)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    let (code, _) = cloud
        .platform(
            Method::DELETE,
            &format!("{beta_path}?dry_run=true"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(code, 404);
    let (code, bad) = cloud
        .platform(
            Method::POST,
            "/tenants/not-a-uuid/suspend",
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(code, 400, "{bad}");

    // Daily usage (recorded by the billing job on a billed server; here
    // once by hand): the operator exports it, and refuses a bad range.
    store
        .record_billing_usage(chrono::Utc::now())
        .await
        .unwrap();
    let (code, usage) = cloud
        .platform(Method::GET, "/usage", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(code, 200, "{usage}");
    let today = chrono::Utc::now().date_naive().to_string();
    let acme_today = usage
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["tenant_slug"] == "default" && row["day"] == today.as_str())
        .unwrap_or_else(|| panic!("no usage row for today: {usage}"));
    assert_eq!(acme_today["devices"], 1, "{acme_today}");
    let (code, bad) = cloud
        .platform(Method::GET, "/usage?from=yesterday", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(code, 400, "{bad}");
    assert_eq!(bad["error"]["code"], "BAD_USER_INPUT", "{bad}");
    assert_eq!(
        cloud.platform(Method::GET, "/usage", None).await.0,
        401,
        "usage is the operator's"
    );

    // The operator log has it all, newest first.
    let (code, log) = cloud
        .platform(Method::GET, "/log", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(code, 200);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "tenant.deleted",
        "tenant.offboarding_reported",
        "tenant.resumed",
        "tenant.suspended",
        "tenants.listed",
        "usage.exported",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let deleted = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "tenant.deleted")
        .unwrap();
    assert_eq!(deleted["tenant_id"], beta.id.to_string());
    assert_eq!(deleted["details"]["slug"], "beta", "{deleted}");
}

#[tokio::test]
async fn the_oss_edition_has_no_operator_surface() {
    let hash = operator_hash();
    let oss = Licensed::start_binary(
        "mobius-server",
        None,
        None,
        &[("MOBIUS_PLATFORM_OPERATOR_TOKEN_SHA256", &hash)],
    )
    .await;
    let (code, _) = oss
        .platform(reqwest::Method::GET, "/tenants", Some(OPERATOR_TOKEN))
        .await;
    assert_eq!(code, 404);
    // Nor self sign-up: the OSS edition stays single-tenant.
    let refused = oss
        .gql(
            "mutation($i: SignUpInput!) { signUp(input: $i) { verificationRequired } }",
            json!({ "i": { "name": "X", "slug": "x", "email": "x@x.test", "displayName": "X", "password": PASSWORD } }),
        )
        .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
}

/// A real SMTP server (aiosmtpd from the peers venv) on a free port,
/// saving every message into a maildir; killed on drop.
struct SmtpPeer {
    child: std::process::Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl SmtpPeer {
    fn start() -> SmtpPeer {
        let venv = std::env::var("MOBIUS_PEERS_VENV")
            .unwrap_or_else(|_| "/var/cache/mobius/peers-venv".to_owned());
        let python = std::path::Path::new(&venv).join("bin/python");
        assert!(
            python.is_file(),
            "{} is missing: run .ci/run (it installs tests/peers/requirements.txt)",
            python.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = tempfile::tempdir().unwrap();
        let mut child = Command::new(python)
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return SmtpPeer {
                    child,
                    port,
                    maildir,
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("aiosmtpd exited with {status}: is it installed in {venv}?");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("aiosmtpd did not listen on port {port} within 10 s");
    }

    /// Every message received so far, raw, with quoted-printable undone.
    fn messages(&self) -> Vec<String> {
        let dir = self.maildir.path().join("mail/new");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .map(|m| {
                m.replace("=\r\n", "")
                    .replace("=\n", "")
                    .replace("=3D", "=")
            })
            .collect()
    }

    /// The verification link in the message sent to `to`, waiting for it.
    async fn link_for(&self, to: &str) -> String {
        for _ in 0..200 {
            if let Some(message) = self.messages().into_iter().find(|m| m.contains(to)) {
                let start = message
                    .find("/api/v1/mobius/signup/verify?token=")
                    .unwrap_or_else(|| panic!("no link in {message}"));
                let link: String = message[start..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                return link;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no email to {to} within 10 s: {:?}", self.messages());
    }
}

impl Drop for SmtpPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SIGN_UP: &str = "mutation($i: SignUpInput!) { signUp(input: $i) { verificationRequired tenant { id name slug } } }";

impl Licensed {
    async fn anonymous(&self, query: &str, variables: Value) -> Value {
        self.http
            .post(self.server.url("/api/graphql"))
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn sign_up_makes_a_tenant_usable_once_the_emailed_link_is_followed() {
    let smtp = SmtpPeer::start();
    let port = smtp.port.to_string();
    let cloud = Licensed::start_binary(
        "mobius-server-cloud",
        None,
        None,
        &[
            ("MOBIUS_SIGNUP_ENABLED", "true"),
            ("MOBIUS_PUBLIC_URL", "https://mobius.example.com"),
            ("MOBIUS_SMTP_HOST", "127.0.0.1"),
            ("MOBIUS_SMTP_PORT", &port),
            ("MOBIUS_SMTP_TLS", "none"),
            ("MOBIUS_SMTP_FROM", "Mobius <no-reply@mobius.example.com>"),
            ("MOBIUS_SIGNUP_MAX_TENANTS_PER_EMAIL", "2"),
            ("MOBIUS_SIGNUP_ATTEMPTS_PER_HOUR_PER_CLIENT", "5"),
        ],
    )
    .await;
    let input = |name: &str, slug: &str, email: &str| json!({ "i": { "name": name, "slug": slug, "email": email, "displayName": "Founder", "password": PASSWORD } });
    let signed = cloud
        .anonymous(SIGN_UP, input("Globex", "globex", "founder@globex.test"))
        .await;
    assert!(signed["errors"].is_null(), "{signed}");
    assert_eq!(signed["data"]["signUp"]["verificationRequired"], true);
    assert_eq!(signed["data"]["signUp"]["tenant"]["slug"], "globex");

    // Closed until verified.
    let login = |slug: &'static str| json!({ "i": { "email": "founder@globex.test", "password": PASSWORD, "tenant": slug } });
    const LOGIN: &str = "mutation($i: LoginInput!) { login(input: $i) { accessToken } }";
    let refused = cloud.anonymous(LOGIN, login("globex")).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not verified"),
        "{refused}"
    );

    // The link from the received email opens it.
    let link = smtp.link_for("founder@globex.test").await;
    let message = smtp.messages().join("\n");
    assert!(
        message.contains("Subject: Confirm your Mobius sign-up"),
        "{message}"
    );
    assert!(message.contains("https://mobius.example.com/api/v1/mobius/signup/verify"));
    let verified = cloud
        .http
        .get(cloud.server.url(&link))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);
    let verified: Value = verified.json().await.unwrap();
    assert_eq!(verified["tenant"], "globex", "{verified}");
    let again = cloud
        .http
        .get(cloud.server.url(&link))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "a link works once");

    let session = cloud.anonymous(LOGIN, login("globex")).await;
    let token = session["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{session}"))
        .to_owned();
    // Its owner, default site and CA exist: a device enrolls at once.
    let globex = Licensed { token, ..cloud };
    let whoami = globex
        .gql("{ tenant { slug } sites { nodes { name } } }", json!({}))
        .await;
    assert_eq!(whoami["data"]["tenant"]["slug"], "globex", "{whoami}");
    assert_eq!(whoami["data"]["sites"]["nodes"][0]["name"], "default");
    let (code, body) = globex.enroll("globex-host").await;
    assert_eq!(code, 200, "{body}");

    // The slug is unique; an email signs up a limited number of tenants.
    let taken = globex
        .anonymous(SIGN_UP, input("Globex 2", "globex", "other@globex.test"))
        .await;
    assert_eq!(
        taken["errors"][0]["extensions"]["code"], "CONFLICT",
        "{taken}"
    );
    assert_eq!(taken["errors"][0]["extensions"]["field"], "slug");
    let second = globex
        .anonymous(
            SIGN_UP,
            input("Globex Labs", "globex-labs", "Founder@Globex.test"),
        )
        .await;
    assert!(second["errors"].is_null(), "{second}");
    let third = globex
        .anonymous(
            SIGN_UP,
            input("Globex Three", "globex-3", "founder@globex.test"),
        )
        .await;
    assert_eq!(
        third["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{third}"
    );
    assert_eq!(third["errors"][0]["extensions"]["field"], "email");
    // Five attempts an hour from one address: the sixth is refused.
    let _ = globex
        .anonymous(SIGN_UP, input("Bad", "Not A Slug!", "x@y.test"))
        .await;
    let limited = globex
        .anonymous(SIGN_UP, input("Initech", "initech", "boss@initech.test"))
        .await;
    assert_eq!(
        limited["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{limited}"
    );
}

#[tokio::test]
async fn a_server_restarts_while_its_default_tenant_is_suspended() {
    let hash = operator_hash();
    let env = [
        ("MOBIUS_PLATFORM_OPERATOR_TOKEN_SHA256", hash.as_str()),
        ("MOBIUS_LICENSE_TRUST_TEST_KEY", "true"),
    ];
    let cloud = Licensed::start_binary("mobius-server-cloud", None, None, &env[..1]).await;
    let (_, tenants) = cloud
        .platform(reqwest::Method::GET, "/tenants", Some(OPERATOR_TOKEN))
        .await;
    let id = tenants[0]["id"].as_str().unwrap().to_owned();
    let (code, _) = cloud
        .platform(
            reqwest::Method::POST,
            &format!("/tenants/{id}/suspend"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(code, 200);
    let Licensed {
        db,
        server,
        data_dir,
        http,
        token,
    } = cloud;
    assert_eq!(server.terminate(), Some(0));
    // Start-up reads the default tenant (setup code, CA): a suspension
    // must not stop the server, and it must still hold afterwards.
    let server = ServerProcess::start_binary(
        "mobius-server-cloud",
        data_dir.path(),
        &["--database-url", db.owner_url().expose_secret()],
        &env,
    );
    let restarted = Licensed {
        db,
        server,
        data_dir,
        http,
        token,
    };
    let read = restarted.gql("{ tenant { name } }", json!({})).await;
    assert_eq!(
        read["errors"][0]["extensions"]["code"], "TENANT_SUSPENDED",
        "{read}"
    );
    let (code, _) = restarted
        .platform(
            reqwest::Method::POST,
            &format!("/tenants/{id}/resume"),
            Some(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(code, 200);
    let read = restarted.gql("{ tenant { name } }", json!({})).await;
    assert!(read["errors"].is_null(), "{read}");
}
