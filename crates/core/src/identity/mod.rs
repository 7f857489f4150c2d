//! Identity: first-run setup, login, sessions (access + refresh tokens),
//! invitations, and authenticating a bearer credential into a
//! [`Principal`]. HTTP concerns (cookies, rate limits) live in the server.

use std::sync::Arc;

use sea_orm::prelude::Uuid;

pub mod access_tokens;
mod api_token_usage;
mod api_tokens;
mod invitations;
pub mod passwords;
mod sessions;
pub mod sso;
mod users;

pub use access_tokens::{ACCESS_TOKEN_SECONDS, AccessClaims, AccessTokenError, AccessTokens};
pub use api_token_usage::ApiTokenUsage;
pub use api_tokens::{ApiToken, ApiTokens, DEFAULT_API_TOKEN_DAYS, NewApiToken};
pub use invitations::{INVITATION_DAYS, Invitation, Invitations};
pub use sessions::{REFRESH_TOKEN_DAYS, RefreshToken, RefreshTokens};
pub use users::{NewUser, User, Users};

use crate::audit::{Actor, ActorKind, AuditRecord};
use crate::authz::{Grants, Principal, Role, TeamRole};
use crate::crypto::secrets::{self, API_TOKEN_PREFIX, SETUP_CODE_PREFIX};
use crate::db::{FoundTenant, SecretKind, Store, StoreError, StoreResult, TenantScope};

/// Where a request came from, for audit events.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A signed-in session: what login, setup, refresh and accepting an
/// invitation return.
#[derive(Clone, Debug)]
pub struct Session {
    pub access_token: String,
    pub access_token_expires_at: chrono::DateTime<chrono::Utc>,
    pub refresh_token: String,
    pub user: User,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Same answer for an unknown email and a wrong password.
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("invalid, expired or revoked credentials")]
    InvalidToken,
    #[error("access token expired; refresh the session")]
    AccessTokenExpired,
    #[error("refresh token reuse detected: every session of that login was revoked")]
    RefreshTokenReused,
    #[error("invalid or expired code")]
    InvalidCode,
    /// The tenant requires single sign-on: password login is refused for
    /// everyone but owners marked break-glass.
    #[error("this tenant requires single sign-on; sign in through your identity provider")]
    SsoRequired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type IdentityResult<T> = Result<T, IdentityError>;

/// What [`Identity::authenticate`] established.
pub struct Authenticated {
    pub principal: Principal,
    /// The API token presented, if the credential was one.
    pub api_token: Option<ApiToken>,
    /// The transaction authentication read through, still open and scoped
    /// like one the principal would open; dropping it rolls back nothing
    /// of consequence (it only read).
    pub scope: TenantScope,
}

/// The identity service.
#[derive(Clone, Debug)]
pub struct Identity {
    store: Store,
    access: Arc<AccessTokens>,
}

impl Identity {
    pub fn new(store: Store, access: Arc<AccessTokens>) -> Identity {
        Identity { store, access }
    }

    pub fn access_tokens(&self) -> &AccessTokens {
        &self.access
    }

    /// On a store with no user yet, makes a new one-time setup code for
    /// the default tenant (replacing any earlier one) and returns it.
    pub async fn issue_setup_code(&self) -> StoreResult<Option<String>> {
        let Some(tenant) = self.store.default_tenant().await? else {
            return Ok(None);
        };
        let scope = self.store.begin(&tenant).await?;
        if scope.users().count().await? > 0 {
            return Ok(None);
        }
        let code = secrets::generate(SETUP_CODE_PREFIX);
        scope
            .tenant()
            .set_setup_code_hash(Some(secrets::sha256(&code)))
            .await?;
        scope.commit().await?;
        Ok(Some(code))
    }

