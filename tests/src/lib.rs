//! Test harness: every test gets its own store.
//!
//! - Postgres: a database cloned from a migrated template (created once per
//!   migration fingerprint, so cloning costs a file copy instead of a
//!   migration run). The server under test MOBIUS_TEST_DATABASE_URL names
//!   (a superuser URL, set by `tests/run.sh`), else 127.0.0.1:5432. If no
//!   Postgres answers, tests fail with a message saying how to get one;
//!   they never skip.
//! - SQLite: a fresh file in a temporary directory.
//!
//! Databases are owned by a non-superuser owner role, and the request path
//! logs in as a separate app role, exactly as in production, so RLS is
//! exercised for real (a superuser would bypass it).

pub mod fleet;
pub mod osquery_peer;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mobius_core::Store;
use mobius_core::db::postgres_roles::ensure_app_role;
use sea_orm::sqlx::{self, Connection, PgConnection};
use secrecy::SecretString;
use tokio::sync::OnceCell;
use url::Url;

/// Owns the test databases and runs their migrations: NOSUPERUSER, so RLS
/// (which is FORCED) applies to it too.
pub const OWNER_ROLE: &str = "mobius_test_owner";
pub const OWNER_PASSWORD: &str = "mobius-test-owner";
/// The request-path role, as the server would create it.
pub const APP_ROLE: &str = "mobius_test_app";
pub const APP_PASSWORD: &str = "mobius-test-app";

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The superuser URL tests administer Postgres with.
pub fn admin_url() -> Url {
    let raw =
        std::env::var("MOBIUS_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
    Url::parse(&raw).unwrap_or_else(|e| panic!("MOBIUS_TEST_DATABASE_URL is not a URL: {e}"))
}

async fn admin_connection() -> PgConnection {
    let url = admin_url();
    match PgConnection::connect(url.as_str()).await {
        Ok(conn) => conn,
        Err(err) => panic!(
            "\n\nNo PostgreSQL for the tests at {}:{} ({err}).\n\
             Run the tests with `tests/run.sh`, which finds or starts one, or set\n\
             MOBIUS_TEST_DATABASE_URL to a superuser URL (postgres://postgres@host:port/postgres).\n",
            url.host_str().unwrap_or("?"),
            url.port().unwrap_or(5432),
        ),
    }
}

/// `url` with another user, password and database.
fn url_for(user: &str, password: &str, database: &str) -> Url {
    let mut url = admin_url();
    url.set_username(user).expect("URL takes a user name");
    url.set_password(Some(password))
        .expect("URL takes a password");
    url.set_path(database);
    url
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// The migrated template's name, creating it (once per migration
/// fingerprint, across all test processes) if needed.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("mobius_tpl_{}", mobius_migrations::FINGERPRINT);
            let mut admin = admin_connection().await;
            // Cluster-wide: every process takes this lock in the `postgres`
            // database of the same server.
            sqlx::query("SELECT pg_advisory_lock(727100)")
                .execute(&mut admin)
                .await
                .expect("advisory lock");
            ensure_role(
                &mut admin,
                OWNER_ROLE,
                OWNER_PASSWORD,
                "NOSUPERUSER CREATEROLE",
            )
            .await;
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .expect("query pg_database");
            if !exists {
                // Build under a temporary name and rename when complete, so
                // an interrupted run never leaves a half-migrated template.
                let building = format!("{name}_building");
                exec(
                    &mut admin,
                    &format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
                )
                .await;
                exec(
                    &mut admin,
                    &format!("CREATE DATABASE {building} OWNER {OWNER_ROLE}"),
                )
                .await;
                let owner_url = url_for(OWNER_ROLE, OWNER_PASSWORD, &building);
                let owner = Store::open_postgres(&SecretString::from(owner_url.to_string()), 2)
                    .await
                    .expect("connect to the template as its owner");
                owner.migrate().await.expect("migrate the template");
                ensure_app_role(&owner, APP_ROLE, Some(&SecretString::from(APP_PASSWORD)))
                    .await
                    .expect("create the app role and grants");
                owner.close().await.expect("close template connection");
                exec(
                    &mut admin,
                    &format!("ALTER DATABASE {building} RENAME TO {name}"),
                )
                .await;
            }
            sqlx::query("SELECT pg_advisory_unlock(727100)")
                .execute(&mut admin)
                .await
                .expect("advisory unlock");
            name
        })
        .await
}

async fn ensure_role(admin: &mut PgConnection, role: &str, password: &str, attributes: &str) {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut *admin)
            .await
            .expect("query pg_roles");
    if !exists {
        // Role and password are constants of this file.
        exec(
            admin,
            &format!("CREATE ROLE {role} LOGIN {attributes} PASSWORD '{password}'"),
        )
        .await;
    }
}

