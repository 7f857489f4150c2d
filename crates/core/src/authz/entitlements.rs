//! Entitlements: what a tenant has paid for (or licensed). One trait, one
//! implementation per edition, chosen by the binary in `editions/*`.

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

    /// No license checks yet: every feature is allowed (the licensing
    /// issue replaces this with the license's tier).
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

    /// The lowest tier that includes the feature.
    pub fn tier(self) -> &'static str {
        match self {
            Feature::Saml | Feature::CustomWebhooks | Feature::TeamPolicies => "premium",
        }
    }
}

/// A premium feature the tenant is not entitled to (`LICENSE_REQUIRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} requires a {} license or plan", .feature.name(), .feature.tier())]
pub struct LicenseRequired {
    pub feature: Feature,
}
