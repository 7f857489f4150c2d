//! Plans end to end, with the real `mobius-server` and `mobius-agent`
//! binaries on Postgres: push delivery, streamed output, idempotency,
//! refusals by the agent (tampered, replayed), INTERRUPTED after a crash
//! without running anything twice, timeouts, cancel, failures that do not
//! block, output truncation, and tenant separation of targets.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mobius_core::audit::Actor;
use mobius_core::db::SystemTask;
use mobius_tests::{eventually, global_id, workspace_binary};
use sea_orm::sqlx;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use mobius_tests::fleet::{Agent, Fleet};

fn first_execution(applied: &Value) -> String {
    applied["data"]["applyPlan"]["plan"]["executions"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no execution: {applied}"))
        .to_owned()
}

/// Plan calls on a fleet.
trait Plans {
    async fn apply(&self, key: &str, device: &str, operations: Value) -> Value;
    async fn execution(&self, id: &str) -> Value;
    async fn wait_for(&self, id: &str, status: &str, timeout: Duration) -> Value;
}

impl Plans for Fleet {
    /// Applies a plan on `device`; answers the whole payload.
    async fn apply(&self, key: &str, device: &str, operations: Value) -> Value {
        self.gql(
            "mutation($i: ApplyPlanInput!) { applyPlan(input: $i) { created plan { id createdAt executions { id status planVersion } } } }",
            json!({ "i": { "idempotencyKey": key, "targets": { "deviceIds": [device] }, "operations": operations } }),
        )
        .await
    }

    async fn execution(&self, id: &str) -> Value {
        self.gql(
            "query($id: ID!) { planExecution(id: $id) { id status error planVersion createdAt deliveredAt startedAt finishedAt logTruncatedBytes
               results { operationId status exitCode durationMs error }
               logs { seq stream line } } }",
            json!({ "id": id }),
        )
        .await["data"]["planExecution"]
            .clone()
    }

    /// Waits until the execution reaches `status`; answers it.
    async fn wait_for(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let reached = eventually(timeout, async || {
            self.execution(id).await["status"] == status
        })
        .await;
        let execution = self.execution(id).await;
        assert!(reached, "execution never became {status}: {execution}");
        execution
    }
}

fn seconds_between(a: &Value, b: &Value) -> f64 {
    let a = chrono::DateTime::parse_from_rfc3339(a.as_str().unwrap()).unwrap();
    let b = chrono::DateTime::parse_from_rfc3339(b.as_str().unwrap()).unwrap();
    (b - a).num_milliseconds() as f64 / 1000.0
}

