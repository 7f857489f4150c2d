//! Repository behaviour, one body per test run against Postgres (as the
//! request-path role, under RLS) and against the embedded SQLite store.

use mobius_core::StoreError;
use mobius_core::audit::Actor;
use mobius_core::db::{SecretKind, SystemTask};
use mobius_core::enrollment::NewEnrollmentToken;
use mobius_core::identity::NewUser;
use mobius_core::tenancy::{DEFAULT_SITE, DEFAULT_TENANT_SLUG};
use mobius_tests::{Backend, TestStore, on_both_backends};

on_both_backends!(
    default_tenant_is_created_once_with_its_site,
    sites_crud_with_audit,
    duplicate_and_invalid_names_are_refused,
    uncommitted_scope_leaves_nothing_behind,
    devices_memberships_and_users,
    enrollment_token_lookup_by_hash,
    login_lookup_by_email,
    second_tenant_needs_postgres,
);

async fn default_tenant_is_created_once_with_its_site(t: TestStore) {
    assert_eq!(
        t.store.default_tenant().await.unwrap().map(|t| t.id()),
        None
    );
    let (id, created) = t.store.ensure_default_tenant().await.unwrap();
    let id = id.id();
    assert!(created);
    let (again, created_again) = t.store.ensure_default_tenant().await.unwrap();
    let again = again.id();
    assert_eq!((again, created_again), (id, false));

    let scope = t.store.begin(&SystemTask::new("test", id)).await.unwrap();
    let sites = scope.sites().list().await.unwrap();
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].name, DEFAULT_SITE);
    let actions: Vec<_> = scope
        .audit()
        .recent(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["site.created", "tenant.created"]);
}

async fn sites_crud_with_audit(t: TestStore) {
    let (tenant, _) = t.store.ensure_default_tenant().await.unwrap();
    let tenant = tenant.id();
    let actor = Actor::system();
    let scope = t
        .store
        .begin(&SystemTask::new("test", tenant))
        .await
        .unwrap();
    let site = scope
        .sites()
        .create(&actor, "  Berlin office ")
        .await
        .unwrap();
    assert_eq!(site.name, "Berlin office", "names are trimmed");
    assert_eq!(site.tenant_id, tenant);
    let renamed = scope
        .sites()
        .rename(&actor, site.id, "Berlin HQ")
        .await
        .unwrap();
    assert_eq!(renamed.name, "Berlin HQ");
    assert_eq!(scope.sites().get(site.id).await.unwrap().name, "Berlin HQ");
    let names: Vec<_> = scope
        .sites()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["Berlin HQ", DEFAULT_SITE]);
    scope.sites().delete(&actor, site.id).await.unwrap();
    assert!(matches!(
        scope.sites().get(site.id).await,
        Err(StoreError::NotFound { entity: "site" })
    ));
    scope.commit().await.unwrap();

    let scope = t
        .store
        .begin(&SystemTask::new("test", tenant))
        .await
        .unwrap();
    let events = scope.audit().recent(3).await.unwrap();
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["site.deleted", "site.renamed", "site.created"]);
    assert!(
        events
            .iter()
            .all(|e| e.target_id == Some(site.id) && e.actor_kind == "system")
    );
    assert_eq!(events[1].details["from"], "Berlin office");
}

async fn duplicate_and_invalid_names_are_refused(t: TestStore) {
    let (tenant, _) = t.store.ensure_default_tenant().await.unwrap();
    let tenant = tenant.id();
    let actor = Actor::system();
    let scope = t
        .store
        .begin(&SystemTask::new("test", tenant))
        .await
        .unwrap();
    scope.teams().create(&actor, "Ops").await.unwrap();
    scope.commit().await.unwrap();

    let scope = t
        .store
        .begin(&SystemTask::new("test", tenant))
        .await
        .unwrap();
    assert!(matches!(
        scope.teams().create(&actor, "Ops").await,
        Err(StoreError::Conflict {
            entity: "team",
            field: "name"
        })
    ));
    drop(scope);
    let scope = t
        .store
        .begin(&SystemTask::new("test", tenant))
        .await
        .unwrap();
    assert!(matches!(
        scope.teams().create(&actor, "   ").await,
        Err(StoreError::Invalid { field: "name", .. })
    ));
    assert!(matches!(
        scope.teams().create(&actor, &"x".repeat(201)).await,
        Err(StoreError::Invalid { field: "name", .. })
    ));
    assert_eq!(scope.teams().list().await.unwrap().len(), 1);
}

