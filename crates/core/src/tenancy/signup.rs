//! Self sign-up (cloud): a new tenant with its CA, default site and first
//! owner, made in one transaction, closed to sign-in until the emailed
//! verification link is followed (unless the operator turned verification
//! off). The server sends the email and rate-limits per client; this
//! refuses an email that already signed up too many tenants.

use sea_orm::{ActiveModelTrait, IntoActiveModel, Set, prelude::Uuid};

use crate::audit::{Actor, AuditRecord};
use crate::authz::Role;
use crate::crypto::secrets;
use crate::db::entities::tenant;
use crate::db::{Backend, Store, StoreError, StoreResult, SystemTask, conflict_on, valid_name};
use crate::identity::NewUser;
use crate::pki::Pki;
use crate::platform::TenantBlock;

use super::tenants::{DEFAULT_SITE, Tenant, valid_slug};

/// The prefix of verification link secrets.
pub const VERIFICATION_PREFIX: &str = "mob_verify_";

/// What a sign-up asks for.
pub struct SignUp<'a> {
    pub tenant_name: &'a str,
    pub slug: &'a str,
    pub email: &'a str,
    pub display_name: &'a str,
    pub password: &'a str,
}

/// How sign-ups are checked.
#[derive(Clone, Copy, Debug)]
pub struct SignUpPolicy {
    /// Close the tenant until the emailed link is followed.
    pub verify_email: bool,
    /// How long the link works.
    pub link_ttl: chrono::Duration,
    /// Most tenants one email may sign up.
    pub max_tenants_per_email: u64,
}

/// A tenant made by sign-up, and the secret of its verification link (to
/// email, never to show the caller).
pub struct SignedUp {
    pub tenant: Tenant,
    pub owner_id: Uuid,
    pub verification_secret: Option<String>,
}

/// A sign-up written but not committed: the caller sends the email first,
/// so a failed send leaves no tenant behind (and the slug free to retry).
pub struct PendingSignUp {
    scope: crate::TenantScope,
    blocks: std::sync::Arc<crate::platform::TenantBlocks>,
    pub signed_up: SignedUp,
}

impl PendingSignUp {
    pub async fn commit(self) -> StoreResult<SignedUp> {
        self.scope.commit().await?;
        if self.signed_up.verification_secret.is_some() {
            self.blocks.set(
                self.signed_up.tenant.id,
                Some(TenantBlock::AwaitingVerification),
            );
        }
        Ok(self.signed_up)
    }
}

impl Store {
    /// Creates the tenant, its default site, its CA and its first owner in
    /// one transaction. Postgres only (the embedded store is one tenant).
    pub async fn sign_up(
        &self,
        pki: &Pki,
        policy: SignUpPolicy,
        input: SignUp<'_>,
        actor: &Actor,
    ) -> StoreResult<PendingSignUp> {
        if self.backend() != Backend::Postgres {
            return Err(StoreError::MultiTenantRequiresPostgres);
        }
        let name = valid_name("name", input.tenant_name)?;
        let slug = valid_slug(input.slug)?;
        let email = input.email.trim().to_lowercase();
        if !email.contains('@') {
            return Err(StoreError::Invalid {
                field: "email",
                reason: "must be an email address".into(),
            });
        }
        // Checked before any hashing or writing: cheap refusals first.
        if self.signups_for_email(&email).await? >= policy.max_tenants_per_email {
            return Err(StoreError::Invalid {
                field: "email",
                reason: format!(
                    "this email address already signed up {} tenants, the most allowed",
                    policy.max_tenants_per_email
                ),
            });
        }
        let password_hash = crate::identity::hash_password(input.password).await?;
        let secret = policy
            .verify_email
            .then(|| secrets::generate(VERIFICATION_PREFIX));
        let id = Uuid::now_v7();
        let scope = self.begin_tenant(id, None).await?;
        let now = chrono::Utc::now();
        let tenant = tenant::ActiveModel {
            id: Set(id),
            name: Set(name),
            slug: Set(slug),
            setup_code_hash: Set(None),
            api_token_max_days: Set(365),
            created_at: Set(now),
            updated_at: Set(now),
            suspended_at: Set(None),
            signup_email: Set(Some(email.clone())),
            verification_hash: Set(secret.as_deref().map(|s| secrets::sha256(s).to_vec())),
            verification_expires_at: Set(secret.as_ref().map(|_| now + policy.link_ttl)),
        }
        .insert(scope.connection())
        .await
        .map_err(conflict_on("tenant", "slug"))?;
        scope
            .audit()
            .record(
                actor,
                AuditRecord::new("tenant.signed_up", "tenant", Some(id)).with_details(
                    serde_json::json!({ "name": tenant.name, "slug": tenant.slug, "email": email, "verification": secret.is_some() }),
                ),
            )
            .await?;
        scope.sites().create(actor, DEFAULT_SITE).await?;
        pki.current_ca(&scope, actor).await?;
        let owner = scope
            .users()
            .create(
                actor,
                NewUser {
                    email: &email,
                    display_name: input.display_name,
                    role: Role::Owner,
                    password_hash: Some(password_hash),
                },
            )
            .await?;
        Ok(PendingSignUp {
            scope,
            blocks: self.blocks.clone(),
            signed_up: SignedUp {
                tenant,
                owner_id: owner.id,
                verification_secret: secret,
            },
        })
    }

    /// Follows a verification link: the tenant opens. An unknown, used or
    /// expired link is NOT_FOUND (indistinguishable on purpose).
    pub async fn verify_sign_up(&self, secret: &str) -> StoreResult<Tenant> {
        let tenant = self
            .signup_verification_tenant(&secrets::sha256(secret))
            .await?
            .ok_or(StoreError::NotFound {
                entity: "verification link",
            })?;
        let scope = self
            .begin(&SystemTask::new("signup-verification", tenant))
            .await?;
        let row = scope.tenant().get_for_update().await?;
        let suspended = row.suspended_at.is_some();
        let mut active = row.into_active_model();
        active.verification_hash = Set(None);
        active.verification_expires_at = Set(None);
        active.updated_at = Set(chrono::Utc::now());
        let row = active.update(scope.connection()).await?;
        scope
            .audit()
            .record(
                &Actor::system(),
                AuditRecord::new("tenant.verified", "tenant", Some(tenant)),
            )
            .await?;
        scope.commit().await?;
        self.blocks
            .set(tenant, suspended.then_some(TenantBlock::Suspended));
        Ok(row)
    }
}
