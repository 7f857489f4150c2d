//! Layered agent options end to end: a global layer and a team override,
//! merged on the server and pushed to a running `mobius-agent` without a
//! restart.

use std::time::Duration;

use mobius_tests::eventually;
use mobius_tests::fleet::{Agent, Fleet};
use sea_orm::sqlx;
use serde_json::{Value, json};

async fn set(fleet: &Fleet, team: Option<&str>, document: Value) -> Value {
    fleet
        .gql(
            "mutation($t: ID, $d: JSON!) { setAgentOptions(teamId: $t, document: $d) { teamId layer layerVersion merged optionsVersion dryRun } }",
            json!({ "t": team, "d": document }),
        )
        .await
}

/// The options bundle the agent saved, if any.
fn saved(fleet: &Fleet) -> Option<Value> {
    let text = std::fs::read_to_string(fleet.agent_dir().join("options.json")).ok()?;
    serde_json::from_str(&text).ok()
}

#[tokio::test]
async fn a_team_override_beats_global_and_reaches_a_running_agent_without_a_restart() {
    let fleet = Fleet::start(&[]).await;
    let device = fleet.enroll().await;
    let team = fleet
        .gql(
            r#"mutation { createTeam(input: { name: "edge" }) { id } }"#,
            json!({}),
        )
        .await["data"]["createTeam"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Put the device in the team behind the server's back (no mutation
    // moves devices between teams yet).
    let mut db = fleet.owner_connection().await;
    sqlx::query(
        "UPDATE devices SET team_id = (SELECT id FROM teams WHERE name = 'edge') WHERE host_fingerprint = 'plans-host'",
    )
    .execute(&mut db)
    .await
    .unwrap();

    let global = set(
        &fleet,
        None,
        json!({
            "options": {"distributed_interval": 60},
            "agent": {"query_timeout_ms": 20000, "query_max_rows": 500},
        }),
    )
    .await;
    assert!(global["errors"].is_null(), "{global}");
    let global_version = global["data"]["setAgentOptions"]["optionsVersion"]
        .as_i64()
        .unwrap();
    assert!(global_version > 0);

    // The first frame of the agent's stream carries the current options.
    let agent = Agent::start(&fleet.agent_dir());
    agent.connected().await;
    let first = eventually(Duration::from_secs(10), async || {
        saved(&fleet).is_some_and(|o| o["options_version"] == global_version)
    })
    .await;
    assert!(
        first,
        "the agent never got the options: {:?}",
        saved(&fleet)
    );
    let bundle = saved(&fleet).unwrap();
    assert_eq!(bundle["options"]["agent"]["query_timeout_ms"], 20000);

    // A team override: pushed at once, merged over the global layer.
    let override_ = set(
        &fleet,
        Some(&team),
        json!({"agent": {"query_timeout_ms": 5000}, "options": {"distributed_interval": 10}}),
    )
    .await;
    assert!(override_["errors"].is_null(), "{override_}");
    let merged = &override_["data"]["setAgentOptions"];
    let team_version = merged["optionsVersion"].as_i64().unwrap();
    assert!(team_version > global_version);
    assert_eq!(
        merged["merged"]["agent"],
        json!({"query_timeout_ms": 5000, "query_max_rows": 500})
    );
    let pushed = eventually(Duration::from_secs(5), async || {
        saved(&fleet).is_some_and(|o| {
            o["options_version"] == team_version
                && o["options"]["agent"]["query_timeout_ms"] == 5000
        })
    })
    .await;
    assert!(
        pushed,
        "the team override never reached the agent: {:?}",
        saved(&fleet)
    );
    let bundle = saved(&fleet).unwrap();
    assert_eq!(
        bundle["options"]["agent"]["query_max_rows"], 500,
        "global keys stay"
    );
    assert_eq!(bundle["options"]["options"]["distributed_interval"], 10);
    let mut agent = agent;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent did not restart"
    );
    // The agent reports the version it applied.
    let applied =
        eventually(Duration::from_secs(5), async || {
            agent.log.lock().unwrap().iter().any(|l| {
                l.contains("agent options applied") && l.contains(&team_version.to_string())
            })
        })
        .await;
    assert!(applied, "{:?}", agent.log.lock().unwrap());

    // A global change still reaches devices of the team (their view's
    // version grows) while the team's keys keep winning.
    let global2 = set(
        &fleet,
        None,
        json!({"options": {"distributed_interval": 60, "logger_tls_period": 5}, "agent": {"query_timeout_ms": 20000, "query_max_rows": 800}}),
    )
    .await;
    let global2_version = global2["data"]["setAgentOptions"]["optionsVersion"]
        .as_i64()
        .unwrap();
    assert!(global2_version > team_version);
    let pushed = eventually(Duration::from_secs(5), async || {
        saved(&fleet).is_some_and(|o| {
            o["options_version"] == global2_version
                && o["options"]["agent"]["query_max_rows"] == 800
                && o["options"]["agent"]["query_timeout_ms"] == 5000
        })
    })
    .await;
    assert!(pushed, "{:?}", saved(&fleet));

    // Both layers are readable, each with its merged view.
    let read = fleet
        .gql(
            "query($t: ID) { team: agentOptions(teamId: $t) { layer layerVersion merged optionsVersion } global: agentOptions { layer merged optionsVersion } }",
            json!({ "t": team }),
        )
        .await;
    assert_eq!(
        read["data"]["team"]["layer"],
        json!({"agent": {"query_timeout_ms": 5000}, "options": {"distributed_interval": 10}}),
        "{read}"
    );
    assert_eq!(read["data"]["team"]["optionsVersion"], global2_version);
    assert_eq!(
        read["data"]["team"]["merged"]["options"]["logger_tls_period"],
        5
    );
    assert_eq!(
        read["data"]["global"]["merged"]["agent"]["query_timeout_ms"],
        20000
    );

    // A dry run answers the merged view and stores nothing.
    let dry = fleet
        .gql(
            "mutation($t: ID, $d: JSON!) { setAgentOptions(teamId: $t, document: $d, dryRun: true) { merged optionsVersion dryRun } }",
            json!({ "t": team, "d": {"agent": {"query_timeout_ms": 1000}} }),
        )
        .await;
    assert_eq!(dry["data"]["setAgentOptions"]["dryRun"], true, "{dry}");
    assert_eq!(
        dry["data"]["setAgentOptions"]["merged"]["agent"]["query_timeout_ms"],
        1000
    );
    assert!(
        dry["data"]["setAgentOptions"]["merged"]["options"].get("distributed_interval")
            == Some(&json!(60))
    );
    let after = fleet
        .gql(
            "query($t: ID) { agentOptions(teamId: $t) { layer optionsVersion } }",
            json!({ "t": team }),
        )
        .await;
    assert_eq!(
        after["data"]["agentOptions"]["optionsVersion"], global2_version,
        "{after}"
    );
    assert_eq!(
        after["data"]["agentOptions"]["layer"]["agent"]["query_timeout_ms"],
        5000
    );

    // Bad documents: BAD_USER_INPUT naming the path; an unknown team: NOT_FOUND.
    for (document, field) in [
        (json!(["not", "an", "object"]), "document"),
        (json!({"optoins": {}}), "document.optoins"),
        (
            json!({"schedule": {"q": {"query": "SELECT 1", "interval": 0}}}),
            "document.schedule.q.interval",
        ),
        (
            json!({"agent": {"query_timeout_ms": "soon"}}),
            "document.agent.query_timeout_ms",
        ),
    ] {
        let refused = set(&fleet, None, document).await;
        assert_eq!(
            refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{refused}"
        );
        assert_eq!(
            refused["errors"][0]["extensions"]["field"], field,
            "{refused}"
        );
    }
    let unknown = set(
        &fleet,
        Some(&mobius_tests::global_id("Team", mobius_core::Uuid::now_v7()).to_string()),
        json!({}),
    )
    .await;
    assert_eq!(
        unknown["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{unknown}"
    );
    // Nothing refused was stored or pushed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(saved(&fleet).unwrap()["options_version"], global2_version);
    let _ = device;
}

/// `mobius ARGS` against the fleet's server as its admin.
fn mobius(fleet: &Fleet, config: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(mobius_tests::workspace_binary("mobius"))
        .args(["--config-dir", config.to_str().unwrap()])
        .args(args)
        .env("MOBIUS_SERVER", fleet.server.url(""))
        .env("MOBIUS_TOKEN", &fleet.token)
        .output()
        .unwrap()
}

#[tokio::test]
async fn mobius_config_sets_and_gets_layers_from_yaml_with_a_dry_run_diff() {
    let fleet = Fleet::start(&[]).await;
    fleet
        .gql(
            r#"mutation { createTeam(input: { name: "edge" }) { id } }"#,
            json!({}),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let global = dir.path().join("global.yaml");
    std::fs::write(
        &global,
        "options:\n  distributed_interval: 60\n  logger_tls_period: 10\nschedule:\n  processes:\n    query: SELECT pid FROM processes\n    interval: 300\n",
    )
    .unwrap();
    let out = mobius(
        &fleet,
        dir.path(),
        &["config", "set", "-f", global.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("agent options set"), "{stdout}");
    assert!(
        stdout.contains("+ options.distributed_interval: 60"),
        "{stdout}"
    );

    // A dry run of a team override prints the change and stores nothing.
    let team = dir.path().join("team.yaml");
    std::fs::write(
        &team,
        "options:\n  distributed_interval: 10\nschedule:\n  processes: null\n",
    )
    .unwrap();
    let out = mobius(
        &fleet,
        dir.path(),
        &[
            "config",
            "set",
            "-f",
            team.to_str().unwrap(),
            "--team",
            "edge",
            "--dry-run",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("dry run"), "{stdout}");
    assert!(
        stdout.contains("- options.distributed_interval: 60"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+ options.distributed_interval: 10"),
        "{stdout}"
    );
    assert!(
        stdout.contains("- schedule.processes.query: \"SELECT pid FROM processes\""),
        "{stdout}"
    );
    let out = mobius(&fleet, dir.path(), &["config", "get", "--team", "edge"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("version 0"), "nothing stored: {stdout}");

    // Stored for real, then read back as YAML: the layer and the merged view.
    let out = mobius(
        &fleet,
        dir.path(),
        &[
            "config",
            "set",
            "-f",
            team.to_str().unwrap(),
            "--team",
            "edge",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mobius(
        &fleet,
        dir.path(),
        &["config", "get", "--team", "edge", "--merged"],
    );
    let merged: Value = serde_norway::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    // The team removed the only scheduled query (an empty schedule is kept).
    assert_eq!(
        merged,
        json!({"options": {"distributed_interval": 10, "logger_tls_period": 10}, "schedule": {}})
    );
    let out = mobius(&fleet, dir.path(), &["--output", "json", "config", "get"]);
    let global: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(global["layer"]["schedule"]["processes"]["interval"], 300);

    // A bad file: the server's BAD_USER_INPUT reaches the user, naming the key.
    std::fs::write(&team, "optoins:\n  x: 1\n").unwrap();
    let out = mobius(
        &fleet,
        dir.path(),
        &["config", "set", "-f", team.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("optoins"), "{stderr}");
    // An unknown team is named.
    let out = mobius(&fleet, dir.path(), &["config", "get", "--team", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}