async fn uncommitted_scope_leaves_nothing_behind(t: TestStore) {
    let (tenant, _) = t.store.ensure_default_tenant().await.unwrap();
    let tenant = tenant.id();
    let before = {
        let scope = t
            .store
            .begin(&SystemTask::new("test", tenant))
            .await
            .unwrap();
        scope.audit().recent(100).await.unwrap().len()
    };
    {
        let scope = t
            .store
            .begin(&SystemTask::new("test", tenant))
            .await
            .unwrap();
        scope
            .teams()
            .create(&Actor::system(), "Rolled back")
            .await
            .unwrap();
        // Dropped without commit, as when a later step fails.
    }
    let scope = t
        .store
        .begin(&SystemTask::new("test", tenant))
        .await
        .unwrap();
    assert!(scope.teams().list().await.unwrap().is_empty());
    assert_eq!(scope.audit().recent(100).await.unwrap().len(), before);
}

async fn devices_memberships_and_users(t: TestStore) {
    let (tenant, _) = t.store.ensure_default_tenant().await.unwrap();
    let tenant = tenant.id();
    let actor = Actor::system();
    let scope = t
        .store
        .begin(&SystemTask::new("test", tenant))
        .await
        .unwrap();
    let site = scope.sites().list().await.unwrap().remove(0);
    let device = scope
        .devices()
        .register(&actor, site.id, "web-1", "fp-web-1")
        .await
        .unwrap();
    assert_eq!(
        scope.devices().get(device.id).await.unwrap().hostname,
        "web-1"
    );
    assert!(matches!(
        scope
            .devices()
            .register(&actor, site.id, "web-1b", "fp-web-1")
            .await,
        Err(StoreError::Conflict {
            field: "host_fingerprint",
            ..
        })
    ));
    drop(scope);

    let scope = t
        .store
        .begin(&SystemTask::new("test", tenant))
        .await
        .unwrap();
    assert!(matches!(
        scope
            .devices()
            .register(&actor, uuid::Uuid::now_v7(), "x", "fp-x")
            .await,
        Err(StoreError::NotFound { entity: "site" })
    ));
    let user = scope
        .users()
        .create(
            &actor,
            NewUser {
                email: "Ada@Example.com",
                display_name: "Ada",
                role: mobius_core::authz::Role::Admin,
                password_hash: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        user.email, "ada@example.com",
        "emails are stored lower-cased"
    );
    assert!(matches!(
        scope
            .users()
            .create(
                &actor,
                NewUser {
                    email: "not-an-email",
                    display_name: "X",
                    role: mobius_core::authz::Role::Admin,
                    password_hash: None
                }
            )
            .await,
        Err(StoreError::Invalid { field: "email", .. })
    ));
    // Roles are enums end to end: an unknown one cannot be stored, and
    // text from outside is parsed in one place.
    assert!("root".parse::<mobius_core::authz::Role>().is_err());
    let team = scope.teams().create(&actor, "Platform").await.unwrap();
    scope
        .team_memberships()
        .add(
            &actor,
            team.id,
            user.id,
            mobius_core::authz::TeamRole::Maintainer,
        )
        .await
        .unwrap();
    let members = scope.team_memberships().list(team.id).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0].user_id, members[0].role.as_str()),
        (user.id, "maintainer")
    );
    scope.commit().await.unwrap();
}

async fn enrollment_token_lookup_by_hash(t: TestStore) {
    let (tenant, _) = t.store.ensure_default_tenant().await.unwrap();
    let tenant = tenant.id();
    let scope = t
        .store
        .begin(&SystemTask::new("test", tenant))
        .await
        .unwrap();
    let site = scope.sites().list().await.unwrap().remove(0);
    let hash = [7u8; 32];
    scope
        .enrollment_tokens()
        .create(
            &Actor::system(),
            NewEnrollmentToken {
                site_id: site.id,
                name: "rack 4",
                token_hash: hash,
                expires_at: chrono_now_plus_minutes(15),
                max_uses: 1,
                allowed_ips: Vec::new(),
            },
        )
        .await
        .unwrap();
    scope.commit().await.unwrap();

    assert_eq!(
        t.store
            .tenant_by_secret_hash(SecretKind::EnrollmentToken, &hash)
            .await
            .unwrap()
            .map(|t| t.id()),
        Some(tenant)
    );
    assert_eq!(
        t.store
            .tenant_by_secret_hash(SecretKind::EnrollmentToken, &[8u8; 32])
            .await
            .unwrap()
            .map(|t| t.id()),
        None
    );
}