#[tokio::test]
async fn a_plan_is_pushed_within_a_second_runs_streams_its_output_and_is_idempotent() {
    let fleet = Fleet::start(&[]).await;
    let device = fleet.enroll().await;
    let agent = Agent::start(&fleet.agent_dir());
    agent.connected().await;

    let operations = json!([{
        "operationId": "greet",
        "kind": "script",
        "params": { "interpreter": "sh", "body": "echo hello; sleep 1; echo oops >&2; sleep 1; echo bye" }
    }]);
    let applied = fleet.apply("first-plan", &device, operations.clone()).await;
    assert!(applied["errors"].is_null(), "{applied}");
    assert_eq!(applied["data"]["applyPlan"]["created"], true);
    let plan_id = applied["data"]["applyPlan"]["plan"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let execution_id = first_execution(&applied);

    // Follow the output over the subscription while it runs.
    let url = fleet.server.url("/api/graphql").replace("http://", "ws://");
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let send = |v: Value| Message::Text(v.to_string().into());
    socket
        .send(send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", fleet.token) } })))
        .await
        .unwrap();
    socket
        .send(send(json!({ "id": "1", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { executionLogs(executionId: $id) { seq stream line } }",
            "variables": { "id": execution_id } } })))
        .await
        .unwrap();
    let mut streamed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while streamed.len() < 3 && Instant::now() < deadline {
        let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_secs(20), socket.next()).await
        else {
            continue;
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        if message["type"] == "next" {
            let line = &message["payload"]["data"]["executionLogs"];
            streamed.push((
                line["stream"].as_str().unwrap().to_owned(),
                line["line"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert_eq!(
        streamed,
        vec![
            ("stdout".to_owned(), "hello".to_owned()),
            ("stderr".to_owned(), "oops".to_owned()),
            ("stdout".to_owned(), "bye".to_owned()),
        ]
    );

    let execution = fleet
        .wait_for(&execution_id, "SUCCEEDED", Duration::from_secs(15))
        .await;
    let pushed_in = seconds_between(&execution["createdAt"], &execution["deliveredAt"]);
    assert!(
        pushed_in < 1.0,
        "delivered {pushed_in} s after apply: {execution}"
    );
    assert_eq!(execution["results"][0]["operationId"], "greet");
    assert_eq!(execution["results"][0]["exitCode"], 0);
    assert_eq!(execution["planVersion"], 1);

    // The same key and content: the same plan. Different content: CONFLICT.
    let again = fleet.apply("first-plan", &device, operations).await;
    assert_eq!(again["data"]["applyPlan"]["created"], false, "{again}");
    assert_eq!(again["data"]["applyPlan"]["plan"]["id"], plan_id.as_str());
    let changed = fleet
        .apply(
            "first-plan",
            &device,
            json!([{ "kind": "exec", "params": { "argv": ["true"] } }]),
        )
        .await;
    assert_eq!(
        changed["errors"][0]["extensions"]["code"], "CONFLICT",
        "{changed}"
    );
    assert_eq!(
        changed["errors"][0]["extensions"]["field"],
        "idempotencyKey"
    );

    // A bad parameter is refused before anything is stored, naming the field.
    let bad = fleet
        .apply(
            "bad-plan",
            &device,
            json!([{ "kind": "exec", "params": { "argv": [], "timeout_secs": 5 } }]),
        )
        .await;
    assert_eq!(
        bad["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{bad}"
    );
    assert_eq!(
        bad["errors"][0]["extensions"]["field"],
        "operations[0].params.argv"
    );
    let total = fleet.gql("{ plans { totalCount } }", json!({})).await;
    assert_eq!(total["data"]["plans"]["totalCount"], 1, "{total}");

    // Every transition is audited.
    let audit = fleet
        .gql(
            "{ auditEvents(first: 100) { nodes { action } } }",
            json!({}),
        )
        .await;
    let actions: Vec<&str> = audit["data"]["auditEvents"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "plan.applied",
        "plan.execution_delivered",
        "plan.execution_started",
        "plan.execution_finished",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }

    // `mobius run` streams the remote output and exits with its status.
    let config = tempfile::tempdir().unwrap();
    let run = tokio::task::spawn_blocking({
        let server = fleet.server.url("");
        let token = fleet.token.clone();
        let device = device.clone();
        let config = config.path().to_owned();
        move || {
            Command::new(workspace_binary("mobius"))
                .args([
                    "--config-dir",
                    config.to_str().unwrap(),
                    "run",
                    "--device",
                    &device,
                    "--",
                ])
                .args([
                    "sh",
                    "-c",
                    "echo from-the-device; echo to-stderr >&2; exit 7",
                ])
                .env("MOBIUS_SERVER", server.trim_end_matches('/'))
                .env("MOBIUS_TOKEN", token)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(
        run.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), "from-the-device\n");
    assert!(String::from_utf8_lossy(&run.stderr).contains("to-stderr"));
    agent.kill();
}

#[tokio::test]
async fn failures_do_not_block_timeouts_kill_the_group_cancel_stops_and_output_is_capped() {
    let fleet = Fleet::start(&[("MOBIUS_PLAN_LOG_CAP_BYTES", "4096")]).await;
    let device = fleet.enroll().await;
    let agent = Agent::start(&fleet.agent_dir());
    agent.connected().await;

    // A failure, then a plan after it that still runs.
    let failed = first_execution(
        &fleet
            .apply(
                "fails",
                &device,
                json!([{ "kind": "exec", "params": { "argv": ["sh", "-c", "exit 3"] } }]),
            )
            .await,
    );
    let next = first_execution(
        &fleet
            .apply(
                "after-failure",
                &device,
                json!([{ "kind": "exec", "params": { "argv": ["echo", "still here"] } }]),
            )
            .await,
    );
    let failed = fleet
        .wait_for(&failed, "FAILED", Duration::from_secs(15))
        .await;
    assert_eq!(failed["results"][0]["exitCode"], 3, "{failed}");
    let next = fleet
        .wait_for(&next, "SUCCEEDED", Duration::from_secs(15))
        .await;
    assert_eq!(next["logs"][0]["line"], "still here");

    // A timeout kills the whole process group, a background child included.
    let pid_file = fleet.state.path().join("child.pid");
    let timed_out = first_execution(
        &fleet
            .apply(
                "times-out",
                &device,
                json!([{ "kind": "script", "params": {
                    "interpreter": "sh",
                    "body": format!("sleep 300 & echo $! > {}; sleep 300", pid_file.display()),
                    "timeout_secs": 2 } }]),
            )
            .await,
    );
    let timed_out = fleet
        .wait_for(&timed_out, "TIMED_OUT", Duration::from_secs(20))
        .await;
    assert!(
        timed_out["error"].as_str().unwrap().contains("timed out"),
        "{timed_out}"
    );
    let child: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = eventually(Duration::from_secs(5), async || {
        !Path::new(&format!("/proc/{child}")).exists()
            || std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    })
    .await;
    assert!(gone, "the background child {child} outlived the timeout");

    // Cancelling a running execution stops it.
    let running = first_execution(
        &fleet
            .apply(
                "cancel-me",
                &device,
                json!([{ "kind": "exec", "params": { "argv": ["sleep", "300"] } }]),
            )
            .await,
    );
    fleet
        .wait_for(&running, "RUNNING", Duration::from_secs(10))
        .await;
    let cancelled = fleet
        .gql(
            "mutation($id: ID!) { cancelExecution(id: $id) { status cancelRequested } }",
            json!({ "id": running }),
        )
        .await;
    assert_eq!(
        cancelled["data"]["cancelExecution"]["cancelRequested"], true,
        "{cancelled}"
    );
    let started = Instant::now();
    fleet
        .wait_for(&running, "CANCELLED", Duration::from_secs(10))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    // Output beyond the cap: the tail is kept, with a marker.
    let noisy = first_execution(
        &fleet
            .apply(
                "noisy",
                &device,
                json!([{ "kind": "script", "params": {
                    "interpreter": "sh",
                    "body": "i=0; while [ $i -lt 2000 ]; do echo \"line $i of the output\"; i=$((i+1)); done" } }]),
            )
            .await,
    );
    let noisy = fleet
        .wait_for(&noisy, "SUCCEEDED", Duration::from_secs(20))
        .await;
    assert!(
        noisy["logTruncatedBytes"].as_i64().unwrap() > 30_000,
        "{}",
        noisy["logTruncatedBytes"]
    );
    let logs = noisy["logs"].as_array().unwrap();
    assert_eq!(logs[0]["stream"], "marker");
    assert!(logs[0]["line"].as_str().unwrap().contains("truncated"));
    assert_eq!(logs.last().unwrap()["line"], "line 1999 of the output");
    let kept: usize = logs[1..]
        .iter()
        .map(|l| l["line"].as_str().unwrap().len())
        .sum();
    assert!(kept <= 4096, "{kept} bytes kept");

    // Retention removes old output lines (here: everything, by a cutoff
    // in the future).
    let store = fleet.db.app_store().await;
    let removed = store
        .purge_plan_logs(chrono::Utc::now() + chrono::Duration::days(1))
        .await
        .unwrap();
    assert!(removed > 10, "{removed}");
    let noisy_after = fleet.execution(noisy["id"].as_str().unwrap()).await;
    assert_eq!(
        noisy_after["logs"].as_array().unwrap().len(),
        1,
        "only the marker is left"
    );

    // The queue of a device can be purged.
    agent.kill();
    let queued = first_execution(
        &fleet
            .apply(
                "queued",
                &device,
                json!([{ "kind": "exec", "params": { "argv": ["true"] } }]),
            )
            .await,
    );
    let purged = fleet
        .gql(
            "mutation($d: ID!) { purgeDeviceQueue(deviceId: $d) }",
            json!({ "d": device }),
        )
        .await;
    assert_eq!(purged["data"]["purgeDeviceQueue"], 1, "{purged}");
    assert_eq!(fleet.execution(&queued).await["status"], "CANCELLED");
}

#[tokio::test]
async fn an_agent_killed_mid_operation_reports_interrupted_and_runs_nothing_twice() {
    let fleet = Fleet::start(&[]).await;
    let device = fleet.enroll().await;
    let agent = Agent::start(&fleet.agent_dir());
    agent.connected().await;

    let marker = fleet.state.path().join("ran");
    let execution = first_execution(
        &fleet
            .apply(
                "crash",
                &device,
                json!([
                    { "operationId": "append", "kind": "exec", "params": { "argv": ["sh", "-c", format!("echo ran >> {}", marker.display())] } },
                    { "operationId": "long", "kind": "exec", "params": { "argv": ["sleep", "300"] } },
                ]),
            )
            .await,
    );
    let ran = eventually(Duration::from_secs(15), async || {
        fleet.execution(&execution).await["results"][0]["status"] == "SUCCEEDED"
    })
    .await;
    assert!(ran, "{}", fleet.execution(&execution).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SIGKILL: the agent gets no chance to report anything.
    agent.kill();
    assert_eq!(fleet.execution(&execution).await["status"], "RUNNING");

    let agent = Agent::start(&fleet.agent_dir());
    let interrupted = fleet
        .wait_for(&execution, "INTERRUPTED", Duration::from_secs(15))
        .await;
    let results = interrupted["results"].as_array().unwrap();
    let long = results.iter().find(|r| r["operationId"] == "long").unwrap();
    assert_eq!(long["status"], "INTERRUPTED", "{interrupted}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");

    // The next plan runs; the finished operation id never runs again.
    agent.connected().await;
    let next = first_execution(
        &fleet
            .apply(
                "after-crash",
                &device,
                json!([{ "operationId": "append", "kind": "exec", "params": { "argv": ["sh", "-c", format!("echo ran >> {}", marker.display())] } }]),
            )
            .await,
    );
    fleet
        .wait_for(&next, "SUCCEEDED", Duration::from_secs(15))
        .await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
    agent.kill();
}

#[tokio::test]
async fn tampered_and_replayed_payloads_are_rejected_by_the_agent() {
    let fleet = Fleet::start(&[]).await;
    let device = fleet.enroll().await;
    let marker = fleet.state.path().join("tampered");
    let echo = |text: &str| json!([{ "kind": "exec", "params": { "argv": ["echo", text] } }]);

    // Two plans queued while the agent is away: v1 held back, v2 delivered.
    let v1 = first_execution(&fleet.apply("v1", &device, echo("one")).await);
    let v2 = first_execution(&fleet.apply("v2", &device, echo("two")).await);
    let mut db = fleet.owner_connection().await;
    let v1_uuid = mobius_tests::uuid_of(&v1);
    let held = sqlx::query("UPDATE plan_executions SET status = 'RUNNING' WHERE id = $1")
        .bind(v1_uuid)
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(held.rows_affected(), 1);
    let agent = Agent::start(&fleet.agent_dir());
    fleet
        .wait_for(&v2, "SUCCEEDED", Duration::from_secs(15))
        .await;
    agent.connected().await;

    // v1 now arrives, validly signed but older than v2: a replay.
    sqlx::query("UPDATE plan_executions SET status = 'PENDING' WHERE id = $1")
        .bind(v1_uuid)
        .execute(&mut db)
        .await
        .unwrap();
    // Any new plan wakes the device's stream, which sends all it has.
    let v3 = first_execution(&fleet.apply("v3", &device, echo("three")).await);
    let replay = fleet
        .wait_for(&v1, "REJECTED", Duration::from_secs(15))
        .await;
    assert!(
        replay["error"].as_str().unwrap().contains("replay"),
        "{replay}"
    );
    fleet
        .wait_for(&v3, "SUCCEEDED", Duration::from_secs(15))
        .await;

    // A payload changed after signing is refused and never runs.
    agent.kill();
    let v4 = first_execution(
        &fleet
            .apply(
                "v4",
                &device,
                json!([{ "kind": "exec", "params": { "argv": ["echo", "harmless"] } }]),
            )
            .await,
    );
    let changed = sqlx::query(
        "UPDATE plan_executions SET payload = replace(payload, '\"argv\":[\"echo\",\"harmless\"]', $2) WHERE id = $1",
    )
    .bind(mobius_tests::uuid_of(&v4))
    .bind(format!("\"argv\":[\"touch\",\"{}\"]", marker.display()))
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    let (payload,): (String,) = sqlx::query_as("SELECT payload FROM plan_executions WHERE id = $1")
        .bind(mobius_tests::uuid_of(&v4))
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(payload.contains("touch"), "{payload}");
    let agent = Agent::start(&fleet.agent_dir());
    let tampered = fleet
        .wait_for(&v4, "REJECTED", Duration::from_secs(15))
        .await;
    assert!(
        tampered["error"].as_str().unwrap().contains("signature"),
        "{tampered}"
    );
    assert!(!marker.exists(), "a tampered payload ran");
    let audit = fleet
        .gql(
            "{ auditEvents(first: 200) { nodes { action } } }",
            json!({}),
        )
        .await;
    assert!(
        audit.to_string().contains("plan.execution_rejected"),
        "{audit}"
    );
    agent.kill();
}

#[tokio::test]
async fn a_plan_cannot_target_another_tenants_devices() {
    let fleet = Fleet::start(&[]).await;
    let own = fleet.enroll().await;

    let store = fleet.db.app_store().await;
    let bravo = store
        .create_tenant(&Actor::system(), "Bravo", "bravo")
        .await
        .unwrap();
    let scope = store
        .begin(&SystemTask::new("test", bravo.id))
        .await
        .unwrap();
    let bravo_site = scope
        .sites()
        .create(&Actor::system(), "bravo-site")
        .await
        .unwrap();
    let bravo_device = scope
        .devices()
        .register(
            &Actor::system(),
            bravo_site.id,
            "bravo-host",
            "bravo-fingerprint",
        )
        .await
        .unwrap();
    scope.commit().await.unwrap();

    let ops = json!([{ "kind": "exec", "params": { "argv": ["true"] } }]);
    let by_device = fleet
        .gql(
            "mutation($i: ApplyPlanInput!) { applyPlan(input: $i) { created } }",
            json!({ "i": { "idempotencyKey": "cross-1", "targets": { "deviceIds": [own, global_id("Device", bravo_device.id)] }, "operations": ops } }),
        )
        .await;
    assert_eq!(
        by_device["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{by_device}"
    );
    let by_site = fleet
        .gql(
            "mutation($i: ApplyPlanInput!) { applyPlan(input: $i) { created } }",
            json!({ "i": { "idempotencyKey": "cross-2", "targets": { "siteIds": [global_id("Site", bravo_site.id)] }, "operations": ops } }),
        )
        .await;
    assert_eq!(
        by_site["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{by_site}"
    );
    let total = fleet.gql("{ plans { totalCount } }", json!({})).await;
    assert_eq!(total["data"]["plans"]["totalCount"], 0, "{total}");
    let mut db = fleet.owner_connection().await;
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM plan_executions")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(count, 0);
}
