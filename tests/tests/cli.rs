//! The `mobius` CLI end to end: the real binary, driven as an operator
//! would drive it, against the real `mobius-server` on a Postgres database
//! of its own, from the first setup to logout.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use mobius_tests::{ServerProcess, TestDatabase, workspace_binary};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const OWNER_EMAIL: &str = "owner@example.com";
const OWNER_PASSWORD: &str = "correct horse battery staple";

/// What one run of `mobius` left behind.
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_success(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(0),
            "mobius {:?} failed\nstdout: {}\nstderr: {}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }

    /// A failure the way the CLI promises to report one: exit `code` and a
    /// single stderr line `mobius: <message>`, which is returned.
    fn assert_failure(&self, code: i32) -> &str {
        assert_eq!(
            self.code,
            Some(code),
            "mobius {:?}\nstdout: {}\nstderr: {}",
            self.args,
            self.stdout,
            self.stderr
        );
        let line = self.stderr.trim_end();
        assert!(
            !line.contains('\n') && line.starts_with("mobius: "),
            "one `mobius: ...` line on stderr, got: {:?}",
            self.stderr
        );
        line
    }

    fn json(&self) -> Value {
        self.assert_success();
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "mobius {:?}: stdout is not JSON ({e}): {}",
                self.args, self.stdout
            )
        })
    }

    /// The value of `field` in a two-column `field value` table, as
    /// `whoami` and single items print.
    fn table_field(&self, field: &str) -> String {
        self.assert_success();
        self.stdout
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once("   ")?;
                (name.trim() == field).then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no `{field}` row in:\n{}", self.stdout))
    }
}

/// One operator on one machine: a configuration directory of their own and
/// `MOBIUS_SERVER` pointing at the server under test.
struct Mobius {
    server: String,
    config_dir: PathBuf,
}

impl Mobius {
    fn credentials_file(&self) -> PathBuf {
        self.config_dir.join("credentials.json")
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, "", &[])
    }

    fn run_with(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(workspace_binary("mobius"));
        command
            .args(args)
            .env("MOBIUS_SERVER", &self.server)
            .env("MOBIUS_CONFIG_DIR", &self.config_dir)
            .env_remove("MOBIUS_TOKEN")
            .env_remove("MOBIUS_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start mobius");
        let mut input = child.stdin.take().expect("piped stdin");
        // A command that does not read stdin may already have exited.
        let _ = input.write_all(stdin.as_bytes());
        drop(input);
        let output = child.wait_with_output().expect("wait for mobius");
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `args` with `--output json`, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        self.run(&args).json()
    }

    fn login(&self, email: &str, password: &str) -> Run {
        self.run_with(
            &["login", "--email", email, "--password-stdin"],
            &format!("{password}\n"),
            &[],
        )
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("a JSON array: {list}"))
        .iter()
        .map(|item| item["name"].as_str().expect("a name"))
        .collect()
}

async fn graphql(http: &reqwest::Client, url: &str, token: &str, query: &str) -> Value {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("POST /api/graphql");
    assert_eq!(response.status(), 200);
    response.json().await.expect("a GraphQL answer")
}

