//! Rate limits that hold across replicas.
//!
//! Each replica first checks its own in-memory limiter (cheap, and it
//! keeps a flood from one address off the database); on Postgres the
//! attempt is then counted in `rate_limit_counters`, one row per key and
//! one-minute window, with a single upsert, so N replicas together admit
//! the limit, not N times it. Keys are SHA-256 hashes (an email or
//! address never sits in a shared table in clear). Fixed windows admit at
//! most twice the limit across a window boundary; that is the price of one
//! statement per attempt, and is documented in docs/operations/scaling.md.
//! If the database cannot count, the attempt is let through on the local
//! limit alone (the login that follows needs the database anyway).

use chrono::{DateTime, DurationRound, Utc};
use mobius_core::Store;
use mobius_core::db::Backend;
use sha2::{Digest, Sha256};

use crate::http::limits::RateLimited;

/// Counts attempts per key and minute in the shared store.
#[derive(Clone)]
pub struct SharedCounter {
    store: Store,
}

impl SharedCounter {
    pub fn new(store: Store) -> SharedCounter {
        SharedCounter { store }
    }

    /// Counts one attempt of `kind` by `key`; refused when the window
    /// already saw `per_minute` attempts.
    pub async fn hit(&self, kind: &str, key: &str, per_minute: u32) -> Result<(), RateLimited> {
        if self.store.backend() != Backend::Postgres {
            // One server: the in-memory limiter already decided.
            return Ok(());
        }
        let now = Utc::now();
        let window = window_start(now);
        let hashed = hex::encode(Sha256::digest(format!("{kind}:{key}").as_bytes()));
        match self.store.count_rate_limit_hit(&hashed, window).await {
            Ok(hits) if hits > i64::from(per_minute) => {
                let left = (window + chrono::Duration::minutes(1) - now).num_seconds();
                Err(RateLimited {
                    retry_after_secs: left.max(1) as u64,
                })
            }
            Ok(_) => Ok(()),
            Err(err) => {
                tracing::warn!(error = %err, "cannot count a rate-limited attempt in the shared store");
                Ok(())
            }
        }
    }
}

/// Enrollment attempts per client address, across replicas: a local
/// limiter first, then the shared counter.
pub struct EnrollmentLimiter {
    per_minute: u32,
    local: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    shared: SharedCounter,
}

impl EnrollmentLimiter {
    pub fn new(per_minute: u32, store: Store) -> EnrollmentLimiter {
        let quota = governor::Quota::per_minute(
            std::num::NonZeroU32::new(per_minute.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
        );
        EnrollmentLimiter {
            per_minute,
            local: governor::RateLimiter::keyed(quota),
            shared: SharedCounter::new(store),
        }
    }

    /// Counts one enrollment attempt from `client`.
    pub async fn admit(&self, client: std::net::IpAddr) -> Result<(), RateLimited> {
        use governor::clock::{Clock, DefaultClock};
        self.local
            .check_key(&client)
            .map_err(|not_until| RateLimited {
                retry_after_secs: not_until
                    .wait_time_from(DefaultClock::default().now())
                    .as_secs()
                    .max(1),
            })?;
        self.shared
            .hit("enroll-client", &client.to_string(), self.per_minute)
            .await
    }
}

fn window_start(now: DateTime<Utc>) -> DateTime<Utc> {
    now.duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or(now)
}
