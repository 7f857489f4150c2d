//! Live queries end to end: three real agents, the subscription, the CLI,
//! an offline device, a refused write, and another tenant's campaign.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use mobius_core::audit::Actor;
use mobius_core::db::SystemTask;
use mobius_tests::fleet::{Agent, Fleet};
use mobius_tests::{global_id, uuid_of, workspace_binary};
use serde_json::{Value, json};

const RUN: &str = "mutation($i: RunLiveQueryInput!) { runLiveQuery(input: $i) { id status } }";
const RESULTS: &str = "query($id: ID!) { liveQuery(id: $id) { status counts { pending answered error offline } results { deviceId hostname status error rows rowCount } } }";

/// Three enrolled devices; the first two run their agents (connected),
/// the third never runs.
async fn three_devices(fleet: &Fleet) -> (Vec<String>, Vec<Agent>) {
    let mut ids = Vec::new();
    let mut agents = Vec::new();
    for name in ["queries-a", "queries-b", "queries-c"] {
        let dir = fleet.state.path().join(name);
        ids.push(fleet.enroll_at(&dir, name).await);
        if name != "queries-c" {
            agents.push(Agent::start_as(&dir, name));
        }
    }
    for agent in &agents {
        agent.connected().await;
    }
    (ids, agents)
}

fn run_input(sql: &str, devices: &[String]) -> Value {
    json!({ "i": { "sql": sql, "targets": { "deviceIds": devices }, "timeoutSecs": 20 } })
}

