//! The backbone end to end, with the real `mobius-server` (on Postgres, its
//! backbone listener on TLS with a self-signed rcgen certificate) and the
//! real `mobius-agent tunnel` in front of a local HTTP service run by the
//! test: identity headers and spoofing, grants, revoked credentials,
//! sub-assertions, URL tokens and key rotation, WebSockets, streaming
//! bodies larger than any limit with bounded memory, cancellation,
//! revoking a service token, tenant separation, and fail-over between two
//! server nodes. `Host` routing uses `*.backbone.localhost` names that
//! reqwest resolves to 127.0.0.1 itself (no DNS involved).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt, StreamExt};
use mobius_core::audit::Actor;
use mobius_core::db::SystemTask;
use mobius_core::identity::NewUser;
use mobius_tests::{ServerProcess, TestDatabase, eventually, workspace_binary};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const DOMAIN: &str = "backbone.localhost";
const PASSWORD: &str = "correct horse battery staple";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed certificate for the backbone (`*.backbone.localhost`,
/// the apex, and 127.0.0.1 for the agent), written to `dir`.
fn backbone_certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![
        DOMAIN.to_owned(),
        format!("*.{DOMAIN}"),
        "127.0.0.1".to_owned(),
    ])
    .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join("backbone.pem");
    let key_path = dir.join("backbone.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.pem())
}

/// The local service behind the tunnel.
#[derive(Default)]
struct Local {
    hang_started: AtomicBool,
    hang_cancelled: AtomicBool,
    uploaded: AtomicU64,
}

struct CancelGuard(Arc<Local>);
impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.0.hang_cancelled.store(true, Ordering::SeqCst);
    }
}

async fn start_local() -> (SocketAddr, Arc<Local>) {
    let local = Arc::new(Local::default());
    let app = Router::new()
        .route("/headers", any(headers_echo))
        .route("/count", post(count_upload))
        .route("/bytes/{n}", get(stream_bytes))
        .route("/ws", get(ws_echo))
        .route("/hang", get(hang))
        .with_state(local.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, local)
}

async fn headers_echo(uri: axum::http::Uri, headers: HeaderMap) -> axum::Json<Value> {
    let map: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or(""))))
        .collect();
    axum::Json(json!({ "uri": uri.to_string(), "headers": map }))
}

async fn count_upload(State(local): State<Arc<Local>>, body: Body) -> axum::Json<Value> {
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        n += chunk.unwrap().len() as u64;
    }
    local.uploaded.store(n, Ordering::SeqCst);
    axum::Json(json!({ "bytes": n }))
}

async fn stream_bytes(UrlPath(n): UrlPath<u64>) -> Body {
    let chunk = axum::body::Bytes::from(vec![7u8; 64 * 1024]);
    let chunks = n.div_ceil(chunk.len() as u64);
    let last = n - (chunks.saturating_sub(1)) * chunk.len() as u64;
    let stream = futures_util::stream::iter(0..chunks).map(move |i| {
        let part = if i + 1 == chunks {
            chunk.slice(..last as usize)
        } else {
            chunk.clone()
        };
        Ok::<_, std::io::Error>(part)
    });
    Body::from_stream(stream)
}

async fn ws_echo(ws: WebSocketUpgrade) -> impl IntoResponse {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            let echo = matches!(message, Message::Text(_) | Message::Binary(_));
            if matches!(message, Message::Close(_)) || (echo && socket.send(message).await.is_err())
            {
                break;
            }
        }
    })
}

async fn hang(State(local): State<Arc<Local>>) -> &'static str {
    let _guard = CancelGuard(local.clone());
    local.hang_started.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    "never"
}

/// A server on Postgres with its backbone on TLS, a signed-in owner, and
/// clients that trust the backbone's certificate.
struct Backbone {
    db: TestDatabase,
    servers: Vec<(ServerProcess, u16)>,
    dir: tempfile::TempDir,
    ca_pem: String,
    cert: (PathBuf, PathBuf),
    token: String,
    http: reqwest::Client,
}