    /// Creates the first owner with the one-time setup code; the code stops
    /// working once used.
    pub async fn setup(
        &self,
        code: &str,
        email: &str,
        password: &str,
        display_name: &str,
        meta: &RequestMeta,
    ) -> IdentityResult<Session> {
        let password_hash = hash_password(password).await?;
        let tenant = self
            .store
            .default_tenant()
            .await?
            .ok_or(IdentityError::InvalidCode)?;
        let scope = self.store.begin(&tenant).await?;
        let row = scope.tenant().get_for_update().await?;
        let code_ok = row
            .setup_code_hash
            .as_deref()
            .is_some_and(|stored| secrets::hashes_match(stored, &secrets::sha256(code)));
        if !code_ok || scope.users().count().await? > 0 {
            return Err(IdentityError::InvalidCode);
        }
        let user = scope
            .users()
            .create(
                &system(meta),
                NewUser {
                    email,
                    display_name,
                    role: Role::Owner,
                    password_hash: Some(password_hash),
                },
            )
            .await?;
        scope.tenant().set_setup_code_hash(None).await?;
        scope
            .audit()
            .record(
                &user_actor(&user, meta),
                AuditRecord::new("tenant.setup_completed", "tenant", Some(tenant.id())),
            )
            .await?;
        let session = self.start_session(&scope, user, meta).await?;
        scope.commit().await?;
        Ok(session)
    }

