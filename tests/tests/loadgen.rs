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

/// Sets a fresh server up (its first owner) and creates an enrollment
/// token for `uses` agents: the owner's access token and the token.
async fn owner_and_token(
    http: &reqwest::Client,
    server: &ServerProcess,
    uses: usize,
) -> (String, String) {
    let code = server
        .setup_code
        .clone()
        .expect("a fresh server prints a setup code");
    let setup = gql(
        http,
        server,
        "",
        "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
        json!({ "i": { "code": code, "email": "owner@loadgen.test", "password": "correct horse battery staple", "displayName": "O" } }),
    )
    .await;
    let access = setup["setup"]["accessToken"].as_str().unwrap().to_owned();
    let sites = gql(
        http,
        server,
        &access,
        "{ sites { nodes { id } } }",
        json!({}),
    )
    .await;
    let site = sites["sites"]["nodes"][0]["id"].as_str().unwrap();
    let created = gql(
        http,
        server,
        &access,
        "mutation($i: CreateEnrollmentTokenInput!) { createEnrollmentToken(input: $i) { token } }",
        json!({ "i": { "siteId": site, "maxUses": uses } }),
    )
    .await;
    let token = created["createEnrollmentToken"]["token"].as_str().unwrap();
    (access, token.to_owned())
}

/// Runs mobius-loadgen with `args` and --json (within 60 s) and returns its
/// exit status and report. Its standard error is passed on, so a failing
/// test shows it.
async fn loadgen(args: &[&str]) -> (std::process::ExitStatus, Value) {
    let run = tokio::process::Command::new(workspace_binary("mobius-loadgen"))
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("mobius-loadgen finished within 60 s")
        .unwrap();
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "--json printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (output.status, report)
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
    let (access, token) = owner_and_token(&http, &server, AGENTS).await;
    let token = token.as_str();

    // No --server-ca: the simulator trusts the server through the token's
    // pin, as a fresh agent does.
    let identities = dir.path().join("identities.json");
    let identities_arg = identities.to_str().unwrap();
    let device_url = format!("https://{}", server.device_addr);
    let (status, report) = loadgen(&[
        "--server",
        &device_url,
        "--token",
        token,
        "--identities",
        identities_arg,
        "--server-pid",
        &server.pid().to_string(),
        "heartbeat",
        "--agents",
        &AGENTS.to_string(),
        "--interval",
        "1",
        "--duration",
        "3",
    ])
    .await;
    assert!(status.success(), "{status:?}: {report}");

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
    let (status, report) = loadgen(&[
        "--server",
        &device_url,
        "--identities",
        identities_arg,
        "baseline",
        "--agents",
        "50",
        "--interval",
        "1",
        "--duration",
        "1",
    ])
    .await;
    assert!(status.success(), "{status:?}: {report}");
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
    let server_ca = dir.path().join("mobius-data/device-ca.pem");
    let (status, report) = loadgen(&[
        "--server",
        &device_url,
        "--server-ca",
        server_ca.to_str().unwrap(),
        "--token",
        &unknown,
        "enroll",
        "--count",
        "3",
    ])
    .await;
    assert_eq!(status.code(), Some(3), "{report}");
    assert_eq!(report["phases"][0]["ok"], 0, "{report}");
    assert_eq!(
        report["phases"][0]["errors_by_kind"],
        json!({ "http 401 UNAUTHENTICATED": 3 }),
        "{report}"
    );
}

