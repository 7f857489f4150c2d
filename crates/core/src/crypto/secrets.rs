//! High-entropy secrets handed to clients (API tokens, refresh tokens,
//! invitation and setup codes) and how they are stored: only the SHA-256
//! of a 256-bit random secret is kept. A fast hash is enough because the
//! secret cannot be guessed (argon2 is for low-entropy passwords), and it
//! keeps every authenticated request cheap.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefixes tell a leaked secret's kind at a glance (and let secret
/// scanners find them).
pub const API_TOKEN_PREFIX: &str = "mob_pat_";
pub const REFRESH_TOKEN_PREFIX: &str = "mob_rt_";
pub const INVITATION_PREFIX: &str = "mob_inv_";
pub const SETUP_CODE_PREFIX: &str = "mob_setup_";

/// A new secret: `prefix` followed by 32 random bytes in URL-safe base64.
pub fn generate(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// HMAC-SHA256 under `key` of `parts`, one after the other.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Compares two hashes without leaking where they differ.
pub fn hashes_match(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}
