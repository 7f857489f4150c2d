//! Login-state records: one per sign-in in flight. The browser carries only
//! the random `state`; the nonce the ID token must echo, the PKCE verifier
//! and where to send the person afterwards stay here, bound to the state
//! by its hash. A record lives [`LOGIN_STATE_SECONDS`] and is consumed by
//! the first callback that presents it, so a replayed callback fails.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QuerySelect, Set,
    sea_query::Expr,
};
use uuid::Uuid;

use super::entities::sso_login_state;
use super::{Sso, SsoError, SsoResult};
use crate::crypto::sealing::SecretSealer;
use crate::crypto::secrets;
use crate::db::{Backend, StoreError, StoreResult};

/// Ten minutes: long enough to type a password and pass MFA at the IdP,
/// short enough that a leaked `state` is soon worthless.
pub const LOGIN_STATE_SECONDS: i64 = 600;

/// What starting a sign-in hands back: the values to put in the
/// authorization request. None of them is stored in clear.
pub struct StartedLogin {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// A consumed login state, for the callback.
pub struct TakenLogin {
    pub id: Uuid,
    pub nonce_hash: [u8; 32],
    pub pkce_verifier: String,
    pub redirect_to: String,
    /// Set when the CLI started the sign-in (`mobius login --sso`).
    pub cli_challenge: Option<String>,
}

fn verifier_context(state_hash: &[u8]) -> String {
    format!("sso-pkce:{}", hex::encode(state_hash))
}

impl Sso<'_> {
    /// Records a new sign-in in flight. `redirect_to` was validated by the
    /// caller against the allow-list.
    pub async fn start_login(
        &self,
        sealer: &dyn SecretSealer,
        redirect_to: &str,
        cli_challenge: Option<&str>,
    ) -> StoreResult<StartedLogin> {
        let state = secrets::generate("");
        let nonce = secrets::generate("");
        // RFC 7636: 43 to 128 characters of [A-Za-z0-9-._~]; base64url of
        // 32 random bytes is 43.
        let pkce_verifier = secrets::generate("");
        let state_hash = secrets::sha256(&state);
        let sealed = sealer
            .seal(&verifier_context(&state_hash), pkce_verifier.as_bytes())
            .await
            .map_err(StoreError::internal("sealing a PKCE verifier"))?;
        let now = Utc::now();
        // Expired records of this tenant go as new ones come: no job needed.
        sso_login_state::Entity::delete_many()
            .filter(sso_login_state::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(sso_login_state::Column::ExpiresAt.lt(now - chrono::Duration::hours(1)))
            .exec(self.scope.connection())
            .await?;
        sso_login_state::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            state_hash: Set(state_hash.to_vec()),
            nonce_hash: Set(secrets::sha256(&nonce).to_vec()),
            sealed_pkce_verifier: Set(sealed),
            redirect_to: Set(redirect_to.to_owned()),
            cli_challenge: Set(cli_challenge.map(str::to_owned)),
            expires_at: Set(now + chrono::Duration::seconds(LOGIN_STATE_SECONDS)),
            consumed_at: Set(None),
            handoff_hash: Set(None),
            user_id: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await?;
        Ok(StartedLogin {
            state,
            nonce,
            pkce_verifier,
        })
    }

    /// Consumes the record `state` names: unknown, expired and already
    /// consumed states are all [`SsoError::InvalidState`].
    pub async fn take_login(
        &self,
        sealer: &dyn SecretSealer,
        state: &str,
    ) -> SsoResult<TakenLogin> {
        let hash = secrets::sha256(state);
        let mut query = sso_login_state::Entity::find()
            .filter(sso_login_state::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(sso_login_state::Column::StateHash.eq(hash.to_vec()));
        if self.scope.backend() == Backend::Postgres {
            query = query.lock_exclusive();
        }
        let row = query
            .one(self.scope.connection())
            .await
            .map_err(StoreError::from)?
            .ok_or(SsoError::InvalidState)?;
        let now = Utc::now();
        if row.consumed_at.is_some() || row.expires_at <= now {
            return Err(SsoError::InvalidState);
        }
        let verifier = sealer
            .open(&verifier_context(&hash), &row.sealed_pkce_verifier)
            .await
            .map_err(StoreError::internal("opening a PKCE verifier"))?;
        let verifier = String::from_utf8(verifier)
            .map_err(StoreError::internal("PKCE verifier is not UTF-8"))?;
        let nonce_hash: [u8; 32] =
            row.nonce_hash
                .as_slice()
                .try_into()
                .map_err(StoreError::internal(
                    "stored nonce hash has the wrong length",
                ))?;
        let taken = TakenLogin {
            id: row.id,
            nonce_hash,
            pkce_verifier: verifier,
            redirect_to: row.redirect_to.clone(),
            cli_challenge: row.cli_challenge.clone(),
        };
        let mut active = row.into_active_model();
        active.consumed_at = Set(Some(now));
        active.updated_at = Set(now);
        active
            .update(self.scope.connection())
            .await
            .map_err(StoreError::from)?;
        Ok(taken)
    }

    /// After a CLI sign-in: a one-time code for the CLI's loopback
    /// listener, redeemable once with the CLI's PKCE verifier.
    pub(crate) async fn set_handoff(&self, login_id: Uuid, user_id: Uuid) -> StoreResult<String> {
        let code = secrets::generate("");
        let now = Utc::now();
        sso_login_state::Entity::update_many()
            .col_expr(
                sso_login_state::Column::HandoffHash,
                Expr::value(secrets::sha256(&code).to_vec()),
            )
            .col_expr(sso_login_state::Column::UserId, Expr::value(user_id))
            // The handoff gets its own short life from now.
            .col_expr(
                sso_login_state::Column::ExpiresAt,
                Expr::value(now + chrono::Duration::seconds(120)),
            )
            .col_expr(sso_login_state::Column::UpdatedAt, Expr::value(now))
            .filter(sso_login_state::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(sso_login_state::Column::Id.eq(login_id))
            .exec(self.scope.connection())
            .await?;
        Ok(code)
    }

    /// Redeems a CLI handoff code: the CLI proves it started this sign-in
    /// by the verifier whose S256 challenge it sent at the start. Returns
    /// the signed-in user's id; the code stops working.
    pub(crate) async fn take_handoff(&self, code: &str, verifier: &str) -> SsoResult<Uuid> {
        let hash = secrets::sha256(code);
        let mut query = sso_login_state::Entity::find()
            .filter(sso_login_state::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(sso_login_state::Column::HandoffHash.eq(hash.to_vec()));
        if self.scope.backend() == Backend::Postgres {
            query = query.lock_exclusive();
        }
        let row = query
            .one(self.scope.connection())
            .await
            .map_err(StoreError::from)?
            .ok_or(SsoError::InvalidHandoff)?;
        let challenge = pkce_s256(verifier);
        let challenge_ok = row
            .cli_challenge
            .as_deref()
            .is_some_and(|c| secrets::hashes_match(c.as_bytes(), challenge.as_bytes()));
        let (Some(user_id), true, true) = (row.user_id, challenge_ok, row.expires_at > Utc::now())
        else {
            return Err(SsoError::InvalidHandoff);
        };
        sso_login_state::Entity::delete_by_id(row.id)
            .exec(self.scope.connection())
            .await
            .map_err(StoreError::from)?;
        Ok(user_id)
    }
}

/// RFC 7636 S256: base64url(SHA-256(verifier)) without padding.
pub fn pkce_s256(verifier: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}