    /// Checks email and password. An unknown email costs the same argon2
    /// work as a wrong password and gets the same error. With `tenant_slug`
    /// only that tenant is considered.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        tenant_slug: Option<&str>,
        meta: &RequestMeta,
    ) -> IdentityResult<Session> {
        let candidates: Vec<_> = self
            .store
            .find_login_candidates(email.trim())
            .await?
            .into_iter()
            .filter(|c| tenant_slug.is_none_or(|slug| c.tenant_slug == slug))
            .collect();
        if candidates.is_empty() {
            verify_password(password, None).await;
            return Err(IdentityError::InvalidCredentials);
        }
        for candidate in candidates {
            let scope = self.store.begin(&candidate.tenant).await?;
            let user = scope.users().get(candidate.user_id).await?;
            if verify_password(password, user.password_hash.clone()).await {
                if let Some(config) = scope.sso().config().await?
                    && config.refuses_password_login(user.id, user.role)
                {
                    scope
                        .audit()
                        .record(
                            &user_actor(&user, meta),
                            AuditRecord::new("user.password_login_refused", "user", Some(user.id))
                                .with_details(serde_json::json!({ "reason": "sso_required" })),
                        )
                        .await?;
                    scope.commit().await?;
                    return Err(IdentityError::SsoRequired);
                }
                scope
                    .audit()
                    .record(
                        &user_actor(&user, meta),
                        AuditRecord::new("user.logged_in", "user", Some(user.id)),
                    )
                    .await?;
                let session = self.start_session(&scope, user, meta).await?;
                scope.commit().await?;
                return Ok(session);
            }
        }
        Err(IdentityError::InvalidCredentials)
    }

    /// Rotates a refresh token: the presented one stops working and a new
    /// one (same family) plus a new access token are returned. Presenting
    /// an already-rotated token revokes the family.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        meta: &RequestMeta,
    ) -> IdentityResult<Session> {
        let hash = secrets::sha256(refresh_token);
        let scope = self
            .owner_scope(SecretKind::RefreshToken, &hash, IdentityError::InvalidToken)
            .await?;
        let tenant = scope.tenant_id();
        let token = scope
            .refresh_tokens()
            .find_by_hash(&hash)
            .await?
            .ok_or(IdentityError::InvalidToken)?;
        if token.revoked_at.is_some() || token.expires_at <= chrono::Utc::now() {
            return Err(IdentityError::InvalidToken);
        }
        let user = scope
            .users()
            .get(token.user_id)
            .await
            .map_err(|_| IdentityError::InvalidToken)?;
        if token.rotated_at.is_some() {
            let revoked = scope
                .refresh_tokens()
                .revoke_family(token.family_id)
                .await?;
            scope
                .audit()
                .record(
                    &user_actor(&user, meta),
                    AuditRecord::new("session.refresh_token_reused", "user", Some(user.id))
                        .with_details(
                            serde_json::json!({ "family_id": token.family_id, "revoked": revoked }),
                        ),
                )
                .await?;
            scope.commit().await?;
            return Err(IdentityError::RefreshTokenReused);
        }
        let family = token.family_id;
        scope.refresh_tokens().mark_rotated(token).await?;
        let (refresh_token, _) = scope.refresh_tokens().issue(user.id, family).await?;
        let (access_token, access_token_expires_at) =
            self.access.issue(user.id, tenant, family).await?;
        scope.commit().await?;
        Ok(Session {
            access_token,
            access_token_expires_at,
            refresh_token,
            user,
        })
    }

    /// Revokes the login the refresh token belongs to. Unknown tokens are
    /// ignored: logging out twice is not an error.
    pub async fn logout(&self, refresh_token: &str, meta: &RequestMeta) -> IdentityResult<()> {
        let hash = secrets::sha256(refresh_token);
        let Some(tenant) = self
            .store
            .tenant_by_secret_hash(SecretKind::RefreshToken, &hash)
            .await?
        else {
            return Ok(());
        };
        let scope = self.store.begin(&tenant).await?;
        if let Some(token) = scope.refresh_tokens().find_by_hash(&hash).await? {
            scope
                .refresh_tokens()
                .revoke_family(token.family_id)
                .await?;
            if let Ok(user) = scope.users().get(token.user_id).await {
                scope
                    .audit()
                    .record(
                        &user_actor(&user, meta),
                        AuditRecord::new("user.logged_out", "user", Some(user.id)),
                    )
                    .await?;
            }
            scope.commit().await?;
        }
        Ok(())
    }

    /// Creates the invited user and signs them in; the code is single-use.
    pub async fn accept_invitation(
        &self,
        code: &str,
        password: &str,
        display_name: &str,
        meta: &RequestMeta,
    ) -> IdentityResult<Session> {
        let password_hash = hash_password(password).await?;
        let hash = secrets::sha256(code);
        let scope = self
            .owner_scope(SecretKind::Invitation, &hash, IdentityError::InvalidCode)
            .await?;
        let invitation = scope
            .invitations()
            .find_by_hash(&hash)
            .await?
            .ok_or(IdentityError::InvalidCode)?;
        if invitation.accepted_at.is_some() || invitation.expires_at <= chrono::Utc::now() {
            return Err(IdentityError::InvalidCode);
        }
        let user = scope
            .users()
            .create(
                &system(meta),
                NewUser {
                    email: &invitation.email,
                    display_name,
                    role: invitation.role,
                    password_hash: Some(password_hash),
                },
            )
            .await?;
        let invitation_id = invitation.id;
        scope.invitations().mark_accepted(invitation).await?;
        scope
            .audit()
            .record(
                &user_actor(&user, meta),
                AuditRecord::new("invitation.accepted", "invitation", Some(invitation_id)),
            )
            .await?;
        let session = self.start_session(&scope, user, meta).await?;
        scope.commit().await?;
        Ok(session)
    }

    /// Turns a bearer credential (an access token or a `mob_pat_` API
    /// token) into the principal it speaks for. Also returns the API token
    /// used, if any, so the caller can record its use, and the still-open
    /// scope the check read through (limited to a team-scoped token's
    /// team), so the request can go on reading in the same transaction
    /// and pool connection instead of checking out a second one.
    pub async fn authenticate(
        &self,
        bearer: &str,
        meta: &RequestMeta,
    ) -> IdentityResult<Authenticated> {
        if bearer.starts_with(API_TOKEN_PREFIX) {
            return self.authenticate_api_token(bearer, meta).await;
        }
        let claims = self.access.verify(bearer).await.map_err(|e| match e {
            AccessTokenError::Expired => IdentityError::AccessTokenExpired,
            AccessTokenError::Invalid => IdentityError::InvalidToken,
            AccessTokenError::Store(e) => IdentityError::Store(e),
        })?;
        // The claims carry a signature this server checked: a proof.
        let scope = self.store.begin(&FoundTenant::new(claims.tid)).await?;
        // A removed user's unexpired token stops working at once.
        let user = scope
            .users()
            .get(claims.sub)
            .await
            .map_err(|_| IdentityError::InvalidToken)?;
        let role = user.role;
        let team_roles = team_roles(&scope, user.id).await?;
        Ok(Authenticated {
            principal: Principal::new(
                claims.tid,
                user.id,
                None,
                Grants {
                    role,
                    team_roles,
                    token_team: None,
                },
                meta.ip.clone(),
                meta.user_agent.clone(),
            ),
            api_token: None,
            scope,
        })
    }

    async fn authenticate_api_token(
        &self,
        secret: &str,
        meta: &RequestMeta,
    ) -> IdentityResult<Authenticated> {
        let hash = secrets::sha256(secret);
        let mut scope = self
            .owner_scope(SecretKind::ApiToken, &hash, IdentityError::InvalidToken)
            .await?;
        let tenant = scope.tenant_id();
        let token = scope
            .api_tokens()
            .find_by_hash(&hash)
            .await?
            .ok_or(IdentityError::InvalidToken)?;
        if token.revoked_at.is_some() || token.expires_at <= chrono::Utc::now() {
            return Err(IdentityError::InvalidToken);
        }
        let creator = scope
            .users()
            .get(token.user_id)
            .await
            .map_err(|_| IdentityError::InvalidToken)?;
        let role = token.role;
        let creator_role = creator.role;
        // A token never outranks its creator, even after a demotion.
        if !creator_role.can_grant(role) {
            return Err(IdentityError::InvalidToken);
        }
        scope.restrict_to_team(token.team_id);
        Ok(Authenticated {
            principal: Principal::new(
                tenant,
                creator.id,
                Some(token.id),
                Grants {
                    role,
                    team_roles: Vec::new(),
                    token_team: token.team_id,
                },
                meta.ip.clone(),
                meta.user_agent.clone(),
            ),
            api_token: Some(token),
            scope,
        })
    }

    /// Opens the scope of the tenant that owns a secret of `kind` (found
    /// through that kind's named cross-tenant lookup), or fails with
    /// `missing` when no tenant does.
    async fn owner_scope(
        &self,
        kind: SecretKind,
        hash: &[u8; 32],
        missing: IdentityError,
    ) -> IdentityResult<TenantScope> {
        let tenant = self
            .store
            .tenant_by_secret_hash(kind, hash)
            .await?
            .ok_or(missing)?;
        Ok(self.store.begin(&tenant).await?)
    }

    async fn start_session(
        &self,
        scope: &TenantScope,
        user: User,
        _meta: &RequestMeta,
    ) -> StoreResult<Session> {
        let family = Uuid::now_v7();
        let (refresh_token, _) = scope.refresh_tokens().issue(user.id, family).await?;
        let (access_token, access_token_expires_at) = self
            .access
            .issue(user.id, scope.tenant_id(), family)
            .await?;
        Ok(Session {
            access_token,
            access_token_expires_at,
            refresh_token,
            user,
        })
    }
}