fn start_server(db: &TestDatabase, dir: &Path, cert: &(PathBuf, PathBuf)) -> (ServerProcess, u16) {
    let port = free_port();
    let data = tempfile::tempdir_in(dir).unwrap().keep();
    let listen = format!("127.0.0.1:{port}");
    let server = ServerProcess::start(
        &data,
        &["--database-url", db.owner_url().expose_secret()],
        &[
            ("MOBIUS_BACKBONE_LISTEN", listen.as_str()),
            ("MOBIUS_BACKBONE_DOMAIN", DOMAIN),
            ("MOBIUS_BACKBONE_TLS_CERT_FILE", cert.0.to_str().unwrap()),
            ("MOBIUS_BACKBONE_TLS_KEY_FILE", cert.1.to_str().unwrap()),
            (
                "MOBIUS_MASTER_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
        ],
    );
    (server, port)
}

impl Backbone {
    async fn start() -> Backbone {
        let db = TestDatabase::create().await;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca_pem) = backbone_certificate(dir.path());
        let cert = (cert, key);
        let server = start_server(&db, dir.path(), &cert);
        let http = client_for(&ca_pem, server.1);
        let mut backbone = Backbone {
            db,
            servers: vec![server],
            dir,
            ca_pem,
            cert,
            token: String::new(),
            http,
        };
        let code = backbone.servers[0]
            .0
            .setup_code
            .clone()
            .expect("setup code");
        let setup = backbone
            .gql(
                "",
                "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
                json!({ "i": { "code": code, "email": "owner@alpha.test", "password": PASSWORD, "displayName": "O" } }),
            )
            .await;
        backbone.token = setup["data"]["setup"]["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        backbone
    }

    fn port(&self) -> u16 {
        self.servers[0].1
    }

    async fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        let mut request = self
            .http
            .post(self.servers[0].0.url("/api/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// `https://<host>.backbone.localhost:<port><path>` (or the apex).
    fn url(&self, service: Option<&str>, path: &str) -> String {
        url_on(self.port(), service, path)
    }

    async fn admin(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, self.url(None, path))
            .bearer_auth(token)
            .header("accept", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn service_token(&self, token: &str, service: &str) -> String {
        let (status, body) = self
            .admin(
                token,
                reqwest::Method::POST,
                "/admin/api/tokens",
                Some(json!({ "service_name": service })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["service"], service);
        body["token"].as_str().unwrap().to_owned()
    }

    async fn register(&self, name: &str, tenant: Option<&str>) -> (String, String) {
        let response = self
            .http
            .post(self.url(None, "/principals"))
            .json(&json!({ "name": name, "email": format!("{}@example.com", name.to_lowercase()), "note": "test", "tenant": tenant }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        (
            body["credential"].as_str().unwrap().to_owned(),
            body["principal"]["principal_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    }

    async fn grant(&self, token: &str, principal: &str, service: &str) {
        let (status, body) = self
            .admin(
                token,
                reqwest::Method::POST,
                "/admin/api/grants",
                Some(json!({ "principal_id": principal, "service": service })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Starts `mobius-agent tunnel` for `service` and waits until the
    /// backbone lists it as connected.
    async fn tunnel(&self, token: &str, admin_token: &str, service: &str, to: SocketAddr) -> Agent {
        let servers: Vec<String> = self
            .servers
            .iter()
            .map(|(_, port)| format!("https://127.0.0.1:{port}"))
            .collect();
        let ca = self.dir.path().join("backbone-ca.pem");
        std::fs::write(&ca, &self.ca_pem).unwrap();
        let child = Command::new(workspace_binary("mobius-agent"))
            .args([
                "tunnel",
                "--server",
                &servers.join(","),
                "--service",
                service,
            ])
            .args([
                "--to",
                &format!("http://{to}"),
                "--ca-file",
                ca.to_str().unwrap(),
            ])
            .env("MOBIUS_TUNNEL_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mobius-agent tunnel");
        let agent = Agent(child);
        let connected = eventually(Duration::from_secs(15), async || {
            self.connections(admin_token, service).await >= 2 * self.servers.len()
        })
        .await;
        assert!(connected, "the tunnel for {service} never parked");
        agent
    }

    /// Parked connections for `service`, summed over every node.
    async fn connections(&self, admin_token: &str, service: &str) -> usize {
        let mut total = 0;
        for (_, port) in &self.servers {
            let response = self
                .http
                .get(url_on(*port, None, "/admin/api/services"))
                .bearer_auth(admin_token)
                .header("accept", "application/json")
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            total += body["services"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["service"] == service)
                .and_then(|s| s["connections"].as_array().map(Vec::len))
                .unwrap_or(0);
        }
        total
    }

    /// A second tenant ("bravo") with an owner, signed in.
    async fn second_tenant(&self) -> String {
        let store = self.db.app_store().await;
        let tenant = store
            .create_tenant(&Actor::system(), "Bravo", "bravo")
            .await
            .unwrap();
        let scope = store
            .begin(&SystemTask::new("test", tenant.id))
            .await
            .unwrap();
        scope
            .users()
            .create(
                &Actor::system(),
                NewUser {
                    email: "owner@bravo.test",
                    display_name: "Bob",
                    role: mobius_core::authz::Role::Owner,
                    password_hash: Some(mobius_core::identity::passwords::hash(PASSWORD).unwrap()),
                },
            )
            .await
            .unwrap();
        scope.commit().await.unwrap();
        let login = self
            .gql(
                "",
                "mutation($input: LoginInput!) { login(input: $input) { accessToken } }",
                json!({ "input": { "email": "owner@bravo.test", "password": PASSWORD, "tenant": "bravo" } }),
            )
            .await;
        login["data"]["login"]["accessToken"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn url_on(port: u16, service: Option<&str>, path: &str) -> String {
    match service {
        Some(service) => format!("https://{service}.{DOMAIN}:{port}{path}"),
        None => format!("https://{DOMAIN}:{port}{path}"),
    }
}

/// reqwest resolving every name used here to 127.0.0.1 (no DNS).
fn client_for(ca_pem: &str, port: u16) -> reqwest::Client {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve(DOMAIN, addr);
    for service in ["myapp", "other", "ghost", "bravoapp", "ws", "big"] {
        builder = builder.resolve(&format!("{service}.{DOMAIN}"), addr);
    }
    builder.build().unwrap()
}

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sign(key: &[u8], label: &str, payload: &Value) -> String {
    use hmac::Mac;
    let encoded = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{label}{encoded}").as_bytes());
    let mac = mac.finalize().into_bytes();
    format!("{encoded}.{}", URL_SAFE_NO_PAD.encode(mac))
}

/// The derived key a credential embeds (`mosb_pr_<id>_<key>`).
fn derived_key(credential: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(&credential["mosb_pr_".len() + 33..])
        .unwrap()
}

async fn get_headers(http: &reqwest::Client, url: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut request = http.get(url);
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identity_headers_grants_assertions_and_url_tokens() {
    let bb = Backbone::start().await;
    let owner = bb.token.clone();
    let (local_addr, _local) = start_local().await;

    // A bad service name is refused with the field named.
    let (status, body) = bb
        .admin(
            &owner,
            reqwest::Method::POST,
            "/admin/api/tokens",
            Some(json!({ "service_name": "Not_A_Label" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "BAD_USER_INPUT");
    assert_eq!(body["error"]["field"], "service_name");
    // No admin credential: 401.
    let (status, _) = bb
        .admin("nope", reqwest::Method::GET, "/admin/api/tokens", None)
        .await;
    assert_eq!(status, 401);

    let token = bb.service_token(&owner, "myapp").await;
    assert!(token.starts_with("mosb_myapp_"), "{token}");
    let _agent = bb.tunnel(&token, &owner, "myapp", local_addr).await;

    // No such service: 404. A service with no tunnel: 502, clearly.
    let (status, _) = get_headers(&bb.http, &bb.url(Some("ghost"), "/headers"), &[]).await;
    assert_eq!(status, 404);
    bb.service_token(&owner, "other").await;
    let response = bb
        .http
        .get(bb.url(Some("other"), "/headers"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_CONNECTED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not connected")
    );

    // Anonymous: forwarded with no x-mosb-* at all, spoofed ones stripped.
    let (status, body) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), "/headers?x=1"),
        &[
            ("x-mosb-sub", "spoofed"),
            ("x-mosb-email", "evil@example.com"),
            ("x-backbone-other", "1"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let headers = body["headers"].as_object().unwrap();
    assert!(
        headers
            .keys()
            .all(|k| !k.starts_with("x-mosb-") && !k.starts_with("x-backbone-")),
        "{body}"
    );
    assert_eq!(body["uri"], "/headers?x=1");
    assert_eq!(
        headers["x-forwarded-host"],
        format!("myapp.{DOMAIN}:{}", bb.port())
    );

    // A principal without a grant: 403. A revoked-looking garbage one: 401.
    let (credential, principal_id) = bb.register("Alice", None).await;
    assert!(credential.starts_with("mosb_pr_"));
    let (status, _) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), "/headers"),
        &[("x-backbone-principal", &credential)],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), "/headers"),
        &[("x-backbone-principal", "mosb_pr_garbage")],
    )
    .await;
    assert_eq!(status, 401);

    // With a grant: identity injected, spoofed values replaced.
    bb.grant(&owner, &principal_id, "myapp").await;
    let (status, body) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), "/headers"),
        &[
            ("x-backbone-principal", &credential),
            ("x-mosb-sub", "spoofed"),
            ("x-mosb-sub-id", "spoofed"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let headers = &body["headers"];
    assert_eq!(headers["x-mosb-sub"], principal_id.as_str());
    assert_eq!(headers["x-mosb-name"], "Alice");
    assert_eq!(headers["x-mosb-email"], "alice@example.com");
    assert!(headers.get("x-mosb-sub-id").is_none(), "{body}");
    assert!(headers.get("x-backbone-principal").is_none(), "{body}");
    let (_, grants) = bb
        .admin(
            &owner,
            reqwest::Method::GET,
            &format!("/admin/api/grants/{principal_id}"),
            None,
        )
        .await;
    assert_eq!(grants["services"], json!(["myapp"]));

    // Sub-assertions, signed by the client with the derived key.
    let key = derived_key(&credential);
    let now = chrono::Utc::now().timestamp();
    let valid = sign(
        &key,
        "assertion:",
        &json!({ "sub_id": "alice-session-7", "name": "Alice (tablet)", "exp": now + 60 }),
    );
    let (status, body) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), "/headers"),
        &[
            ("x-backbone-principal", &credential),
            ("x-backbone-assertion", &valid),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-mosb-sub-id"], "alice-session-7");
    assert_eq!(body["headers"]["x-mosb-name"], "Alice (tablet)");
    assert!(body["headers"].get("x-backbone-assertion").is_none());
    let expired = sign(
        &key,
        "assertion:",
        &json!({ "sub_id": "s", "name": "A", "exp": now - 1 }),
    );
    let forged = sign(
        b"not the key",
        "assertion:",
        &json!({ "sub_id": "s", "name": "A", "exp": now + 60 }),
    );
    for bad in [expired, forged] {
        let (status, _) = get_headers(
            &bb.http,
            &bb.url(Some("myapp"), "/headers"),
            &[
                ("x-backbone-principal", &credential),
                ("x-backbone-assertion", &bad),
            ],
        )
        .await;
        assert_eq!(status, 401);
    }

    // URL tokens: no header needed, this service only, `_mosb` removed.
    let minted: Value = bb
        .http
        .post(bb.url(None, "/url-tokens"))
        .header("x-backbone-principal", &credential)
        .json(&json!({ "service": "myapp", "expires_in": 3600 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url_token = minted["token"].as_str().unwrap().to_owned();
    assert_eq!(
        minted["url"],
        format!("https://myapp.{DOMAIN}/?_mosb={url_token}")
    );
    let (status, body) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), &format!("/headers?a=1&_mosb={url_token}")),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uri"], "/headers?a=1");
    assert_eq!(body["headers"]["x-mosb-sub"], principal_id.as_str());
    let (status, _) = get_headers(
        &bb.http,
        &bb.url(Some("other"), &format!("/headers?_mosb={url_token}")),
        &[],
    )
    .await;
    assert_ne!(status, 200);
    // URL tokens for a service without a grant are refused at issuance.
    let refused = bb
        .http
        .post(bb.url(None, "/url-tokens"))
        .header("x-backbone-principal", &credential)
        .json(&json!({ "service": "other" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // Rotating key_version: URL token, assertion and old credential die.
    let (status, rotated) = bb
        .admin(
            &owner,
            reqwest::Method::POST,
            &format!("/admin/api/principals/{principal_id}/rotate"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["principal"]["key_version"], 2);
    let new_credential = rotated["credential"].as_str().unwrap().to_owned();
    let (status, _) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), &format!("/headers?_mosb={url_token}")),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), "/headers"),
        &[("x-backbone-principal", &credential)],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), "/headers"),
        &[
            ("x-backbone-principal", &new_credential),
            ("x-backbone-assertion", &valid),
        ],
    )
    .await;
    assert_eq!(status, 401, "an assertion signed with the old key");
    let (status, _) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), "/headers"),
        &[("x-backbone-principal", &new_credential)],
    )
    .await;
    assert_eq!(status, 200);

    // A revoked principal: 401.
    let (status, _) = bb
        .admin(
            &owner,
            reqwest::Method::DELETE,
            &format!("/admin/api/principals/{principal_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = get_headers(
        &bb.http,
        &bb.url(Some("myapp"), "/headers"),
        &[("x-backbone-principal", &new_credential)],
    )
    .await;
    assert_eq!(status, 401);

    // A service that requires identity refuses anonymous requests.
    let (status, _) = bb
        .admin(
            &owner,
            reqwest::Method::PATCH,
            "/admin/api/services/myapp",
            Some(json!({ "require_identity": true })),
        )
        .await;
    assert_eq!(status, 200);

    // Operations: healthz, services, cluster, HTML for browsers, metrics.
    let health: Value = bb
        .http
        .get(bb.url(None, "/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let (_, services) = bb
        .admin(&owner, reqwest::Method::GET, "/admin/api/services", None)
        .await;
    let myapp = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "myapp")
        .unwrap();
    assert_eq!(myapp["connected"], true);
    assert!(
        myapp["connections"][0]["requests_served"].as_u64().unwrap() >= 1,
        "{myapp}"
    );
    let (_, cluster) = bb
        .admin(&owner, reqwest::Method::GET, "/admin/api/cluster", None)
        .await;
    assert_eq!(cluster["nodes"][0]["services"][0]["service"], "myapp");
    let html = bb
        .http
        .get(bb.url(None, "/admin/api/principals"))
        .bearer_auth(&owner)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.starts_with("<!doctype html>") && html.contains("Alice"),
        "{html}"
    );
    let metrics = bb
        .http
        .get(bb.url(None, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mobius_backbone_requests_total{outcome=\"forwarded\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mobius_backbone_parked_connections 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websockets_large_streams_and_cancellation_pass_through() {
    let bb = Backbone::start().await;
    let owner = bb.token.clone();
    let (local_addr, local) = start_local().await;
    let token = bb.service_token(&owner, "big").await;
    let _agent = bb.tunnel(&token, &owner, "big", local_addr).await;

    // A WebSocket round trip through the tunnel.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", bb.port()))
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(bb.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = format!("big.{DOMAIN}");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from(host.clone()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut ws, response) =
        tokio_tungstenite::client_async(format!("wss://{host}:{}/ws", bb.port()), tls)
            .await
            .expect("WebSocket handshake through the backbone");
    assert_eq!(response.status(), 101);
    for i in 0..20 {
        let text = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    let big = vec![3u8; 1024 * 1024];
    ws.send(tokio_tungstenite::tungstenite::Message::binary(big.clone()))
        .await
        .unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().len(), big.len());
    ws.close(None).await.unwrap();

    // Far more than the admin API's 1 MiB body limit, both ways, with the
    // server's memory growing by much less than the data.
    let pid = bb.servers[0].0.pid();
    let rss_before = rss_kib(pid);
    const SIZE: u64 = 512 * 1024 * 1024;
    let started = Instant::now();
    let response = bb
        .http
        .get(bb.url(Some("big"), &format!("/bytes/{SIZE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = 0u64;
    let mut peak = rss_before;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len() as u64;
        if received % (32 * 1024 * 1024) < 70_000 {
            peak = peak.max(rss_kib(pid));
        }
    }
    assert_eq!(received, SIZE);
    let download_secs = started.elapsed().as_secs_f64();
    let chunk = axum::body::Bytes::from(vec![1u8; 256 * 1024]);
    let chunks = SIZE / chunk.len() as u64;
    let body = reqwest::Body::wrap_stream(
        futures_util::stream::iter(0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let started = Instant::now();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..600 {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });
    let uploaded: Value = bb
        .http
        .post(bb.url(Some("big"), "/count"))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload_secs = started.elapsed().as_secs_f64();
    assert_eq!(uploaded["bytes"], SIZE);
    sampler.abort();
    peak = peak.max(rss_kib(pid));
    let growth_mib = (peak.saturating_sub(rss_before)) as f64 / 1024.0;
    println!(
        "512 MiB down in {download_secs:.2} s, up in {upload_secs:.2} s; server RSS {} MiB before, growth {growth_mib:.1} MiB",
        rss_before / 1024
    );
    assert!(
        growth_mib < 64.0,
        "the server's RSS grew by {growth_mib} MiB"
    );

    // A client that goes away cancels the request at the service.
    let http = bb.http.clone();
    let url = bb.url(Some("big"), "/hang");
    let pending = tokio::spawn(async move { http.get(url).send().await });
    assert!(
        eventually(Duration::from_secs(5), async || local
            .hang_started
            .load(Ordering::SeqCst))
        .await
    );
    pending.abort();
    assert!(
        eventually(Duration::from_secs(5), async || local
            .hang_cancelled
            .load(Ordering::SeqCst))
        .await,
        "the local request was not cancelled when the client left"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_a_service_token_closes_its_tunnel_within_a_second() {
    let bb = Backbone::start().await;
    let owner = bb.token.clone();
    let (local_addr, _local) = start_local().await;
    // Through the CLI (GraphQL): create, list, later revoke.
    let cli = |args: &[&str]| -> Value {
        let output = Command::new(workspace_binary("mobius"))
            .args(args)
            .args(["--output", "json"])
            .env("MOBIUS_SERVER", bb.servers[0].0.url(""))
            .env("MOBIUS_TOKEN", &owner)
            .env("MOBIUS_CONFIG_DIR", bb.dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let created = cli(&["backbone", "tokens", "create", "myapp"]);
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("mosb_myapp_"));
    let _agent = bb.tunnel(&token, &owner, "myapp", local_addr).await;
    let listed = cli(&["backbone", "tokens", "list"]);
    assert_eq!(listed[0]["service"], "myapp");
    assert!(listed[0]["lastUsedAt"].is_string(), "{listed}");
    assert!(listed[0].get("token").is_none(), "secrets are shown once");
    let (_, tokens) = bb
        .admin(&owner, reqwest::Method::GET, "/admin/api/tokens", None)
        .await;
    assert_eq!(tokens["tokens"][0]["service"], "myapp");
    assert!(tokens["tokens"][0].get("token").is_none());
    let (status, _) = get_headers(&bb.http, &bb.url(Some("myapp"), "/headers"), &[]).await;
    assert_eq!(status, 200);

    let revoked_at = Instant::now();
    let revoked = cli(&[
        "backbone",
        "tokens",
        "revoke",
        listed[0]["id"].as_str().unwrap(),
    ]);
    assert!(revoked["revokedAt"].is_string(), "{revoked}");
    let closed = eventually(Duration::from_millis(1500), async || {
        get_headers(&bb.http, &bb.url(Some("myapp"), "/headers"), &[])
            .await
            .0
            == 502
    })
    .await;
    let took = revoked_at.elapsed();
    println!("tunnel closed {took:?} after the revocation (CLI, GraphQL)");
    assert!(
        closed && took < Duration::from_millis(1200),
        "the tunnel still served {took:?} after its token was revoked"
    );
    // And it cannot park again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bb.connections(&owner, "myapp").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_a_credentials_and_grants_never_reach_tenant_b() {
    let bb = Backbone::start().await;
    let alpha = bb.token.clone();
    let bravo = bb.second_tenant().await;
    let (local_addr, _local) = start_local().await;

    let bravo_token = bb.service_token(&bravo, "bravoapp").await;
    let _agent = bb
        .tunnel(&bravo_token, &bravo, "bravoapp", local_addr)
        .await;
    // Names are host names: alpha cannot take bravo's.
    let (status, body) = bb
        .admin(
            &alpha,
            reqwest::Method::POST,
            "/admin/api/tokens",
            Some(json!({ "service_name": "bravoapp" })),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // Alpha's principal, granted to alpha's own service, gets nothing at bravo's.
    bb.service_token(&alpha, "myapp").await;
    let (alpha_credential, alpha_principal) = bb.register("Alice", None).await;
    bb.grant(&alpha, &alpha_principal, "myapp").await;
    // Alpha's admin cannot grant its principal to bravo's service...
    let (status, _) = bb
        .admin(
            &alpha,
            reqwest::Method::POST,
            "/admin/api/grants",
            Some(json!({ "principal_id": alpha_principal, "service": "bravoapp" })),
        )
        .await;
    assert_eq!(status, 404);
    // ...nor can bravo's admin grant alpha's principal (not found in bravo).
    let (status, _) = bb
        .admin(
            &bravo,
            reqwest::Method::POST,
            "/admin/api/grants",
            Some(json!({ "principal_id": alpha_principal, "service": "bravoapp" })),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = get_headers(
        &bb.http,
        &bb.url(Some("bravoapp"), "/headers"),
        &[("x-backbone-principal", &alpha_credential)],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // A URL token of alpha's principal does not open bravo's service.
    let minted: Value = bb
        .http
        .post(bb.url(None, "/url-tokens"))
        .header("x-backbone-principal", &alpha_credential)
        .json(&json!({ "service": "myapp" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, _) = get_headers(
        &bb.http,
        &bb.url(
            Some("bravoapp"),
            &format!("/headers?_mosb={}", minted["token"].as_str().unwrap()),
        ),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    // Nor can alpha mint one for bravo's service.
    let refused = bb
        .http
        .post(bb.url(None, "/url-tokens"))
        .header("x-backbone-principal", &alpha_credential)
        .json(&json!({ "service": "bravoapp" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);

    // Bravo's own principal (registered into bravo) works at bravo's service.
    let (bravo_credential, bravo_principal) = bb.register("Bob", Some("bravo")).await;
    bb.grant(&bravo, &bravo_principal, "bravoapp").await;
    let (status, body) = get_headers(
        &bb.http,
        &bb.url(Some("bravoapp"), "/headers"),
        &[("x-backbone-principal", &bravo_credential)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["headers"]["x-mosb-sub"], bravo_principal.as_str());

    // Each admin sees only its tenant's tokens, principals and services,
    // and cannot revoke the other's.
    let (_, tokens) = bb
        .admin(&alpha, reqwest::Method::GET, "/admin/api/tokens", None)
        .await;
    assert!(
        tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["service"] != "bravoapp")
    );
    let (_, principals) = bb
        .admin(&alpha, reqwest::Method::GET, "/admin/api/principals", None)
        .await;
    assert!(
        principals["principals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "Bob")
    );
    let (_, services) = bb
        .admin(&alpha, reqwest::Method::GET, "/admin/api/services", None)
        .await;
    assert!(
        services["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["service"] != "bravoapp")
    );
    let (_, bravo_tokens) = bb
        .admin(&bravo, reqwest::Method::GET, "/admin/api/tokens", None)
        .await;
    let bravo_token_id = bravo_tokens["tokens"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = bb
        .admin(
            &alpha,
            reqwest::Method::DELETE,
            &format!("/admin/api/tokens/{bravo_token_id}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = bb
        .admin(
            &alpha,
            reqwest::Method::DELETE,
            &format!("/admin/api/principals/{bravo_principal}"),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Bravo switches self-registration off: POST /principals is refused.
    let (status, _) = bb
        .admin(
            &bravo,
            reqwest::Method::PUT,
            "/admin/api/settings",
            Some(json!({ "open_registration": false })),
        )
        .await;
    assert_eq!(status, 200);
    let response = bb
        .http
        .post(bb.url(None, "/principals"))
        .json(&json!({ "name": "Eve", "email": "eve@example.com", "tenant": "bravo" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_two_nodes_killing_one_leaves_the_service_reachable() {
    let mut bb = Backbone::start().await;
    let owner = bb.token.clone();
    let second = start_server(&bb.db, bb.dir.path(), &bb.cert);
    bb.servers.push(second);
    let (local_addr, _local) = start_local().await;
    let token = bb.service_token(&owner, "myapp").await;
    let _agent = bb.tunnel(&token, &owner, "myapp", local_addr).await;
    let other_port = bb.servers[1].1;
    let other = client_for(&bb.ca_pem, other_port);
    let (status, _) =
        get_headers(&other, &url_on(other_port, Some("myapp"), "/headers"), &[]).await;
    assert_eq!(status, 200);
    // A token revoked through one node closes its tunnels on the other
    // within a second (the revocation poll).
    let other_token = bb.service_token(&owner, "other").await;
    let _other_agent = bb.tunnel(&other_token, &owner, "other", local_addr).await;
    let (_, tokens) = bb
        .admin(&owner, reqwest::Method::GET, "/admin/api/tokens", None)
        .await;
    let other_id = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["service"] == "other")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = bb
        .admin(
            &owner,
            reqwest::Method::DELETE,
            &format!("/admin/api/tokens/{other_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let revoked = Instant::now();
    let closed = eventually(Duration::from_millis(1500), async || {
        get_headers(&other, &url_on(other_port, Some("other"), "/headers"), &[])
            .await
            .0
            == 502
    })
    .await;
    println!(
        "tunnel on the other node closed {:?} after the revocation",
        revoked.elapsed()
    );
    assert!(
        closed && revoked.elapsed() < Duration::from_millis(1200),
        "{:?}",
        revoked.elapsed()
    );

    let (first, _) = bb.servers.remove(0);
    drop(first);
    let killed = Instant::now();
    let reachable = eventually(Duration::from_secs(2), async || {
        get_headers(&other, &url_on(other_port, Some("myapp"), "/headers"), &[])
            .await
            .0
            == 200
    })
    .await;
    println!(
        "service reachable again {:?} after killing a node",
        killed.elapsed()
    );
    assert!(reachable);
}

mobius_tests::on_both_backends!(backbone_lookups_and_repository);

/// The backbone's repository and its five cross-tenant lookups, on both
/// stores: a token's and a credential's tenant by hash, a service's
/// tenant by name, the registration tenant by slug (closed when the tenant
/// switches registration off), and revoked tokens since a time.
async fn backbone_lookups_and_repository(test: mobius_tests::TestStore) {
    use mobius_core::crypto::sealing::LocalSealer;
    use mobius_core::crypto::secrets::sha256;
    let store = &test.store;
    let (tenant, _) = store.ensure_default_tenant().await.unwrap();
    let sealer = LocalSealer::new(&[9u8; 32]);
    let actor = Actor::system();
    let scope = store.begin(&tenant).await.unwrap();
    let (token, row) = scope
        .backbone()
        .create_service_token(&actor, "myapp", None)
        .await
        .unwrap();
    let (credential, principal) = scope
        .backbone()
        .create_principal(&actor, &sealer, "Alice", "alice@example.com", None)
        .await
        .unwrap();
    let bad = scope
        .backbone()
        .create_principal(&actor, &sealer, "A", "not-an-email", None)
        .await;
    assert!(matches!(
        bad,
        Err(mobius_core::StoreError::Invalid { field: "email", .. })
    ));
    scope.commit().await.unwrap();

    assert_eq!(
        store.backbone_token_tenant(&sha256(&token)).await.unwrap(),
        Some(tenant)
    );
    assert_eq!(store.backbone_token_tenant(&[0u8; 32]).await.unwrap(), None);
    assert_eq!(
        store
            .backbone_principal_tenant(&sha256(&credential))
            .await
            .unwrap(),
        Some(tenant)
    );
    assert_eq!(
        store.backbone_service_tenant("myapp").await.unwrap(),
        Some(tenant)
    );
    assert_eq!(store.backbone_service_tenant("ghost").await.unwrap(), None);
    assert_eq!(
        store.backbone_registration_tenant("default").await.unwrap(),
        Some(tenant)
    );

    let scope = store.begin(&tenant).await.unwrap();
    let (found, _) = scope
        .backbone()
        .authenticate_principal(&sealer, &credential)
        .await
        .unwrap();
    assert_eq!(found.principal_id, principal.principal_id);
    // The derived key in the credential is the documented derivation.
    let master = scope.backbone().master_secret(&sealer).await.unwrap();
    let key = mobius_core::backbone::keys::derived_key(&master, principal.principal_id, 1);
    assert_eq!(
        credential,
        mobius_core::backbone::keys::credential(principal.principal_id, &key)
    );
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    scope
        .backbone()
        .revoke_service_token(&actor, row.id)
        .await
        .unwrap();
    scope
        .backbone()
        .set_open_registration(&actor, &sealer, false)
        .await
        .unwrap();
    scope.commit().await.unwrap();
    let revoked = store.backbone_revoked_tokens_since(before).await.unwrap();
    assert_eq!(
        revoked.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![row.id]
    );
    assert_eq!(
        store.backbone_registration_tenant("default").await.unwrap(),
        None
    );
}
