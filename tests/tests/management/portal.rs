//! The self-service portal end to end: a real agent keeps a rotating
//! portal link, the portal API acts for that one device only (its status,
//! policies, self-service software, activity), and — in the browser test —
//! `mobius-cocoon` serves it to a real Chromium driven by Playwright.

use std::path::Path;
use std::time::Duration;

use mobius_tests::fleet::{Agent, Fleet, agent_command};
use mobius_tests::{eventually, uuid_of};
use serde_json::{Value, json};

use super::software::Software;

const PORTAL: &str = "/api/v1/mobius/portal";

/// A portal API call with a bearer token; answers status and JSON body.
async fn call(fleet: &Fleet, method: reqwest::Method, path: &str, token: &str) -> (u16, Value) {
    let response = fleet
        .http
        .request(method, fleet.server.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `GET /api/v1/mobius/portal/<what>` with a bearer token.
async fn get(fleet: &Fleet, what: &str, token: &str) -> (u16, Value) {
    call(
        fleet,
        reqwest::Method::GET,
        &format!("{PORTAL}/{what}"),
        token,
    )
    .await
}

fn read_link(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join("portal.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Waits for the running agent's first portal link.
async fn first_link(dir: &Path) -> Value {
    let found = eventually(Duration::from_secs(15), async || read_link(dir).is_some()).await;
    assert!(found, "the agent never wrote portal.json");
    read_link(dir).unwrap()
}

async fn open_session(fleet: &Fleet, link: &str) -> String {
    let (status, session) = call(
        fleet,
        reqwest::Method::POST,
        &format!("{PORTAL}/session"),
        link,
    )
    .await;
    assert_eq!(status, 201, "{session}");
    let token = session["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("mps_"), "{token}");
    token
}

/// The portal's view of one title, by name.
async fn portal_item(fleet: &Fleet, session: &str, name: &str) -> Value {
    let (status, list) = get(fleet, "software", session).await;
    assert_eq!(status, 200, "{list}");
    list["software"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_status(fleet: &Fleet, session: &str, name: &str, status: &str) -> Value {
    let reached = eventually(Duration::from_secs(60), async || {
        portal_item(fleet, session, name).await["install"]["status"] == status
    })
    .await;
    let item = portal_item(fleet, session, name).await;
    assert!(reached, "{name} never became {status}: {item}");
    item
}

#[tokio::test]
async fn portal_tokens_rotate_and_act_for_one_device_only() {
    let fleet = Fleet::start(&[
        ("MOBIUS_PORTAL_URL", "https://portal.example.test/"),
        // Rotation every 2 s (hourly in production), each link valid 30 s
        // past its rotation.
        ("MOBIUS_PORTAL_LINK_TTL_SECS", "2"),
        ("MOBIUS_PORTAL_LINK_OVERLAP_SECS", "30"),
    ])
    .await;
    let device = fleet.enroll().await;
    let other_dir = fleet.state.path().join("other");
    let other = fleet.enroll_at(&other_dir, "other-host").await;
    let dir = fleet.agent_dir();
    let agent = Agent::start(&dir);
    agent.connected().await;

    // The agent keeps a link and replaces it on the server's period; the
    // one before still opens a session during the overlap.
    let first = first_link(&dir).await;
    let first_token = first["token"].as_str().unwrap().to_owned();
    assert!(first_token.starts_with("mpl_"), "{first}");
    assert_eq!(
        first["url"].as_str().unwrap(),
        format!("https://portal.example.test/start?token={first_token}")
    );
    assert_eq!(first["rotate_after_secs"], 2);
    let rotated = eventually(Duration::from_secs(15), async || {
        read_link(&dir).is_some_and(|l| l["token"] != first_token.as_str())
    })
    .await;
    assert!(rotated, "the agent did not rotate its portal link");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("portal.json"))
            .unwrap()
            .permissions(),
    ) & 0o777;
    assert_eq!(
        mode, 0o600,
        "the link file in the state directory is private"
    );
    let session = open_session(&fleet, &first_token).await;

    // `mobius-agent portal` prints the current link.
    let out = agent_command(&dir, &["portal", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        printed["url"]
            .as_str()
            .unwrap()
            .starts_with("https://portal.example.test/start?token=mpl_"),
        "{printed}"
    );
    let out = agent_command(&dir, &["portal"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Open your device's self-service portal"),
        "{text}"
    );

    // The device's status.
    let (status, shown) = get(&fleet, "device", &session).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["id"], uuid_of(&device).to_string());
    assert_eq!(shown["online"], true, "{shown}");
    assert!(shown["agent_version"].is_string(), "{shown}");
    assert!(
        !shown["disks"].as_array().unwrap().is_empty(),
        "the host's disks: {shown}"
    );
    assert_eq!(shown["branding"]["has_logo"], false);

    // Wrong tokens for each door: the admin's token, a link where a
    // session is needed, a session where a link is, garbage, nothing.
    for (path, method, token) in [
        (
            format!("{PORTAL}/device"),
            reqwest::Method::GET,
            fleet.token.clone(),
        ),
        (
            format!("{PORTAL}/device"),
            reqwest::Method::GET,
            first_token.clone(),
        ),
        (
            format!("{PORTAL}/session"),
            reqwest::Method::POST,
            session.clone(),
        ),
        (
            format!("{PORTAL}/software"),
            reqwest::Method::GET,
            "mps_forged".into(),
        ),
    ] {
        let (status, body) = call(&fleet, method, &path, &token).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("mobius-agent portal"),
            "the error says what to do: {body}"
        );
    }
    // The portal's session opens nothing else of the tenant.
    let graphql: Value = fleet
        .http
        .post(fleet.server.url("/api/graphql"))
        .bearer_auth(&session)
        .json(&json!({ "query": "{ devices(first: 5) { nodes { id } } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        graphql["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{graphql}"
    );
    let (status, _) = call(
        &fleet,
        reqwest::Method::GET,
        "/api/v1/mobius/software",
        &session,
    )
    .await;
    assert_eq!(status, 401);

    // A failing policy shows first, with its resolution.
    let create = "mutation($i: CreatePolicyInput!) { createPolicy(input: $i) { id } }";
    let mut policy_ids = Vec::new();
    for (name, sql, resolution) in [
        ("A passing check", "SELECT 1", "Nothing to do."),
        (
            "Disk encryption",
            "SELECT 1 FROM mobius_agent WHERE 1 = 0",
            "Turn on full-disk encryption in Settings > Privacy.",
        ),
    ] {
        let created = fleet
            .gql(
                create,
                json!({ "i": { "name": name, "sql": sql, "resolution": resolution } }),
            )
            .await;
        let id = created["data"]["createPolicy"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{created}"))
            .to_owned();
        let run = fleet
            .gql(
                "mutation($id: ID!) { runPolicy(id: $id) { id } }",
                json!({ "id": id }),
            )
            .await;
        assert!(run["errors"].is_null(), "{run}");
        policy_ids.push(id);
    }
    let checked = eventually(Duration::from_secs(20), async || {
        let (_, shown) = get(&fleet, "policies", &session).await;
        shown["policies"]
            .as_array()
            .is_some_and(|p| p.len() == 2 && p.iter().all(|p| !p["passing"].is_null()))
    })
    .await;
    let (_, shown) = get(&fleet, "policies", &session).await;
    assert!(checked, "both policies checked: {shown}");
    assert_eq!(shown["policies"][0]["name"], "Disk encryption", "{shown}");
    assert_eq!(shown["policies"][0]["passing"], false);
    assert_eq!(
        shown["policies"][0]["resolution"],
        "Turn on full-disk encryption in Settings > Privacy."
    );
    assert_eq!(shown["policies"][1]["passing"], true);

    // Self-service software: only self-service titles are offered; the
    // user installs, cannot install twice, uninstalls.
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("notes-installed");
    let (status, notes) = fleet
        .upload(
            json!({ "name": "Notes", "version": "1.2", "installer_kind": "sh", "self_service": true,
                    "install_script": format!("echo installed > '{}'", marker.display()),
                    "uninstall_script": format!("rm -f '{}'", marker.display()) }),
            "notes.sh",
            b"echo notes",
        )
        .await;
    assert_eq!(status, 201, "{notes}");
    let (status, admin_only) = fleet
        .upload(
            super::software::script_metadata("Admin tool", "1.0", None, "true"),
            "admin.sh",
            b"true",
        )
        .await;
    assert_eq!(status, 201, "{admin_only}");
    let (_, list) = get(&fleet, "software", &session).await;
    let names: Vec<&str> = list["software"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, vec!["Notes"], "{list}");
    assert_eq!(list["software"][0]["actions"], json!(["install"]));
    assert!(list["software"][0]["install"].is_null());

    let notes_id = notes["id"].as_str().unwrap();
    let admin_id = admin_only["id"].as_str().unwrap();
    for path in [
        format!("{PORTAL}/software/{admin_id}/install"),
        format!("{PORTAL}/software/not-a-uuid/install"),
        format!("{PORTAL}/software/{notes_id}/reboot"),
    ] {
        let (status, body) = call(&fleet, reqwest::Method::POST, &path, &session).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "NOT_FOUND");
    }
    let (status, started) = call(
        &fleet,
        reqwest::Method::POST,
        &format!("{PORTAL}/software/{notes_id}/install"),
        &session,
    )
    .await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(
        started["actions"],
        json!([]),
        "nothing more while it runs: {started}"
    );
    let (status, twice) = call(
        &fleet,
        reqwest::Method::POST,
        &format!("{PORTAL}/software/{notes_id}/install"),
        &session,
    )
    .await;
    assert!(
        status == 409 || twice["install"]["status"] == "INSTALLED",
        "a second install while one runs is refused: {status} {twice}"
    );
    let installed = wait_status(&fleet, &session, "Notes", "INSTALLED").await;
    assert_eq!(installed["actions"], json!(["uninstall"]), "{installed}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "installed\n");
    let (status, body) = call(
        &fleet,
        reqwest::Method::POST,
        &format!("{PORTAL}/software/{notes_id}/retry"),
        &session,
    )
    .await;
    assert_eq!(status, 409, "nothing failed to retry: {body}");
    assert_eq!(body["error"]["code"], "CONFLICT");
    let (status, body) = call(
        &fleet,
        reqwest::Method::POST,
        &format!("{PORTAL}/software/{notes_id}/uninstall"),
        &session,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_status(&fleet, &session, "Notes", "UNINSTALLED").await;
    assert!(!marker.exists());

    // Recent activity, in words; audited as the device, through the portal.
    let (_, activity) = get(&fleet, "activity", &session).await;
    let summaries: Vec<&str> = activity["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["summary"].as_str())
        .collect();
    for expected in [
        "The self-service portal was opened",
        "Notes 1.2: install requested from the portal",
        "Notes 1.2: Installed",
        "Notes 1.2: Uninstalled",
        "“Disk encryption” started failing",
        "This device was enrolled in Mobius",
    ] {
        assert!(
            summaries.contains(&expected),
            "{expected:?} in {summaries:?}"
        );
    }
    let audit = fleet
        .gql(
            "{ auditEvents(first: 100) { nodes { action actorKind userAgent } } }",
            json!({}),
        )
        .await;
    let requested = audit["data"]["auditEvents"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .find(|e| e["action"] == "software.install_requested")
        .cloned()
        .unwrap_or_else(|| panic!("no software.install_requested in {audit}"));
    assert_eq!(requested["actorKind"], "device", "{requested}");
    assert_eq!(requested["userAgent"], "mobius-cocoon", "{requested}");

    // White-labeling: name, colour, logo (PNG only), help contact.
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
    let set = "mutation($i: SetPortalBrandingInput!) { setPortalBranding(input: $i) { displayName accentColor supportContact hasLogo logoContentType } }";
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    for (input, field) in [
        (json!({ "accentColor": "blue" }), "accentColor"),
        (
            json!({ "logoBase64": b64(b"<svg onload='alert(1)'/>") }),
            "logo",
        ),
        (
            json!({ "logoBase64": b64(&vec![0x89; 300 * 1024]) }),
            "logo",
        ),
    ] {
        let refused = fleet.gql(set, json!({ "i": input })).await;
        assert_eq!(
            refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{refused}"
        );
        assert_eq!(
            refused["errors"][0]["extensions"]["field"], field,
            "{refused}"
        );
    }
    let branded = fleet
        .gql(
            set,
            json!({ "i": { "displayName": "Acme IT", "accentColor": "#0B5FFF", "supportContact": "IT desk, ext. 4357", "logoBase64": b64(png) } }),
        )
        .await;
    assert_eq!(
        branded["data"]["setPortalBranding"],
        json!({ "displayName": "Acme IT", "accentColor": "#0b5fff", "supportContact": "IT desk, ext. 4357", "hasLogo": true, "logoContentType": "image/png" }),
        "{branded}"
    );
    // The CLI shows it, refuses a bad colour clearly, sets a logo file.
    let config = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| super::software::mobius_cli(&fleet, config.path(), args);
    let (ok, out, err) = cli(&["portal", "branding", "get"]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["displayName"], "Acme IT", "{out}");
    assert_eq!(got["logoContentType"], "image/png", "{out}");
    let (ok, _, err) = cli(&["portal", "branding", "set"]);
    assert!(!ok && err.contains("nothing to change"), "{err}");
    let (ok, _, err) = cli(&["portal", "branding", "set", "--color", "red"]);
    assert!(!ok && err.contains("#1a73e8"), "a clear error: {err}");
    let logo_file = work.path().join("logo.png");
    std::fs::write(&logo_file, png).unwrap();
    let (ok, out, err) = cli(&[
        "portal",
        "branding",
        "set",
        "--logo",
        logo_file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["hasLogo"],
        true
    );
    let (_, shown) = get(&fleet, "device", &session).await;
    assert_eq!(
        shown["branding"],
        json!({ "name": "Acme IT", "accent_color": "#0b5fff", "has_logo": true, "support_contact": "IT desk, ext. 4357" })
    );
    let logo = fleet
        .http
        .get(fleet.server.url(&format!("{PORTAL}/logo")))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(logo.status(), 200);
    assert_eq!(logo.headers()["content-type"], "image/png");
    assert_eq!(logo.bytes().await.unwrap().as_ref(), png);

    // An expired session, and a revoked device's session, are refused.
    let mut db = fleet.owner_connection().await;
    let other_session = {
        // The other device's link, minted by its agent's own command.
        let out = agent_command_as_other(&other_dir);
        open_session(&fleet, &out).await
    };
    let (_, theirs) = get(&fleet, "device", &other_session).await;
    assert_eq!(
        theirs["id"],
        uuid_of(&other).to_string(),
        "each session sees its own device"
    );
    sea_orm::sqlx::query(
        "UPDATE portal_tokens SET expires_at = now() - interval '1 second' WHERE kind = 'session' AND device_id = $1",
    )
    .bind(uuid_of(&device))
    .execute(&mut db)
    .await
    .unwrap();
    let (status, _) = get(&fleet, "device", &session).await;
    assert_eq!(status, 401, "an expired session");
    let revoked = fleet
        .gql(
            "mutation($id: ID!) { revokeDevice(id: $id) { id } }",
            json!({ "id": other }),
        )
        .await;
    assert!(revoked["errors"].is_null(), "{revoked}");
    let (status, _) = get(&fleet, "device", &other_session).await;
    assert_eq!(status, 401, "a revoked device's session");
    agent.kill();
}

/// `mobius-agent portal --output json` for the second device (no agent
/// running there: the command asks the server itself); answers the token.
fn agent_command_as_other(dir: &Path) -> String {
    let out =
        mobius_tests::fleet::agent_command_as(dir, "other-host", &["portal", "--output", "json"])
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link: Value = serde_json::from_slice(&out.stdout).unwrap();
    link["token"].as_str().unwrap().to_owned()
}

/// A free local port for a service that must be named before it starts
/// (the server's `portal_url` points at Cocoon, and Cocoon at the server).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mobius-cocoon` against the fleet's server, on `port`.
struct Cocoon {
    child: std::process::Child,
}

impl Cocoon {
    fn start(server: &str, port: u16) -> Cocoon {
        use std::io::BufRead;
        let mut child = std::process::Command::new(mobius_tests::workspace_binary("mobius-cocoon"))
            .args(["--server", server, "--listen", &format!("127.0.0.1:{port}")])
            .args(["--poll-ms", "250", "--log-format", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            format!("mobius-cocoon listening on http://127.0.0.1:{port}"),
            "mobius-cocoon's first line"
        );
        Cocoon { child }
    }
}

impl Drop for Cocoon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the browser test leaves its screenshots: beside the binaries,
/// so CI keeps them with the build.
fn screenshot_dir() -> std::path::PathBuf {
    let binary = mobius_tests::workspace_binary("mobius-cocoon");
    binary
        .parent()
        .unwrap()
        .join("test-artifacts")
        .join("cocoon")
}

#[tokio::test]
async fn cocoon_in_a_real_browser() {
    let port = free_port();
    let portal_url = format!("http://127.0.0.1:{port}");
    let fleet = Fleet::start(&[("MOBIUS_PORTAL_URL", portal_url.as_str())]).await;
    let device = fleet.enroll().await;
    let dir = fleet.agent_dir();
    let hostname = fleet
        .gql(
            "query($id: ID!) { device(id: $id) { hostname } }",
            json!({ "id": device }),
        )
        .await["data"]["device"]["hostname"]
        .as_str()
        .unwrap()
        .to_owned();

    // A link that has expired: minted by `mobius-agent portal` (no agent
    // running yet, so the command asks the server), then aged in the
    // database. The running agent then keeps a fresh one.
    let out = agent_command(&dir, &["portal", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stale: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stale_url = stale["url"].as_str().unwrap().to_owned();
    let mut db = fleet.owner_connection().await;
    let aged = sea_orm::sqlx::query(
        "UPDATE portal_tokens SET expires_at = now() - interval '1 second' WHERE kind = 'link'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(aged.rows_affected(), 1);
    std::fs::remove_file(dir.join("portal.json")).unwrap();
    let agent = Agent::start(&dir);
    agent.connected().await;
    let link = first_link(&dir).await;
    let link_url = link["url"].as_str().unwrap().to_owned();
    assert!(
        link_url.starts_with(&format!("{portal_url}/start?token=mpl_")),
        "{link}"
    );

    // A failing policy with its resolution, checked on the device.
    let created = fleet
        .gql(
            "mutation($i: CreatePolicyInput!) { createPolicy(input: $i) { id } }",
            json!({ "i": { "name": "Firewall enabled", "sql": "SELECT 1 FROM mobius_agent WHERE 1 = 0",
                           "resolution": "Open Settings > Network and turn the firewall on." } }),
        )
        .await;
    let policy = created["data"]["createPolicy"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    fleet
        .gql(
            "mutation($id: ID!) { runPolicy(id: $id) { id } }",
            json!({ "id": policy }),
        )
        .await;
    let failing = eventually(Duration::from_secs(20), async || {
        fleet
            .gql(
                "query($id: ID!) { policy(id: $id) { failing } }",
                json!({ "id": policy }),
            )
            .await["data"]["policy"]["failing"]
            == 1
    })
    .await;
    assert!(failing, "the policy never failed on the device");

    // A self-service .deb the agent installs into a throwaway dpkg root
    // (slowed by a second so the page shows the install under way).
    let work = tempfile::tempdir().unwrap();
    let deb = super::software::ThrowawayDeb::build(work.path());
    let (status, uploaded) = fleet
        .upload(
            json!({
                "name": "Hello Notes", "version": "1.0", "installer_kind": "deb", "self_service": true,
                "install_script": format!("sleep 1; {} -i \"$INSTALLER_PATH\"", deb.dpkg),
                "uninstall_script": format!("{} -r mobius-hello", deb.dpkg),
            }),
            "mobius-hello_1.0_all.deb",
            &deb.bytes,
        )
        .await;
    assert_eq!(status, 201, "{uploaded}");

    // The tenant's white-labeling, as the pages show it.
    use base64::Engine;
    let logo = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/acme-logo.png"))
        .unwrap();
    let branded = fleet
        .gql(
            "mutation($i: SetPortalBrandingInput!) { setPortalBranding(input: $i) { hasLogo } }",
            json!({ "i": { "displayName": "Acme IT", "accentColor": "#0b5fff",
                           "supportContact": "IT desk, ext. 4357",
                           "logoBase64": base64::engine::general_purpose::STANDARD.encode(&logo) } }),
        )
        .await;
    assert_eq!(
        branded["data"]["setPortalBranding"]["hasLogo"], true,
        "{branded}"
    );

    let _cocoon = Cocoon::start(&fleet.server.url(""), port);
    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = tokio::process::Command::new("node")
        .arg(root.join("tests/peers/cocoon_browser.mjs"))
        .current_dir(&root)
        .env("COCOON_LINK", &link_url)
        .env("COCOON_EXPIRED_LINK", &stale_url)
        .env("COCOON_HOSTNAME", &hostname)
        .env("COCOON_FAILING_POLICY", "Firewall enabled")
        .env("COCOON_RESOLUTION", "turn the firewall on")
        .env("COCOON_SOFTWARE", "Hello Notes")
        .env("COCOON_BRAND_NAME", "Acme IT")
        .env("COCOON_SCREENSHOTS", &shots)
        .env("COCOON_INSTALL_TIMEOUT_MS", "60000")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser run finished within 4 minutes")
        .expect("node runs (tests/peers/install.sh installs playwright-core)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for name in [
        "open-link",
        "status",
        "policies",
        "install",
        "progress",
        "activity",
        "phone-width",
        "keyboard",
        "console",
        "expired",
    ] {
        assert!(
            checks.iter().any(|c| c["check"] == name && c["ok"] == true),
            "check {name} passed: {stdout}"
        );
    }
    let progress = checks.iter().find(|c| c["check"] == "progress").unwrap();
    let seen = progress["seen"].as_array().unwrap();
    assert_eq!(
        seen.last()
            .and_then(Value::as_str)
            .map(|s| s.starts_with("Installed")),
        Some(true),
        "progress ends Installed: {progress}"
    );
    // The agent really installed it.
    assert_eq!(
        std::fs::read_to_string(deb.root.join("opt/mobius-hello/hello.txt")).unwrap(),
        "hello\n"
    );
    for file in [
        "status.png",
        "policies.png",
        "software.png",
        "activity.png",
        "status-phone.png",
        "expired.png",
    ] {
        let bytes = std::fs::metadata(shots.join(file))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(
            bytes > 1000,
            "screenshot {file} saved in {}",
            shots.display()
        );
    }
    eprintln!("screenshots in {}", shots.display());
    agent.kill();
}
