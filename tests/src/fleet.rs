//! End-to-end fleets: a real `mobius-server` on a fresh Postgres database
//! with its first admin set up, and real `mobius-agent` processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::sqlx::{self, Connection, PgConnection};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::{ServerProcess, TestDatabase, eventually, workspace_binary};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Fleet {
    pub db: TestDatabase,
    pub server: ServerProcess,
    _data_dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub token: String,
    pub state: tempfile::TempDir,
}

impl Fleet {
    /// A server whose heartbeat interval is long (60 s), so anything that
    /// arrives within a second came down the push stream.
    pub async fn start(env: &[(&str, &str)]) -> Fleet {
        let db = TestDatabase::create().await;
        let data_dir = tempfile::tempdir().unwrap();
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("MOBIUS_HEARTBEAT_INTERVAL_SECS", "60"));
        let server = ServerProcess::start(
            data_dir.path(),
            &["--database-url", db.owner_url().expose_secret()],
            &env,
        );
        let mut fleet = Fleet {
            db,
            server,
            _data_dir: data_dir,
            http: reqwest::Client::new(),
            token: String::new(),
            state: tempfile::tempdir().unwrap(),
        };
        let code = fleet.server.setup_code.clone().expect("setup code");
        let setup = fleet
            .gql(
                "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
                json!({ "i": { "code": code, "email": "owner@alpha.test", "password": PASSWORD, "displayName": "O" } }),
            )
            .await;
        fleet.token = setup["data"]["setup"]["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        fleet
    }

    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        let mut request = self
            .http
            .post(self.server.url("/api/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    pub fn agent_dir(&self) -> PathBuf {
        self.state.path().join("agent")
    }

    /// Enrolls one agent in the default site, in `agent_dir()`; answers
    /// its device's global id.
    pub async fn enroll(&self) -> String {
        self.enroll_at(&self.agent_dir(), "plans-host").await
    }

    /// Enrolls an agent whose state lives in `dir` and whose host
    /// fingerprint is `fingerprint` (distinct per agent of one test) in
    /// the default site; answers its device's global id.
    pub async fn enroll_at(&self, dir: &Path, fingerprint: &str) -> String {
        let site = self.gql("{ sites { nodes { id } } }", json!({})).await["data"]["sites"]["nodes"]
            [0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let created = self
            .gql(
                "mutation($i: CreateEnrollmentTokenInput!) { createEnrollmentToken(input: $i) { token } }",
                json!({ "i": { "siteId": site, "maxUses": 1 } }),
            )
            .await;
        let token = created["data"]["createEnrollmentToken"]["token"]
            .as_str()
            .unwrap();
        let before = self.device_ids().await;
        let server = format!("https://{}", self.server.device_addr);
        let out = agent_command_as(
            dir,
            fingerprint,
            &["enroll", "--server", &server, "--token", token],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            dir.join("plan-key.pub").is_file(),
            "the agent must learn the plan-verification key at enrollment"
        );
        self.device_ids()
            .await
            .into_iter()
            .find(|id| !before.contains(id))
            .expect("the enrolled device is listed")
    }

    /// Global ids of the tenant's devices.
    pub async fn device_ids(&self) -> Vec<String> {
        let devices = self
            .gql("{ devices(first: 500) { nodes { id } } }", json!({}))
            .await;
        devices["data"]["devices"]["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A connection as the schema owner, scoped to the default tenant
    /// (RLS is forced on the owner too), for changing rows behind the
    /// server's back.
    pub async fn owner_connection(&self) -> PgConnection {
        let mut db = PgConnection::connect(self.db.owner_url().expose_secret())
            .await
            .unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', mobius_default_tenant_id()::text, false)")
            .execute(&mut db)
            .await
            .unwrap();
        db
    }
}

/// `mobius-agent ARGS --state-dir DIR` with the fingerprint the single
/// agent of [`Fleet::enroll`] uses.
pub fn agent_command(state_dir: &Path, args: &[&str]) -> Command {
    agent_command_as(state_dir, "plans-host", args)
}

/// `mobius-agent ARGS --state-dir DIR` on a host whose fingerprint is
/// `fingerprint`.
pub fn agent_command_as(state_dir: &Path, fingerprint: &str, args: &[&str]) -> Command {
    let mut command = Command::new(workspace_binary("mobius-agent"));
    command
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .env("MOBIUS_AGENT_HOST_FINGERPRINT", fingerprint)
        .stdin(Stdio::null());
    command
}

/// A running agent whose log lines are collected.
pub struct Agent {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Runs the agent of `state_dir` enrolled by [`Fleet::enroll`].
    pub fn start(state_dir: &Path) -> Agent {
        Agent::start_as(state_dir, "plans-host")
    }

    /// Runs the agent of `state_dir` on a host whose fingerprint is
    /// `fingerprint` (as enrolled with [`Fleet::enroll_at`]).
    pub fn start_as(state_dir: &Path, fingerprint: &str) -> Agent {
        let mut child = agent_command_as(state_dir, fingerprint, &["run", "--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Agent { child, log }
    }

    /// Waits until the agent holds the push stream.
    pub async fn connected(&self) {
        let ok = eventually(Duration::from_secs(15), async || {
            self.log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("work stream connected"))
        })
        .await;
        assert!(
            ok,
            "the agent never connected its work stream: {:?}",
            self.log.lock().unwrap()
        );
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A premium license (every premium feature, 100 devices, a year) signed
/// with the test key; a debug server trusts it with
/// `MOBIUS_LICENSE_TRUST_TEST_KEY=true` and `MOBIUS_LICENSE_KEY=<this>`.
pub fn premium_license() -> String {
    use base64::Engine;
    // The test key's private half (PKCS#8 DER): public on purpose, only a
    // debug build told `license_trust_test_key` trusts it.
    const TEST_PRIVATE_KEY: &str =
        "MC4CAQAwBQYDK2VwBCIEIKE4JCyumrQhEQEvV15+uv3jepXla891dTvbzsqf5AKV";
    let now = chrono::Utc::now();
    let claims = json!({
        "iss": "https://licenses.mobius.dev", "sub": "Fleet tests", "tier": "premium",
        "devices": 100, "iat": now.timestamp() - 60,
        "exp": (now + chrono::Duration::days(365)).timestamp(), "jti": "lic-fleet-0001",
    });
    let der = base64::engine::general_purpose::STANDARD
        .decode(TEST_PRIVATE_KEY)
        .unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&der),
    )
    .unwrap()
}

/// One GraphQL subscription over graphql-ws (`graphql-transport-ws`).
pub struct Subscription {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Subscription {
    /// The next item's `data`, or `None` once the server completed the
    /// subscription; errors come back as the whole message.
    pub async fn next(&mut self, within: Duration) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let message = tokio::time::timeout(within, self.socket.next())
                .await
                .expect("a subscription message in time")?
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            match value["type"].as_str() {
                Some("next") if value["payload"]["errors"].is_null() => {
                    return Some(value["payload"]["data"].clone());
                }
                Some("next") | Some("error") => return Some(value),
                Some("complete") => return None,
                _ => continue,
            }
        }
    }
}

impl Fleet {
    /// Starts `query` as the fleet's admin and waits for the server's ack.
    pub async fn subscribe(&self, query: &str, variables: Value) -> Subscription {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = self.server.url("/api/graphql").replace("http://", "ws://");
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", self.token) } });
        socket
            .send(Message::Text(init.to_string().into()))
            .await
            .unwrap();
        loop {
            let Some(Ok(Message::Text(text))) = socket.next().await else {
                panic!("the server closed the subscription socket");
            };
            if serde_json::from_str::<Value>(&text).unwrap()["type"] == "connection_ack" {
                break;
            }
        }
        let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } });
        socket
            .send(Message::Text(subscribe.to_string().into()))
            .await
            .unwrap();
        Subscription { socket }
    }
}
