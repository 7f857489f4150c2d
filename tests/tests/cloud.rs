//! The cloud edition end to end, with the real `mobius-server-cloud`
//! binary (built with its default features `billing`, `kms` and `saml`) on
//! Postgres:
//!
//! - Stripe webhooks, signed exactly as Stripe signs them (HMAC-SHA256 of
//!   `<t>.<body>` with the endpoint secret, `Stripe-Signature: t=..,v1=..`)
//!   over event fixtures shaped like Stripe's documented events, change the
//!   tenant's plan; the device limit and `tenant { plan }` follow at once.
//! - AWS KMS envelope sealing against a real KMS emulator (`moto_server`,
//!   installed by .ci/run into /var/cache/mobius/peers-venv) started here.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
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

    /// Starts a new server process on the same database and data
    /// directory with `config`, then stops the old one.
    fn restart(&mut self, config: &str) {
        let config_path = self.dir.path().join("cloud.toml");
        std::fs::write(&config_path, config).unwrap();
        let new = ServerProcess::start_binary(
            "mobius-server-cloud",
            self.dir.path(),
            &[
                "--database-url",
                self.db.owner_url().expose_secret(),
                "--config",
                config_path.to_str().unwrap(),
            ],
            &[],
        );
        drop(std::mem::replace(&mut self.server, new));
    }

    /// Runs `mobius-server-cloud <args>` on the same database and data
    /// directory (beside the running server); its exit status and output.
    fn command(&self, config: &str, args: &[&str]) -> (bool, String) {
        let config_path = self.dir.path().join("cloud-command.toml");
        std::fs::write(&config_path, config).unwrap();
        let output = Command::new(workspace_binary("mobius-server-cloud"))
            .current_dir(self.dir.path())
            .args(args)
            .args(["--database-url", self.db.owner_url().expose_secret()])
            .args(["--config", config_path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
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

// One argument per fixture field a test varies; a builder would hide which.
#[allow(clippy::too_many_arguments)]
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

// ---------------------------------------------------------------------
// KMS envelope sealing against moto_server.
// ---------------------------------------------------------------------

const PEERS_VENV: &str = "/var/cache/mobius/peers-venv";

/// A moto_server (AWS emulator) on a free port, killed on drop.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Moto {
    async fn start() -> Moto {
        let program = Path::new(PEERS_VENV).join("bin/moto_server");
        assert!(
            program.is_file(),
            "{} is missing: run .ci/run (it installs tests/peers/requirements.txt into {PEERS_VENV})",
            program.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let moto = Moto {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let up = eventually(Duration::from_secs(20), async || {
            tokio::net::TcpStream::connect(moto.addr).await.is_ok()
        })
        .await;
        assert!(
            up,
            "moto_server did not listen on {} within 20 s",
            moto.addr
        );
        moto
    }

    /// One KMS API call (moto does not check signatures).
    async fn kms(&self, target: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("http://{}/", self.addr))
            .header("X-Amz-Target", format!("TrentService.{target}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0",
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create_key(&self) -> String {
        let (status, key) = self.kms("CreateKey", json!({})).await;
        assert_eq!(status, 200, "{key}");
        key["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of KMS that a test can cut off (dropping every
/// open connection) and restore.
struct Switch {
    addr: SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl Switch {
    async fn start(target: SocketAddr) -> Switch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, watch) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    if !*watch.borrow() {
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Switch { addr, up }
    }

    fn set(&self, up: bool) {
        let _ = self.up.send(up);
    }
}

fn kms_toml(endpoint: SocketAddr, key_id: &str) -> String {
    format!(
        r#"
[kms]
key_id = "{key_id}"
region = "us-east-1"
endpoint_url = "http://{endpoint}"
access_key_id = "testing"
secret_access_key = "testing"
data_key_max_uses = 1
call_timeout_secs = 2
"#
    )
}

/// First bytes of every sealed secret (JWT signing keys, then CA keys).
async fn sealed_formats(cloud: &Cloud) -> Vec<u8> {
    let mut conn = cloud.owner_connection().await;
    let mut formats: Vec<u8> = Vec::new();
    for sql in [
        "SELECT sealed_private_key FROM signing_keys ORDER BY id",
        "SELECT sealed_key FROM certificate_authorities ORDER BY id",
    ] {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap();
        formats.extend(rows.iter().map(|r| r[0]));
    }
    formats
}

/// The key id and wrapped data key inside a KMS-sealed value.
fn kms_parts(sealed: &[u8]) -> (String, Vec<u8>) {
    assert_eq!(sealed[0], 2, "a KMS-sealed value");
    let key_len = u16::from_be_bytes([sealed[1], sealed[2]]) as usize;
    let key_id = String::from_utf8(sealed[3..3 + key_len].to_vec()).unwrap();
    let at = 3 + key_len;
    let wrapped_len = u16::from_be_bytes([sealed[at], sealed[at + 1]]) as usize;
    (key_id, sealed[at + 2..at + 2 + wrapped_len].to_vec())
}

#[tokio::test]
async fn kms_seals_every_secret_and_a_blob_opens_only_in_its_own_context() {
    use base64::Engine;
    let moto = Moto::start().await;
    let key = moto.create_key().await;
    let mut cloud = Cloud::start(&kms_toml(moto.addr, &key)).await;
    assert!(
        sealed_formats(&cloud).await.iter().all(|f| *f == 2),
        "every secret sealed through KMS"
    );
    // Round trip: a CA rotation seals, an enrollment opens, a restart
    // opens the signing key.
    let rotated = cloud
        .gql("mutation { rotateTenantCa { id } }", json!({}))
        .await;
    assert!(rotated["errors"].is_null(), "{rotated}");
    assert_eq!(cloud.enroll("kms-1").await, 200);
    cloud.restart(&kms_toml(moto.addr, &key));
    assert_eq!(cloud.enroll("kms-2").await, 200);

    // KMS itself refuses the data key under another context.
    let mut conn = cloud.owner_connection().await;
    let (ca_id, ca_blob): (uuid::Uuid, Vec<u8>) = sqlx::query_as(
        "SELECT id, sealed_key FROM certificate_authorities WHERE retire_after IS NULL",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let (_, wrapped) = kms_parts(&ca_blob);
    let blob = base64::engine::general_purpose::STANDARD.encode(&wrapped);
    let tenant = cloud.tenant_id.to_string();
    let (status, _) = moto
        .kms(
            "Decrypt",
            json!({ "CiphertextBlob": blob, "EncryptionContext": { "tenant_id": tenant, "purpose": "tenant-ca" } }),
        )
        .await;
    assert_eq!(status, 200, "the right context opens");
    for wrong in [
        json!({ "tenant_id": uuid::Uuid::now_v7().to_string(), "purpose": "tenant-ca" }),
        json!({ "tenant_id": tenant, "purpose": "jwt-signing-key" }),
        json!({}),
    ] {
        let (status, answer) = moto
            .kms(
                "Decrypt",
                json!({ "CiphertextBlob": blob, "EncryptionContext": wrong }),
            )
            .await;
        assert_eq!(status, 400, "{wrong} must not open: {answer}");
    }

    // The server refuses a blob sealed for another purpose: the JWT
    // signing key's value put in place of the CA key does not open.
    let jwt_blob: Vec<u8> =
        sqlx::query_scalar("SELECT sealed_private_key FROM signing_keys LIMIT 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    sqlx::query("UPDATE certificate_authorities SET sealed_key = $1 WHERE id = $2")
        .bind(&jwt_blob)
        .bind(ca_id)
        .execute(&mut conn)
        .await
        .unwrap();
    cloud.restart(&kms_toml(moto.addr, &key));
    assert_eq!(
        cloud.enroll("kms-3").await,
        500,
        "refused, as an internal error"
    );
    let logged = eventually(Duration::from_secs(5), async || {
        cloud.server.log_events().iter().any(|e| {
            e.to_string()
                .contains("sealed secret is corrupt, or was sealed under another key or context")
        })
    })
    .await;
    assert!(logged, "the cause is logged");
}

#[tokio::test]
async fn kms_unavailable_at_start_stops_the_server_with_a_clear_message() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cloud.toml");
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(&config, kms_toml(closed, "alias/mobius")).unwrap();
    let started = std::time::Instant::now();
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
    assert!(
        stderr.contains("the key service is not usable, so the server will not start"),
        "{stderr}"
    );
    assert!(stderr.contains("KMS GenerateDataKey failed"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

// Multi-threaded: the proxy must keep serving while the test blocks on
// the server's start-up output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_outage_later_is_internal_the_server_stays_up_and_recovers() {
    let moto = Moto::start().await;
    let key = moto.create_key().await;
    let switch = Switch::start(moto.addr).await;
    let cloud = Cloud::start(&kms_toml(switch.addr, &key)).await;
    let rotated = cloud
        .gql("mutation { rotateTenantCa { id } }", json!({}))
        .await;
    assert!(rotated["errors"].is_null(), "{rotated}");

    switch.set(false);
    let failed = cloud
        .gql("mutation { rotateTenantCa { id } }", json!({}))
        .await;
    assert_eq!(
        failed["errors"][0]["extensions"]["code"], "INTERNAL",
        "{failed}"
    );
    assert!(
        !failed.to_string().contains("KMS"),
        "no internal text: {failed}"
    );
    let logged = eventually(Duration::from_secs(5), async || {
        cloud
            .server
            .log_events()
            .iter()
            .any(|e| e.to_string().contains("KMS GenerateDataKey failed"))
    })
    .await;
    assert!(logged, "the cause is logged");
    let health = cloud
        .http
        .get(cloud.server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "the server stays up");

    switch.set(true);
    let recovered = eventually(Duration::from_secs(15), async || {
        cloud
            .gql("mutation { rotateTenantCa { id } }", json!({}))
            .await["errors"]
            .is_null()
    })
    .await;
    assert!(recovered, "sealing works again once KMS is back");
}

#[tokio::test]
async fn reseal_moves_every_secret_to_kms_and_back_resumably_and_follows_a_key_rotation() {
    let moto = Moto::start().await;
    let first = moto.create_key().await;
    // A local-key server first: two secrets (signing key, CA key) sealed locally.
    let mut cloud = Cloud::start("").await;
    assert_eq!(sealed_formats(&cloud).await, vec![1, 1]);
    let kms = kms_toml(moto.addr, &first);

    let (ok, out) = cloud.command(&kms, &["reseal", "--to", "kms", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains("would reseal 2 of 2"), "{out}");
    assert_eq!(
        sealed_formats(&cloud).await,
        vec![1, 1],
        "a dry run changes nothing"
    );

    let (ok, out) = cloud.command(&kms, &["reseal", "--to", "kms"]);
    assert!(ok, "{out}");
    assert!(out.contains("resealed 2 of 2"), "{out}");
    assert_eq!(sealed_formats(&cloud).await, vec![2, 2]);
    let (ok, out) = cloud.command(&kms, &["reseal", "--to", "kms"]);
    assert!(
        ok && out.contains("resealed 0 of 2") && out.contains("2 already there"),
        "idempotent: {out}"
    );

    // The server runs on the resealed secrets.
    cloud.restart(&kms);
    assert_eq!(cloud.enroll("resealed-1").await, 200);

    // Key rotation: a new key; old values still open, reseal moves them.
    let second = moto.create_key().await;
    let rotated = kms_toml(moto.addr, &second);
    cloud.restart(&rotated);
    assert_eq!(
        cloud.enroll("rotated-1").await,
        200,
        "values under the old key still open"
    );
    let (ok, out) = cloud.command(&rotated, &["reseal", "--to", "kms"]);
    assert!(ok, "{out}");
    let mut conn = cloud.owner_connection().await;
    let blobs: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT sealed_key FROM certificate_authorities UNION ALL SELECT sealed_private_key FROM signing_keys \
         UNION ALL SELECT sealed_key FROM plan_signing_keys",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    // The CA key, the JWT key and the plan-signing key made at the first
    // enrollment (reseal visits every area's sealed secrets).
    assert_eq!(blobs.len(), 3, "{out}");
    for blob in &blobs {
        assert!(
            kms_parts(blob).0.ends_with(&second),
            "re-wrapped under the new key"
        );
    }

    // And back to the local master key.
    let (ok, out) = cloud.command(&rotated, &["reseal", "--to", "local"]);
    assert!(ok, "{out}");
    assert!(
        sealed_formats(&cloud).await.iter().all(|f| *f == 1),
        "{out}"
    );
    cloud.restart("");
    assert_eq!(cloud.enroll("local-again").await, 200);
}
