//! Single sign-on: each tenant's OIDC configuration, the short-lived
//! login-state records of sign-ins in flight, the link from an identity
//! provider's subject to a user, just-in-time provisioning with group →
//! role mapping ([`provisioning`]), and a replay cache of consumed
//! assertions. The protocol itself (discovery, the code exchange, ID-token
//! verification) lives in the server, which speaks HTTP; this module only
//! decides who the verified identity is and what they may do.

mod config;
mod entities;
mod login_states;
mod provisioning;
mod replay;
pub mod saml;

pub use config::{GroupRole, SsoConfig, SsoConfigInput};
pub use login_states::{LOGIN_STATE_SECONDS, StartedLogin, TakenLogin};
pub use provisioning::{SsoOutcome, VerifiedIdentity};

use crate::db::{StoreError, TenantScope};

/// Why a sign-in was refused. Every variant's text is safe to show the
/// person signing in (it names no internal detail); [`SsoError::reason`]
/// is the stable code written to the audit log.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("single sign-on is not configured or not enabled for this tenant")]
    NotConfigured,
    #[error("unknown, expired or already used sign-in state; start the sign-in again")]
    InvalidState,
    #[error("the identity provider refused the sign-in: {0}")]
    ProviderRefused(String),
    #[error("the identity provider could not be reached or answered wrongly: {0}")]
    ProviderUnavailable(String),
    #[error("the ID token was refused: {0}")]
    InvalidIdToken(String),
    #[error("the SAML response was refused: {0}")]
    InvalidAssertion(String),
    #[error(
        "an unsolicited SAML response (no sign-in of ours asked for it, and IdP-initiated sign-in is off for this tenant); start the sign-in again"
    )]
    Unsolicited,
    #[error("this assertion was already used")]
    Replayed,
    #[error("the identity provider sent no verified email address")]
    EmailMissing,
    #[error("the email domain `{0}` may not sign in to this tenant")]
    EmailDomainNotAllowed(String),
    #[error("no account for this identity, and just-in-time provisioning is off")]
    NoAccount,
    #[error("invalid, expired or already used sign-in code")]
    InvalidHandoff,
    #[error("invalid redirect target: {0}")]
    InvalidRedirect(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SsoError {
    /// The stable reason recorded in `sso.sign_in_refused` audit events.
    pub fn reason(&self) -> &'static str {
        match self {
            SsoError::NotConfigured => "not_configured",
            SsoError::InvalidState => "invalid_state",
            SsoError::ProviderRefused(_) => "provider_refused",
            SsoError::ProviderUnavailable(_) => "provider_unavailable",
            SsoError::InvalidIdToken(_) => "invalid_id_token",
            SsoError::InvalidAssertion(_) => "invalid_assertion",
            SsoError::Unsolicited => "unsolicited",
            SsoError::Replayed => "replayed",
            SsoError::EmailMissing => "email_missing",
            SsoError::EmailDomainNotAllowed(_) => "email_domain_not_allowed",
            SsoError::NoAccount => "no_account",
            SsoError::InvalidHandoff => "invalid_handoff",
            SsoError::InvalidRedirect(_) => "invalid_redirect",
            SsoError::Store(_) => "internal",
        }
    }
}

pub type SsoResult<T> = Result<T, SsoError>;

/// The tenant's SSO records.
pub struct Sso<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn sso(&self) -> Sso<'_> {
        Sso { scope: self }
    }
}

/// The sealing context of a tenant's client secret: binds the ciphertext
/// to the tenant, so one tenant's sealed secret cannot be replayed as
/// another's.
fn client_secret_context(tenant_id: uuid::Uuid) -> crate::crypto::sealing::SealContext {
    crate::crypto::sealing::SealContext::tenant(tenant_id, "sso-client-secret", "oidc")
}

/// Re-wraps this tenant's sealed OIDC client secret (`reseal`).
pub(crate) async fn reseal_client_secret(
    scope: &crate::db::TenantScope,
    rewrap: &crate::crypto::reseal::Rewrap<'_>,
    report: &mut crate::crypto::reseal::ResealReport,
) -> crate::db::StoreResult<()> {
    use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
    let configs = entities::sso_config::Entity::find()
        .filter(entities::sso_config::Column::TenantId.eq(scope.tenant_id()))
        .all(scope.connection())
        .await?;
    for config in configs {
        let Some(secret) = config.sealed_client_secret.clone() else {
            continue;
        };
        let context = client_secret_context(config.tenant_id);
        if let Some(sealed) = rewrap.value(report, &context, &secret).await? {
            let mut model: entities::sso_config::ActiveModel = config.into();
            model.sealed_client_secret = Set(Some(sealed));
            model.update(scope.connection()).await?;
        }
    }
    Ok(())
}
