//! Password hashing with argon2id at the OWASP-recommended parameters
//! (19 MiB memory, 2 iterations, 1 lane): slow enough to make offline
//! guessing expensive, fast enough (~20-40 ms here) for an interactive login.

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

use crate::db::{StoreError, StoreResult};

pub const MIN_PASSWORD_CHARS: usize = 12;
/// Bounds the work an attacker can make one login do.
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Checks a new password against the policy (length only: composition
/// rules push people to worse passwords).
pub fn check_policy(password: &str) -> StoreResult<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(StoreError::Invalid {
            field: "password",
            reason: format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        });
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(StoreError::Invalid {
            field: "password",
            reason: format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        });
    }
    Ok(())
}

/// Hashes a password (PHC string). CPU-bound: call from `spawn_blocking`.
pub fn hash(password: &str) -> StoreResult<String> {
    check_policy(password)?;
    let salt: [u8; 16] = rand::random();
    hasher()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Internal {
            context: "hashing a password",
            source: e.to_string().into(),
        })
}

/// Verifies `password` against a stored hash. With no stored hash (unknown
/// email, SSO-only user) it verifies against a fixed dummy hash and returns
/// false, so both cases take the same time and give the same answer.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("dummy-password-for-timing").unwrap_or_default());
    let (candidate, real) = match stored {
        Some(stored) => (stored, true),
        None => (dummy.as_str(), false),
    };
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let ok = hasher()
        .verify_password(password.as_bytes(), candidate)
        .is_ok();
    ok && real
}