/// The reconnect scenario in small: agents enrolled against one server
/// process all reconnect at the same moment to its successor (same data
/// directory and database, so the same server CA and devices), each with
/// facts on its first ping, and every one is served.
#[tokio::test]
async fn agents_reconnecting_at_once_after_a_restart_are_all_served() {
    const RECONNECTING: usize = 20;
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let owner_url = db.owner_url();
    let database = ["--database-url", owner_url.expose_secret()];
    let server = ServerProcess::start(dir.path(), &database, &[]);
    let http = reqwest::Client::new();
    let (access, token) = owner_and_token(&http, &server, RECONNECTING).await;
    let identities = dir.path().join("identities.json");
    let identities_arg = identities.to_str().unwrap();
    let (status, report) = loadgen(&[
        "--server",
        &format!("https://{}", server.device_addr),
        "--token",
        &token,
        "--identities",
        identities_arg,
        "enroll",
        "--count",
        &RECONNECTING.to_string(),
    ])
    .await;
    assert!(status.success(), "{report}");
    assert_eq!(report["phases"][0]["ok"], RECONNECTING, "{report}");

    let stopping = tokio::task::spawn_blocking(move || server.terminate());
    assert_eq!(stopping.await.unwrap(), Some(0), "a clean stop");
    let restarted_at = chrono::Utc::now();
    let server = ServerProcess::start(dir.path(), &database, &[]);
    // The new process listens on another port (port 0): the identities
    // are still its own, so point the file at the new address.
    let device_url = format!("https://{}", server.device_addr);
    let mut file: Value = serde_json::from_slice(&std::fs::read(&identities).unwrap()).unwrap();
    file["server"] = json!(device_url);
    std::fs::write(&identities, serde_json::to_vec(&file).unwrap()).unwrap();

    let (status, report) = loadgen(&[
        "--server",
        &device_url,
        "--identities",
        identities_arg,
        "--server-pid",
        &server.pid().to_string(),
        "reconnect",
        "--agents",
        &RECONNECTING.to_string(),
    ])
    .await;
    assert!(status.success(), "{status:?}: {report}");
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 1, "no enrollment after the restart: {report}");
    let reconnect = &phases[0];
    assert_eq!(reconnect["phase"], "reconnect", "{report}");
    assert_eq!(reconnect["ok"], RECONNECTING, "all served: {reconnect}");
    assert_eq!(reconnect["errors"], 0, "{reconnect}");
    assert_eq!(reconnect["errors_by_kind"], json!({}), "{reconnect}");
    assert_eq!(reconnect["connections_held"], RECONNECTING, "{reconnect}");
    let last_served = reconnect["last_served_secs"].as_f64().unwrap();
    assert!(last_served > 0.0, "{reconnect}");
    // The last agent served is the slowest first ping, counted from the
    // same start as every other.
    let max_ms = reconnect["latency_ms"]["max"].as_f64().unwrap();
    assert!(
        (last_served * 1000.0 - max_ms).abs() <= max_ms * 0.01 + 1.0,
        "{reconnect}"
    );
    assert!(
        reconnect["server"]["cpu_seconds"].is_number(),
        "{reconnect}"
    );
    eprintln!(
        "reconnect smoke: {RECONNECTING} agents served in {last_served} s, p50 {} ms, p99 {} ms",
        reconnect["latency_ms"]["p50"], reconnect["latency_ms"]["p99"]
    );

    // Every first ping carried facts, and the new process recorded them.
    let devices = gql(
        &http,
        &server,
        &access,
        "{ devices { totalCount nodes { hostname factsUpdatedAt } } }",
        json!({}),
    )
    .await;
    assert_eq!(devices["devices"]["totalCount"], RECONNECTING);
    let nodes = devices["devices"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), RECONNECTING, "{devices}");
    for node in nodes {
        let updated: chrono::DateTime<chrono::Utc> =
            node["factsUpdatedAt"].as_str().unwrap().parse().unwrap();
        assert!(updated >= restarted_at, "facts from the reconnect: {node}");
    }
}

/// The push-stream scenarios: plan-fanout answers every execution, and
/// live-query gets every simulated agent's rows to the admin's
/// subscription.
#[tokio::test]
async fn simulated_agents_hold_streams_for_plans_and_queries() {
    const STREAMING: usize = 20;
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database-url", db.owner_url().expose_secret()],
        &[],
    );
    let http = reqwest::Client::new();
    let (access, token) = owner_and_token(&http, &server, STREAMING).await;
    let identities = dir.path().join("identities.json");
    let identities_arg = identities.to_str().unwrap();
    let device_url = format!("https://{}", server.device_addr);
    let admin_url = server.url("");
    let agents = STREAMING.to_string();
    let common = [
        "--server",
        &device_url,
        "--token",
        &token,
        "--identities",
        identities_arg,
        "--admin",
        admin_url.trim_end_matches('/'),
        "--admin-token",
        &access,
    ];

    let mut args = common.to_vec();
    args.extend(["plan-fanout", "--agents", &agents, "--wait", "30"]);
    let (status, report) = loadgen(&args).await;
    assert!(status.success(), "{status:?}: {report}");
    let fanout = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "plan-fanout")
        .expect("a plan-fanout phase")
        .clone();
    assert_eq!(fanout["ok"], STREAMING, "{fanout}");
    assert_eq!(fanout["errors"], 0, "{fanout}");

    let mut args = common.to_vec();
    args.extend(["live-query", "--agents", &agents, "--wait", "30"]);
    let (status, report) = loadgen(&args).await;
    assert!(status.success(), "{status:?}: {report}");
    let live = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "live-query")
        .unwrap_or_else(|| panic!("no live-query phase: {report}"))
        .clone();
    assert_eq!(live["ok"], STREAMING, "{live}");
    assert_eq!(live["errors"], 0, "{live}");
}

/// Runs mobius-loadgen with `args` and --json in the background.
fn spawn_loadgen(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(workspace_binary("mobius-loadgen"))
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn finished(child: tokio::process::Child) -> (std::process::ExitStatus, Value) {
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("mobius-loadgen finished within 60 s")
        .unwrap();
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "--json printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (output.status, report)
}

async fn appears(path: &std::path::Path) -> Value {
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} did not appear within 30 s", path.display());
}