#[tokio::test]
async fn a_live_query_returns_each_agents_rows_in_the_subscription_and_the_cli() {
    let fleet = Fleet::start(&[]).await;
    let (ids, agents) = three_devices(&fleet).await;

    let started_at = Instant::now();
    let run = fleet
        .gql(
            RUN,
            run_input("SELECT device_id, version FROM mobius_agent", &ids),
        )
        .await;
    let id = run["data"]["runLiveQuery"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{run}"))
        .to_owned();
    assert_eq!(run["data"]["runLiveQuery"]["status"], "RUNNING", "{run}");

    // The device whose agent never ran is OFFLINE at once.
    let state = fleet.gql(RESULTS, json!({ "id": id })).await;
    let offline: Vec<&Value> = state["data"]["liveQuery"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "OFFLINE")
        .collect();
    assert_eq!(offline.len(), 1, "{state}");
    assert_eq!(offline[0]["deviceId"], ids[2].as_str());

    // The subscription: every target's state, then the answers, then it
    // completes when the campaign ends.
    let mut subscription = fleet
        .subscribe(
            "subscription($id: ID!) { liveQueryResults(id: $id) { deviceId status error rows } }",
            json!({ "id": id }),
        )
        .await;
    let mut last: HashMap<String, Value> = HashMap::new();
    while let Some(data) = subscription.next(Duration::from_secs(30)).await {
        let item = data["liveQueryResults"].clone();
        assert!(item.is_object(), "{data}");
        last.insert(item["deviceId"].as_str().unwrap().to_owned(), item);
    }
    let elapsed = started_at.elapsed();
    for device in &ids[..2] {
        let item = &last[device];
        assert_eq!(item["status"], "ANSWERED", "{item}");
        assert_eq!(
            item["rows"][0]["device_id"],
            uuid_of(device).to_string(),
            "each agent answers about itself: {item}"
        );
        assert!(
            item["rows"][0]["version"]
                .as_str()
                .is_some_and(|v| !v.is_empty())
        );
    }
    assert_eq!(last[&ids[2]]["status"], "OFFLINE");
    assert!(
        elapsed < Duration::from_secs(10),
        "the campaign ends when both online agents answered, not at its 20 s timeout ({elapsed:?})"
    );
    let state = fleet.gql(RESULTS, json!({ "id": id })).await;
    assert_eq!(state["data"]["liveQuery"]["status"], "FINISHED", "{state}");
    assert_eq!(
        state["data"]["liveQuery"]["counts"],
        json!({ "pending": 0, "answered": 2, "error": 0, "offline": 1 })
    );

    // The CLI streams rows (one JSON line per row) and ends with a summary.
    let config = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let server = fleet.server.url("");
        let token = fleet.token.clone();
        let ids = ids.clone();
        move || {
            Command::new(workspace_binary("mobius"))
                .args([
                    "--config-dir",
                    config.path().to_str().unwrap(),
                    "--output",
                    "json",
                ])
                .args([
                    "query",
                    "run",
                    "--sql",
                    "SELECT device_id FROM mobius_agent",
                ])
                .args([
                    "--device", &ids[0], "--device", &ids[1], "--device", &ids[2],
                ])
                .args(["--timeout", "20s"])
                .env("MOBIUS_SERVER", server.trim_end_matches('/'))
                .env("MOBIUS_TOKEN", token)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    for device in &ids[..2] {
        assert!(
            lines.iter().any(|l| l["deviceId"] == device.as_str()
                && l["row"]["device_id"] == uuid_of(device).to_string()),
            "no row from {device}: {stdout}"
        );
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["status"], "FINISHED", "{summary}");
    let statuses: HashMap<&str, &str> = summary["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["deviceId"].as_str().unwrap(),
                d["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(statuses[ids[0].as_str()], "ANSWERED");
    assert_eq!(statuses[ids[1].as_str()], "ANSWERED");
    assert_eq!(statuses[ids[2].as_str()], "OFFLINE");

    // Both runs are in the audit log.
    let audit = fleet
        .gql(
            "{ auditEvents(first: 200) { nodes { action } } }",
            json!({}),
        )
        .await;
    assert!(
        audit.to_string().matches("query.live_started").count() >= 2,
        "{audit}"
    );
    drop(agents);
}

#[tokio::test]
async fn a_refused_write_comes_back_as_error_with_the_agents_message_and_stop_ends_a_campaign() {
    let fleet = Fleet::start(&[]).await;
    let dir = fleet.state.path().join("writer");
    let device = fleet.enroll_at(&dir, "writer").await;
    let agent = Agent::start_as(&dir, "writer");
    agent.connected().await;

    let run = fleet
        .gql(
            RUN,
            run_input("DELETE FROM users", std::slice::from_ref(&device)),
        )
        .await;
    let id = run["data"]["runLiveQuery"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut subscription = fleet
        .subscribe(
            "subscription($id: ID!) { liveQueryResults(id: $id) { status error } }",
            json!({ "id": id }),
        )
        .await;
    let mut last = Value::Null;
    while let Some(data) = subscription.next(Duration::from_secs(30)).await {
        last = data["liveQueryResults"].clone();
    }
    assert_eq!(last["status"], "ERROR", "{last}");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("not allowed")),
        "the agent's refusal is shown: {last}"
    );

    // Bad input is refused with a code, not a 500.
    let empty = fleet
        .gql(RUN, run_input("  ", std::slice::from_ref(&device)))
        .await;
    assert_eq!(
        empty["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{empty}"
    );
    let no_targets = fleet
        .gql(RUN, json!({ "i": { "sql": "SELECT 1", "targets": {} } }))
        .await;
    assert_eq!(
        no_targets["errors"][0]["extensions"]["code"],
        "BAD_USER_INPUT"
    );
    let long = fleet
        .gql(
            RUN,
            json!({ "i": { "sql": "SELECT 1", "targets": { "deviceIds": [device] }, "timeoutSecs": 100000 } }),
        )
        .await;
    assert_eq!(
        long["errors"][0]["extensions"]["field"], "timeoutSecs",
        "{long}"
    );

    // A campaign on a device that does not answer in time is stopped by
    // the admin: its pending device becomes ERROR, stopping again is CONFLICT.
    agent.kill();
    let dir = fleet.state.path().join("silent");
    let silent = fleet.enroll_at(&dir, "silent").await;
    let mut db = fleet.owner_connection().await;
    // Seen a moment ago (as if its heartbeat came), so the campaign waits on it.
    sea_orm::sqlx::query("UPDATE devices SET last_seen_at = now() WHERE id = $1")
        .bind(uuid_of(&silent))
        .execute(&mut db)
        .await
        .unwrap();
    let run = fleet.gql(RUN, run_input("SELECT 1", &[silent])).await;
    let id = run["data"]["runLiveQuery"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stop = "mutation($id: ID!) { stopLiveQuery(id: $id) { status results { status error } } }";
    let stopped = fleet.gql(stop, json!({ "id": id })).await;
    assert_eq!(
        stopped["data"]["stopLiveQuery"]["status"], "STOPPED",
        "{stopped}"
    );
    assert_eq!(
        stopped["data"]["stopLiveQuery"]["results"][0]["status"],
        "ERROR"
    );
    let again = fleet.gql(stop, json!({ "id": id })).await;
    assert_eq!(
        again["errors"][0]["extensions"]["code"], "CONFLICT",
        "{again}"
    );
}

#[tokio::test]
async fn another_tenants_live_query_and_policy_ids_are_not_found() {
    let fleet = Fleet::start(&[]).await;
    let store = fleet.db.app_store().await;
    let bravo = store
        .create_tenant(&Actor::system(), "Bravo", "bravo")
        .await
        .unwrap();
    let scope = store
        .begin(&SystemTask::new("test", bravo.id))
        .await
        .unwrap();
    let site = scope
        .sites()
        .create(&Actor::system(), "bravo-site")
        .await
        .unwrap();
    let device = scope
        .devices()
        .register(&Actor::system(), site.id, "bravo-host", "bravo-fp")
        .await
        .unwrap();
    let started = scope
        .queries()
        .start(
            &Actor::system(),
            mobius_core::queries::LiveQuerySpec {
                sql: "SELECT 1".into(),
                targets: mobius_core::plans::PlanTargets {
                    device_ids: vec![device.id],
                    ..Default::default()
                },
                timeout_ms: None,
            },
            |_| true,
        )
        .await
        .unwrap();
    let policy = scope
        .policies()
        .create(
            &Actor::system(),
            mobius_core::policies::PolicySpec {
                name: "bravo policy".into(),
                sql: "SELECT 1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    scope.commit().await.unwrap();

    let campaign = global_id("LiveQuery", started.campaign.id);
    let policy = global_id("Policy", policy.id);
    for (query, id) in [
        ("query($id: ID!) { liveQuery(id: $id) { id } }", &campaign),
        (
            "mutation($id: ID!) { stopLiveQuery(id: $id) { id } }",
            &campaign,
        ),
        ("query($id: ID!) { policy(id: $id) { id } }", &policy),
        ("mutation($id: ID!) { runPolicy(id: $id) { id } }", &policy),
        (
            "mutation($id: ID!) { deletePolicy(id: $id) { id } }",
            &policy,
        ),
        (
            "mutation($id: ID!) { updatePolicy(id: $id, input: { name: \"x\" }) { id } }",
            &policy,
        ),
    ] {
        let answer = fleet.gql(query, json!({ "id": id })).await;
        assert_eq!(
            answer["errors"][0]["extensions"]["code"], "NOT_FOUND",
            "{query}: {answer}"
        );
    }
    let mut subscription = fleet
        .subscribe(
            "subscription($id: ID!) { liveQueryResults(id: $id) { status } }",
            json!({ "id": campaign }),
        )
        .await;
    let refused = subscription.next(Duration::from_secs(10)).await.unwrap();
    assert!(refused.to_string().contains("NOT_FOUND"), "{refused}");
    let listed = fleet
        .gql(
            "{ liveQueries { totalCount } policies { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(listed["data"]["liveQueries"]["totalCount"], 0, "{listed}");
    assert_eq!(listed["data"]["policies"]["totalCount"], 0, "{listed}");
}
