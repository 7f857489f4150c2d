//! The CI smoke run of the agent simulator: the real `mobius-loadgen`
//! against the real server on Postgres, a few hundred agents enrolling
//! and heartbeating for a few seconds. It checks the simulator works and
//! the server answers every request; it asserts no timing (the benchmark,
//! tests/bench/run.sh, measures performance and is not run in CI).

use std::process::Stdio;
use std::time::Duration;

use mobius_tests::{ServerProcess, TestDatabase, workspace_binary};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const AGENTS: usize = 300;

async fn gql(
    http: &reqwest::Client,
    server: &ServerProcess,
    token: &str,
    query: &str,
    variables: Value,
) -> Value {
    let mut request = http
        .post(server.url("/api/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    let answer: Value = request.send().await.unwrap().json().await.unwrap();
    assert!(answer["errors"].is_null(), "{answer}");
    answer["data"].clone()
}

#[tokio::test]
async fn simulated_agents_enroll_and_every_heartbeat_is_answered() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database-url", db.owner_url().expose_secret()],
        &[("MOBIUS_HEARTBEAT_INTERVAL_SECS", "1")],
    );
    let http = reqwest::Client::new();
    let code = server
        .setup_code
        .clone()
        .expect("a fresh server prints a setup code");
    let setup = gql(
        &http,
        &server,
        "",
        "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
        json!({ "i": { "code": code, "email": "owner@loadgen.test", "password": "correct horse battery staple", "displayName": "O" } }),
    )
    .await;
    let access = setup["setup"]["accessToken"].as_str().unwrap().to_owned();
    let sites = gql(
        &http,
        &server,
        &access,
        "{ sites { nodes { id } } }",
        json!({}),
    )
    .await;
    let site = sites["sites"]["nodes"][0]["id"].as_str().unwrap();
    let created = gql(
        &http,
        &server,
        &access,
        "mutation($i: CreateEnrollmentTokenInput!) { createEnrollmentToken(input: $i) { token } }",
        json!({ "i": { "siteId": site, "maxUses": AGENTS } }),
    )
    .await;
    let token = created["createEnrollmentToken"]["token"].as_str().unwrap();

    // No --server-ca: the simulator trusts the server through the token's
    // pin, as a fresh agent does.
    let identities = dir.path().join("identities.json");
    let run = tokio::process::Command::new(workspace_binary("mobius-loadgen"))
        .args(["--server", &format!("https://{}", server.device_addr)])
        .args(["--token", token])
        .arg("--identities")
        .arg(&identities)
        .args(["--server-pid", &server.pid().to_string(), "--json"])
        .args([
            "heartbeat",
            "--agents",
            &AGENTS.to_string(),
            "--interval",
            "1",
            "--duration",
            "3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("mobius-loadgen finished within 60 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{:?}\n{stderr}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "--json printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });

    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["enroll", "connect", "heartbeat"], "{report}");
    for phase in phases {
        assert_eq!(phase["errors"], 0, "every request answered: {phase}");
        assert_eq!(phase["errors_by_kind"], json!({}), "{phase}");
    }
    let (enroll, connect, heartbeat) = (&phases[0], &phases[1], &phases[2]);
    assert_eq!(enroll["ok"], AGENTS, "{enroll}");
    assert_eq!(connect["ok"], AGENTS, "first pings (with facts): {connect}");
    assert!(heartbeat["ok"].as_u64().unwrap() > 0, "{heartbeat}");
    assert_eq!(heartbeat["connections_held"], AGENTS, "{heartbeat}");
    assert!(
        heartbeat["latency_ms"]["max"].as_f64().unwrap() > 0.0,
        "{heartbeat}"
    );
    // Given the server's pid, the simulator reports its CPU and memory.
    assert!(
        heartbeat["server"]["peak_rss_bytes"].as_u64().unwrap() > 0,
        "{heartbeat}"
    );

    let devices = gql(
        &http,
        &server,
        &access,
        "{ devices { totalCount } }",
        json!({}),
    )
    .await;
    assert_eq!(devices["devices"]["totalCount"], AGENTS);

    // The identities were kept: a second run reuses them and enrolls no one.
    let again = tokio::process::Command::new(workspace_binary("mobius-loadgen"))
        .args([
            "--server",
            &format!("https://{}", server.device_addr),
            "--json",
        ])
        .arg("--identities")
        .arg(&identities)
        .args([
            "baseline",
            "--agents",
            "50",
            "--interval",
            "1",
            "--duration",
            "1",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let again = tokio::time::timeout(Duration::from_secs(60), again)
        .await
        .expect("mobius-loadgen finished within 60 s")
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let report: Value = serde_json::from_slice(&again.stdout).unwrap();
    let names: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["connect", "baseline"], "{report}");
    assert_eq!(report["phases"][1]["errors"], 0, "{report}");
    let devices = gql(
        &http,
        &server,
        &access,
        "{ devices { totalCount } }",
        json!({}),
    )
    .await;
    assert_eq!(devices["devices"]["totalCount"], AGENTS);

    // A token the server does not know: every enrollment is refused, the
    // report counts the refusals by kind, and the exit status says so.
    let pin = token.rsplit('.').next().unwrap();
    let unknown = format!("mobius1.{}.{pin}", "A".repeat(43));
    let refused = tokio::process::Command::new(workspace_binary("mobius-loadgen"))
        .args([
            "--server",
            &format!("https://{}", server.device_addr),
            "--json",
        ])
        .arg("--server-ca")
        .arg(dir.path().join("mobius-data/device-ca.pem"))
        .args(["--token", &unknown, "enroll", "--count", "3"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(60), refused)
        .await
        .expect("mobius-loadgen finished within 60 s")
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let report: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(report["phases"][0]["ok"], 0, "{report}");
    assert_eq!(
        report["phases"][0]["errors_by_kind"],
        json!({ "http 401 UNAUTHENTICATED": 3 }),
        "{report}"
    );
}
