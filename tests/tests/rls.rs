//! Row-level security, checked with raw SQL as the request-path role (not
//! through repositories, which filter by tenant anyway): what matters is
//! what the database refuses when a query forgets.

use std::sync::Arc;

use mobius_core::audit::Actor;
use mobius_core::authz::Role;
use mobius_core::crypto::sealing::LocalSealer;
use mobius_core::db::postgres_roles::verify_request_role;
use mobius_core::db::{SecretKind, SystemTask};
use mobius_core::enrollment::NewEnrollmentToken;
use mobius_core::identity::{NewApiToken, NewUser};
use mobius_core::pki::Pki;
use mobius_core::{Store, StoreError, Uuid};
use mobius_migrations::TENANT_TABLES;
use mobius_tests::{APP_ROLE, TestDatabase};
use sea_orm::sqlx::{self, Connection, PgConnection, Row};

/// Every table under tenant isolation: `tenants` (on `id`) and the rest
/// (on `tenant_id`).
fn isolated_tables() -> Vec<&'static str> {
    std::iter::once("tenants")
        .chain(TENANT_TABLES.iter().copied())
        .collect()
}

fn tenant_column(table: &str) -> &'static str {
    if table == "tenants" {
        "id"
    } else {
        "tenant_id"
    }
}

/// A row in each osquery table (and the option layers) of `tenant`.
async fn osquery_rows(store: &Store, tenant: Uuid, team: Uuid) {
    use mobius_core::osquery::{
        OsqueryEnrollRequest, enroll_host, parse_result_logs, parse_status_logs,
    };
    let actor = Actor::system();
    let scope = store.begin(&SystemTask::new("test", tenant)).await.unwrap();
    scope
        .agent_options()
        .set(&actor, None, serde_json::json!({"options": {"a": 1}}))
        .await
        .unwrap();
    scope
        .agent_options()
        .set(&actor, Some(team), serde_json::json!({"options": {"a": 2}}))
        .await
        .unwrap();
    let secret = scope
        .osquery()
        .create_enroll_secret(&actor, "s", None, None)
        .await
        .unwrap();
    scope.commit().await.unwrap();
    let enrolled = enroll_host(
        store,
        &mobius_core::authz::FixedDeviceLimit(None),
        OsqueryEnrollRequest {
            enroll_secret: &secret.secret,
            host_identifier: "osquery-host",
            host_details: &serde_json::json!({}),
            client_ip: None,
        },
    )
    .await
    .unwrap();
    let (scope, node, _) = mobius_core::osquery::open_node(store, &enrolled.node_key)
        .await
        .unwrap();
    let results = parse_result_logs(&serde_json::json!([
        {"name": "q", "unixTime": 1, "columns": {"c": "v"}, "action": "added"}
    ]))
    .unwrap();
    scope
        .osquery()
        .store_result_logs(node.device_id, results)
        .await
        .unwrap();
    let statuses =
        parse_status_logs(&serde_json::json!([{"severity": "0", "message": "m"}])).unwrap();
    scope
        .osquery()
        .store_status_logs(node.device_id, statuses)
        .await
        .unwrap();
    scope.commit().await.unwrap();
}