#[tokio::test]
async fn an_operator_sets_up_the_server_manages_the_tenant_and_logs_out() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database-url", db.owner_url().expose_secret()],
        // A request role of this test's own, so no other test's server
        // changes its password under us.
        &[("MOBIUS_DATABASE_APP_ROLE", "mobius_cli_e2e_app")],
    );
    let setup_code = server
        .setup_code
        .clone()
        .expect("an empty store prints a setup code");
    let mobius = Mobius {
        server: format!("http://{}", server.addr),
        config_dir: dir.path().join("config/mobius"),
    };

    // 1. Setup creates the owner once; the code is then spent.
    let setup = mobius.run_with(
        &[
            "setup",
            "--code",
            &setup_code,
            "--email",
            OWNER_EMAIL,
            "--display-name",
            "Ada Owner",
            "--password-stdin",
        ],
        &format!("{OWNER_PASSWORD}\n"),
        &[],
    );
    setup.assert_success();
    assert!(
        setup
            .stdout
            .contains(&format!("created the owner {OWNER_EMAIL}")),
        "{}",
        setup.stdout
    );
    let again = mobius.run_with(
        &[
            "setup",
            "--code",
            &setup_code,
            "--email",
            "intruder@example.com",
            "--display-name",
            "Mallory",
            "--password-stdin",
        ],
        "another long password\n",
        &[],
    );
    let error = again.assert_failure(1);
    assert!(
        error.contains("invalid or expired code") && error.ends_with("(BAD_USER_INPUT)"),
        "{error}"
    );

    // 2. Login saves a private session; a bad login says nothing about
    // whether the account exists, and leaves the saved session alone.
    assert!(mobius.credentials_file().is_file(), "setup also logs in");
    std::fs::remove_file(mobius.credentials_file()).unwrap();
    let login = mobius.login(OWNER_EMAIL, OWNER_PASSWORD);
    login.assert_success();
    assert_eq!(
        login.stdout.trim(),
        format!("logged in to {} as {OWNER_EMAIL} (owner)", mobius.server)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(mobius.credentials_file())
            .expect("login saved the session")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "credentials.json is private");
    }
    let whoami = mobius.run(&["whoami"]);
    assert_eq!(whoami.table_field("kind"), "user");
    assert_eq!(whoami.table_field("email"), OWNER_EMAIL);
    assert_eq!(whoami.table_field("role"), "owner");

    let wrong_password = mobius.login(OWNER_EMAIL, "not the password at all");
    let wrong_password = wrong_password.assert_failure(1).to_owned();
    assert!(
        wrong_password.ends_with("(UNAUTHENTICATED)"),
        "{wrong_password}"
    );
    let unknown_email = mobius.login("nobody@example.com", OWNER_PASSWORD);
    assert_eq!(
        unknown_email.assert_failure(1),
        wrong_password,
        "an unknown email is refused exactly like a wrong password"
    );
    assert_eq!(
        mobius.run(&["whoami"]).table_field("email"),
        OWNER_EMAIL,
        "a failed login keeps the saved session"
    );

    // 3. Sites, teams, users, API tokens.
    let site = mobius.json(&["sites", "create", "Berlin office"]);
    assert_eq!(site["name"], "Berlin office");
    let sites = mobius.json(&["sites", "list"]);
    let listed = sites
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == site["id"])
        .unwrap_or_else(|| panic!("the new site is listed: {sites}"));
    assert_eq!(listed["name"], "Berlin office");
    let duplicate = mobius.run(&["sites", "create", "Berlin office"]);
    let error = duplicate.assert_failure(1);
    assert!(error.ends_with("(CONFLICT)"), "{error}");
    assert_eq!(
        names(&mobius.json(&["sites", "list"]))
            .iter()
            .filter(|n| **n == "Berlin office")
            .count(),
        1,
        "the duplicate was not created"
    );

    let team = mobius.json(&["teams", "create", "Field engineers"]);
    assert_eq!(team["name"], "Field engineers");
    assert!(names(&mobius.json(&["teams", "list"])).contains(&"Field engineers"));

    let invite = mobius.run(&[
        "users",
        "invite",
        "someone@example.com",
        "--role",
        "maintainer",
    ]);
    assert_eq!(invite.table_field("email"), "someone@example.com");
    assert_eq!(invite.table_field("role"), "maintainer");
    let invitation_code = invite.table_field("code");
    assert!(
        invitation_code.starts_with("mob_inv_") && invitation_code.len() > 20,
        "the invitation code is printed: {}",
        invite.stdout
    );
    assert!(
        invite
            .stderr
            .contains("send the code to someone@example.com"),
        "{}",
        invite.stderr
    );
    let users = mobius.json(&["users", "list"]);
    let users = users.as_array().unwrap();
    assert_eq!(
        users.len(),
        1,
        "only the owner: the spent setup code created no one, the invitee has not joined: {users:?}"
    );
    assert_eq!(users[0]["email"], OWNER_EMAIL);
    assert_eq!(users[0]["role"], "OWNER");

    let created = mobius.run(&["api-tokens", "create", "ci", "--role", "observer"]);
    assert_eq!(created.table_field("name"), "ci");
    assert_eq!(created.table_field("role"), "observer");
    let pat = created.table_field("token");
    assert!(pat.starts_with("mob_pat_") && pat.len() > 20, "{pat}");
    assert!(
        created.stderr.contains("will not be shown again"),
        "{}",
        created.stderr
    );
    let token_id = created.table_field("id");
    let tokens_run = mobius.run(&["api-tokens", "list", "--output", "json"]);
    let tokens = tokens_run.json();
    assert_eq!(tokens.as_array().unwrap().len(), 1, "{tokens}");
    assert_eq!(tokens[0]["id"], token_id.as_str());
    assert_eq!(tokens[0]["name"], "ci");
    assert_eq!(tokens[0]["role"], "OBSERVER");
    assert_eq!(tokens[0]["revokedAt"], Value::Null);
    assert!(tokens[0].get("token").is_none(), "{tokens}");
    assert!(
        !tokens_run.stdout.contains(&pat),
        "the secret is never listed"
    );

    // 4. The audit log shows all of it, newest first.
    let events = mobius.json(&["audit", "list"]);
    let events = events.as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    let newest_first = [
        "api_token.created",
        "user.invited",
        "team.created",
        "site.created",
        "user.logged_in",
    ];
    let positions: Vec<usize> = newest_first
        .iter()
        .map(|action| {
            actions
                .iter()
                .position(|a| a == action)
                .unwrap_or_else(|| panic!("{action} is in the audit log: {actions:?}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "newest first: {actions:?}"
    );
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = events
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["createdAt"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|pair| pair[0] >= pair[1]), "{times:?}");
    let site_created = &events[positions[3]];
    assert_eq!(site_created["actorKind"], "user");
    assert_eq!(site_created["actorId"], users[0]["id"]);
    assert_eq!(site_created["targetId"], site["id"]);

    // 5. The observer token works on the API and through the CLI, and is
    // refused writes.
    let http = reqwest::Client::new();
    let api = server.url("/api/graphql");
    let viewer = graphql(&http, &api, &pat, "{ viewer { kind role } }").await;
    assert_eq!(
        viewer,
        json!({ "data": { "viewer": { "kind": "api_token", "role": "OBSERVER" } } })
    );
    let sites = graphql(&http, &api, &pat, "{ sites { nodes { name } } }").await;
    assert!(
        names(&sites["data"]["sites"]["nodes"]).contains(&"Berlin office"),
        "{sites}"
    );
    let refused = graphql(
        &http,
        &api,
        &pat,
        r#"mutation { createSite(input: { name: "Observer site" }) { id } }"#,
    )
    .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    assert!(
        refused["data"].is_null() || refused["data"]["createSite"].is_null(),
        "{refused}"
    );

    let with_token = mobius.json(&["--token", &pat, "sites", "list"]);
    assert!(names(&with_token).contains(&"Berlin office"));
    assert!(!names(&with_token).contains(&"Observer site"));
    let who = mobius.run(&["--token", &pat, "whoami"]);
    assert_eq!(who.table_field("kind"), "api-token");
    assert_eq!(who.table_field("role"), "observer");
    let refused = mobius.run(&["--token", &pat, "sites", "create", "Observer site"]);
    let error = refused.assert_failure(1);
    assert!(error.ends_with("(FORBIDDEN)"), "{error}");

    // 6. Logout forgets the session; the CLI then says how to log in.
    let logout = mobius.run(&["logout"]);
    logout.assert_success();
    assert!(
        logout
            .stderr
            .contains(&format!("logged out of {}", mobius.server)),
        "{}",
        logout.stderr
    );
    assert!(!mobius.credentials_file().exists());
    let anonymous = mobius.run(&["sites", "list"]);
    let error = anonymous.assert_failure(1);
    assert!(error.ends_with("(UNAUTHENTICATED)"), "{error}");
    assert!(error.contains("mobius login"), "a hint to log in: {error}");

    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn an_unreachable_server_and_a_bad_flag_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mobius = Mobius {
        server: "http://127.0.0.1:1".to_owned(),
        config_dir: dir.path().join("mobius"),
    };

    // With a token, so the CLI has a reason to go to the network at all.
    let unreachable = mobius.run_with(
        &["--server", "http://127.0.0.1:1", "sites", "list"],
        "",
        &[("MOBIUS_TOKEN", "mob_pat_not_checked_locally")],
    );
    let error = unreachable.assert_failure(1);
    assert!(
        error.starts_with("mobius: cannot reach the server at http://127.0.0.1:1: "),
        "{error}"
    );
    assert!(unreachable.stdout.is_empty());
    let login = mobius.login(OWNER_EMAIL, OWNER_PASSWORD);
    let error = login.assert_failure(1);
    assert!(
        error.starts_with("mobius: cannot reach the server at http://127.0.0.1:1: "),
        "{error}"
    );

    let bad_format = mobius.run(&["sites", "list", "--output", "xml"]);
    assert_eq!(bad_format.code, Some(2), "{}", bad_format.stderr);
    assert!(bad_format.stderr.contains("xml"), "{}", bad_format.stderr);
    assert!(
        bad_format.stderr.contains("json"),
        "lists the choices: {}",
        bad_format.stderr
    );
    assert!(bad_format.stdout.is_empty());
}
