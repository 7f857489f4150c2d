//! Stripe's webhook signature, verified exactly as Stripe specifies
//! (<https://docs.stripe.com/webhooks#verify-manually>): the
//! `Stripe-Signature` header is `t=<unix time>,v1=<hex>[,v1=<hex>...]`
//! (plus `v0` test signatures, ignored); each `v1` is HMAC-SHA256, keyed
//! with the endpoint secret, of `<t>.<raw body>`. Every `v1` is checked
//! against every configured secret, so a secret can be rotated with both
//! active; the timestamp must be within the tolerance of now, against
//! replays; comparisons are constant-time.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a signature was refused (all answered 400, the reason logged).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the Stripe-Signature header has no timestamp or no v1 signature")]
    Malformed,
    #[error("the signature's timestamp is outside the tolerance")]
    Expired,
    #[error("no v1 signature matches any webhook secret")]
    Mismatch,
}

/// Verifies `header` over `payload` (the raw body, before any parsing).
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secrets: &[SecretString],
    tolerance_secs: u64,
    now_unix: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = Some(value),
            // A v1 that is not hex cannot match; skip it rather than fail
            // the others.
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    let t: i64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_unix.abs_diff(t) > tolerance_secs {
        return Err(SignatureError::Expired);
    }
    let mut matched = subtle::Choice::from(0u8);
    for secret in secrets {
        let expected = sign(secret.expose_secret(), timestamp, payload);
        for candidate in &signatures {
            matched |= expected.as_slice().ct_eq(candidate.as_slice());
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// HMAC-SHA256 of `<timestamp>.<payload>` under `secret`.
pub fn sign(secret: &str, timestamp: &str, payload: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length, so `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return Vec::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter()
            .map(|s| SecretString::from(s.to_string()))
            .collect()
    }

    fn header(secret: &str, t: i64, body: &[u8]) -> String {
        format!(
            "t={t},v1={}",
            hex::encode(sign(secret, &t.to_string(), body))
        )
    }

    #[test]
    fn accepts_any_v1_under_any_secret() {
        let body = br#"{"id":"evt_1"}"#;
        let t = 1_700_000_000;
        let good = header("whsec_new", t, body);
        let both = format!("t={t},v1=00ff,{}", good.split_once(',').unwrap().1);
        assert_eq!(
            verify(
                Some(&both),
                body,
                &secrets(&["whsec_old", "whsec_new"]),
                300,
                t
            ),
            Ok(())
        );
        assert_eq!(
            verify(Some(&good), body, &secrets(&["whsec_other"]), 300, t),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), b"{}", &secrets(&["whsec_new"]), 300, t),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), body, &secrets(&["whsec_new"]), 300, t + 301),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(Some("v1=abcd"), body, &secrets(&["whsec_new"]), 300, t),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(None, body, &secrets(&["whsec_new"]), 300, t),
            Err(SignatureError::Missing)
        );
    }
}