/// Two tenants with a row in every tenant table each.
async fn two_populated_tenants(store: &Store) -> (Uuid, Uuid) {
    let mut ids = Vec::new();
    for (i, slug) in ["alpha", "bravo"].into_iter().enumerate() {
        let actor = Actor::system();
        let tenant = store.create_tenant(&actor, slug, slug).await.unwrap();
        let scope = store
            .begin(&SystemTask::new("test", tenant.id))
            .await
            .unwrap();
        let site = scope.sites().list().await.unwrap().remove(0);
        let team = scope.teams().create(&actor, "team").await.unwrap();
        let user = scope
            .users()
            .create(
                &actor,
                NewUser {
                    email: "same@example.com",
                    display_name: "U",
                    role: mobius_core::authz::Role::Admin,
                    password_hash: None,
                },
            )
            .await
            .unwrap();
        scope
            .team_memberships()
            .add(
                &actor,
                team.id,
                user.id,
                mobius_core::authz::TeamRole::Observer,
            )
            .await
            .unwrap();
        let device = scope
            .devices()
            .register(&actor, site.id, "host", "fp")
            .await
            .unwrap();
        // A plan with an execution, a result and an output line.
        let signer = mobius_core::plans::PlanSigner::new(Arc::new(LocalSealer::new(&[3u8; 32])));
        let applied = scope
            .plans()
            .apply(
                &actor,
                &signer,
                mobius_core::plans::PlanSpec {
                    idempotency_key: "k".into(),
                    targets: mobius_core::plans::PlanTargets {
                        device_ids: vec![device.id],
                        ..Default::default()
                    },
                    operations: vec![mobius_core::plans::OperationSpec {
                        operation_id: Some("op".into()),
                        kind: "noop".into(),
                        params: serde_json::json!({}),
                    }],
                },
            )
            .await
            .unwrap();
        let report: mobius_api::plans::ExecutionReport =
            serde_json::from_value(serde_json::json!({
                "execution_id": applied.executions[0].id,
                "status": "SUCCEEDED",
                "operations": [{ "operation_id": "op", "status": "SUCCEEDED" }],
                "logs": [{ "stream": "stdout", "time": "2026-12-01T00:00:00Z", "line": "hi" }],
            }))
            .unwrap();
        scope
            .plans()
            .report(&actor, device.id, &report, 1 << 20)
            .await
            .unwrap();
        scope
            .software()
            .replace_inventory(
                &actor,
                device.id,
                &[mobius_api::software::InstalledPackage {
                    source: "deb".into(),
                    name: "tool".into(),
                    version: "1.0".into(),
                }],
            )
            .await
            .unwrap();
        // The software catalog: a title, a version and an install.
        let (_, version) = scope
            .software()
            .add_version(
                &actor,
                mobius_core::software::NewVersion {
                    name: "tool".into(),
                    version: "1.0".into(),
                    platform: "linux".into(),
                    installer_kind: "sh".into(),
                    file_name: "tool.sh".into(),
                    storage_key: format!("{}/tool", tenant.id.simple()),
                    size_bytes: 1,
                    sha256: "0".repeat(64),
                    install_script: Some("true".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        scope
            .software()
            .install(
                &actor,
                &signer,
                mobius_core::software::InstallSpec {
                    version_id: version.id,
                    targets: mobius_core::plans::PlanTargets {
                        device_ids: vec![device.id],
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        // A live query answered, and a failing policy result whose
        // transition queued a webhook delivery.
        let started = scope
            .queries()
            .start(
                &actor,
                mobius_core::queries::LiveQuerySpec {
                    sql: "SELECT 1".into(),
                    targets: mobius_core::plans::PlanTargets {
                        device_ids: vec![device.id],
                        ..Default::default()
                    },
                    timeout_ms: None,
                },
                |_| true,
            )
            .await
            .unwrap();
        let answer = |query_id, kind| mobius_api::queries::QueryResult {
            query_id,
            kind,
            outcome: mobius_api::queries::QueryOutcome::Ok,
            rows: Vec::new(),
            error: None,
            truncated: false,
            duration_ms: 1,
        };
        scope
            .queries()
            .record(
                device.id,
                &answer(started.campaign.id, mobius_api::queries::QueryKind::Live),
            )
            .await
            .unwrap();
        let policy = scope
            .policies()
            .create(
                &actor,
                mobius_core::policies::PolicySpec {
                    name: "p".into(),
                    sql: "SELECT 1".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        scope
            .webhooks()
            .set(
                &actor,
                &LocalSealer::new(&[3u8; 32]),
                &"https://hooks.example.com/mobius".parse().unwrap(),
            )
            .await
            .unwrap();
        let recorded = scope
            .policies()
            .record(
                &actor,
                device.id,
                &answer(policy.id, mobius_api::queries::QueryKind::Policy),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(recorded.delivery.is_some());
        // The portal: a link token for the device, and the branding.
        scope
            .portal()
            .issue_link(device.id, chrono::Duration::hours(1))
            .await
            .unwrap();
        scope
            .portal()
            .set_branding(
                &actor,
                mobius_core::portal::BrandingPatch {
                    display_name: Some(format!("{slug} IT")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        scope.devices().revoke(&actor, device.id).await.unwrap();
        let pki = Pki::new(
            Arc::new(LocalSealer::new(&[3u8; 32])),
            chrono::Duration::hours(24),
        );
        pki.current_ca(&scope, &actor).await.unwrap();
        scope
            .enrollment_tokens()
            .create(
                &actor,
                NewEnrollmentToken {
                    site_id: site.id,
                    name: "t",
                    token_hash: [i as u8; 32],
                    expires_at: chrono::Utc::now(),
                    max_uses: 1,
                    allowed_ips: Vec::new(),
                },
            )
            .await
            .unwrap();
        scope
            .refresh_tokens()
            .issue(user.id, Uuid::now_v7())
            .await
            .unwrap();
        scope
            .invitations()
            .create(&actor, "new@example.com", Role::Observer)
            .await
            .unwrap();
        scope
            .api_tokens()
            .create(
                &actor,
                NewApiToken {
                    user_id: user.id,
                    name: "ci",
                    role: Role::Observer,
                    team_id: None,
                    expires_in_days: None,
                },
            )
            .await
            .unwrap();
        let sealer = LocalSealer::new(&[3u8; 32]);
        scope
            .sso()
            .put_config(
                &actor,
                mobius_core::identity::sso::SsoConfigInput {
                    issuer_url: "https://idp.example.com".into(),
                    client_id: "mobius".into(),
                    client_secret: Some("secret".into()),
                    scopes: Vec::new(),
                    allowed_email_domains: Vec::new(),
                    groups_claim: None,
                    group_roles: Vec::new(),
                    jit_enabled: false,
                    default_role: Role::Observer,
                    sso_required: false,
                    break_glass_user_ids: Vec::new(),
                    allowed_redirect_origins: Vec::new(),
                    enabled: true,
                },
                &sealer,
            )
            .await
            .unwrap();
        scope.sso().start_login(&sealer, "/", None).await.unwrap();
        scope
            .sso()
            .link(user.id, "https://idp.example.com", "subject")
            .await
            .unwrap();
        scope
            .sso()
            .remember_once(
                [i as u8; 32],
                chrono::Utc::now() + chrono::Duration::hours(1),
            )
            .await
            .unwrap();
        // SAML: a configuration and an AuthnRequest in flight.
        scope
            .sso()
            .put_saml_config(
                &actor,
                mobius_core::identity::sso::saml::SamlConfigInput {
                    idp_metadata_xml: "<EntityDescriptor/>".into(),
                    idp_metadata_url: None,
                    email_attribute: None,
                    name_attribute: None,
                    groups_attribute: None,
                    group_roles: Vec::new(),
                    allowed_email_domains: Vec::new(),
                    jit_enabled: false,
                    default_role: Role::Observer,
                    allow_idp_initiated: false,
                    enabled: true,
                },
                &FixedIdpMetadata,
            )
            .await
            .unwrap();
        scope
            .sso()
            .record_saml_request(&format!("relay-{slug}"), "_request", "/")
            .await
            .unwrap();
        // The backbone: a service (with its token), a principal (which
        // creates the tenant's sealed master secret) and a grant.
        let sealer = LocalSealer::new(&[3u8; 32]);
        let service = format!("svc-{slug}");
        scope
            .backbone()
            .create_service_token(&actor, &service, None)
            .await
            .unwrap();
        let (_, principal) = scope
            .backbone()
            .create_principal(&actor, &sealer, "P", "p@example.com", None)
            .await
            .unwrap();
        scope
            .backbone()
            .grant(&actor, principal.principal_id, &service)
            .await
            .unwrap();
        scope.commit().await.unwrap();
        // osquery: both option layers, an enroll secret, a host enrolled
        // with it (its node key) and a result and a status log line.
        osquery_rows(store, tenant.id, team.id).await;
        // Billing: a plan and a processed Stripe event.
        let found = store
            .billing_tenant(None, Some(tenant.id))
            .await
            .unwrap()
            .unwrap();
        store
            .apply_billing_event(
                &found,
                &mobius_core::billing::BillingEvent {
                    id: format!("evt_{slug}"),
                    event_type: "checkout.session.completed".into(),
                    created: chrono::Utc::now(),
                    change: mobius_core::billing::BillingChange::CheckoutCompleted {
                        customer_id: Some(format!("cus_{slug}")),
                        subscription_id: None,
                    },
                },
                &mobius_core::billing::PlanCatalog::new(&Default::default()).unwrap(),
            )
            .await
            .unwrap();
        ids.push(tenant.id);
    }
    // Billing: a usage row per tenant.
    store
        .record_billing_usage(chrono::Utc::now())
        .await
        .unwrap();
    (ids[0], ids[1])
}

/// Stands in for the cloud edition's SAML engine (this crate does not
/// link samael): only so `put_saml_config` can write a row for the
/// isolation checks; SAML itself is tested in `sso.rs` with the real one.
struct FixedIdpMetadata;

impl mobius_core::identity::sso::saml::SamlProtocol for FixedIdpMetadata {
    fn describe(&self) -> String {
        "fixed IdP metadata (RLS fixture)".into()
    }

    fn parse_idp_metadata(
        &self,
        _: &str,
    ) -> Result<mobius_core::identity::sso::saml::IdpMetadata, String> {
        Ok(mobius_core::identity::sso::saml::IdpMetadata {
            entity_id: "https://idp.example.com".into(),
            sso_url: "https://idp.example.com/sso".into(),
            signing_certs_der: vec![vec![1, 2, 3]],
        })
    }

    fn sp_metadata(
        &self,
        _: &mobius_core::identity::sso::saml::ServiceProviderUrls,
    ) -> Result<String, String> {
        Err("not used by the RLS checks".into())
    }

    fn authn_request(
        &self,
        _: &mobius_core::identity::sso::saml::ServiceProviderUrls,
        _: &str,
        _: &str,
    ) -> Result<mobius_core::identity::sso::saml::AuthnRequest, String> {
        Err("not used by the RLS checks".into())
    }

    fn verify_response(
        &self,
        _: &mobius_core::identity::sso::saml::ServiceProviderUrls,
        _: &str,
        _: &str,
        _: mobius_core::identity::sso::saml::Expected<'_>,
    ) -> Result<
        mobius_core::identity::sso::saml::VerifiedAssertion,
        mobius_core::identity::sso::SsoError,
    > {
        Err(mobius_core::identity::sso::SsoError::InvalidAssertion(
            "not used by the RLS checks".into(),
        ))
    }
}

async fn count(conn: &mut PgConnection, sql: String) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn set_tenant(conn: &mut PgConnection, tenant: Uuid) {
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn no_tenant_set_means_zero_rows_in_every_table() {
    let db = TestDatabase::create().await;
    let store = db.app_store().await;
    two_populated_tenants(&store).await;

    let mut admin = PgConnection::connect(&db.admin_url()).await.unwrap();
    let mut app = db.app_connection().await;
    for table in isolated_tables() {
        let really = count(&mut admin, format!("SELECT count(*) FROM {table}")).await;
        assert!(
            really >= 2,
            "{table} should hold rows of both tenants, has {really}"
        );
        assert_eq!(
            count(&mut app, format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    // After a transaction that set a tenant ends, the setting reads as ''
    // (not NULL); the policies must still match nothing rather than fail.
    let mut tx = app.begin().await.unwrap();
    set_tenant(&mut tx, Uuid::now_v7()).await;
    tx.commit().await.unwrap();
    for table in isolated_tables() {
        assert_eq!(
            count(&mut app, format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
}

#[tokio::test]
async fn tenant_a_cannot_read_change_or_create_tenant_b_rows() {
    let db = TestDatabase::create().await;
    let store = db.app_store().await;
    let (a, b) = two_populated_tenants(&store).await;
    let mut app = db.app_connection().await;

    for table in isolated_tables() {
        let column = tenant_column(table);
        let mut tx = app.begin().await.unwrap();
        set_tenant(&mut tx, a).await;
        let visible = count(&mut tx, format!("SELECT count(*) FROM {table}")).await;
        let own = count(
            &mut tx,
            format!("SELECT count(*) FROM {table} WHERE {column} = '{a}'"),
        )
        .await;
        assert!(
            own >= 1 && visible == own,
            "{table}: sees {visible}, owns {own}"
        );
        assert_eq!(
            count(
                &mut tx,
                format!("SELECT count(*) FROM {table} WHERE {column} = '{b}'")
            )
            .await,
            0
        );

        if table == "audit_events" {
            // Append-only: no UPDATE or DELETE privilege at all.
            for sql in [
                format!("UPDATE {table} SET action = 'x' WHERE tenant_id = '{b}'"),
                format!("DELETE FROM {table} WHERE tenant_id = '{b}'"),
            ] {
                let mut sp = tx.begin().await.unwrap();
                let err = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *sp)
                    .await
                    .unwrap_err();
                assert!(
                    err.to_string().contains("permission denied"),
                    "{table}: {err}"
                );
                sp.rollback().await.unwrap();
            }
        } else {
            let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET updated_at = now() WHERE {column} = '{b}'"
            )))
            .execute(&mut *tx)
            .await
            .unwrap();
            assert_eq!(
                updated.rows_affected(),
                0,
                "{table}: update crossed tenants"
            );
            // Moving one's own row into tenant B is refused by WITH CHECK.
            let mut sp = tx.begin().await.unwrap();
            let moved = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET {column} = '{b}' WHERE {column} = '{a}'"
            )))
            .execute(&mut *sp)
            .await;
            assert!(moved.is_err(), "{table}: a row moved into tenant B");
            sp.rollback().await.unwrap();
            let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE {column} = '{b}'"
            )))
            .execute(&mut *tx)
            .await
            .unwrap();
            assert_eq!(
                deleted.rows_affected(),
                0,
                "{table}: delete crossed tenants"
            );
        }
        tx.rollback().await.unwrap();
    }

    // Inserting a row for tenant B while scoped to A is refused.
    let mut tx = app.begin().await.unwrap();
    set_tenant(&mut tx, a).await;
    for sql in [
        format!(
            "INSERT INTO tenants (id, name, slug, created_at, updated_at) VALUES ('{}', 'x', 'x', now(), now())",
            Uuid::now_v7()
        ),
        format!(
            "INSERT INTO teams (id, tenant_id, name, created_at, updated_at) VALUES ('{}', '{b}', 'x', now(), now())",
            Uuid::now_v7()
        ),
        format!(
            "INSERT INTO audit_events (id, tenant_id, actor_kind, action, target_kind, details, created_at, updated_at) \
             VALUES ('{}', '{b}', 'system', 'forged', 'tenant', '{{}}', now(), now())",
            Uuid::now_v7()
        ),
    ] {
        let mut sp = tx.begin().await.unwrap();
        let err = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut *sp)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("row-level security"),
            "{sql}: {err}"
        );
        sp.rollback().await.unwrap();
    }
    // An audit event cannot claim a place in the hash chain when it is
    // written: only the chainer fills seq and the hashes, after commit.
    let mut sp = tx.begin().await.unwrap();
    let err = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO audit_events (id, tenant_id, actor_kind, action, target_kind, details, seq, created_at, updated_at) \
         VALUES ('{}', '{a}', 'system', 'forged', 'tenant', '{{}}', 1, now(), now())",
        Uuid::now_v7()
    )))
    .execute(&mut *sp)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    sp.rollback().await.unwrap();
    // ...while the same insert for A itself is accepted.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO teams (id, tenant_id, name, created_at, updated_at) VALUES ('{}', '{a}', 'new', now(), now())",
        Uuid::now_v7()
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn reset_role_cannot_escape_because_the_app_role_logs_in_directly() {
    let db = TestDatabase::create().await;
    let mut app = db.app_connection().await;
    sqlx::query("RESET ROLE").execute(&mut app).await.unwrap();
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(who, APP_ROLE);
    let err = sqlx::query("SET ROLE mobius_test_owner")
        .execute(&mut app)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn app_role_is_not_superuser_cannot_bypass_rls_and_owns_nothing() {
    let db = TestDatabase::create().await;
    let mut admin = PgConnection::connect(&db.admin_url()).await.unwrap();
    let row = sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
        .bind(APP_ROLE)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(!row.get::<bool, _>("rolsuper"));
    assert!(!row.get::<bool, _>("rolbypassrls"));
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner \
         WHERE r.rolname = $1 AND c.relnamespace = 'public'::regnamespace",
    )
    .bind(APP_ROLE)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(owned, 0);

    // The start-up check accepts the app role and refuses the owner.
    verify_request_role(&db.app_store().await).await.unwrap();
    let owner = Store::open_postgres(&db.owner_url(), 1).await.unwrap();
    match verify_request_role(&owner).await {
        Err(StoreError::UnsafeRequestRole { problem, .. }) => {
            assert!(problem.contains("owns"), "{problem}")
        }
        other => panic!("owner accepted as request role: {other:?}"),
    }
    let superuser = Store::open_postgres(&db.admin_url().into(), 1)
        .await
        .unwrap();
    match verify_request_role(&superuser).await {
        Err(StoreError::UnsafeRequestRole { problem, .. }) => {
            assert!(problem.contains("superuser"), "{problem}")
        }
        other => panic!("superuser accepted as request role: {other:?}"),
    }
}

/// Guards the future: a new table with `tenant_id` must be listed in
/// TENANT_TABLES and carry enabled, forced RLS with a policy.
#[tokio::test]
async fn every_table_with_tenant_id_has_forced_rls_and_a_policy() {
    let db = TestDatabase::create().await;
    let mut admin = PgConnection::connect(&db.admin_url()).await.unwrap();
    let rows = sqlx::query(
        "SELECT c.relname::text AS name, c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced, \
                (SELECT count(*) FROM pg_policies p WHERE p.schemaname = 'public' AND p.tablename = c.relname \
                   AND p.policyname = 'tenant_isolation') AS policies \
         FROM pg_class c \
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') \
           AND (EXISTS (SELECT 1 FROM information_schema.columns k \
                        WHERE k.table_schema = 'public' AND k.table_name = c.relname AND k.column_name = 'tenant_id') \
                OR c.relname = 'tenants') \
         ORDER BY 1",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let mut found: Vec<String> = Vec::new();
    for row in &rows {
        let name: String = row.get("name");
        assert!(row.get::<bool, _>("enabled"), "{name}: RLS not enabled");
        assert!(row.get::<bool, _>("forced"), "{name}: RLS not forced");
        assert_eq!(
            row.get::<i64, _>("policies"),
            1,
            "{name}: no tenant_isolation policy"
        );
        found.push(name);
    }
    let mut expected: Vec<String> = isolated_tables().into_iter().map(String::from).collect();
    expected.sort();
    assert_eq!(found, expected, "TENANT_TABLES and the database disagree");
}

#[tokio::test]
async fn cross_tenant_lookups_return_only_ids() {
    let db = TestDatabase::create().await;
    let store = db.app_store().await;
    let (a, b) = two_populated_tenants(&store).await;
    assert_eq!(
        store
            .tenant_by_secret_hash(SecretKind::EnrollmentToken, &[0u8; 32])
            .await
            .unwrap()
            .map(|t| t.id()),
        Some(a)
    );
    assert_eq!(
        store
            .tenant_by_secret_hash(SecretKind::EnrollmentToken, &[1u8; 32])
            .await
            .unwrap()
            .map(|t| t.id()),
        Some(b)
    );
    let mut candidates: Vec<Uuid> = store
        .find_login_candidates("SAME@example.com")
        .await
        .unwrap()
        .into_iter()
        .map(|candidate| candidate.tenant.id())
        .collect();
    candidates.sort();
    assert_eq!(candidates, vec![a, b]);
    assert_eq!(
        store.default_tenant().await.unwrap().map(|t| t.id()),
        Some(a)
    );
    // Billing: the tenant of a Stripe customer id, an existing tenant id,
    // every tenant's id, changed plans, usage rows.
    let found = |t: Option<mobius_core::db::FoundTenant>| t.map(|t| t.id());
    assert_eq!(
        found(store.billing_tenant(Some("cus_bravo"), None).await.unwrap()),
        Some(b)
    );
    assert_eq!(
        found(
            store
                .billing_tenant(Some("cus_nobody"), None)
                .await
                .unwrap()
        ),
        None
    );
    assert_eq!(
        found(
            store
                .billing_tenant(Some("cus_alpha"), Some(b))
                .await
                .unwrap()
        ),
        Some(a)
    );
    assert_eq!(
        found(
            store
                .billing_tenant(None, Some(Uuid::now_v7()))
                .await
                .unwrap()
        ),
        None
    );
    let mut all = store.billing_tenant_ids().await.unwrap();
    all.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(all, expected);
    assert_eq!(
        store
            .billing_plans_since(chrono::DateTime::UNIX_EPOCH)
            .await
            .unwrap()
            .len(),
        2
    );
    // osquery: the tenants with logs to expire; unknown key hashes find
    // nobody (the e2e tests find the owners of real ones).
    let mut log_tenants: Vec<Uuid> = store
        .osquery_log_tenants(chrono::Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id())
        .collect();
    log_tenants.sort();
    assert_eq!(log_tenants, expected);
    for kind in [SecretKind::OsqueryEnrollSecret, SecretKind::OsqueryNodeKey] {
        assert_eq!(
            store.tenant_by_secret_hash(kind, &[9u8; 32]).await.unwrap(),
            None
        );
    }
    let today = chrono::Utc::now().date_naive();
    assert_eq!(store.billing_usage(today, today).await.unwrap().len(), 2);

    // The functions are the only way across: the app role cannot call
    // anything that returns rows, and PUBLIC has no EXECUTE on them.
    let mut admin = PgConnection::connect(&db.admin_url()).await.unwrap();
    let public_exec: bool = sqlx::query_scalar(
        "SELECT bool_or(has_function_privilege('public', p.oid, 'EXECUTE')) FROM pg_proc p \
         WHERE p.proname LIKE 'mobius\\_%' AND p.pronamespace = 'public'::regnamespace",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(!public_exec, "PUBLIC may execute a cross-tenant lookup");
}

/// Servers starting together race to create the request role; the loser
/// sees a unique violation on `pg_authid_rolname_index` (or
/// `duplicate_object`) and must treat it as "already exists", not fail.
#[tokio::test]
async fn servers_starting_together_all_ensure_the_request_role() {
    use mobius_core::db::postgres_roles::ensure_app_role;
    use secrecy::SecretString;

    let db = TestDatabase::create().await;
    let owner = Store::open_postgres(&db.owner_url(), 16).await.unwrap();
    let role = format!("mobius_race_{}", Uuid::new_v4().simple());
    let password = SecretString::from("race password");
    let results = futures_util::future::join_all((0..12).map(|_| {
        let (owner, role, password) = (owner.clone(), role.clone(), password.clone());
        tokio::spawn(async move { ensure_app_role(&owner, &role, Some(&password)).await })
    }))
    .await;
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.unwrap().err().map(|e| e.to_string()))
        .collect();

    let mut admin = PgConnection::connect(&db.admin_url()).await.unwrap();
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"
    )))
    .execute(&mut admin)
    .await;
    assert!(failures.is_empty(), "{failures:?}");
}
