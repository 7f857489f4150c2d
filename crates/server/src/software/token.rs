//! Signed download URLs: `<device>.<version>.<request>.<expiry>.<mac>`, the
//! MAC an HMAC-SHA256 under a per-tenant secret derived from the tenant's
//! plan-signing key (so every replica computes the same one and nothing
//! new is stored). The URL is good only for the device it names (the
//! request must also come with that device's certificate), only for one
//! installer, and only until it expires (default 15 minutes): a leaked
//! URL is useless elsewhere and soon useless everywhere.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mobius_core::Uuid;
use mobius_core::crypto::secrets;

/// The purpose label of the derived secret.
pub const PURPOSE: &str = "software download url v1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadClaims {
    pub device_id: Uuid,
    pub version_id: Uuid,
    pub request_id: Uuid,
    /// Unix seconds.
    pub expires: i64,
}

fn mac(secret: &[u8; 32], message: &str) -> [u8; 32] {
    secrets::hmac_sha256(secret, &[message.as_bytes()])
}

pub fn sign(secret: &[u8; 32], claims: &DownloadClaims) -> String {
    let message = format!(
        "{}.{}.{}.{}",
        claims.device_id.simple(),
        claims.version_id.simple(),
        claims.request_id.simple(),
        claims.expires
    );
    format!(
        "{message}.{}",
        URL_SAFE_NO_PAD.encode(mac(secret, &message))
    )
}

/// The claims a token carries, unverified (to find the tenant's secret).
pub fn peek(token: &str) -> Option<DownloadClaims> {
    let mut parts = token.split('.');
    let claims = DownloadClaims {
        device_id: Uuid::try_parse(parts.next()?).ok()?,
        version_id: Uuid::try_parse(parts.next()?).ok()?,
        request_id: Uuid::try_parse(parts.next()?).ok()?,
        expires: parts.next()?.parse().ok()?,
    };
    parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some(claims)
}

/// Checks the MAC (in constant time) and the expiry.
pub fn verify(secret: &[u8; 32], token: &str, now: i64) -> Result<DownloadClaims, &'static str> {
    let claims = peek(token).ok_or("the download URL is malformed")?;
    let (message, tag) = token
        .rsplit_once('.')
        .ok_or("the download URL is malformed")?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| "the download URL is malformed")?;
    if !secrets::hashes_match(&mac(secret, message), &tag) {
        return Err("the download URL's signature does not verify");
    }
    if claims.expires < now {
        return Err("the download URL has expired: ask for a new one");
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_unchanged_and_unexpired() {
        let secret = [7u8; 32];
        let claims = DownloadClaims {
            device_id: Uuid::now_v7(),
            version_id: Uuid::now_v7(),
            request_id: Uuid::now_v7(),
            expires: 1000,
        };
        let token = sign(&secret, &claims);
        assert_eq!(verify(&secret, &token, 999), Ok(claims.clone()));
        assert!(
            verify(&secret, &token, 1001)
                .unwrap_err()
                .contains("expired")
        );
        assert!(verify(&[8u8; 32], &token, 999).is_err());
        let other = sign(
            &secret,
            &DownloadClaims {
                device_id: Uuid::now_v7(),
                ..claims.clone()
            },
        );
        let forged = format!(
            "{}.{}",
            other.rsplit_once('.').unwrap().0,
            token.rsplit_once('.').unwrap().1
        );
        assert!(verify(&secret, &forged, 999).is_err());
    }
}
