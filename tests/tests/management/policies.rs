//! Policies end to end: two real agents, one passing and one failing, the
//! counts within 5 s, and a signed "newly failing" webhook delivery that
//! is retried after the receiver answered 500.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use mobius_tests::fleet::{Agent, Fleet, premium_license};
use mobius_tests::{eventually, uuid_of};
use serde_json::{Value, json};
use sha2::Sha256;

/// Every request the receiver got: its signature header and body.
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver on port 0 that answers 500 to the first request
/// and 204 to the rest.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hooks/mobius",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let signature = headers
                    .get("mobius-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let mut all = sink.lock().unwrap();
                all.push((signature, body));
                if all.len() == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/mobius", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// Checks `t=<unix>,v1=<hex>` against HMAC-SHA256(secret, "<t>.<body>").
fn signature_is_valid(header: &str, secret: &str, body: &str) -> bool {
    let mut timestamp = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = Some(t.to_owned()),
            Some(("v1", v)) => v1 = Some(v.to_owned()),
            _ => {}
        }
    }
    let (Some(timestamp), Some(v1)) = (timestamp, v1) else {
        return false;
    };
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap_or(0);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    let Ok(given) = hex::decode(v1) else {
        return false;
    };
    (0..300).contains(&age) && mac.verify_slice(&given).is_ok()
}

#[tokio::test]
async fn a_policy_fails_on_one_device_passes_on_another_and_the_webhook_is_signed_and_retried() {
    let license = premium_license();
    let fleet = Fleet::start(&[
        ("MOBIUS_LICENSE_TRUST_TEST_KEY", "true"),
        ("MOBIUS_LICENSE_KEY", &license),
    ])
    .await;
    let mut ids = Vec::new();
    let mut agents = Vec::new();
    for name in ["policy-pass", "policy-fail"] {
        let dir = fleet.state.path().join(name);
        ids.push(fleet.enroll_at(&dir, name).await);
        agents.push(Agent::start_as(&dir, name));
    }
    for agent in &agents {
        agent.connected().await;
    }
    let (passing, failing) = (&ids[0], &ids[1]);

    // The webhook: http(s) only, never the server itself; the secret once.
    let (url, received) = receiver().await;
    let set = "mutation($url: String!) { setPolicyWebhook(url: $url) { secret webhook { url } } }";
    let itself = fleet.server.url("/hook");
    for bad in ["ftp://example.com/hook", "not a url", itself.as_str()] {
        let refused = fleet.gql(set, json!({ "url": bad })).await;
        assert_eq!(
            refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{bad}: {refused}"
        );
    }
    let webhook = fleet.gql(set, json!({ "url": url })).await;
    let secret = webhook["data"]["setPolicyWebhook"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{webhook}"))
        .to_owned();
    let shown = fleet.gql("{ policyWebhook { url } }", json!({})).await;
    assert_eq!(shown["data"]["policyWebhook"]["url"], url.as_str());
    assert!(
        !shown.to_string().contains(&secret),
        "the secret is shown once"
    );

    // A policy only the first device passes.
    let create = "mutation($i: CreatePolicyInput!) { createPolicy(input: $i) { id passing failing unknown } }";
    let refused = fleet
        .gql(create, json!({ "i": { "name": "empty", "sql": "" } }))
        .await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let sql = format!(
        "SELECT 1 FROM mobius_agent WHERE device_id = '{}'",
        uuid_of(passing)
    );
    let created = fleet
        .gql(
            create,
            json!({ "i": { "name": "Is the first device", "sql": sql, "resolution": "Be the first device." } }),
        )
        .await;
    let policy = created["data"]["createPolicy"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    assert_eq!(
        created["data"]["createPolicy"]["unknown"], 2,
        "no results yet: {created}"
    );
    let duplicate = fleet
        .gql(
            create,
            json!({ "i": { "name": "Is the first device", "sql": "SELECT 1" } }),
        )
        .await;
    assert_eq!(
        duplicate["errors"][0]["extensions"]["code"], "CONFLICT",
        "{duplicate}"
    );

    let ran_at = Instant::now();
    let run = fleet
        .gql(
            "mutation($id: ID!) { runPolicy(id: $id) { id } }",
            json!({ "id": policy }),
        )
        .await;
    assert!(run["errors"].is_null(), "{run}");
    let counts = "query($id: ID!) { policy(id: $id) { passing failing unknown failingDevices { totalCount nodes { deviceId passes } } } }";
    let counted = eventually(Duration::from_secs(5), async || {
        let answer = fleet.gql(counts, json!({ "id": policy })).await;
        answer["data"]["policy"]["passing"] == 1 && answer["data"]["policy"]["failing"] == 1
    })
    .await;
    let counted_after = ran_at.elapsed();
    assert!(counted, "counts were not 1 passing, 1 failing within 5 s");
    eprintln!("policy counts updated {counted_after:?} after runPolicy");
    let answer = fleet.gql(counts, json!({ "id": policy })).await;
    assert_eq!(answer["data"]["policy"]["unknown"], 0, "{answer}");
    assert_eq!(
        answer["data"]["policy"]["failingDevices"]["nodes"],
        json!([{ "deviceId": failing, "passes": false }])
    );
    let device = fleet
        .gql(
            "query($id: ID!) { device(id: $id) { policyResults { policyId passes checkedAt } } }",
            json!({ "id": failing }),
        )
        .await;
    assert_eq!(
        device["data"]["device"]["policyResults"][0]["passes"], false,
        "{device}"
    );

    // One "newly failing" delivery: refused once with 500, then retried
    // and accepted, both signed.
    let delivered = eventually(Duration::from_secs(30), async || {
        received.lock().unwrap().len() >= 2
    })
    .await;
    let requests = received.lock().unwrap().clone();
    assert!(delivered, "the 500 was not retried: {requests:?}");
    let (signature, body) = &requests[1];
    assert_eq!(&requests[0].1, body, "the retry sends the same body");
    assert!(
        signature_is_valid(signature, &secret, body),
        "bad signature {signature} on {body}"
    );
    assert!(!signature_is_valid(signature, "mob_whsec_wrong", body));
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["event"], "policy.newly_failing", "{body}");
    assert_eq!(body["data"]["device"]["id"], uuid_of(failing).to_string());
    assert_eq!(body["data"]["policy"]["name"], "Is the first device");
    let log = fleet
        .gql(
            "{ webhookDeliveries { nodes { event status attempts responseStatus } } }",
            json!({}),
        )
        .await;
    let deliveries = &log["data"]["webhookDeliveries"]["nodes"];
    assert_eq!(deliveries.as_array().map(Vec::len), Some(1), "{log}");
    assert_eq!(
        deliveries[0],
        json!({ "event": "policy.newly_failing", "status": "DELIVERED", "attempts": 2, "responseStatus": 204 })
    );
    let audit = fleet
        .gql(
            "{ auditEvents(first: 200) { nodes { action } } }",
            json!({}),
        )
        .await;
    assert!(
        audit.to_string().contains("policy.newly_failing"),
        "{audit}"
    );
    drop(agents);
}
