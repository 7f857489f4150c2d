//! The backbone's secrets and signatures, as pure functions (no store):
//! the service-token and principal-credential formats, the per-principal
//! derived key, sub-assertions and pre-signed URL tokens.
//!
//! ```text
//! derived_key = HMAC-SHA256(master_secret, "mosb-principal-v1:" + principal_id + ":" + key_version)
//! credential  = "mosb_pr_" + principal_id (32 hex, no dashes) + "_" + base64url(derived_key)
//! assertion   = base64url(payload) + "." + base64url(HMAC-SHA256(derived_key, "assertion:" + base64url(payload)))
//! url token   = base64url(payload) + "." + base64url(HMAC-SHA256(derived_key, "url-token:" + base64url(payload)))
//! ```
//!
//! `principal_id` in the derivation is the hyphenated lower-case UUID,
//! `key_version` a decimal integer; base64url is without padding. Because
//! the key depends on `key_version`, bumping it invalidates the old
//! credential, every assertion and every URL token at once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sea_orm::prelude::Uuid;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::crypto::secrets::hmac_sha256;

/// Prefix of a service token: `mosb_<service>_<secret>`.
pub const SERVICE_TOKEN_PREFIX: &str = "mosb_";
/// Prefix of a principal credential: `mosb_pr_<id>_<key>`.
pub const PRINCIPAL_PREFIX: &str = "mosb_pr_";

/// The principal's key for this `key_version`.
pub fn derived_key(master_secret: &[u8], principal_id: Uuid, key_version: i32) -> [u8; 32] {
    let label = format!(
        "mosb-principal-v1:{}:{key_version}",
        principal_id.hyphenated()
    );
    hmac_sha256(master_secret, &[label.as_bytes()])
}

/// The credential string handed to the principal (once).
pub fn credential(principal_id: Uuid, derived_key: &[u8; 32]) -> String {
    format!(
        "{PRINCIPAL_PREFIX}{}_{}",
        principal_id.simple(),
        URL_SAFE_NO_PAD.encode(derived_key)
    )
}

/// The principal id a credential names (not yet verified).
pub fn credential_principal(credential: &str) -> Option<Uuid> {
    let rest = credential.strip_prefix(PRINCIPAL_PREFIX)?;
    let (id, key) = (rest.get(..32)?, rest.get(32..)?);
    if !key.starts_with('_') {
        return None;
    }
    Uuid::try_parse(id).ok()
}

/// The service a token names (not yet verified): `mosb_<service>_<secret>`.
pub fn token_service(token: &str) -> Option<&str> {
    if token.starts_with(PRINCIPAL_PREFIX) {
        return None;
    }
    let rest = token.strip_prefix(SERVICE_TOKEN_PREFIX)?;
    let (service, secret) = rest.split_once('_')?;
    (!service.is_empty() && !secret.is_empty()).then_some(service)
}

/// A new service token for `service`: 256 random bits.
pub fn new_service_token(service: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{SERVICE_TOKEN_PREFIX}{service}_{}",
        URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Claims of a sub-assertion (`x-backbone-assertion`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assertion {
    pub sub_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
}

/// Claims of a pre-signed URL token (`?_mosb=`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlToken {
    /// The principal (hyphenated UUID).
    pub sub: Uuid,
    /// The one service it opens.
    pub svc: String,
    pub exp: i64,
}

/// Why a signed value was refused (all become 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignedError {
    #[error("malformed")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
}

fn sign(label: &str, derived_key: &[u8; 32], payload: &impl Serialize) -> String {
    // Serializing these plain structs to JSON cannot fail.
    let json = serde_json::to_vec(payload).unwrap_or_default();
    let encoded = URL_SAFE_NO_PAD.encode(json);
    let mac = hmac_sha256(derived_key, &[label.as_bytes(), encoded.as_bytes()]);
    format!("{encoded}.{}", URL_SAFE_NO_PAD.encode(mac))
}

/// The payload of a signed value, undecoded and unverified: for finding
/// the principal a URL token names.
pub fn peek_url_token(token: &str) -> Result<UrlToken, SignedError> {
    let (encoded, _) = token.split_once('.').ok_or(SignedError::Malformed)?;
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| SignedError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| SignedError::Malformed)
}

fn verify<T: serde::de::DeserializeOwned>(
    label: &str,
    derived_key: &[u8; 32],
    value: &str,
    now: i64,
    exp: impl Fn(&T) -> i64,
) -> Result<T, SignedError> {
    let (encoded, mac) = value.split_once('.').ok_or(SignedError::Malformed)?;
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| SignedError::Malformed)?;
    let expected = hmac_sha256(derived_key, &[label.as_bytes(), encoded.as_bytes()]);
    if !bool::from(expected.as_slice().ct_eq(&mac)) {
        return Err(SignedError::BadSignature);
    }
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| SignedError::Malformed)?;
    let claims: T = serde_json::from_slice(&json).map_err(|_| SignedError::Malformed)?;
    if exp(&claims) <= now {
        return Err(SignedError::Expired);
    }
    Ok(claims)
}

