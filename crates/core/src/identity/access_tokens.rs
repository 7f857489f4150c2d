//! Access tokens: short-lived JWTs (EdDSA, 15 minutes) naming the user and
//! tenant, with a `kid` header so signing keys can rotate. Private keys are
//! stored sealed (see [`crate::sealing`]); verifying keys stay valid until
//! every token they signed has expired.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, Set,
    prelude::Uuid,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::crypto::sealing::{SealContext, SecretSealer};
use crate::db::Store;
use crate::db::entities::signing_key;
use crate::db::{StoreError, StoreResult};

/// Access tokens live 15 minutes: short enough that a leaked one is soon
/// useless, long enough that a busy SPA refreshes rarely.
pub const ACCESS_TOKEN_SECONDS: i64 = 15 * 60;
const ALGORITHM_NAME: &str = "EdDSA";

/// The claims of an access token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user.
    pub sub: Uuid,
    /// The tenant.
    pub tid: Uuid,
    /// The refresh-token family (the login session) it came from.
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
}

struct KeySet {
    current_kid: Uuid,
    signing: EncodingKey,
    verifying: HashMap<Uuid, DecodingKey>,
}

/// Signs and verifies access tokens with the keys in `signing_keys`.
pub struct AccessTokens {
    store: Store,
    sealer: Arc<dyn SecretSealer>,
    keys: RwLock<KeySet>,
    /// When an unknown `kid` last made this server reload its keys: at
    /// most one reload per [`RELOAD_INTERVAL`], so forged tokens cannot
    /// turn into a database query each.
    reloaded_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The least time between two reloads caused by unknown key ids.
const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessTokens(..)")
    }
}

