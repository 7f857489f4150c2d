//! Entitlements: what a tenant has paid for (or licensed). One trait, one
//! implementation per edition, chosen by the binary in `editions/*`.

use chrono::{DateTime, Utc};
use sea_orm::prelude::Uuid;

/// The entitlement gate. The device limit is enforced inside the
/// enrollment transaction, under the tenant's device-limit lock, so it is
/// exact under concurrency.
pub trait Entitlements: Send + Sync + std::fmt::Debug {
    /// A short name for logs and `mobius-server config`.
    fn describe(&self) -> String;

    /// The most devices the tenant may have, or `None` for no limit.
    fn device_limit(&self, tenant_id: Uuid) -> Option<u64>;

    /// Whether the tenant may use a premium feature now.
    fn require(&self, tenant_id: Uuid, feature: Feature) -> Result<(), LicenseRequired>;

    /// What the tenant is entitled to now, for `license/status`, GraphQL
    /// `license` and the CLI. The default suits a gate with no license or
    /// plan behind it (every feature allowed, [`Entitlements::device_limit`]
    /// as the limit), so an edition that has not said otherwise reports
    /// what it enforces.
    fn status(&self, tenant_id: Uuid) -> EntitlementStatus {
        EntitlementStatus {
            source: EntitlementSource::Plan,
            tier: Tier::Enterprise,
            state: LicenseState::Valid,
            organization: None,
            device_limit: self.device_limit(tenant_id),
            expires_at: None,
            grace_ends_at: None,
            license_id: None,
            signed_by_test_key: false,
        }
    }
}

/// Where a tenant's entitlements come from: a signed license file (OSS) or
/// the tenant's billing plan (cloud). `PUT /license` answers by this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntitlementSource {
    License,
    Plan,
}

/// A license or plan tier, lowest first (so `>=` says "includes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// No license: the documented free device limit, no premium feature.
    Free,
    Basic,
    Premium,
    Enterprise,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Basic => "basic",
            Tier::Premium => "premium",
            Tier::Enterprise => "enterprise",
        }
    }

    /// Whether this tier includes `feature`.
    pub fn includes(self, feature: Feature) -> bool {
        self >= feature.required_tier()
    }
}

/// Where a license stands in its life. Warnings start 30 days before
/// expiry; 14 days of grace keep everything working; after that premium
/// features refuse, while reads and device traffic go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LicenseState {
    /// No license: the free tier.
    Free,
    /// More than 30 days left.
    Valid,
    /// 30 days or fewer left: a warning, full function.
    Expiring,
    /// Expired less than 14 days ago: a louder warning, full function.
    Grace,
    /// Grace is over: premium features refuse with `LICENSE_REQUIRED`; the
    /// licensed device limit still applies (no device is dropped).
    Expired,
}

impl LicenseState {
    pub fn name(self) -> &'static str {
        match self {
            LicenseState::Free => "free",
            LicenseState::Valid => "valid",
            LicenseState::Expiring => "expiring",
            LicenseState::Grace => "grace",
            LicenseState::Expired => "expired",
        }
    }
}

/// A snapshot of what a tenant may do, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntitlementStatus {
    pub source: EntitlementSource,
    /// The tier the license names (what was bought, even once expired).
    pub tier: Tier,
    pub state: LicenseState,
    /// The license's `sub`: who it was issued to.
    pub organization: Option<String>,
    /// The limit enforced now (`None`: no limit).
    pub device_limit: Option<u64>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When premium features stop (expiry plus the grace period).
    pub grace_ends_at: Option<DateTime<Utc>>,
    /// The license's `jti`.
    pub license_id: Option<String>,
    /// Signed by the test key that only debug builds can be told to trust.
    pub signed_by_test_key: bool,
}

impl EntitlementStatus {
    /// Whole days until `expires_at` (negative once past), rounded down.
    pub fn days_left(&self, now: DateTime<Utc>) -> Option<i64> {
        self.expires_at.map(|exp| (exp - now).num_days())
    }

    /// The tier in force now: the licensed tier, or free once the license
    /// is expired past its grace.
    pub fn effective_tier(&self) -> Tier {
        match self.state {
            LicenseState::Free | LicenseState::Expired => Tier::Free,
            LicenseState::Valid | LicenseState::Expiring | LicenseState::Grace => self.tier,
        }
    }

    /// A warning for admins, when there is something to act on.
    pub fn warning(&self, now: DateTime<Utc>) -> Option<String> {
        let days = self.days_left(now).unwrap_or(0);
        let exp = self.expires_at.map(|e| e.format("%Y-%m-%d").to_string());
        let exp = exp.as_deref().unwrap_or("?");
        let grace = self.grace_ends_at.map(|e| e.format("%Y-%m-%d").to_string());
        let grace = grace.as_deref().unwrap_or("?");
        match self.state {
            LicenseState::Free | LicenseState::Valid => None,
            LicenseState::Expiring => Some(format!(
                "the {} license expires on {exp} ({days} days left): renew it and set the new `license_key`",
                self.tier.name()
            )),
            LicenseState::Grace => Some(format!(
                "the {} license expired on {exp}; everything keeps working until {grace}, then premium features stop: renew it",
                self.tier.name()
            )),
            LicenseState::Expired => Some(format!(
                "the {} license expired on {exp} and its grace period ended on {grace}: premium features refuse with LICENSE_REQUIRED; reads, device traffic and enrollments within the licensed limit keep working",
                self.tier.name()
            )),
        }
    }
}

/// The same limit (or none) for every tenant: the `device_limit` setting.
#[derive(Clone, Copy, Debug, Default)]
pub struct FixedDeviceLimit(pub Option<u64>);

impl Entitlements for FixedDeviceLimit {
    fn describe(&self) -> String {
        match self.0 {
            Some(limit) => format!("fixed device limit ({limit} devices per tenant)"),
            None => "unlimited (no device limit)".to_owned(),
        }
    }

    fn device_limit(&self, _: Uuid) -> Option<u64> {
        self.0
    }

    /// No license behind this gate (the cloud edition until billing plans
    /// arrive): every feature is allowed.
    fn require(&self, _: Uuid, _: Feature) -> Result<(), LicenseRequired> {
        Ok(())
    }
}

/// A premium feature: refused with `LICENSE_REQUIRED` unless the tenant's
/// license (OSS) or plan (cloud) includes it. Every call site asks
/// [`Entitlements::require`], so the gate is one function per edition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// SAML single sign-on.
    Saml,
    /// Webhooks to URLs an admin sets (policy transitions, ...).
    CustomWebhooks,
    /// Policies scoped to one team.
    TeamPolicies,
}

impl Feature {
    /// The stable name used in error messages and docs.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Saml => "SAML single sign-on",
            Feature::CustomWebhooks => "custom webhooks",
            Feature::TeamPolicies => "policies per team",
        }
    }

    /// Every premium feature, for docs and the status answer.
    pub const ALL: [Feature; 3] = [
        Feature::Saml,
        Feature::CustomWebhooks,
        Feature::TeamPolicies,
    ];

    /// The lowest tier that includes the feature (its name).
    pub fn tier(self) -> &'static str {
        self.required_tier().name()
    }

    /// The lowest tier that includes the feature.
    pub fn required_tier(self) -> Tier {
        match self {
            Feature::Saml | Feature::CustomWebhooks | Feature::TeamPolicies => Tier::Premium,
        }
    }
}

/// A premium feature the tenant is not entitled to (`LICENSE_REQUIRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} requires a {} license or plan", .feature.name(), .feature.tier())]
pub struct LicenseRequired {
    pub feature: Feature,
}
