//! The osquery TLS API end to end: a protocol peer written from osquery's
//! documented formats talks to the real server on Postgres.

use std::time::Duration;

use mobius_core::audit::Actor;
use mobius_core::db::SystemTask;
use mobius_tests::fleet::Fleet;
use mobius_tests::osquery_peer::OsqueryPeer;
use mobius_tests::{eventually, global_id};
use reqwest::StatusCode;
use sea_orm::sqlx;
use serde_json::{Value, json};

async fn create_team(fleet: &Fleet, name: &str) -> String {
    let team = fleet
        .gql(
            "mutation($n: String!) { createTeam(input: { name: $n }) { id } }",
            json!({ "n": name }),
        )
        .await;
    team["data"]["createTeam"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{team}"))
        .to_owned()
}

/// Creates an enroll secret (for `team`, when given); answers (secret, id).
async fn enroll_secret(fleet: &Fleet, team: Option<&str>) -> (String, String) {
    let created = fleet
        .gql(
            "mutation($i: CreateOsqueryEnrollSecretInput!) { createOsqueryEnrollSecret(input: $i) { secret enrollSecret { id prefix teamId revokedAt } } }",
            json!({ "i": { "name": "linux servers", "teamId": team } }),
        )
        .await;
    let payload = &created["data"]["createOsqueryEnrollSecret"];
    let secret = payload["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    assert!(
        secret.starts_with("mob_oqes_") && secret.len() > 40,
        "{secret}"
    );
    assert!(secret.starts_with(payload["enrollSecret"]["prefix"].as_str().unwrap()));
    assert_eq!(payload["enrollSecret"]["teamId"].as_str(), team);
    (
        secret,
        payload["enrollSecret"]["id"].as_str().unwrap().to_owned(),
    )
}

async fn set_options(fleet: &Fleet, team: Option<&str>, document: Value) -> Value {
    let set = fleet
        .gql(
            "mutation($t: ID, $d: JSON!) { setAgentOptions(teamId: $t, document: $d) { optionsVersion merged } }",
            json!({ "t": team, "d": document }),
        )
        .await;
    assert!(set["errors"].is_null(), "{set}");
    set["data"]["setAgentOptions"].clone()
}

/// The global id of the device osquery host `host` became.
async fn device_of(fleet: &Fleet, host: &str) -> String {
    let mut db = fleet.owner_connection().await;
    let id: mobius_core::Uuid =
        sqlx::query_scalar("SELECT id FROM devices WHERE host_fingerprint = $1")
            .bind(format!("osquery:{host}"))
            .fetch_one(&mut db)
            .await
            .unwrap();
    global_id("Device", id)
}

#[tokio::test]
async fn an_osquery_host_enrolls_with_a_team_secret_gets_the_merged_config_and_ships_logs() {
    let fleet = Fleet::start(&[]).await;
    let team = create_team(&fleet, "linux servers").await;
    set_options(
        &fleet,
        None,
        json!({
            "options": {"distributed_interval": 60, "logger_tls_period": 10},
            "schedule": {
                "processes": {"query": "SELECT pid, name FROM processes", "interval": 60},
                "users": {"query": "SELECT * FROM users", "interval": 3600},
            },
            "decorators": {"load": ["SELECT uuid AS host_uuid FROM system_info"]},
        }),
    )
    .await;
    set_options(
        &fleet,
        Some(&team),
        json!({
            "options": {"distributed_interval": 10},
            "schedule": {"users": null, "mounts": {"query": "SELECT * FROM mounts", "interval": 300, "snapshot": true}},
        }),
    )
    .await;
    let (secret, _) = enroll_secret(&fleet, Some(&team)).await;
    // Listed by prefix only: the secret itself is never shown again.
    let listed = fleet
        .gql("{ osqueryEnrollSecrets { prefix name } }", json!({}))
        .await;
    assert!(!listed.to_string().contains(&secret), "{listed}");
    assert_eq!(
        listed["data"]["osqueryEnrollSecrets"][0]["name"],
        "linux servers"
    );

    let mut host = OsqueryPeer::new(&fleet.server.url(""), "web-01");
    let (status, enrolled) = host.enroll(&secret).await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
    let node_key = host.node_key.clone().expect("a node key");
    assert!(node_key.starts_with("mob_node_") && node_key.len() > 40);

    // The host is a device of the team, managed by osquery, with its facts.
    let device = device_of(&fleet, "web-01").await;
    let shown = fleet
        .gql(
            "query($id: ID!) { device(id: $id) { hostname osName team { id } } }",
            json!({ "id": device }),
        )
        .await;
    assert_eq!(
        shown["data"]["device"]["hostname"], "web-01.example.test",
        "{shown}"
    );
    assert_eq!(shown["data"]["device"]["osName"], "Ubuntu");
    assert_eq!(shown["data"]["device"]["team"]["id"], team.as_str());
    let mut db = fleet.owner_connection().await;
    let managed_by: Option<String> = sqlx::query_scalar(
        "SELECT managed_by FROM devices WHERE host_fingerprint = 'osquery:web-01'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(managed_by.as_deref(), Some("osquery"));
    // Stored as a hash only.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM osquery_nodes WHERE token_hash = sha256($1::bytea)",
    )
    .bind(node_key.as_bytes())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(stored, 1);

    // The merged configuration at the top level: team over global.
    let (status, config) = host.config().await;
    assert_eq!(status, StatusCode::OK, "{config}");
    assert_eq!(config["options"]["distributed_interval"], 10, "{config}");
    assert_eq!(config["options"]["logger_tls_period"], 10);
    assert!(config["schedule"]["processes"]["query"].is_string());
    assert!(config["schedule"]["mounts"]["snapshot"] == true);
    assert!(
        config["schedule"].get("users").is_none(),
        "the team removed it: {config}"
    );
    assert!(config["decorators"]["load"].is_array());
    assert_eq!(config["node_invalid"], false);

    // Nothing to run yet.
    let (status, read) = host.distributed_read().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["queries"], json!({}), "{read}");
    assert!(read.get("accelerate").is_none());

    // Result logs in all three forms, and status logs.
    let event_added = host.event(
        "pack_it_processes",
        "added",
        json!({"pid": "1", "name": "systemd"}),
    );
    let event_removed = host.event(
        "pack_it_processes",
        "removed",
        json!({"pid": "77", "name": "sleep"}),
    );
    let batch = host.batch(
        "users",
        json!([{"username": "alice"}, {"username": "bob"}]),
        json!([{"username": "mallory"}]),
    );
    let snapshot = host.snapshot(
        "mounts",
        json!([{"path": "/", "type": "ext4"}, {"path": "/boot", "type": "vfat"}]),
    );
    let (status, logged) = host
        .log("result", vec![event_added, event_removed, batch, snapshot])
        .await;
    assert_eq!(status, StatusCode::OK, "{logged}");
    let lines = vec![
        host.status_line(0, "TLSEnrollPlugin requesting a node enroll key"),
        host.status_line(1, "Scheduled query may be failing: users"),
    ];
    let (status, logged) = host.log("status", lines).await;
    assert_eq!(status, StatusCode::OK, "{logged}");

    let results = fleet
        .gql(
            "query($d: ID!) { osqueryResultLogs(deviceId: $d, first: 50) { name action columns } }",
            json!({ "d": device }),
        )
        .await;
    let rows = results["data"]["osqueryResultLogs"]
        .as_array()
        .unwrap_or_else(|| panic!("{results}"));
    let mut seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("mounts".into(), "snapshot".into()),
            ("mounts".into(), "snapshot".into()),
            ("pack_it_processes".into(), "added".into()),
            ("pack_it_processes".into(), "removed".into()),
            ("users".into(), "added".into()),
            ("users".into(), "added".into()),
            ("users".into(), "removed".into()),
        ]
    );
    let users = fleet
        .gql(
            "query($d: ID!) { osqueryResultLogs(deviceId: $d, name: \"users\") { action columns } }",
            json!({ "d": device }),
        )
        .await;
    let users = users["data"]["osqueryResultLogs"].as_array().unwrap();
    assert_eq!(users.len(), 3);
    assert!(
        users
            .iter()
            .any(|r| r["columns"]["username"] == "mallory" && r["action"] == "removed")
    );
    let statuses = fleet
        .gql(
            "query($d: ID!) { osqueryStatusLogs(deviceId: $d) { severity line message version } }",
            json!({ "d": device }),
        )
        .await;
    let statuses = statuses["data"]["osqueryStatusLogs"]
        .as_array()
        .unwrap_or_else(|| panic!("{statuses}"));
    assert_eq!(statuses.len(), 2);
    assert!(
        statuses
            .iter()
            .any(|s| s["severity"] == 1 && s["line"] == 68 && s["version"] == "5.12.1")
    );

    // Client mistakes: clear 400s, never a 500.
    let (status, bad) = host.log("nonsense", vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bad["error"]["code"], "BAD_USER_INPUT", "{bad}");
    let (status, bad) = host.log("result", vec![json!({"name": "x"})]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    let raw = fleet
        .http
        .post(fleet.server.url("/api/osquery/config"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let (status, bad) = host
        .distributed_write_raw(json!({"queries": {"x": 7}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    // A body over the limit is refused before it is read.
    let big = host.status_line(0, &"x".repeat(2 * 1024 * 1024));
    let (status, _) = host.log("status", vec![big]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // An unknown node key: 401 node_invalid, so osquery enrolls again.
    let mut stranger = OsqueryPeer::new(&fleet.server.url(""), "nobody");
    stranger.node_key = Some("mob_node_made-up".into());
    let (status, answer) = stranger.config().await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["node_invalid"], true);
    let (status, answer) = stranger.enroll("mob_oqes_wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["node_invalid"], true);
    let (status, answer) = stranger.distributed_read().await;
    assert_eq!(
        (status, answer["node_invalid"].clone()),
        (StatusCode::UNAUTHORIZED, json!(true))
    );

    // The audit log tells what happened.
    let mut db = fleet.owner_connection().await;
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_events ORDER BY created_at")
            .fetch_all(&mut db)
            .await
            .unwrap();
    for action in [
        "agent_options.updated",
        "osquery.enroll_secret_created",
        "osquery.host_enrolled",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} not in {actions:?}"
        );
    }
}

#[tokio::test]
async fn a_revoked_device_gets_node_invalid_and_re_enrolls_after_deletion_and_a_revoked_secret_is_refused()
 {
    let fleet = Fleet::start(&[]).await;
    let (secret, secret_id) = enroll_secret(&fleet, None).await;
    let mut host = OsqueryPeer::new(&fleet.server.url(""), "db-01");
    assert_eq!(host.enroll(&secret).await.0, StatusCode::OK);
    assert_eq!(host.config().await.0, StatusCode::OK);
    let device = device_of(&fleet, "db-01").await;

    // Enrolling again (osquery lost its database) keeps the device and
    // replaces the key.
    let old_key = host.node_key.clone().unwrap();
    assert_eq!(host.enroll(&secret).await.0, StatusCode::OK);
    assert_ne!(host.node_key.as_deref(), Some(old_key.as_str()));
    assert_eq!(device_of(&fleet, "db-01").await, device);
    let mut stale = OsqueryPeer::new(&fleet.server.url(""), "db-01");
    stale.node_key = Some(old_key);
    assert_eq!(stale.config().await.0, StatusCode::UNAUTHORIZED);

    // Revoking the device revokes its node key at once.
    let revoked = fleet
        .gql(
            "mutation($id: ID!) { revokeDevice(id: $id) { status } }",
            json!({ "id": device }),
        )
        .await;
    assert_eq!(
        revoked["data"]["revokeDevice"]["status"], "REVOKED",
        "{revoked}"
    );
    let (status, answer) = host.config().await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["node_invalid"], true);
    assert!(
        host.node_key.is_none(),
        "the peer forgets its key as osquery does"
    );
    let line = host.status_line(0, "x");
    let (status, answer) = host.log("status", vec![line]).await;
    assert_eq!(
        (status, answer["node_invalid"].clone()),
        (StatusCode::UNAUTHORIZED, json!(true))
    );
    // osquery enrolls again: refused while the revoked device exists.
    let (status, answer) = host.enroll(&secret).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{answer}"
    );

    // Once an admin deletes it, the host enrolls again as a new device.
    let deleted = fleet
        .gql(
            "mutation($id: ID!) { deleteDevice(id: $id) }",
            json!({ "id": device }),
        )
        .await;
    assert!(deleted["errors"].is_null(), "{deleted}");
    let (status, answer) = host.enroll(&secret).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(host.config().await.0, StatusCode::OK);
    assert_ne!(device_of(&fleet, "db-01").await, device);

    // A revoked secret enrolls nobody; enrolled hosts keep working.
    let revoked = fleet
        .gql(
            "mutation($id: ID!) { revokeOsqueryEnrollSecret(id: $id) { revokedAt } }",
            json!({ "id": secret_id }),
        )
        .await;
    assert!(
        revoked["data"]["revokeOsqueryEnrollSecret"]["revokedAt"].is_string(),
        "{revoked}"
    );
    let mut newcomer = OsqueryPeer::new(&fleet.server.url(""), "db-02");
    let (status, answer) = newcomer.enroll(&secret).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["node_invalid"], true);
    assert!(newcomer.node_key.is_none());
    assert_eq!(host.config().await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_osquery_host_answers_a_live_query_through_distributed_read_and_write() {
    let fleet = Fleet::start(&[]).await;
    let (secret, _) = enroll_secret(&fleet, None).await;
    let mut host = OsqueryPeer::new(&fleet.server.url(""), "app-01");
    assert_eq!(host.enroll(&secret).await.0, StatusCode::OK);
    // Polling makes it online.
    assert_eq!(host.distributed_read().await.0, StatusCode::OK);
    let device = device_of(&fleet, "app-01").await;

    let started = fleet
        .gql(
            "mutation($i: RunLiveQueryInput!) { runLiveQuery(input: $i) { id } }",
            json!({ "i": { "sql": "SELECT name, version FROM deb_packages", "targets": { "deviceIds": [device] } } }),
        )
        .await;
    let campaign = started["data"]["runLiveQuery"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();

    let (status, read) = host.distributed_read().await;
    assert_eq!(status, StatusCode::OK);
    let queries = read["queries"].as_object().unwrap();
    assert_eq!(queries.len(), 1, "{read}");
    let (name, sql) = queries.iter().next().unwrap();
    assert_eq!(sql, "SELECT name, version FROM deb_packages");
    assert!(read["accelerate"].as_u64().unwrap() > 0, "{read}");

    // osquery < 3 sends statuses as strings.
    let (status, written) = host
        .distributed_write_raw(json!({
            "queries": { name.clone(): [{"name": "openssl", "version": "3.0.13"}, {"name": "curl", "version": "8.5.0"}] },
            "statuses": { name.clone(): "0" },
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{written}");

    let answered = eventually(Duration::from_secs(5), async || {
        let shown = fleet
            .gql(
                "query($id: ID!) { liveQuery(id: $id) { results { status rows } } }",
                json!({ "id": campaign }),
            )
            .await;
        shown["data"]["liveQuery"]["results"][0]["status"] == "ANSWERED"
            && shown["data"]["liveQuery"]["results"][0]["rows"][1]["name"] == "curl"
    })
    .await;
    assert!(answered, "the osquery host's rows reach the campaign");
    // Answered: nothing more to run.
    let (_, read) = host.distributed_read().await;
    assert_eq!(read["queries"], json!({}), "{read}");

    // A failing query: an empty answer as "" and a status, with its message.
    let started = fleet
        .gql(
            "mutation($i: RunLiveQueryInput!) { runLiveQuery(input: $i) { id } }",
            json!({ "i": { "sql": "SELECT * FROM no_such_table", "targets": { "deviceIds": [device] } } }),
        )
        .await;
    let failing = started["data"]["runLiveQuery"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, read) = host.distributed_read().await;
    let name = read["queries"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let (status, _) = host
        .distributed_write(
            json!({ name.clone(): "" }),
            json!({ name.clone(): 1 }),
            json!({ name.clone(): "no such table: no_such_table" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let failed = eventually(Duration::from_secs(5), async || {
        let shown = fleet
            .gql(
                "query($id: ID!) { liveQuery(id: $id) { results { status error } } }",
                json!({ "id": failing }),
            )
            .await;
        shown["data"]["liveQuery"]["results"][0]["status"] == "ERROR"
            && shown["data"]["liveQuery"]["results"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("no such table"))
    })
    .await;
    assert!(failed, "the osquery host's error reaches the campaign");
}

#[tokio::test]
async fn a_node_key_or_enroll_secret_of_another_tenant_is_useless() {
    let fleet = Fleet::start(&[]).await;
    let (own_secret, _) = enroll_secret(&fleet, None).await;
    set_options(
        &fleet,
        None,
        json!({"options": {"distributed_interval": 42}}),
    )
    .await;

    // Tenant Bravo, with its own secret, options and an enrolled host.
    let store = fleet.db.app_store().await;
    let bravo = store
        .create_tenant(&Actor::system(), "Bravo", "bravo")
        .await
        .unwrap();
    let scope = store
        .begin(&SystemTask::new("test", bravo.id))
        .await
        .unwrap();
    let bravo_secret = scope
        .osquery()
        .create_enroll_secret(&Actor::system(), "bravo", None, None)
        .await
        .unwrap();
    scope
        .agent_options()
        .set(
            &Actor::system(),
            None,
            json!({"options": {"distributed_interval": 7}}),
        )
        .await
        .unwrap();
    scope.commit().await.unwrap();

    let mut bravo_host = OsqueryPeer::new(&fleet.server.url(""), "bravo-host");
    assert_eq!(
        bravo_host.enroll(&bravo_secret.secret).await.0,
        StatusCode::OK
    );
    // Bravo's node key answers Bravo's configuration, never ours.
    let (_, config) = bravo_host.config().await;
    assert_eq!(config["options"]["distributed_interval"], 7, "{config}");
    let line = bravo_host.event("secret_query", "added", json!({"k": "v"}));
    assert_eq!(bravo_host.log("result", vec![line]).await.0, StatusCode::OK);
    // Bravo's host is not one of our devices, and its logs are not ours.
    let listed = fleet
        .gql(
            "{ devices(first: 100, hostnameSearch: \"bravo\") { nodes { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(listed["data"]["devices"]["nodes"], json!([]), "{listed}");
    let bravo_device: mobius_core::Uuid = {
        let scope = store
            .begin(&SystemTask::new("test", bravo.id))
            .await
            .unwrap();
        let devices = scope.devices().list().await.unwrap();
        devices[0].id
    };
    let logs = fleet
        .gql(
            "query($d: ID!) { osqueryResultLogs(deviceId: $d) { name } }",
            json!({ "d": global_id("Device", bravo_device) }),
        )
        .await;
    assert_eq!(
        logs["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{logs}"
    );
    // Bravo's secret cannot be revoked from here.
    let revoke = fleet
        .gql(
            "mutation($id: ID!) { revokeOsqueryEnrollSecret(id: $id) { id } }",
            json!({ "id": global_id("OsqueryEnrollSecret", bravo_secret.record.id) }),
        )
        .await;
    assert_eq!(
        revoke["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{revoke}"
    );
    let listed = fleet
        .gql("{ osqueryEnrollSecrets { id } }", json!({}))
        .await;
    assert_eq!(
        listed["data"]["osqueryEnrollSecrets"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Our host gets our configuration.
    let mut own_host = OsqueryPeer::new(&fleet.server.url(""), "alpha-host");
    assert_eq!(own_host.enroll(&own_secret).await.0, StatusCode::OK);
    let (_, config) = own_host.config().await;
    assert_eq!(config["options"]["distributed_interval"], 42, "{config}");
}

/// A CA and a server certificate it signed for 127.0.0.1 and localhost:
/// (CA PEM, certificate PEM, key PEM).
fn server_pki(ca_name: &str) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// What `--tls_server_certs` does: trust this CA only.
fn trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

#[tokio::test]
async fn osquery_enrolls_over_tls_when_it_trusts_the_server_ca_and_not_otherwise() {
    use secrecy::ExposeSecret;
    let db = mobius_tests::TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = server_pki("Mobius server CA");
    std::fs::write(dir.path().join("server.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("server.key"), &key).unwrap();
    let cert_file = dir.path().join("server.crt");
    let key_file = dir.path().join("server.key");
    let server = mobius_tests::ServerProcess::start(
        dir.path(),
        &["--database-url", db.owner_url().expose_secret()],
        &[
            ("MOBIUS_TLS_CERT_FILE", cert_file.to_str().unwrap()),
            ("MOBIUS_TLS_KEY_FILE", key_file.to_str().unwrap()),
        ],
    );
    // An enroll secret of the server's tenant, made behind its back.
    let store = db.app_store().await;
    let tenant = store
        .default_tenant()
        .await
        .unwrap()
        .expect("the default tenant");
    let scope = store.begin(&tenant).await.unwrap();
    let secret = scope
        .osquery()
        .create_enroll_secret(&Actor::system(), "tls", None, None)
        .await
        .unwrap();
    scope.commit().await.unwrap();

    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let mut host = OsqueryPeer::with_client(trusting(&ca), &base, "tls-host");
    let (status, answer) = host.enroll(&secret.secret).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, config) = host.config().await;
    assert_eq!(status, StatusCode::OK, "{config}");
    assert_eq!(config["node_invalid"], false);

    // A host pinned to another CA refuses to talk to this server.
    let (other_ca, _, _) = server_pki("Some other CA");
    let refused = trusting(&other_ca)
        .post(format!("{base}/api/osquery/enroll"))
        .json(&json!({"enroll_secret": secret.secret, "host_identifier": "x"}))
        .send()
        .await;
    let err = refused.expect_err("the server's certificate does not chain to the pinned CA");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
}

#[tokio::test]
async fn osquery_hosts_are_rate_limited_per_node_count_against_the_device_limit_and_their_logs_expire()
 {
    let fleet = Fleet::start(&[
        ("MOBIUS_DEVICE_LIMIT", "1"),
        ("MOBIUS_OSQUERY_REQUESTS_PER_MINUTE_PER_NODE", "5"),
        ("MOBIUS_JOB_PERIODS_SECS", "{osquery-log-retention=1}"),
        ("MOBIUS_OSQUERY_LOG_RETENTION_DAYS", "1"),
    ])
    .await;
    let (secret, _) = enroll_secret(&fleet, None).await;
    let mut host = OsqueryPeer::new(&fleet.server.url(""), "limited-01");
    assert_eq!(host.enroll(&secret).await.0, StatusCode::OK);

    // The device limit of agents holds for osquery hosts.
    let mut second = OsqueryPeer::new(&fleet.server.url(""), "limited-02");
    let (status, refused) = second.enroll(&secret).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["error"]["code"], "LICENSE_REQUIRED");
    assert!(second.node_key.is_none());

    // Two logs, one of them stored two days ago.
    let line = host.status_line(0, "old");
    assert_eq!(host.log("status", vec![line]).await.0, StatusCode::OK);
    let line = host.status_line(0, "new");
    assert_eq!(host.log("status", vec![line]).await.0, StatusCode::OK);
    let mut db = fleet.owner_connection().await;
    sqlx::query("UPDATE osquery_status_logs SET created_at = now() - interval '2 days' WHERE message = 'old'")
        .execute(&mut db)
        .await
        .unwrap();
    let expired = eventually(Duration::from_secs(15), async || {
        let left: Vec<String> = sqlx::query_scalar("SELECT message FROM osquery_status_logs")
            .fetch_all(&mut db)
            .await
            .unwrap();
        left == vec!["new".to_owned()]
    })
    .await;
    assert!(expired, "the retention job never removed the expired line");

    // 5 requests a minute per node key: the sixth waits.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(host.distributed_read().await.0);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let limited = fleet
        .http
        .post(fleet.server.url("/api/osquery/config"))
        .json(&json!({"node_key": host.node_key}))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
}
