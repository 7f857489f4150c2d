//! Host tables through the real `mobius-agent query` binary: osquery-style
//! queries answer rows, anything but reading is refused with a clear error
//! and a non-zero exit, and a runaway query is stopped.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mobius_tests::fleet::Fleet;
use mobius_tests::workspace_binary;
use serde_json::Value;

fn agent_query(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(workspace_binary("mobius-agent"))
        .arg("query")
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs a query with `--output json` and answers its rows.
fn json_rows(state_dir: &Path, sql: &str) -> Vec<Value> {
    let out = agent_query(state_dir, &["--output", "json", sql]);
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("{sql}: the JSON output does not parse: {err}"));
    rows.as_array().expect("an array of rows").clone()
}

/// The error a refused query prints, after checking it exits non-zero
/// with nothing on stdout.
fn refusal(state_dir: &Path, args: &[&str]) -> String {
    let out = agent_query(state_dir, args);
    assert!(!out.status.success(), "{args:?} must fail");
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    assert!(out.stdout.is_empty(), "{args:?} printed rows");
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

#[test]
fn osquery_style_queries_answer_rows() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();

    let system = json_rows(
        dir,
        "SELECT hostname, cpu_logical_cores, physical_memory FROM system_info",
    );
    assert_eq!(system.len(), 1);
    assert!(!system[0]["hostname"].as_str().unwrap().is_empty());
    // Every value is a string, as osquery's.
    let cores: u64 = system[0]["cpu_logical_cores"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cores >= 1);
    let memory: u64 = system[0]["physical_memory"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(memory > 0);

    let os = json_rows(dir, "SELECT name, platform, arch FROM os_version");
    assert_eq!(os.len(), 1);
    assert!(!os[0]["name"].as_str().unwrap().is_empty());
    assert_eq!(os[0]["arch"], std::env::consts::ARCH);

    // This test process, its parent and its name, joined with users.
    let me = std::process::id();
    let processes = json_rows(
        dir,
        &format!(
            "SELECT p.pid, p.parent, p.name, u.username FROM processes p \
             LEFT JOIN users u ON u.uid = p.uid WHERE p.pid = {me}"
        ),
    );
    assert_eq!(processes.len(), 1, "{processes:?}");
    assert_eq!(processes[0]["pid"], me.to_string());
    assert!(!processes[0]["name"].as_str().unwrap().is_empty());
    let many = json_rows(dir, "SELECT pid FROM processes");
    assert!(many.len() > 1);

    // NULL reads as the empty string.
    let null = json_rows(dir, "SELECT NULL AS missing, 2 AS two");
    assert_eq!(null[0]["missing"], "");
    assert_eq!(null[0]["two"], "2");

    // The table output has a header and a row count.
    let out = agent_query(dir, &["SELECT name, version FROM os_version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("name"), "{text}");
    assert!(text.trim_end().ends_with("(1 row)"), "{text}");

    // A row cap marks the answer truncated on stderr.
    let out = agent_query(
        dir,
        &[
            "--output",
            "json",
            "--max-rows",
            "1",
            "SELECT pid FROM processes",
        ],
    );
    assert!(out.status.success());
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut at 1 rows"));
}

#[test]
fn writes_attach_and_runaway_queries_are_refused() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    for sql in [
        "INSERT INTO users (username) VALUES ('mallory')",
        "DELETE FROM processes",
        "DROP TABLE system_info",
        "CREATE TABLE notes (x)",
        "SELECT 1; DROP TABLE users",
    ] {
        assert_eq!(
            refusal(dir, &[sql]),
            "mobius-agent: write statements are not allowed",
            "{sql}"
        );
    }
    assert_eq!(
        refusal(dir, &["ATTACH DATABASE '/tmp/mobius-attach.db' AS other"]),
        "mobius-agent: ATTACH is not allowed"
    );
    assert!(!Path::new("/tmp/mobius-attach.db").exists());
    assert!(
        refusal(dir, &["PRAGMA writable_schema = ON"])
            .starts_with("mobius-agent: PRAGMA writable_schema is not allowed")
    );
    assert_eq!(
        refusal(dir, &["SELECT load_extension('/tmp/evil.so')"]),
        "mobius-agent: the function load_extension() is not allowed"
    );

    let started = Instant::now();
    assert_eq!(
        refusal(
            dir,
            &[
                "--timeout-ms",
                "700",
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c",
            ],
        ),
        "mobius-agent: query timed out after 700 ms"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the runaway query was stopped late: {:?}",
        started.elapsed()
    );

    // Mistakes read as SQLite says them.
    assert_eq!(
        refusal(dir, &["SELECT * FROM no_such_table"]),
        "mobius-agent: no such table: no_such_table"
    );
    assert_eq!(
        refusal(dir, &["SELEC 1"]),
        "mobius-agent: near \"SELEC\": syntax error"
    );
}

#[test]
fn help_lists_examples_and_tables() {
    let out = Command::new(workspace_binary("mobius-agent"))
        .args(["query", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--output",
        "--timeout-ms",
        "read-only",
        "Examples:",
        "--tables",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
    let state = tempfile::tempdir().unwrap();
    let out = agent_query(state.path(), &["--tables"]);
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    for table in [
        "system_info",
        "os_version",
        "os_release",
        "kernel_info",
        "uptime",
        "processes",
        "users",
        "groups",
        "logged_in_users",
        "listening_ports",
        "interface_details",
        "interface_addresses",
        "mounts",
        "disk_encryption",
        "deb_packages",
        "rpm_packages",
        "systemd_units",
        "kernel_modules",
        "mobius_agent",
    ] {
        assert!(
            listing.contains(&format!("{table}\n")),
            "{table} missing: {listing}"
        );
    }
}

/// An enrolled agent describes itself in `mobius_agent`: the device id
/// and server of its enrollment, read from its state directory.
#[tokio::test]
async fn an_enrolled_agent_describes_itself() {
    let fleet = Fleet::start(&[]).await;
    let dir = fleet.agent_dir();
    fleet.enroll_at(&dir, "tables-host").await;
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();

    let rows = json_rows(
        &dir,
        "SELECT version, device_id, tenant_id, server, options_version FROM mobius_agent",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["device_id"], state["device_id"]);
    assert_eq!(rows[0]["tenant_id"], state["tenant_id"]);
    assert_eq!(rows[0]["server"], state["server_url"]);
    assert!(!rows[0]["version"].as_str().unwrap().is_empty());
    // No options bundle has arrived yet.
    assert_eq!(rows[0]["options_version"], "");
}
