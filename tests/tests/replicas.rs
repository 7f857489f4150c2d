//! Several real `mobius-server` replicas on one Postgres: what one changes
//! the others see (audit subscriptions, revocations), jobs that run once
//! per period across replicas while replicas come and go, and the
//! embedded store's online backup.

use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use mobius_tests::fleet::{Agent, agent_command_as};
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
            // A role of their own: roles are cluster-wide, and other tests
            // reset the default role's password as they start servers.
            ("MOBIUS_DATABASE_APP_ROLE", "mobius_replicas_app"),
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

/// Start times of `job` in these log events.
fn job_starts(events: &[Value], job: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    let mut starts: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "job ran" && e["job"] == job)
        .filter_map(|e| {
            e["started_at"]
                .as_str()
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
        "{purge-expired=3,prune-cluster=3,purge-plan-logs=3}",
    )];
    let a = cluster.start(&periods);
    let b = cluster.start(&periods);
    let c = cluster.start(&periods);
    tokio::time::sleep(Duration::from_secs(7)).await;
    // Kill one hard (no graceful stop) and start another.
    let mut events = b.log_events();
    drop(b);
    let d = cluster.start(&periods);
    tokio::time::sleep(Duration::from_secs(7)).await;
    for server in [&a, &c, &d] {
        events.extend(server.log_events());
    }
    let mut logged_runs = std::collections::HashMap::new();
    for job in ["purge-expired", "prune-cluster", "purge-plan-logs"] {
        let starts = job_starts(&events, job);
        logged_runs.insert(job, starts.len() as i64);
        // Every run any replica made, spaced at least a period apart.
        assert!(
            starts.len() >= 2,
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
        .env("MOBIUS_DATABASE_APP_ROLE", "mobius_replicas_app")
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
    // 14 s at one run per 3 s, seen due up to a tick (2-3 s) late: 2 to 5.
    assert!(
        (2..=5).contains(&runs),
        "purge-expired ran {runs} times: {records}"
    );
    // Each recorded run was logged once (the killed replica may have
    // committed one run and died before logging it).
    let logged = logged_runs["purge-expired"];
    assert!(
        runs == logged || runs == logged + 1,
        "{runs} runs recorded, {logged} logged"
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

/// A free local port (bound, then released for a replica to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct RunningAgent(std::process::Child);

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(state_dir: &std::path::Path, args: &[&str], fingerprint: &str) -> std::process::Command {
    let mut command = std::process::Command::new(mobius_tests::workspace_binary("mobius-agent"));
    command
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .env("MOBIUS_AGENT_HOST_FINGERPRINT", fingerprint)
        .env("MOBIUS_AGENT_MAX_INTERVAL_SECS", "1")
        .stdin(std::process::Stdio::null());
    command
}

/// A rolling restart (SIGTERM, start again on the same ports) of all
/// three replicas while agents heartbeat and an admin writes through
/// whichever replicas are up: every acknowledged write is there afterwards
/// and every agent is heartbeating again within 60 s.
#[tokio::test]
async fn a_rolling_restart_loses_no_acknowledged_write_and_every_agent_comes_back() {
    let mut cluster = Cluster::new().await;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let env = [
        ("MOBIUS_LAST_SEEN_WRITE_AFTER_SECS", "1"),
        ("MOBIUS_DATABASE_APP_ROLE", "mobius_replicas_app"),
    ];
    let start = |cluster: &mut Cluster, (admin, device): (u16, u16)| {
        let dir = tempfile::tempdir().unwrap();
        let url = cluster.db.owner_url().expose_secret().to_owned();
        let listen = format!("127.0.0.1:{admin}");
        let device_listen = format!("127.0.0.1:{device}");
        let mut all_env = vec![
            ("MOBIUS_MASTER_KEY", cluster.master_key.clone()),
            (
                "MOBIUS_DATABASE_APP_PASSWORD",
                "replica-test-app-password".to_owned(),
            ),
            ("MOBIUS_HEARTBEAT_INTERVAL_SECS", "1".to_owned()),
        ];
        all_env.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let all_env: Vec<(&str, &str)> = all_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server = ServerProcess::start(
            dir.path(),
            &[
                "--database-url",
                &url,
                "--listen",
                &listen,
                "--device-listen",
                &device_listen,
            ],
            &all_env,
        );
        cluster.dirs.push(dir);
        server
    };
    let mut replicas: Vec<Option<ServerProcess>> = Vec::new();
    for port in &ports {
        replicas.push(Some(start(&mut cluster, *port)));
    }
    let token = cluster
        .setup(replicas[0].as_ref().unwrap(), replicas[2].as_ref().unwrap())
        .await;
    let first = replicas[0].as_ref().unwrap();
    let site = cluster
        .gql(first, &token, "{ sites { nodes { id } } }", json!({}))
        .await["data"]["sites"]["nodes"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = cluster
        .gql(
            first,
            &token,
            "mutation($i: CreateEnrollmentTokenInput!) { createEnrollmentToken(input: $i) { token } }",
            json!({ "i": { "siteId": site, "maxUses": 3 } }),
        )
        .await;
    let enrollment = created["data"]["createEnrollmentToken"]["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // One agent per replica's device port.
    let states = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for (i, (_, device)) in ports.iter().enumerate() {
        let state_dir = states.path().join(format!("agent-{i}"));
        let name = format!("rolling-{i}");
        let enrolled = agent(
            &state_dir,
            &[
                "enroll",
                "--server",
                &format!("https://127.0.0.1:{device}"),
                "--token",
                &enrollment,
            ],
            &name,
        )
        .output()
        .unwrap();
        assert!(
            enrolled.status.success(),
            "{}",
            String::from_utf8_lossy(&enrolled.stderr)
        );
        agents.push(RunningAgent(
            agent(&state_dir, &["run"], &name)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }
    let devices_query = "{ devices { nodes { hostname status lastSeenAt } } }";
    let all_online = eventually(Duration::from_secs(20), async || {
        let page = cluster.gql(first, &token, devices_query, json!({})).await;
        page["data"]["devices"]["nodes"]
            .as_array()
            .is_some_and(|d| d.len() == 3 && d.iter().all(|d| d["status"] == "ONLINE"))
    })
    .await;
    assert!(all_online, "the agents never came online");

    // An admin writing through the replicas round-robin, keeping the names
    // of the writes that were acknowledged.
    let admin_ports: Vec<u16> = ports.iter().map(|(a, _)| *a).collect();
    let writer_token = token.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writer = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut acknowledged = Vec::new();
        let mut attempts = 0u64;
        let mut n = 0usize;
        while !stop_writer.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            attempts += 1;
            let port = admin_ports[n % admin_ports.len()];
            let name = format!("rolling-write-{n}");
            let response = http
                .post(format!("http://127.0.0.1:{port}/api/graphql"))
                .bearer_auth(&writer_token)
                .json(&json!({ "query": "mutation($n: String!) { createSite(input: { name: $n }) { id } }", "variables": { "n": name } }))
                .send()
                .await;
            if let Ok(response) = response
                && let Ok(body) = response.json::<Value>().await
                && body["data"]["createSite"]["id"].is_string()
            {
                acknowledged.push(name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (acknowledged, attempts)
    });

    let rolling_started = Instant::now();
    let mut back_after: Vec<chrono::DateTime<chrono::Utc>> = Vec::new();
    for i in 0..3 {
        let old = replicas[i].take().unwrap();
        assert_eq!(old.terminate(), Some(0), "replica {i} did not stop cleanly");
        replicas[i] = Some(start(&mut cluster, ports[i]));
        back_after.push(chrono::Utc::now());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let restarted_at = chrono::Utc::now();
    // Every agent heartbeats again after its replica came back.
    let any = replicas[0].as_ref().unwrap();
    let mut agents_back = None;
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(60) {
        let page = cluster.gql(any, &token, devices_query, json!({})).await;
        let nodes = page["data"]["devices"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let fresh = nodes.iter().all(|d| {
            d["lastSeenAt"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t.with_timezone(&chrono::Utc) > restarted_at)
        });
        if nodes.len() == 3 && fresh {
            agents_back = Some(waited.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acknowledged, attempts) = writer.await.unwrap();
    let agents_back =
        agents_back.expect("every agent heartbeats within 60 s of the rolling restart");
    eprintln!(
        "rolling restart of 3 replicas took {:?}; all 3 agents heartbeating {:?} after the last restart; {} of {} writes acknowledged",
        rolling_started.elapsed(),
        agents_back,
        acknowledged.len(),
        attempts
    );

    let sites = cluster
        .gql(
            any,
            &token,
            "{ sites(first: 1000) { nodes { name } } }",
            json!({}),
        )
        .await
        .to_string();
    for name in &acknowledged {
        assert!(
            sites.contains(&format!("\"{name}\"")),
            "acknowledged write {name} is gone"
        );
    }
    assert!(
        acknowledged.len() > 10,
        "too few writes went through: {}",
        acknowledged.len()
    );
    drop(agents);
}

/// A notification that never arrives (lost while a listener reconnected)
/// does not lose the message: the fallback poll reads it from the log.
#[tokio::test]
async fn a_message_whose_notification_was_lost_arrives_through_the_log() {
    use sea_orm::sqlx::{self, Connection, Row};
    let mut cluster = Cluster::new().await;
    let a = cluster.start(&[]);
    let b = cluster.start(&[]);
    let token = cluster.setup(&a, &b).await;
    let created = cluster
        .gql(
            &b,
            &token,
            r#"mutation { createSite(input: { name: "logged-only" }) { id } }"#,
            json!({}),
        )
        .await;
    assert!(created["errors"].is_null(), "{created}");
    let mut socket = subscribe_audit(&a, &token).await;
    // Log a message for that event without NOTIFY, as if the notification
    // had been sent while A's listener was reconnecting.
    let mut admin = sqlx::PgConnection::connect(&cluster.db.admin_url())
        .await
        .unwrap();
    let row = sqlx::query(
        "SELECT tenant_id, id FROM audit_events WHERE action = 'site.created' \
         AND details->>'name' = 'logged-only'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    let tenant: uuid::Uuid = row.get("tenant_id");
    let event: uuid::Uuid = row.get("id");
    let logged = Instant::now();
    sqlx::query(
        "INSERT INTO cluster_messages (id, topic, payload, created_at) VALUES ($1, 'audit', $2, now())",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(format!("{tenant} {event}"))
    .execute(&mut admin)
    .await
    .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let m = next_message_within(&mut socket, Duration::from_secs(8)).await;
            if m["payload"]["data"]["auditEvents"]["details"]["name"] == "logged-only" {
                return m;
            }
        }
    })
    .await
    .expect("the logged message reached A's subscriber through the poll");
    eprintln!(
        "un-notified message delivered by the poll after {:?}",
        logged.elapsed()
    );
    assert_eq!(
        message["payload"]["data"]["auditEvents"]["action"],
        "site.created"
    );
}

async fn subscribe_audit(
    server: &ServerProcess,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = server
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
    socket
}

async fn next_message_within<S>(socket: &mut S, within: Duration) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let message = tokio::time::timeout(within, socket.next())
        .await
        .expect("a message in time");
    let text = message.unwrap().unwrap().into_text().unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Two replicas together admit the configured number of sign-in and
/// enrollment attempts per client, not twice it.
#[tokio::test]
async fn rate_limits_hold_across_replicas() {
    let mut cluster = Cluster::new().await;
    let env = [
        ("MOBIUS_LOGIN_ATTEMPTS_PER_MINUTE_PER_CLIENT", "3"),
        ("MOBIUS_ENROLLMENT_ATTEMPTS_PER_MINUTE_PER_CLIENT", "3"),
    ];
    let a = cluster.start(&env);
    let b = cluster.start(&env);
    let _token = cluster.setup(&a, &b).await;
    // A minute window could end mid-test; start just after one begins.
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 45 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
    let mut codes = Vec::new();
    for i in 0..4 {
        let server = if i % 2 == 0 { &a } else { &b };
        let answer = cluster
            .gql(
                server,
                "",
                "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                json!({ "i": { "email": "owner@replicas.test", "password": "wrong password" } }),
            )
            .await;
        codes.push(answer["errors"][0]["extensions"]["code"].clone());
    }
    assert_ne!(codes[2], "RATE_LIMITED", "{codes:?}");
    assert_eq!(codes[3], "RATE_LIMITED", "{codes:?}");

    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let server = if i % 2 == 0 { &a } else { &b };
        let response = insecure
            .post(format!(
                "https://{}{}",
                server.device_addr,
                mobius_api::device::ENROLL_PATH
            ))
            .json(&json!({ "token": "not-a-token" }))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if i == 3 {
            assert!(response.headers().get("retry-after").is_some());
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "RATE_LIMITED", "{body}");
        }
    }
    assert_ne!(statuses[2], 429, "{statuses:?}");
    assert_eq!(statuses[3], 429, "{statuses:?}");
}

/// The cleanup job deletes what has expired, and only that, on both
/// backends: an expired enrollment token goes, a current one stays.
#[tokio::test]
async fn the_cleanup_job_purges_expired_rows_on_postgres() {
    use sea_orm::sqlx::{self, Connection, Row};
    let mut cluster = Cluster::new().await;
    let a = cluster.start(&[("MOBIUS_JOB_PERIODS_SECS", "{purge-expired=1}")]);
    let token = cluster.setup(&a, &a).await;
    let (expired, current) = two_tokens(&cluster.http, &a, &token).await;
    let mut admin = sqlx::PgConnection::connect(&cluster.db.admin_url())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE enrollment_tokens SET expires_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(expired)
    .execute(&mut admin)
    .await
    .unwrap();
    let purged = eventually(Duration::from_secs(10), async || {
        let rows = sqlx::query("SELECT id FROM enrollment_tokens")
            .fetch_all(&mut admin)
            .await
            .unwrap();
        let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.get("id")).collect();
        !ids.contains(&expired) && ids.contains(&current)
    })
    .await;
    assert!(
        purged,
        "the expired token was not purged (or the current one was)"
    );
}

#[tokio::test]
async fn the_cleanup_job_purges_expired_rows_on_the_embedded_store() {
    use sea_orm::sqlx::{self, Connection, Row};
    let dir = tempfile::tempdir().unwrap();
    let a = ServerProcess::start(
        dir.path(),
        &[],
        &[("MOBIUS_JOB_PERIODS_SECS", "{purge-expired=1}")],
    );
    let http = reqwest::Client::new();
    let code = a.setup_code.clone().unwrap();
    let setup: Value = http
        .post(a.url("/api/graphql"))
        .json(&json!({ "query": "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
                       "variables": { "i": { "code": code, "email": "o@sqlite.test", "password": PASSWORD, "displayName": "O" } } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = setup["data"]["setup"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let (expired, current) = two_tokens(&http, &a, &token).await;
    let url = format!(
        "sqlite://{}",
        dir.path().join("mobius-data/mobius.db").display()
    );
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let updated = sqlx::query(
        "UPDATE enrollment_tokens SET expires_at = '2000-01-01 00:00:00+00:00' WHERE id = ?",
    )
    .bind(expired)
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    let purged = eventually(Duration::from_secs(10), async || {
        let rows = sqlx::query("SELECT id FROM enrollment_tokens")
            .fetch_all(&mut db)
            .await
            .unwrap();
        let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.get("id")).collect();
        !ids.contains(&expired) && ids.contains(&current)
    })
    .await;
    assert!(
        purged,
        "the expired token was not purged (or the current one was): {:?}",
        a.log_events()
            .iter()
            .filter(|e| e["level"] != "INFO" || e["message"] == "job ran")
            .collect::<Vec<_>>()
    );
}

/// Two enrollment tokens (row ids) made through the API.
async fn two_tokens(
    http: &reqwest::Client,
    server: &ServerProcess,
    token: &str,
) -> (uuid::Uuid, uuid::Uuid) {
    let gql = async |query: &str, variables: Value| -> Value {
        http.post(server.url("/api/graphql"))
            .bearer_auth(token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let site =
        gql("{ sites { nodes { id } } }", json!({})).await["data"]["sites"]["nodes"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created = gql(
            "mutation($i: CreateEnrollmentTokenInput!) { createEnrollmentToken(input: $i) { enrollmentToken { id } } }",
            json!({ "i": { "siteId": site, "maxUses": 1 } }),
        )
        .await;
        ids.push(mobius_tests::uuid_of(
            created["data"]["createEnrollmentToken"]["enrollmentToken"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{created}")),
        ));
    }
    (ids[0], ids[1])
}

/// A plan applied through replica A reaches an agent whose work stream is
/// held by replica B within a second: B learns of it from A's committed
/// `plan.applied` event on the bus, not from a heartbeat (60 s here).
#[tokio::test]
async fn a_plan_applied_on_one_replica_reaches_an_agent_on_another_within_a_second() {
    let mut cluster = Cluster::new().await;
    let slow_heartbeat = [("MOBIUS_HEARTBEAT_INTERVAL_SECS", "60")];
    let a = cluster.start(&slow_heartbeat);
    let b = cluster.start(&slow_heartbeat);
    let token = cluster.setup(&a, &b).await;
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
            json!({ "i": { "siteId": site } }),
        )
        .await;
    let enrollment = created["data"]["createEnrollmentToken"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();

    // The agent talks only to B's device listener.
    let state = tempfile::tempdir().unwrap();
    let server_b = format!("https://{}", b.device_addr);
    let enrolled = agent_command_as(
        state.path(),
        "replica-plan-host",
        &["enroll", "--server", &server_b, "--token", &enrollment],
    )
    .output()
    .unwrap();
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let agent = Agent::start_as(state.path(), "replica-plan-host");
    agent.connected().await;

    let device = cluster
        .gql(&a, &token, "{ devices { nodes { id } } }", json!({}))
        .await["data"]["devices"]["nodes"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let applied = cluster
        .gql(
            &a,
            &token,
            "mutation($i: ApplyPlanInput!) { applyPlan(input: $i) { plan { executions { id } } } }",
            json!({ "i": { "idempotencyKey": "across-replicas", "targets": { "deviceIds": [device] },
                "operations": [{ "kind": "exec", "params": { "argv": ["true"] } }] } }),
        )
        .await;
    let execution = applied["data"]["applyPlan"]["plan"]["executions"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{applied}"))
        .to_owned();
    let query = "query($id: ID!) { planExecution(id: $id) { status createdAt deliveredAt } }";
    let succeeded = eventually(Duration::from_secs(15), async || {
        cluster
            .gql(&a, &token, query, json!({ "id": execution }))
            .await["data"]["planExecution"]["status"]
            == "SUCCEEDED"
    })
    .await;
    let found = cluster
        .gql(&a, &token, query, json!({ "id": execution }))
        .await;
    assert!(succeeded, "{found}");
    let found = &found["data"]["planExecution"];
    let at =
        |field: &str| chrono::DateTime::parse_from_rfc3339(found[field].as_str().unwrap()).unwrap();
    let pushed_in = (at("deliveredAt") - at("createdAt")).num_milliseconds();
    assert!(
        pushed_in < 1_000,
        "delivered {pushed_in} ms after apply on the other replica: {found}"
    );
}

#[tokio::test]
async fn agent_options_set_on_one_replica_reach_an_agent_and_an_osquery_host_on_another() {
    let mut cluster = Cluster::new().await;
    let slow_heartbeat = [("MOBIUS_HEARTBEAT_INTERVAL_SECS", "60")];
    let a = cluster.start(&slow_heartbeat);
    let b = cluster.start(&slow_heartbeat);
    let token = cluster.setup(&a, &b).await;
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
            json!({ "i": { "siteId": site } }),
        )
        .await;
    let enrollment = created["data"]["createEnrollmentToken"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    let secret = cluster
        .gql(
            &a,
            &token,
            "mutation { createOsqueryEnrollSecret(input: {}) { secret } }",
            json!({}),
        )
        .await["data"]["createOsqueryEnrollSecret"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    // The agent and the osquery host talk only to B.
    let state = tempfile::tempdir().unwrap();
    let server_b = format!("https://{}", b.device_addr);
    let enrolled = agent_command_as(
        state.path(),
        "replica-options-host",
        &["enroll", "--server", &server_b, "--token", &enrollment],
    )
    .output()
    .unwrap();
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let agent = Agent::start_as(state.path(), "replica-options-host");
    agent.connected().await;
    let mut host = mobius_tests::osquery_peer::OsqueryPeer::new(&b.url(""), "replica-osquery");
    assert!(host.enroll(&secret).await.0.is_success());
    // B caches the (empty) merged view now.
    let (_, config) = host.config().await;
    assert!(config.get("options").is_none(), "{config}");

    let set = cluster
        .gql(
            &a,
            &token,
            "mutation($d: JSON!) { setAgentOptions(document: $d) { optionsVersion } }",
            json!({ "d": { "options": { "distributed_interval": 15 }, "agent": { "query_timeout_ms": 7000 } } }),
        )
        .await;
    let version = set["data"]["setAgentOptions"]["optionsVersion"]
        .as_i64()
        .unwrap_or_else(|| panic!("{set}"));
    let started = Instant::now();
    let saved = state.path().join("options.json");
    let reached = eventually(Duration::from_secs(5), async || {
        std::fs::read_to_string(&saved)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .is_some_and(|o| o["options_version"] == version)
    })
    .await;
    assert!(reached, "the options set on A never reached the agent on B");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // B dropped its cached view: the osquery host gets the new one at once.
    let (_, config) = host.config().await;
    assert_eq!(config["options"]["distributed_interval"], 15, "{config}");
    eprintln!("agent options across replicas: {took:?}");
}