/// The idle push-channel scenario of tests/bench/replicas.sh in small:
/// agents open their work streams, say so in the ready file, hold only once
/// the start file exists, and are all still open after the hold; when the
/// server stops during a hold, every ended stream is an error and the exit
/// status says so.
#[tokio::test]
async fn agents_hold_their_work_streams_until_the_server_ends_them() {
    const STREAMING: usize = 20;
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let owner_url = db.owner_url();
    let server = ServerProcess::start(
        dir.path(),
        &["--database-url", owner_url.expose_secret()],
        &[],
    );
    let http = reqwest::Client::new();
    let (_access, token) = owner_and_token(&http, &server, STREAMING).await;
    let identities = dir.path().join("identities.json");
    let identities_arg = identities.to_str().unwrap();
    let device_url = format!("https://{}", server.device_addr);
    let count = STREAMING.to_string();
    let (status, report) = loadgen(&[
        "--server",
        &device_url,
        "--token",
        &token,
        "--identities",
        identities_arg,
        "enroll",
        "--count",
        &count,
    ])
    .await;
    assert!(status.success(), "{report}");

    let ready = dir.path().join("ready.json");
    let start = dir.path().join("go");
    let mut child = spawn_loadgen(&[
        "--server",
        &device_url,
        "--identities",
        identities_arg,
        "streams",
        "--agents",
        &count,
        "--hold",
        "1",
        "--ready-file",
        ready.to_str().unwrap(),
        "--start-file",
        start.to_str().unwrap(),
    ]);
    let opened = appears(&ready).await;
    assert_eq!(opened["opened"], STREAMING, "{opened}");
    assert_eq!(opened["errors"], 0, "{opened}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the hold waits for the start file"
    );
    std::fs::write(&start, b"").unwrap();
    let (status, report) = finished(child).await;
    assert!(status.success(), "{status:?}: {report}");
    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stream-connect", "stream-hold"], "{report}");
    assert_eq!(phases[0]["ok"], STREAMING, "{report}");
    assert_eq!(phases[1]["connections_held"], STREAMING, "{report}");
    assert_eq!(phases[1]["errors"], 0, "{report}");

    // The server stops in the middle of a hold: no stream survives it.
    let ready = dir.path().join("ready-2.json");
    let child = spawn_loadgen(&[
        "--server",
        &device_url,
        "--identities",
        identities_arg,
        "streams",
        "--agents",
        &count,
        "--hold",
        "4",
        "--ready-file",
        ready.to_str().unwrap(),
    ]);
    assert_eq!(appears(&ready).await["opened"], STREAMING);
    let stopping = tokio::task::spawn_blocking(move || server.terminate());
    assert_eq!(stopping.await.unwrap(), Some(0), "a clean stop");
    let (status, report) = finished(child).await;
    assert_eq!(status.code(), Some(3), "{report}");
    let hold = &report["phases"][1];
    assert_eq!(hold["connections_held"], 0, "{hold}");
    assert_eq!(hold["errors"], STREAMING, "{hold}");
    for kind in hold["errors_by_kind"].as_object().unwrap().keys() {
        assert!(kind.starts_with("stream: "), "{hold}");
    }
}

/// The osquery scenario: simulated osquery hosts enroll with a secret the
/// simulator creates, then poll `distributed/read`; every request answers.
#[tokio::test]
async fn simulated_osquery_hosts_enroll_and_poll_distributed_read() {
    const CLIENTS: usize = 20;
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database-url", db.owner_url().expose_secret()],
        &[],
    );
    let http = reqwest::Client::new();
    let (access, token) = owner_and_token(&http, &server, 1).await;
    let device_url = format!("https://{}", server.device_addr);
    let admin_url = server.url("");
    let clients = CLIENTS.to_string();
    let (status, report) = loadgen(&[
        "--server",
        &device_url,
        "--token",
        &token,
        "--admin",
        admin_url.trim_end_matches('/'),
        "--admin-token",
        &access,
        "osquery-poll",
        "--clients",
        &clients,
        "--interval",
        "1",
        "--duration",
        "3",
    ])
    .await;
    assert!(status.success(), "{status:?}: {report}");
    let phase = |name: &str| {
        report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == name)
            .unwrap_or_else(|| panic!("no {name} phase: {report}"))
            .clone()
    };
    let enroll = phase("osquery-enroll");
    assert_eq!(enroll["ok"], CLIENTS, "{enroll}");
    assert_eq!(enroll["errors"], 0, "{enroll}");
    let read = phase("osquery-read");
    // 20 hosts polling every second for 3 s: about 60 reads.
    assert!(read["ok"].as_u64().unwrap() >= 40, "{read}");
    assert_eq!(read["errors"], 0, "{read}");
}
