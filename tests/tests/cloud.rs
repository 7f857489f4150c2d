//! The cloud edition end to end, with the real `mobius-server-cloud`
//! binary (built with its default features `billing` and `kms`) on
//! Postgres:
//!
//! - Stripe webhooks, signed exactly as Stripe signs them (HMAC-SHA256 of
//!   `<t>.<body>` with the endpoint secret, `Stripe-Signature: t=..,v1=..`)
//!   over event fixtures shaped like Stripe's documented events, change the
//!   tenant's plan; the device limit and `tenant { plan }` follow at once.
//! - AWS KMS envelope sealing against a real KMS emulator (`moto_server`,
//!   installed by .ci/run into /var/cache/mobius/peers-venv) started here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use mobius_tests::{ServerProcess, TestDatabase, eventually, uuid_of, workspace_binary};
use sea_orm::sqlx::{self, Connection, PgConnection};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::Sha256;

const PASSWORD: &str = "correct horse battery staple";
const OLD_SECRET: &str = "whsec_old0123456789abcdef";
const NEW_SECRET: &str = "whsec_new0123456789abcdef";

const BILLING_TOML: &str = r#"
[billing]
webhook_secrets = ["whsec_old0123456789abcdef", "whsec_new0123456789abcdef"]
grace_period_days = 7

[billing.free]
tier = "free"
device_limit = 1
features = []

[[billing.prices]]
price_id = "price_team_monthly"
tier = "team"
devices_per_unit = 2
features = ["saml"]

[[billing.prices]]
price_id = "price_business_monthly"
tier = "business"
device_limit = 50
features = ["saml", "custom_webhooks", "team_policies"]
"#;

/// A cloud server on its own database, with a signed-in owner.
struct Cloud {
    db: TestDatabase,
    server: ServerProcess,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    token: String,
    tenant_id: uuid::Uuid,
}

impl Cloud {
    async fn start(config: &str) -> Cloud {
        let db = TestDatabase::create().await;
        Cloud::start_on(db, config).await
    }