async fn login_lookup_by_email(t: TestStore) {
    let (tenant, _) = t.store.ensure_default_tenant().await.unwrap();
    let tenant = tenant.id();
    let scope = t
        .store
        .begin(&SystemTask::new("test", tenant))
        .await
        .unwrap();
    let user = scope
        .users()
        .create(
            &Actor::system(),
            NewUser {
                email: "grace@example.com",
                display_name: "Grace",
                role: mobius_core::authz::Role::Owner,
                password_hash: Some("$argon2id$placeholder".into()),
            },
        )
        .await
        .unwrap();
    scope.commit().await.unwrap();
    let candidates = t
        .store
        .find_login_candidates("GRACE@example.com")
        .await
        .unwrap();
    assert_eq!(candidates.len(), 1);
    assert_eq!(
        (candidates[0].tenant.id(), candidates[0].user_id),
        (tenant, user.id)
    );
    assert_eq!(candidates[0].tenant_slug, DEFAULT_TENANT_SLUG);
    assert!(
        t.store
            .find_login_candidates("nobody@example.com")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn second_tenant_needs_postgres(t: TestStore) {
    t.store.ensure_default_tenant().await.unwrap();
    let second = t
        .store
        .create_tenant(&Actor::system(), "Acme", "acme")
        .await;
    match t.backend {
        Backend::Sqlite => {
            let err = second.unwrap_err();
            assert!(matches!(err, StoreError::MultiTenantRequiresPostgres));
            assert!(
                err.to_string()
                    .contains("multi-tenant operation needs Postgres")
            );
        }
        Backend::Postgres => {
            let acme = second.unwrap();
            assert_eq!(acme.slug, "acme");
            assert!(matches!(
                t.store
                    .create_tenant(&Actor::system(), "Acme 2", "acme")
                    .await,
                Err(StoreError::Conflict { field: "slug", .. })
            ));
        }
    }
    assert!(matches!(
        t.store
            .create_tenant(&Actor::system(), "Bad", "Not A Slug")
            .await,
        Err(StoreError::Invalid { field: "slug", .. })
    ));
}

fn chrono_now_plus_minutes(minutes: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::minutes(minutes)
}

/// Online means seen within three of the intervals agents are told, so a
/// fleet on a 5-minute heartbeat is not reported offline after 90 s.
#[test]
fn device_status_follows_the_configured_heartbeat_interval() {
    use mobius_core::devices::{Device, DeviceStatus};
    let now = chrono::Utc::now();
    let device = |seen_secs_ago: Option<i64>, revoked: bool| Device {
        last_seen_at: seen_secs_ago.map(|s| now - chrono::Duration::seconds(s)),
        revoked_at: revoked.then_some(now),
        ..test_device()
    };
    assert_eq!(
        DeviceStatus::of(&device(Some(200), false), now, 300),
        DeviceStatus::Online
    );
    assert_eq!(
        DeviceStatus::of(&device(Some(200), false), now, 30),
        DeviceStatus::Offline
    );
    assert_eq!(
        DeviceStatus::of(&device(Some(89), false), now, 30),
        DeviceStatus::Online
    );
    assert_eq!(
        DeviceStatus::of(&device(None, false), now, 30),
        DeviceStatus::NeverSeen
    );
    assert_eq!(
        DeviceStatus::of(&device(Some(1), true), now, 30),
        DeviceStatus::Revoked
    );
}

fn test_device() -> mobius_core::devices::Device {
    let now = chrono::Utc::now();
    mobius_core::devices::Device {
        id: uuid::Uuid::now_v7(),
        tenant_id: uuid::Uuid::now_v7(),
        site_id: uuid::Uuid::now_v7(),
        team_id: None,
        hostname: "h".into(),
        host_fingerprint: "f".into(),
        last_seen_at: None,
        revoked_at: None,
        os_name: None,
        os_version: None,
        kernel_version: None,
        architecture: None,
        cpu_model: None,
        cpu_cores: None,
        memory_bytes: None,
        agent_version: None,
        hardware_uuid: None,
        facts: None,
        facts_updated_at: None,
        ca_id: None,
        cert_serial: None,
        cert_not_after: None,
        created_at: now,
        updated_at: now,
    }
}