/// Runs DDL built from this file's constants and generated hex names,
/// never from outside input (CREATE/DROP DATABASE cannot take parameters).
async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A database of its own for one test, dropped when the value is.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let template = template().await;
        let name = format!("mobius_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_connection().await;
        exec(
            &mut admin,
            &format!("CREATE DATABASE {name} TEMPLATE {template} OWNER {OWNER_ROLE}"),
        )
        .await;
        TestDatabase { name }
    }

    /// The schema owner (runs migrations; not a superuser).
    pub fn owner_url(&self) -> SecretString {
        SecretString::from(url_for(OWNER_ROLE, OWNER_PASSWORD, &self.name).to_string())
    }

    /// The request-path role.
    pub fn app_url(&self) -> SecretString {
        SecretString::from(url_for(APP_ROLE, APP_PASSWORD, &self.name).to_string())
    }

    /// A superuser on this database, for inspecting catalogs.
    pub fn admin_url(&self) -> String {
        let mut url = admin_url();
        url.set_path(&self.name);
        url.to_string()
    }

    /// A store logged in as the request-path role.
    pub async fn app_store(&self) -> Store {
        Store::open_postgres(&self.app_url(), 4)
            .await
            .expect("connect as the app role")
    }

    /// A raw connection as the request-path role, for RLS tests that must
    /// not go through repositories.
    pub async fn app_connection(&self) -> PgConnection {
        use secrecy::ExposeSecret;
        PgConnection::connect(self.app_url().expose_secret())
            .await
            .expect("connect as the app role")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime; do the async work on a thread of
        // its own. WITH (FORCE) ends pools the test did not close.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for dropping the test database");
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(admin_url().as_str()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Which backend a test body runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A migrated store for one test, and what keeps its database alive.
pub struct TestStore {
    pub store: Store,
    pub backend: Backend,
    _postgres: Option<TestDatabase>,
    _sqlite: Option<tempfile::TempDir>,
}

impl TestStore {
    pub async fn new(backend: Backend) -> TestStore {
        match backend {
            Backend::Postgres => {
                let db = TestDatabase::create().await;
                TestStore {
                    store: db.app_store().await,
                    backend,
                    _postgres: Some(db),
                    _sqlite: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let store = Store::open_sqlite(&dir.path().join("mobius.db"))
                    .await
                    .expect("open SQLite");
                store.migrate().await.expect("migrate SQLite");
                TestStore {
                    store,
                    backend,
                    _postgres: None,
                    _sqlite: Some(dir),
                }
            }
        }
    }
}

/// Runs each listed `async fn name(store: TestStore)` against both
/// backends, as tests `name::postgres` and `name::sqlite`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::TestStore::new($crate::Backend::Postgres).await).await;
                }
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::TestStore::new($crate::Backend::Sqlite).await).await;
                }
            }
        )*
    };
}

/// Path of a binary built from this workspace (`mobius-server`, ...),
/// next to the test executable's `deps/` directory.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built; run the tests with `cargo test --workspace` (tests/run.sh does)",
        path.display()
    );
    path
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `mobius-server` child process (killed on drop, so a failing
/// test leaves nothing behind).
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The mTLS device listener.
    pub device_addr: SocketAddr,
    /// The one-time setup code, when the server printed one.
    pub setup_code: Option<String>,
    /// Its log (JSON lines on stdout) after the listening line.
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `mobius-server serve` on port 0 with JSON logs in `dir` and
    /// waits for the line that says where it listens.
    pub fn start(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        Self::start_binary("mobius-server", dir, args, env)
    }

    pub fn start_binary(
        binary: &str,
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let mut command = Command::new(workspace_binary(binary));
        command
            .current_dir(dir)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--device-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start mobius-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut setup_code = None;
        let mut device_addr = None;
        let mut early = Vec::new();
        let addr = loop {
            let line = lines
                .next()
                .expect("mobius-server exited before listening")
                .expect("read mobius-server output");
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            early.push(line);
            if event["message"] == "device listener listening" {
                device_addr = event["address"].as_str().and_then(|a| a.parse().ok());
            }
            if let Some(code) = event["setup_code"].as_str() {
                setup_code = Some(code.to_owned());
            }
            if event["message"] == "admin API listening" {
                break event["address"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("listening address");
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe,
        // and keep what it says for tests that check the log.
        let log = Arc::new(Mutex::new(early));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(mut log) = sink.lock() {
                    log.push(line);
                }
            }
        });
        ServerProcess {
            child,
            log,
            addr,
            device_addr: device_addr.expect("device listener address logged before the admin one"),
            setup_code,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The log events (JSON lines) the server wrote, start-up included
    /// (background tasks may log before the listening line).
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .map(|log| {
                log.iter()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The current value of an unlabelled counter or gauge on `/metrics`.
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> f64 {
        let text = http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("read /metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in metrics"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().expect("wait for mobius-server") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mobius-server did not exit within 5 s of SIGTERM");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The row id inside a GraphQL global ID (for comparing with what agents,
/// audit details and SQL show).
pub fn uuid_of(global_id: &str) -> uuid::Uuid {
    let id = async_graphql_id(global_id);
    mobius_server::admin::graphql::ids::decode_global_id(&id)
        .unwrap_or_else(|| panic!("not a global ID: {global_id}"))
        .1
}

/// The global ID of the object of GraphQL type `type_name` with row id `id`.
pub fn global_id(type_name: &str, id: uuid::Uuid) -> String {
    mobius_server::admin::graphql::ids::global_id(type_name, id).0
}

fn async_graphql_id(id: &str) -> mobius_server::admin::graphql::ids::Id {
    mobius_server::admin::graphql::ids::Id::from(id.to_owned())
}