    async fn start_on(db: TestDatabase, config: &str) -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("cloud.toml");
        std::fs::write(&config_path, config).unwrap();
        let server = ServerProcess::start_binary(
            "mobius-server-cloud",
            dir.path(),
            &[
                "--database-url",
                db.owner_url().expose_secret(),
                "--config",
                config_path.to_str().unwrap(),
            ],
            &[],
        );
        let mut cloud = Cloud {
            db,
            server,
            dir,
            http: reqwest::Client::new(),
            token: String::new(),
            tenant_id: uuid::Uuid::nil(),
        };
        if let Some(code) = cloud.server.setup_code.clone() {
            let setup = cloud
                .gql(
                    "mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",
                    json!({ "i": { "code": code, "email": "owner@cloud.test", "password": PASSWORD, "displayName": "O" } }),
                )
                .await;
            cloud.token = setup["data"]["setup"]["accessToken"]
                .as_str()
                .unwrap_or_else(|| panic!("{setup}"))
                .to_owned();
            let tenant = cloud.gql("{ tenant { id } }", json!({})).await;
            cloud.tenant_id = uuid_of(tenant["data"]["tenant"]["id"].as_str().unwrap());
        }
        cloud
    }

    async fn gql(&self, query: &str, variables: Value) -> Value {
        let mut request = self
            .http
            .post(self.server.url("/api/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    async fn plan(&self) -> Value {
        let answer = self
            .gql(
                "{ tenant { plan { tier deviceLimit status currentPeriodEnd } } }",
                json!({}),
            )
            .await;
        assert!(answer["errors"].is_null(), "{answer}");
        answer["data"]["tenant"]["plan"].clone()
    }

    /// Posts `event` signed with `secret` at `t` (now if `None`).
    async fn deliver_signed(&self, event: &Value, secret: &str, t: Option<i64>) -> (u16, Value) {
        let body = serde_json::to_vec(event).unwrap();
        let t = t.unwrap_or_else(|| chrono::Utc::now().timestamp());
        let header = stripe_signature(&body, &[secret], t);
        self.post_webhook(body, Some(header)).await
    }

    async fn deliver(&self, event: &Value) -> (u16, Value) {
        self.deliver_signed(event, NEW_SECRET, None).await
    }

    async fn post_webhook(&self, body: Vec<u8>, header: Option<String>) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.server.url("/api/v1/mobius/billing/stripe/webhook"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(header) = header {
            request = request.header("Stripe-Signature", header);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status == 500 {
            // The cause is only in the log: show it with the failure.
            tokio::time::sleep(Duration::from_millis(100)).await;
            for e in self.server.log_events() {
                if e["level"] == "ERROR" {
                    eprintln!("server error: {e}");
                }
            }
        }
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Enrolls one device; the HTTP status.
    async fn enroll(&self, name: &str) -> u16 {
        let site = self.gql("{ sites { nodes { id } } }", json!({})).await["data"]["sites"]["nodes"]
            [0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let created = self
            .gql(
                "mutation($i: CreateEnrollmentTokenInput!) { createEnrollmentToken(input: $i) { token } }",
                json!({ "i": { "siteId": site, "maxUses": 1 } }),
            )
            .await;
        let token = created["data"]["createEnrollmentToken"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{created}"))
            .to_owned();
        let ca = std::fs::read(self.dir.path().join("mobius-data/device-ca.pem")).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .build()
            .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(vec!["ignored.example".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let body = json!({
            "token": token, "csr_pem": csr, "host_fingerprint": name,
            "facts": { "hostname": name, "os_name": "Debian", "os_version": "12", "kernel_version": "6.1",
                       "architecture": "x86_64", "cpu_model": "test", "cpu_cores": 2, "memory_bytes": 1024,
                       "uptime_secs": 1, "kvm_available": false, "agent_version": "test" }
        });
        client
            .post(format!(
                "https://{}/api/v1/mobius/device/enroll",
                self.server.device_addr
            ))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn owner_connection(&self) -> PgConnection {
        PgConnection::connect(&self.db.admin_url()).await.unwrap()
    }

    async fn count(&self, sql: &str) -> i64 {
        let mut conn = self.owner_connection().await;
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
}

/// `Stripe-Signature` as Stripe writes it: `t=<unix>,v1=<hex hmac>` with
/// one `v1` per active secret.
fn stripe_signature(payload: &[u8], secrets: &[&str], t: i64) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(payload);
        header.push_str(&format!(",v1={}", hex::encode(mac.finalize().into_bytes())));
    }
    header
}

/// An event envelope as Stripe documents it (`object: "event"`).
fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": kind
    })
}

fn checkout_completed(
    id: &str,
    created: i64,
    tenant: uuid::Uuid,
    customer: &str,
    sub: &str,
) -> Value {
    event(
        id,
        "checkout.session.completed",
        created,
        json!({
            "id": "cs_test_a1b2c3",
            "object": "checkout.session",
            "client_reference_id": tenant.to_string(),
            "customer": customer,
            "subscription": sub,
            "mode": "subscription",
            "payment_status": "paid",
            "status": "complete",
            "currency": "usd",
            "amount_total": 2000,
            "metadata": {}
        }),
    )
}

fn subscription(
    id: &str,
    kind: &str,
    created: i64,
    customer: &str,
    sub: &str,
    status: &str,
    price: &str,
    quantity: u64,
    period_end: i64,
) -> Value {
    event(
        id,
        kind,
        created,
        json!({
            "id": sub,
            "object": "subscription",
            "customer": customer,
            "status": status,
            "cancel_at_period_end": false,
            "created": created - 10,
            "current_period_start": period_end - 30 * 86400,
            "current_period_end": period_end,
            "items": {
                "object": "list",
                "data": [{
                    "id": "si_test_1",
                    "object": "subscription_item",
                    "quantity": quantity,
                    "current_period_end": period_end,
                    "price": {
                        "id": price,
                        "object": "price",
                        "active": true,
                        "currency": "usd",
                        "unit_amount": 1000,
                        "recurring": { "interval": "month", "interval_count": 1 },
                        "metadata": {}
                    }
                }]
            },
            "metadata": {}
        }),
    )
}

fn invoice(
    id: &str,
    kind: &str,
    created: i64,
    customer: &str,
    sub: &str,
    period_end: i64,
) -> Value {
    event(
        id,
        kind,
        created,
        json!({
            "id": "in_test_1",
            "object": "invoice",
            "customer": customer,
            "subscription": sub,
            "status": if kind == "invoice.paid" { "paid" } else { "open" },
            "attempt_count": 1,
            "lines": { "object": "list", "data": [{ "period": { "start": period_end - 30 * 86400, "end": period_end } }] }
        }),
    )
}

#[tokio::test]
async fn stripe_events_set_the_plan_and_the_device_limit_follows_at_once() {
    let cloud = Cloud::start(BILLING_TOML).await;
    let now = chrono::Utc::now().timestamp();
    let period_end = now + 30 * 86400;

    // No subscription: the free plan (1 device).
    let plan = cloud.plan().await;
    assert_eq!(plan["tier"], "free");
    assert_eq!(plan["deviceLimit"], 1);
    assert_eq!(plan["status"], "NONE");
    assert_eq!(cloud.enroll("free-1").await, 200);
    assert_eq!(
        cloud.enroll("free-2").await,
        402,
        "the free plan admits one device"
    );

    // Checkout links the customer to the tenant (client_reference_id).
    let (status, _) = cloud
        .deliver(&checkout_completed(
            "evt_checkout_1",
            now - 100,
            cloud.tenant_id,
            "cus_alpha",
            "sub_alpha",
        ))
        .await;
    assert_eq!(status, 200);

    // The subscription: team price, quantity 2 x 2 devices per unit.
    let (status, _) = cloud
        .deliver(&subscription(
            "evt_sub_created",
            "customer.subscription.created",
            now - 90,
            "cus_alpha",
            "sub_alpha",
            "active",
            "price_team_monthly",
            2,
            period_end,
        ))
        .await;
    assert_eq!(status, 200);
    let plan = cloud.plan().await;
    assert_eq!(plan["tier"], "team");
    assert_eq!(plan["deviceLimit"], 4);
    assert_eq!(plan["status"], "ACTIVE");
    assert_eq!(
        plan["currentPeriodEnd"]
            .as_str()
            .map(|s| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()),
        Some(period_end)
    );
    // The limit follows at once, no restart.
    assert_eq!(cloud.enroll("team-2").await, 200);

    // An update to the business price; then its redelivery changes nothing.
    let upgrade = subscription(
        "evt_sub_upgrade",
        "customer.subscription.updated",
        now - 50,
        "cus_alpha",
        "sub_alpha",
        "active",
        "price_business_monthly",
        1,
        period_end,
    );
    assert_eq!(cloud.deliver(&upgrade).await.0, 200);
    assert_eq!(cloud.plan().await["deviceLimit"], 50);
    let events_before = cloud
        .count("SELECT count(*) FROM billing_stripe_events")
        .await;
    let audits_before = cloud
        .count("SELECT count(*) FROM audit_events WHERE action = 'billing.plan_changed'")
        .await;
    assert_eq!(
        cloud.deliver(&upgrade).await.0,
        200,
        "a redelivery is answered 200"
    );
    assert_eq!(
        cloud
            .count("SELECT count(*) FROM billing_stripe_events")
            .await,
        events_before
    );
    assert_eq!(
        cloud
            .count("SELECT count(*) FROM audit_events WHERE action = 'billing.plan_changed'")
            .await,
        audits_before,
        "a redelivery changes nothing"
    );

    // Out of order: an older update arriving late does not move the plan back.
    let older = subscription(
        "evt_sub_older",
        "customer.subscription.updated",
        now - 70,
        "cus_alpha",
        "sub_alpha",
        "active",
        "price_team_monthly",
        1,
        period_end,
    );
    assert_eq!(cloud.deliver(&older).await.0, 200);
    let plan = cloud.plan().await;
    assert_eq!(plan["tier"], "business", "an older event never wins");
    assert_eq!(plan["deviceLimit"], 50);

    // A payment fails: past due, the plan holds during the grace period.
    let failed = invoice(
        "evt_inv_failed",
        "invoice.payment_failed",
        now - 40,
        "cus_alpha",
        "sub_alpha",
        period_end,
    );
    assert_eq!(cloud.deliver(&failed).await.0, 200);
    let plan = cloud.plan().await;
    assert_eq!(plan["status"], "PAST_DUE");
    assert_eq!(
        plan["deviceLimit"], 50,
        "within the grace period the plan holds"
    );
    assert_eq!(cloud.enroll("grace-3").await, 200);

    // Paid: active again.
    let paid = invoice(
        "evt_inv_paid",
        "invoice.paid",
        now - 30,
        "cus_alpha",
        "sub_alpha",
        period_end,
    );
    assert_eq!(cloud.deliver(&paid).await.0, 200);
    assert_eq!(cloud.plan().await["status"], "ACTIVE");

    // Unknown event types are answered 200 and ignored.
    let (status, _) = cloud
        .deliver(&event(
            "evt_unknown",
            "charge.dispute.funds_withdrawn",
            now - 20,
            json!({ "id": "dp_1" }),
        ))
        .await;
    assert_eq!(status, 200);
    let (status, _) = cloud
        .deliver(&event(
            "evt_unknown_2",
            "some.future.event",
            now - 20,
            json!({ "id": "x_1" }),
        ))
        .await;
    assert_eq!(status, 200);

    // Canceled: the free plan's limits, and nothing deleted.
    let devices_before = cloud.count("SELECT count(*) FROM devices").await;
    assert_eq!(devices_before, 3);
    let canceled = subscription(
        "evt_sub_deleted",
        "customer.subscription.deleted",
        now - 10,
        "cus_alpha",
        "sub_alpha",
        "canceled",
        "price_business_monthly",
        1,
        period_end,
    );
    assert_eq!(cloud.deliver(&canceled).await.0, 200);
    let plan = cloud.plan().await;
    assert_eq!(plan["status"], "CANCELED");
    assert_eq!(plan["tier"], "free");
    assert_eq!(plan["deviceLimit"], 1);
    assert_eq!(
        cloud.count("SELECT count(*) FROM devices").await,
        devices_before,
        "nothing is deleted"
    );
    assert_eq!(
        cloud.enroll("after-cancel").await,
        402,
        "over the free limit: no new device"
    );
    let devices = cloud.gql("{ devices { totalCount } }", json!({})).await;
    assert_eq!(devices["data"]["devices"]["totalCount"], 3);

    // customer.deleted: still free, the customer id is let go.
    let deleted = event(
        "evt_cus_deleted",
        "customer.deleted",
        now - 5,
        json!({ "id": "cus_alpha", "object": "customer" }),
    );
    assert_eq!(cloud.deliver(&deleted).await.0, 200);
    assert_eq!(
        cloud.count("SELECT count(*) FROM billing_plans WHERE stripe_customer_id IS NULL AND status = 'canceled'").await,
        1
    );

    // Each applied change wrote an audit event.
    assert!(
        cloud
            .count("SELECT count(*) FROM audit_events WHERE action = 'billing.plan_changed'")
            .await
            >= 6
    );
}

#[tokio::test]
async fn bad_signatures_are_400_and_change_nothing_and_both_rotated_secrets_work() {
    let cloud = Cloud::start(BILLING_TOML).await;
    let now = chrono::Utc::now().timestamp();
    let created = subscription(
        "evt_sig_1",
        "customer.subscription.created",
        now,
        "cus_sig",
        "sub_sig",
        "active",
        "price_business_monthly",
        1,
        now + 86400,
    );
    let mut with_tenant = created.clone();
    with_tenant["data"]["object"]["metadata"]["mobius_tenant_id"] =
        json!(cloud.tenant_id.to_string());
    let body = serde_json::to_vec(&with_tenant).unwrap();

    let refusals = [
        ("missing header", None),
        (
            "unknown secret",
            Some(stripe_signature(&body, &["whsec_not_ours"], now)),
        ),
        (
            "old timestamp",
            Some(stripe_signature(&body, &[NEW_SECRET], now - 301)),
        ),
        ("no v1", Some(format!("t={now},v0=abcdef"))),
        ("garbage", Some("nonsense".to_owned())),
    ];
    for (case, header) in refusals {
        let (status, answer) = cloud.post_webhook(body.clone(), header).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert_eq!(answer["error"]["code"], "BAD_USER_INPUT", "{case}");
    }
    // A tampered body under a valid signature of the original.
    let header = stripe_signature(&body, &[NEW_SECRET], now);
    let mut tampered = with_tenant.clone();
    tampered["data"]["object"]["items"]["data"][0]["quantity"] = json!(1000);
    let (status, _) = cloud
        .post_webhook(serde_json::to_vec(&tampered).unwrap(), Some(header))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        cloud
            .count("SELECT count(*) FROM billing_stripe_events")
            .await,
        0
    );
    assert_eq!(cloud.plan().await["tier"], "free", "nothing changed");

    // During a rotation Stripe signs with both secrets; either alone is
    // accepted too (the subscription's metadata names the tenant).
    let (status, _) = cloud.deliver_signed(&with_tenant, OLD_SECRET, None).await;
    assert_eq!(status, 200);
    assert_eq!(cloud.plan().await["tier"], "business");
    let mut next = with_tenant.clone();
    next["id"] = json!("evt_sig_2");
    next["created"] = json!(now + 1);
    let body = serde_json::to_vec(&next).unwrap();
    let (status, _) = cloud
        .post_webhook(
            body.clone(),
            Some(stripe_signature(
                &body,
                &["whsec_not_ours", NEW_SECRET],
                now,
            )),
        )
        .await;
    assert_eq!(status, 200, "any v1 under any secret");
}

#[tokio::test]
async fn events_for_unknown_customers_are_ignored_and_failures_after_verification_are_500() {
    let cloud = Cloud::start(BILLING_TOML).await;
    let now = chrono::Utc::now().timestamp();
    // A customer no tenant has (and no tenant in the metadata).
    let stranger = subscription(
        "evt_stranger",
        "customer.subscription.created",
        now,
        "cus_nobody",
        "sub_nobody",
        "active",
        "price_team_monthly",
        1,
        now + 86400,
    );
    assert_eq!(cloud.deliver(&stranger).await.0, 200);
    let failed = invoice(
        "evt_stranger_inv",
        "invoice.payment_failed",
        now,
        "cus_nobody",
        "sub_nobody",
        now,
    );
    assert_eq!(cloud.deliver(&failed).await.0, 200);
    assert_eq!(cloud.count("SELECT count(*) FROM billing_plans").await, 0);
    assert!(
        cloud.server.log_events().iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("customer no tenant has"))),
        "logged"
    );

    // A price the mapping does not know: 500 (Stripe retries), nothing
    // half-applied, not even the event id.
    assert_eq!(
        cloud
            .deliver(&checkout_completed(
                "evt_co",
                now - 5,
                cloud.tenant_id,
                "cus_known",
                "sub_known"
            ))
            .await
            .0,
        200
    );
    let unknown_price = subscription(
        "evt_unknown_price",
        "customer.subscription.created",
        now,
        "cus_known",
        "sub_known",
        "active",
        "price_not_configured",
        1,
        now + 86400,
    );
    let (status, answer) = cloud.deliver(&unknown_price).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["code"], "INTERNAL");
    assert!(
        !answer.to_string().contains("price_not_configured"),
        "no internal text: {answer}"
    );
    assert_eq!(
        cloud
            .count(
                "SELECT count(*) FROM billing_stripe_events WHERE event_id = 'evt_unknown_price'"
            )
            .await,
        0
    );
    assert_eq!(cloud.plan().await["tier"], "free");
}

