//! Rate limits on sign-in: per client address and per account, so neither
//! one address nor a botnet aimed at one account can guess passwords fast.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Refused: try again after this many seconds.
#[derive(Clone, Copy, Debug)]
pub struct RateLimited {
    pub retry_after_secs: u64,
}

pub struct LoginLimiter {
    per_client: DefaultKeyedRateLimiter<String>,
    per_account: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    /// With several replicas: the same limits counted in the shared store.
    shared: Option<(crate::cluster::limits::SharedCounter, u32, u32)>,
}

impl LoginLimiter {
    /// `per_client` attempts a minute from one address; `per_account`
    /// attempts a minute for one email, each with that much burst.
    pub fn new(per_client: u32, per_account: u32) -> LoginLimiter {
        let quota =
            |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN));
        LoginLimiter {
            per_client: RateLimiter::keyed(quota(per_client)),
            per_account: RateLimiter::keyed(quota(per_account)),
            clock: DefaultClock::default(),
            shared: None,
        }
    }

    /// Also counts attempts in the shared store (Postgres), so the limits
    /// hold across replicas rather than per replica.
    pub fn shared_across_replicas(
        mut self,
        counter: crate::cluster::limits::SharedCounter,
        per_client: u32,
        per_account: u32,
    ) -> LoginLimiter {
        self.shared = Some((counter, per_client, per_account));
        self
    }

    /// Checks a sign-in attempt from `client` for `email`: this replica's
    /// limits, then the shared ones.
    pub async fn admit(&self, client: &str, email: &str) -> Result<(), RateLimited> {
        self.check_client(client)?;
        self.check_account(email)?;
        if let Some((counter, per_client, per_account)) = &self.shared {
            counter.hit("login-client", client, *per_client).await?;
            counter
                .hit("login-account", &email.trim().to_lowercase(), *per_account)
                .await?;
        }
        Ok(())
    }

    pub fn check_client(&self, client: &str) -> Result<(), RateLimited> {
        self.check(&self.per_client, client.to_owned())
    }

    pub fn check_account(&self, email: &str) -> Result<(), RateLimited> {
        self.check(&self.per_account, email.trim().to_lowercase())
    }

    fn check(
        &self,
        limiter: &DefaultKeyedRateLimiter<String>,
        key: String,
    ) -> Result<(), RateLimited> {
        limiter.check_key(&key).map_err(|not_until| {
            let wait: Duration = not_until.wait_time_from(self.clock.now());
            RateLimited {
                retry_after_secs: wait.as_secs().max(1),
            }
        })
    }

    /// Drops state for keys that are back to full quota (call periodically
    /// so memory does not grow with every address ever seen).
    pub fn prune(&self) {
        self.per_client.retain_recent();
        self.per_account.retain_recent();
    }
}

/// Sign-ups allowed per client address per hour: each one makes a tenant,
/// a CA and an argon2 hash, and sends an email.
pub struct SignUpLimiter {
    per_client: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl SignUpLimiter {
    pub fn new(per_hour: u32) -> SignUpLimiter {
        let n = NonZeroU32::new(per_hour.max(1)).unwrap_or(NonZeroU32::MIN);
        SignUpLimiter {
            per_client: RateLimiter::keyed(Quota::per_hour(n)),
            clock: DefaultClock::default(),
        }
    }

    pub fn check_client(&self, client: &str) -> Result<(), RateLimited> {
        self.per_client
            .check_key(&client.to_owned())
            .map_err(|not_until| RateLimited {
                retry_after_secs: not_until.wait_time_from(self.clock.now()).as_secs().max(1),
            })
    }
}
