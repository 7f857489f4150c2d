//! The server, in process and as the real `mobius-server` binary.

use std::net::SocketAddr;
use std::process::Command;

use mobius_server::serve::Server;
use mobius_server::{Edition, Settings};
use mobius_tests::{ServerProcess, TestDatabase, workspace_binary};
use sea_orm::sqlx::{self, Connection, PgConnection};
use secrecy::ExposeSecret;

fn embedded_settings(dir: &std::path::Path) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        device_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Settings::default()
    }
}

#[tokio::test]
async fn health_ready_metrics_and_request_ids_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::prepare(&embedded_settings(dir.path()), &Edition::OSS)
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let id = health.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap()["status"],
        "ok"
    );

    // A caller's request id is kept and echoed.
    let ready = http
        .get(format!("{base}/readyz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.headers()["x-request-id"], "trace-me-42");
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"].as_array().unwrap().len(), 2);

    let missing = http
        .get(format!("{base}/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"mobius_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="unmatched",status="404""#),
        "{metrics}"
    );
    assert!(
        metrics.contains("mobius_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mobius_db_pool_max_connections 1"),
        "{metrics}"
    );

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn binary_serves_with_zero_configuration_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[], &[]);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        dir.path().join("mobius-data/mobius.db").is_file(),
        "default data dir is ./mobius-data"
    );
    assert_eq!(server.terminate(), Some(0));

    // A restart finds the store migrated and the default tenant present.
    let server = ServerProcess::start(dir.path(), &[], &[]);
    assert_eq!(
        http.get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(server.terminate(), Some(0));
}

#[tokio::test]
async fn binary_on_postgres_creates_and_logs_in_as_the_request_role() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let role = "mobius_e2e_app";
    let server = ServerProcess::start(
        dir.path(),
        &["--database-url", db.owner_url().expose_secret()],
        &[("MOBIUS_DATABASE_APP_ROLE", role)],
    );
    let ready = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    let mut admin = PgConnection::connect(&db.admin_url()).await.unwrap();
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(!superuser && !bypass);
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(
        sessions,
        vec![role.to_owned()],
        "the server's pool logs in as the request role only"
    );
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(tenants, 1, "the default tenant was created");
    // The generated password is kept, private, for the next start.
    let secret = dir.path().join("mobius-data/postgres-app-role.secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(server.terminate(), Some(0));
}

#[tokio::test]
async fn binary_refuses_a_request_role_that_can_bypass_rls() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(workspace_binary("mobius-server"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-app-url",
            &db.admin_url(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve requests as database role"),
        "{stderr}"
    );
    assert!(stderr.contains("superuser"), "{stderr}");
}

fn config_output(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(workspace_binary("mobius-server"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn settings_layer_file_then_env_then_flags_and_redact_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mobius.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1111\"\nlog_filter = \"debug\"\ndatabase_url = \"postgres://owner:hunter2@db.internal/mobius\"\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();

    let (code, out, _) = config_output(&["config", "--config", config], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("listen = \"127.0.0.1:1111\""), "{out}");
    assert!(out.contains("log_filter = \"debug\""), "{out}");
    assert!(
        out.contains("postgres://owner:***@db.internal/mobius"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "a secret was printed: {out}");

    let env = [("MOBIUS_LISTEN", "127.0.0.1:2222")];
    let (_, out, _) = config_output(&["config", "--config", config], &env);
    assert!(
        out.contains("listen = \"127.0.0.1:2222\""),
        "env beats file: {out}"
    );
    let (_, out, _) = config_output(
        &["config", "--config", config, "--listen", "127.0.0.1:3333"],
        &env,
    );
    assert!(
        out.contains("listen = \"127.0.0.1:3333\""),
        "flag beats env: {out}"
    );
    assert!(
        out.contains("log_filter = \"debug\""),
        "untouched keys keep the file's value: {out}"
    );
}

#[test]
fn bad_settings_stop_start_up_naming_the_setting() {
    /// Arguments, environment, and what stderr must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["serve"],
            &[("MOBIUS_DATABASE_MAX_CONNECTIONS", "many")],
            "DATABASE_MAX_CONNECTIONS",
        ),
        (
            &["serve"],
            &[("MOBIUS_DATABASE_URL", "mysql://x@y/z")],
            "database_url must be a postgres:// URL",
        ),
        (&["serve"], &[("MOBIUS_LOG_FILTER", "[[[")], "log_filter"),
        (
            &["serve", "--config", "/nonexistent/mobius.toml"],
            &[],
            "config file /nonexistent/mobius.toml does not exist",
        ),
    ];
    for (args, env, expected) in cases {
        let (code, _, err) = config_output(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?} {env:?}: expected `{expected}` in: {err}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let (code, _, err) = config_output(&["config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("lisen"), "an unknown key is named: {err}");
}

#[test]
fn cloud_edition_requires_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(workspace_binary("mobius-server-cloud"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the cloud edition needs Postgres"),
        "{stderr}"
    );
}

/// Each binary builds its own edition's services and says which: the
/// `config` output and the start-up log name the sealer and entitlements.
#[test]
fn each_edition_binary_names_its_own_services() {
    let dir = tempfile::tempdir().unwrap();
    for (binary, edition, marker, entitlements) in [
        (
            "mobius-server",
            "(oss edition)",
            None,
            "# entitlements: free tier, no license (device limit 7 from `device_limit`)",
        ),
        (
            "mobius-server-cloud",
            "(cloud edition)",
            Some("[cloud: no [kms] settings]"),
            "# entitlements: fixed device limit (7 devices per tenant) [cloud: no [billing] settings]",
        ),
    ] {
        let output = Command::new(workspace_binary(binary))
            .args(["config", "--data-dir", dir.path().to_str().unwrap()])
            .env("MOBIUS_DEVICE_LIMIT", "7")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{binary} config");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains(edition), "{binary}: {stdout}");
        assert!(
            stdout.contains("# sealer: local AES-256-GCM (master key file"),
            "{binary}: {stdout}"
        );
        assert!(stdout.contains(entitlements), "{binary}: {stdout}");
        match marker {
            Some(marker) => assert!(stdout.contains(marker), "{binary}: {stdout}"),
            None => assert!(!stdout.contains("[cloud:"), "{binary}: {stdout}"),
        }
        // Describing the services has no side effects: no key file yet.
        assert!(!dir.path().join("master.key").exists(), "{binary}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["serve", "migrate", "config"] {
        let (code, out, _) = config_output(&[sub, "--help"], &[]);
        assert_eq!(code, Some(0), "{sub} --help");
        assert!(out.contains("--database-url"), "{sub} --help: {out}");
    }
}

#[tokio::test]
async fn readyz_is_503_with_the_pending_migrations_listed() {
    let dir = tempfile::tempdir().unwrap();
    // A store whose migrations have not run (as with a new binary started
    // with migrate_on_start = false before `mobius-server migrate`).
    let store = mobius_core::Store::open_sqlite(&dir.path().join("mobius.db"))
        .await
        .unwrap();
    let settings = embedded_settings(dir.path());
    let state = mobius_server::http::router::AppState {
        store: store.clone(),
        metrics: mobius_server::http::metrics::Metrics::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = mobius_server::http::router::router(state, &settings, None, None);
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });

    let response = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    let migrations = &body["checks"][1];
    assert_eq!(migrations["ok"], false);
    assert!(
        migrations["detail"]
            .as_str()
            .unwrap()
            .contains("m20261122_000001_data_model_v1"),
        "{body}"
    );

    store.migrate().await.unwrap();
    assert_eq!(
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    serving.abort();
}

/// The data directory holds every secret of an embedded installation: it
/// is 0700 and the database 0600. A second server on the same directory is
/// refused, naming the directory and the process that holds it; once the
/// first is gone, the directory can be used again.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_private_and_used_by_one_server() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    let first = Server::prepare(&embedded_settings(&dir), &Edition::OSS)
        .await
        .unwrap();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("mobius.db")), 0o600);

    let second = Server::prepare(&embedded_settings(&dir), &Edition::OSS).await;
    let message = format!("{:#}", second.err().expect("a second server is refused"));
    assert!(message.contains(&dir.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );

    drop(first);
    Server::prepare(&embedded_settings(&dir), &Edition::OSS)
        .await
        .expect("the lock goes with the server that held it");
}
