//! Password hashing with argon2id at the OWASP-recommended parameters
//! (19 MiB memory, 2 iterations, 1 lane): slow enough to make offline
//! guessing expensive, fast enough (~20-40 ms here) for an interactive login.
//!
//! Memory: each argon2 run needs its 19 MiB of blocks. Allocated per run,
//! a burst of failed logins (an unknown email costs the same work) runs one
//! hash per blocking thread, and glibc keeps each thread arena's freed
//! blocks: 25 concurrent failed logins, twice, grew the process by 840 MiB
//! and kept it. Bounding concurrency alone (a semaphore per core) did not
//! fix it (+704 MiB measured): the permits pass between blocking threads,
//! and each thread's arena still keeps its own freed 19 MiB. So
//! verification also reuses memory: one block buffer per permit, kept in a
//! pool and handed to `hash_password_into_with_memory`, so the process
//! holds at most cores x 19 MiB for hashing whatever the load. (A different
//! allocator or M_ARENA_MAX would also cap it, but globally and less
//! predictably; this bounds exactly the allocation that grows.)

use std::sync::{Arc, LazyLock, Mutex};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::db::{StoreError, StoreResult};

pub const MIN_PASSWORD_CHARS: usize = 12;
/// Bounds the work an attacker can make one login do.
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn params() -> Params {
    Params::new(19 * 1024, 2, 1, None).expect("OWASP argon2 parameters are valid")
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
}

/// One argon2 run per core: more at once adds memory, not throughput.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

static HASHING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(cores())));

/// Block buffers for the current parameters, at most one per permit.
static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// Waits for a turn to hash; hold the permit for the whole of one [`hash`]
/// or [`verify`] (move it into the blocking task).
pub async fn hashing_permit() -> OwnedSemaphorePermit {
    HASHING
        .clone()
        .acquire_owned()
        .await
        .expect("the hashing semaphore is never closed")
}

/// Runs `f` with a block buffer of `blocks` blocks: a pooled one when the
/// size is the current parameters' (every hash this server writes), else
/// a fresh one (an old hash with other parameters: rare, and not kept).
fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    if blocks != params().block_count() {
        return f(&mut vec![Block::default(); blocks]);
    }
    let pooled = MEMORY.lock().ok().and_then(|mut pool| pool.pop());
    let mut memory = pooled.unwrap_or_else(|| vec![Block::default(); blocks]);
    let result = f(&mut memory);
    if let Ok(mut pool) = MEMORY.lock()
        && pool.len() < cores()
    {
        pool.push(memory);
    }
    result
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
    verify_phc(password.as_bytes(), candidate) && real
}

/// Recomputes the PHC string's hash for `password` with pooled memory and
/// compares in constant time. A string that does not parse never matches.
fn verify_phc(password: &[u8], phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm.as_str()),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let hashed = with_memory(blocks, |memory| {
        argon2.hash_password_into_with_memory(password, salt.as_ref(), &mut out, memory)
    });
    hashed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_its_own_hashes_and_hashes_with_other_parameters() {
        let stored = hash("a long enough password").unwrap();
        assert!(verify("a long enough password", Some(&stored)));
        assert!(!verify("a long enough passwore", Some(&stored)));
        assert!(!verify("a long enough password", None));
        assert!(!verify("a long enough password", Some("not a PHC string")));

        // An older hash with other parameters still verifies (fresh memory).
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password_with_salt(b"a long enough password", b"saltsaltsalt")
        .unwrap()
        .to_string();
        assert!(verify("a long enough password", Some(&other)));
        assert!(!verify("another password!!", Some(&other)));
    }
}
