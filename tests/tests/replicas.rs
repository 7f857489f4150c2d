//! Several real `mobius-server` replicas on one Postgres: what one changes
//! the others see (audit subscriptions, revocations), jobs that run once
//! per period across replicas while replicas come and go, and the
//! embedded store's online backup.

use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use mobius_tests::{ServerProcess, TestDatabase, eventually};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PASSWORD: &str = "correct horse battery staple";

/// Replicas sharing one database, master key and request-role password.
struct Cluster {
    db: TestDatabase,
    dirs: Vec<tempfile::TempDir>,
    master_key: String,
    http: reqwest::Client,
}

impl Cluster {
    async fn new() -> Cluster {
        Cluster {
            db: TestDatabase::create().await,
            dirs: Vec::new(),
            master_key: base64::engine::general_purpose::STANDARD.encode(rand_key()),
            http: reqwest::Client::new(),
        }
    }

    /// Starts one more replica (its own data directory) with `extra` env.
    fn start(&mut self, extra: &[(&str, &str)]) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let url = self.db.owner_url().expose_secret().to_owned();
        let mut env = vec![
            ("MOBIUS_MASTER_KEY", self.master_key.as_str()),
            ("MOBIUS_DATABASE_APP_PASSWORD", "replica-test-app-password"),
            ("MOBIUS_HEARTBEAT_INTERVAL_SECS", "1"),
        ];
        env.extend_from_slice(extra);
        let server = ServerProcess::start(dir.path(), &["--database-url", &url], &env);
        self.dirs.push(dir);
        server
    }

    async fn gql(
        &self,
        server: &ServerProcess,
        token: &str,
        query: &str,
        variables: Value,
    ) -> Value {
        let mut request = self
            .http
            .post(server.url("/api/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// Creates the owner through `first` with the code `last` (the replica
    /// started last, whose code replaced the others') printed.
    async fn setup(&self, first: &ServerProcess, last: &ServerProcess) -> String {
        let code = last.setup_code.clone().expect("setup code");
        let setup = self
            .gql(
                first,
                "",
                "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
                json!({ "i": { "code": code, "email": "owner@replicas.test", "password": PASSWORD, "displayName": "O" } }),
            )
            .await;
        setup["data"]["setup"]["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("{setup}"))
            .to_owned()
    }
}

fn rand_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    let seed = uuid::Uuid::new_v4();
    let seed2 = uuid::Uuid::new_v4();
    key[..16].copy_from_slice(seed.as_bytes());
    key[16..].copy_from_slice(seed2.as_bytes());
    key
}

async fn next_message<S>(socket: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("a message within 5 s");
    let text = message.unwrap().unwrap().into_text().unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_subscription_on_one_replica_sees_a_change_made_on_another() {
    let mut cluster = Cluster::new().await;
    let a = cluster.start(&[]);
    let b = cluster.start(&[]);
    let token = cluster.setup(&a, &b).await;

    let mut request = a
        .url("/api/graphql")
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let send = |v: Value| Message::Text(v.to_string().into());
    socket
        .send(send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } })))
        .await
        .unwrap();
    assert_eq!(next_message(&mut socket).await["type"], "connection_ack");
    socket
        .send(send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { auditEvents { action details } }" } })))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let created = cluster
        .gql(
            &b,
            &token,
            r#"mutation { createSite(input: { name: "made-on-b" }) { id } }"#,
            json!({}),
        )
        .await;
    assert!(created["errors"].is_null(), "{created}");
    // Earlier events (the owner's setup) may still arrive first.
    let mut event = next_message(&mut socket).await;
    while event["payload"]["data"]["auditEvents"]["action"] != "site.created" {
        assert_eq!(event["type"], "next", "{event}");
        event = next_message(&mut socket).await;
    }
    eprintln!(
        "audit event from B reached A's subscriber in {:?}",
        started.elapsed()
    );
    assert_eq!(event["type"], "next", "{event}");
    assert_eq!(
        event["payload"]["data"]["auditEvents"]["action"],
        "site.created"
    );
    assert_eq!(
        event["payload"]["data"]["auditEvents"]["details"]["name"],
        "made-on-b"
    );
}