async fn team_roles(scope: &TenantScope, user_id: Uuid) -> StoreResult<Vec<(Uuid, TeamRole)>> {
    Ok(scope
        .team_memberships()
        .for_user(user_id)
        .await?
        .into_iter()
        .map(|m| (m.team_id, m.role))
        .collect())
}

/// argon2 is CPU-bound: keep it off the async workers, and at most one
/// run per core at a time (see [`passwords::hashing_permit`]).
async fn hash_password(password: &str) -> StoreResult<String> {
    passwords::check_policy(password)?;
    let password = password.to_owned();
    let permit = passwords::hashing_permit().await;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        passwords::hash(&password)
    })
    .await
    .map_err(StoreError::internal("password hashing task"))?
}

async fn verify_password(password: &str, stored: Option<String>) -> bool {
    let password = password.to_owned();
    let permit = passwords::hashing_permit().await;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        passwords::verify(&password, stored.as_deref())
    })
    .await
    .unwrap_or(false)
}

fn system(meta: &RequestMeta) -> Actor {
    Actor {
        kind: ActorKind::System,
        id: None,
        ip: meta.ip.clone(),
        user_agent: meta.user_agent.clone(),
    }
}

fn user_actor(user: &User, meta: &RequestMeta) -> Actor {
    Actor {
        kind: ActorKind::User,
        id: Some(user.id),
        ip: meta.ip.clone(),
        user_agent: meta.user_agent.clone(),
    }
}