/// Why a presented access token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessTokenError {
    #[error("access token expired")]
    Expired,
    #[error("access token invalid")]
    Invalid,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AccessTokens {
    /// Loads the signing keys, creating the first one on an empty store.
    pub async fn load(store: Store, sealer: Arc<dyn SecretSealer>) -> StoreResult<AccessTokens> {
        if active_keys(&store).await?.is_empty() {
            create_key(&store, sealer.as_ref()).await?;
        }
        let keys = load_keys(&store, sealer.as_ref()).await?;
        Ok(AccessTokens {
            store,
            sealer,
            keys: RwLock::new(keys),
            reloaded_at: std::sync::Mutex::new(None),
        })
    }

    /// Signs a token for `claims.sub` in `claims.tid`; returns it and its expiry.
    pub async fn issue(
        &self,
        user: Uuid,
        tenant: Uuid,
        session: Uuid,
    ) -> StoreResult<(String, chrono::DateTime<chrono::Utc>)> {
        let now = chrono::Utc::now();
        let expires = now + chrono::Duration::seconds(ACCESS_TOKEN_SECONDS);
        let claims = AccessClaims {
            sub: user,
            tid: tenant,
            sid: session,
            iat: now.timestamp(),
            exp: expires.timestamp(),
        };
        let keys = self.keys.read().await;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.current_kid.to_string());
        let token = jsonwebtoken::encode(&header, &claims, &keys.signing)
            .map_err(StoreError::internal("signing an access token"))?;
        Ok((token, expires))
    }

    /// Verifies signature and expiry. An unknown `kid` that could be a key
    /// another replica made since (newer than every key known here, and
    /// not from the future: key ids are UUIDv7) triggers a reload from the
    /// store, at most once a second, before giving up.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, AccessTokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AccessTokenError::Invalid)?;
        let kid: Uuid = header
            .kid
            .as_deref()
            .and_then(|k| k.parse().ok())
            .ok_or(AccessTokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AccessTokenError::Invalid);
        }
        if !self.keys.read().await.verifying.contains_key(&kid) {
            if !self.could_be_new(kid).await || !self.may_reload() {
                return Err(AccessTokenError::Invalid);
            }
            self.reload().await?;
        }
        let keys = self.keys.read().await;
        let key = keys.verifying.get(&kid).ok_or(AccessTokenError::Invalid)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 5;
        validation.validate_aud = false;
        jsonwebtoken::decode::<AccessClaims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AccessTokenError::Expired,
                _ => AccessTokenError::Invalid,
            })
    }

    /// Starts signing with a new key. Older keys keep verifying until the
    /// tokens they signed have expired, then are retired.
    pub async fn rotate(&self) -> StoreResult<Uuid> {
        let now = chrono::Utc::now();
        // Keys retired now stop verifying once their last token expired.
        signing_key::Entity::update_many()
            .col_expr(
                signing_key::Column::RetiredAt,
                sea_orm::sea_query::Expr::value(
                    now + chrono::Duration::seconds(ACCESS_TOKEN_SECONDS),
                ),
            )
            .filter(signing_key::Column::RetiredAt.is_null())
            .exec(self.store.connection())
            .await?;
        let kid = create_key(&self.store, self.sealer.as_ref()).await?;
        self.reload().await?;
        Ok(kid)
    }

    /// Whether `kid` is newer than every key known here and not dated in
    /// the future (a forged id usually is one or the other).
    async fn could_be_new(&self, kid: Uuid) -> bool {
        let Some(minted) = kid.get_timestamp() else {
            return false;
        };
        let (secs, _) = minted.to_unix();
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let newest = self.keys.read().await.verifying.keys().max().copied();
        secs <= now + 60 && newest.is_none_or(|newest| kid > newest)
    }

    /// Takes the reload budget if a second has passed since the last one.
    fn may_reload(&self) -> bool {
        let Ok(mut last) = self.reloaded_at.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        match *last {
            Some(at) if now.duration_since(at) < RELOAD_INTERVAL => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    async fn reload(&self) -> StoreResult<()> {
        let keys = load_keys(&self.store, self.sealer.as_ref()).await?;
        *self.keys.write().await = keys;
        Ok(())
    }
}

/// Keys not yet past their retirement time, newest first.
async fn active_keys(store: &Store) -> StoreResult<Vec<signing_key::Model>> {
    Ok(signing_key::Entity::find()
        .filter(
            Condition::any()
                .add(signing_key::Column::RetiredAt.is_null())
                .add(signing_key::Column::RetiredAt.gt(chrono::Utc::now())),
        )
        .order_by_desc(signing_key::Column::Id)
        .all(store.connection())
        .await?)
}

async fn load_keys(store: &Store, sealer: &dyn SecretSealer) -> StoreResult<KeySet> {
    let rows = active_keys(store).await?;
    let current = rows
        .iter()
        .find(|k| k.retired_at.is_none())
        .or(rows.first())
        .ok_or(StoreError::NotFound {
            entity: "signing key",
        })?;
    let private = sealer
        .open(&seal_context(current.id), &current.sealed_private_key)
        .await
        .map_err(|e| StoreError::Internal {
            context: "opening the access-token signing key with this server's master key",
            source: format!("signing key {}: {e}", current.id).into(),
        })?;
    let verifying = rows
        .iter()
        .map(|k| (k.id, DecodingKey::from_ed_der(&k.public_key)))
        .collect();
    Ok(KeySet {
        current_kid: current.id,
        signing: EncodingKey::from_ed_der(&private),
        verifying,
    })
}

async fn create_key(store: &Store, sealer: &dyn SecretSealer) -> StoreResult<Uuid> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(StoreError::internal(
        "generating an access-token signing key",
    ))?;
    let id = Uuid::now_v7();
    let sealed = sealer
        .seal(&seal_context(id), &pair.serialize_der())
        .await
        .map_err(StoreError::internal("sealing an access-token signing key"))?;
    let now = chrono::Utc::now();
    signing_key::ActiveModel {
        id: Set(id),
        algorithm: Set(ALGORITHM_NAME.to_owned()),
        public_key: Set(pair.public_key_raw().to_vec()),
        sealed_private_key: Set(sealed),
        created_at: Set(now),
        updated_at: Set(now),
        retired_at: Set(None),
    }
    .insert(store.connection())
    .await?;
    tracing::info!(kid = %id, "created a JWT signing key");
    Ok(id)
}

/// Binds a sealed key to its id, so one key's ciphertext cannot stand in
/// for another's.
pub fn seal_context(kid: Uuid) -> SealContext {
    SealContext::platform("jwt-signing-key", kid)
}