/// A CSR (and its key) made the way an agent makes one.
fn csr() -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(vec!["ignored.example".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (csr, key)
}

#[tokio::test]
async fn a_device_revoked_on_one_replica_is_refused_by_another_within_a_second() {
    let mut cluster = Cluster::new().await;
    let a = cluster.start(&[]);
    let b = cluster.start(&[]);
    let c = cluster.start(&[]);
    let token = cluster.setup(&a, &c).await;
    let site = cluster
        .gql(&a, &token, "{ sites { nodes { id } } }", json!({}))
        .await["data"]["sites"]["nodes"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = cluster
        .gql(
            &a,
            &token,
            "mutation($i: CreateEnrollmentTokenInput!) { createEnrollmentToken(input: $i) { token } }",
            json!({ "i": { "siteId": site, "maxUses": 1 } }),
        )
        .await;
    let enrollment = created["data"]["createEnrollmentToken"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();

    // Enroll through C, with the listener's certificate checked against
    // the CA every replica shares.
    let (csr, key) = csr();
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let enrolled: Value = insecure
        .post(format!("https://{}{}", c.device_addr, mobius_api::device::ENROLL_PATH))
        .json(&json!({
            "token": enrollment, "csr_pem": csr, "host_fingerprint": "replica-host",
            "facts": { "hostname": "replica-host", "os_name": "Debian", "os_version": "12", "kernel_version": "6.1",
                       "architecture": "x86_64", "cpu_model": "test", "cpu_cores": 2, "memory_bytes": 1024,
                       "uptime_secs": 1, "kvm_available": false, "agent_version": "test" }
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let server_ca = enrolled["server_ca_pem"]
        .as_str()
        .unwrap_or_else(|| panic!("{enrolled}"));
    let identity = format!(
        "{}\n{}",
        enrolled["certificate_pem"].as_str().unwrap(),
        key.serialize_pem()
    );
    let device_id = enrolled["device_id"].as_str().unwrap().to_owned();
    // Every replica presents a certificate from the same CA.
    let device = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(server_ca.as_bytes()).unwrap()])
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .build()
        .unwrap();
    let ping = |server: &ServerProcess| {
        device
            .head(format!(
                "https://{}{}",
                server.device_addr,
                mobius_api::device::PING_PATH
            ))
            .send()
    };
    for server in [&a, &b, &c] {
        let status = ping(server).await.unwrap().status();
        assert!(status.is_success(), "ping before revocation: {status}");
    }

    let revoked = cluster
        .gql(
            &b,
            &token,
            "mutation($id: ID!) { revokeDevice(id: $id) { status } }",
            json!({ "id": mobius_tests::global_id("Device", device_id.parse().unwrap()) }),
        )
        .await;
    assert_eq!(
        revoked["data"]["revokeDevice"]["status"], "REVOKED",
        "{revoked}"
    );
    let revoked_at = Instant::now();
    let refused = eventually(Duration::from_secs(1), async || match ping(&c).await {
        Ok(response) => response.status().is_client_error(),
        Err(_) => true,
    })
    .await;
    let took = revoked_at.elapsed();
    eprintln!("revocation on B refused on C after {took:?}");
    assert!(refused, "C still served the revoked device after {took:?}");
}

/// Start times of `job` as the replicas logged them.
fn job_starts(servers: &[&ServerProcess], job: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    let mut starts: Vec<_> = servers
        .iter()
        .flat_map(|s| s.log_events())
        .filter(|e| e["fields"]["message"] == "job ran" || e["message"] == "job ran")
        .filter(|e| e["job"] == job || e["fields"]["job"] == job)
        .filter_map(|e| {
            e["started_at"]
                .as_str()
                .or(e["fields"]["started_at"].as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
        })
        .collect();
    starts.sort();
    starts
}

#[tokio::test]
async fn each_job_runs_once_per_period_while_replicas_come_and_go() {
    let mut cluster = Cluster::new().await;
    let periods = [(
        "MOBIUS_JOB_PERIODS_SECS",
        "{purge-expired=3,prune-cluster=3}",
    )];
    let a = cluster.start(&periods);
    let b = cluster.start(&periods);
    let c = cluster.start(&periods);
    tokio::time::sleep(Duration::from_secs(7)).await;
    // Kill one hard (no graceful stop) and start another.
    drop(b);
    let d = cluster.start(&periods);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let servers = [&a, &c, &d];
    for job in ["purge-expired", "prune-cluster"] {
        let starts = job_starts(&servers, job);
        // A killed replica's log is gone with it; what the survivors ran
        // must still be spaced a full period apart.
        assert!(
            starts.len() >= 3,
            "{job} ran {} times: {starts:?}",
            starts.len()
        );
        for pair in starts.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= chrono::Duration::milliseconds(2900),
                "{job} ran twice within one period: {starts:?}"
            );
        }
    }
    // The record counts every run, whoever ran it, and /metrics shows it.
    let output = std::process::Command::new(mobius_tests::workspace_binary("mobius-server"))
        .args([
            "jobs",
            "--output",
            "json",
            "--database-url",
            cluster.db.owner_url().expose_secret(),
        ])
        .env("MOBIUS_DATABASE_APP_PASSWORD", "replica-test-app-password")
        .env("MOBIUS_MASTER_KEY", &cluster.master_key)
        .current_dir(cluster.dirs[0].path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Log lines may precede the one line of JSON.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let records: Value = stdout
        .lines()
        .find(|line| line.starts_with('['))
        .map(|line| serde_json::from_str(line).unwrap())
        .unwrap_or_else(|| panic!("no JSON list in {stdout}"));
    let purge = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "purge-expired")
        .unwrap_or_else(|| panic!("{records}"));
    let runs = purge["runs"].as_i64().unwrap();
    // 14 s at one run per 3 s (plus up to 3 s of tick and jitter): 4 or 5.
    assert!(
        (3..=5).contains(&runs),
        "purge-expired ran {runs} times: {records}"
    );
    let metrics = cluster
        .http
        .get(a.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mobius_job_runs{job=\"purge-expired\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_online_backup_of_the_embedded_store_starts_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let http = reqwest::Client::new();
    let code = server.setup_code.clone().expect("setup code");
    let setup: Value = http
        .post(server.url("/api/graphql"))
        .json(&json!({ "query": "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
                       "variables": { "i": { "code": code, "email": "o@backup.test", "password": PASSWORD, "displayName": "O" } } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(setup["errors"].is_null(), "{setup}");

    // While the server runs.
    let backup = dir.path().join("backup.db");
    let output = std::process::Command::new(mobius_tests::workspace_binary("mobius-server"))
        .args(["backup", "--to"])
        .arg(&backup)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A second backup to the same file is refused, not overwritten.
    let again = std::process::Command::new(mobius_tests::workspace_binary("mobius-server"))
        .args(["backup", "--to"])
        .arg(&backup)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    server.terminate();

    // Restore: a fresh data directory with the backup (and the master key).
    let restored = tempfile::tempdir().unwrap();
    let data = restored.path().join("mobius-data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(&backup, data.join("mobius.db")).unwrap();
    std::fs::copy(
        dir.path().join("mobius-data/master.key"),
        data.join("master.key"),
    )
    .unwrap();
    let server = ServerProcess::start(restored.path(), &[], &[]);
    assert!(
        server.setup_code.is_none(),
        "the restored store has its owner"
    );
    let login: Value = http
        .post(server.url("/api/graphql"))
        .json(
            &json!({ "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                       "variables": { "i": { "email": "o@backup.test", "password": PASSWORD } } }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(login["data"]["login"]["accessToken"].is_string(), "{login}");
}