#[tokio::test]
async fn a_payment_failure_past_its_grace_period_falls_back_to_the_free_limits() {
    let cloud = Cloud::start(BILLING_TOML).await;
    let now = chrono::Utc::now().timestamp();
    let day = 86400;
    assert_eq!(
        cloud
            .deliver(&checkout_completed(
                "evt_g0",
                now - 20 * day,
                cloud.tenant_id,
                "cus_g",
                "sub_g"
            ))
            .await
            .0,
        200
    );
    let created = subscription(
        "evt_g1",
        "customer.subscription.created",
        now - 20 * day,
        "cus_g",
        "sub_g",
        "active",
        "price_business_monthly",
        1,
        now + 10 * day,
    );
    assert_eq!(cloud.deliver(&created).await.0, 200);
    assert_eq!(cloud.plan().await["deviceLimit"], 50);
    // Failed 8 days ago, with a 7-day grace period: the grace is over.
    let failed = invoice(
        "evt_g2",
        "invoice.payment_failed",
        now - 8 * day,
        "cus_g",
        "sub_g",
        now + 10 * day,
    );
    assert_eq!(cloud.deliver(&failed).await.0, 200);
    let plan = cloud.plan().await;
    assert_eq!(plan["status"], "PAST_DUE");
    assert_eq!(plan["tier"], "business");
    assert_eq!(
        plan["deviceLimit"], 1,
        "past the grace period the free limits apply"
    );
    // Paid at last: back to the plan's limits at once.
    let paid = invoice(
        "evt_g3",
        "invoice.paid",
        now,
        "cus_g",
        "sub_g",
        now + 10 * day,
    );
    assert_eq!(cloud.deliver(&paid).await.0, 200);
    assert_eq!(cloud.plan().await["deviceLimit"], 50);
}

#[tokio::test]
async fn the_cloud_binary_refuses_an_invalid_price_mapping() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cloud.toml");
    std::fs::write(&config, BILLING_TOML.replace("\"saml\"]", "\"telepathy\"]")).unwrap();
    let output = Command::new(workspace_binary("mobius-server-cloud"))
        .current_dir(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--device-listen",
            "127.0.0.1:0",
        ])
        .args(["--database-url", db.owner_url().expose_secret()])
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown feature `telepathy`"), "{stderr}");
}