pub fn sign_assertion(derived_key: &[u8; 32], claims: &Assertion) -> String {
    sign("assertion:", derived_key, claims)
}

pub fn verify_assertion(
    derived_key: &[u8; 32],
    value: &str,
    now: i64,
) -> Result<Assertion, SignedError> {
    verify("assertion:", derived_key, value, now, |a: &Assertion| a.exp)
}

pub fn sign_url_token(derived_key: &[u8; 32], claims: &UrlToken) -> String {
    sign("url-token:", derived_key, claims)
}

pub fn verify_url_token(
    derived_key: &[u8; 32],
    value: &str,
    now: i64,
) -> Result<UrlToken, SignedError> {
    verify("url-token:", derived_key, value, now, |t: &UrlToken| t.exp)
}

/// Compares a presented key with the expected one in constant time.
pub fn keys_match(presented: &str, expected: &[u8; 32]) -> bool {
    match URL_SAFE_NO_PAD.decode(presented) {
        Ok(bytes) => bool::from(bytes.as_slice().ct_eq(expected)),
        Err(_) => false,
    }
}

/// The key part of a credential (after `mosb_pr_<id>_`).
pub fn credential_key(credential: &str) -> Option<&str> {
    credential.strip_prefix(PRINCIPAL_PREFIX)?.get(33..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_signatures_round_trip() {
        let id = Uuid::parse_str("0192f7a0-0000-7000-8000-000000000001").unwrap();
        let key = derived_key(&[7u8; 32], id, 1);
        let cred = credential(id, &key);
        assert_eq!(credential_principal(&cred), Some(id));
        assert!(keys_match(credential_key(&cred).unwrap(), &key));
        let a = Assertion {
            sub_id: "alice-session-7".into(),
            name: Some("Alice".into()),
            email: None,
            exp: 2_000_000_000,
        };
        let signed = sign_assertion(&key, &a);
        assert_eq!(verify_assertion(&key, &signed, 1_900_000_000), Ok(a));
        assert_eq!(
            verify_assertion(&key, &signed, 2_000_000_001),
            Err(SignedError::Expired)
        );
        let other = derived_key(&[7u8; 32], id, 2);
        assert_eq!(
            verify_assertion(&other, &signed, 0),
            Err(SignedError::BadSignature)
        );
        assert_eq!(token_service("mosb_myapp_abc_def"), Some("myapp"));
        assert_eq!(token_service(&cred), None);
    }

    /// The worked example of `docs/operations/backbone.md`: if this test
    /// changes, the document (and every client built from it) is wrong.
    #[test]
    fn the_documented_worked_example_holds() {
        let master: Vec<u8> = (0u8..32).collect();
        let id = Uuid::parse_str("0192f7a0-0000-7000-8000-000000000001").unwrap();
        let key = derived_key(&master, id, 1);
        assert_eq!(
            hex::encode(key),
            "f744efdf8f051105f14ef8138ec1fd2c6a9d833cdf91c2d08380a0ae58201e3b"
        );
        assert_eq!(
            credential(id, &key),
            "mosb_pr_0192f7a0000070008000000000000001_90Tv348FEQXxTvgTjsH9LGqdgzzfkcLQg4CgrlggHjs"
        );
        let assertion = Assertion {
            sub_id: "alice-session-7".into(),
            name: Some("Alice".into()),
            email: None,
            exp: 2_000_000_000,
        };
        assert_eq!(
            sign_assertion(&key, &assertion),
            "eyJzdWJfaWQiOiJhbGljZS1zZXNzaW9uLTciLCJuYW1lIjoiQWxpY2UiLCJleHAiOjIwMDAwMDAwMDB9.mfhcMkoDCkSdnnogr_T5_iDyVnG7bV9DsA8goZMip9A"
        );
        let url = UrlToken {
            sub: id,
            svc: "myapp".into(),
            exp: 2_000_000_000,
        };
        assert_eq!(
            sign_url_token(&key, &url),
            "eyJzdWIiOiIwMTkyZjdhMC0wMDAwLTcwMDAtODAwMC0wMDAwMDAwMDAwMDEiLCJzdmMiOiJteWFwcCIsImV4cCI6MjAwMDAwMDAwMH0.JyA-1sLxswtENmyF4I90uDnas3EMb0dHSMpTQsbffyQ"
        );
    }
}
