//! The price → plan mapping (the `[billing]` settings): which tier, device
//! limit and premium features each Stripe price id buys, and what a tenant
//! without a paid plan gets. Validated once at start, so a typo stops the
//! server instead of mis-billing a tenant later.

use std::collections::HashSet;

use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};

use crate::authz::Feature;

/// The `[billing]` settings of the cloud edition.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingSettings {
    /// Stripe webhook signing secrets (`whsec_...`). Every one is tried, so
    /// during a secret rotation the old and the new are both listed.
    #[serde(serialize_with = "redact_all")]
    pub webhook_secrets: Vec<SecretString>,
    /// A signature older (or newer) than this is refused, against replays.
    pub signature_tolerance_secs: u64,
    /// Stripe secret API key (`sk_...`), for checkout and portal sessions.
    #[serde(serialize_with = "redact_one")]
    pub api_key: Option<SecretString>,
    /// Stripe's API address; only tests change it.
    pub api_base: Option<String>,
    /// A past-due subscription keeps its plan this long after the first
    /// failed payment, then falls back to the free plan's limits.
    pub grace_period_days: u32,
    /// Where checkout sends the browser after paying, and after giving up.
    pub checkout_success_url: Option<String>,
    pub checkout_cancel_url: Option<String>,
    /// Where the customer portal's "back" link goes.
    pub portal_return_url: Option<String>,
    /// What a tenant gets with no subscription, or a canceled one.
    pub free: FreePlan,
    /// One entry per Stripe price id that buys a plan.
    pub prices: Vec<PricePlan>,
}

impl Default for BillingSettings {
    fn default() -> Self {
        BillingSettings {
            webhook_secrets: Vec::new(),
            signature_tolerance_secs: 300,
            api_key: None,
            api_base: None,
            grace_period_days: 7,
            checkout_success_url: None,
            checkout_cancel_url: None,
            portal_return_url: None,
            free: FreePlan::default(),
            prices: Vec::new(),
        }
    }
}

/// The plan of tenants that pay nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreePlan {
    pub tier: String,
    /// Unset: no limit.
    pub device_limit: Option<u64>,
    pub features: Vec<String>,
}

impl Default for FreePlan {
    fn default() -> Self {
        FreePlan {
            tier: "free".into(),
            device_limit: Some(10),
            features: Vec::new(),
        }
    }
}

/// What one Stripe price buys. The device limit is, in order: the
/// subscription quantity times `devices_per_unit` (per-seat prices), else
/// `device_limit`, else the price's `device_limit` metadata in Stripe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricePlan {
    pub price_id: String,
    pub tier: String,
    #[serde(default)]
    pub device_limit: Option<u64>,
    #[serde(default)]
    pub devices_per_unit: Option<u64>,
    #[serde(default)]
    pub features: Vec<String>,
}

/// Terms a tenant's plan grants: tier, device limit, premium features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanTerms {
    pub tier: String,
    pub device_limit: Option<u64>,
    pub features: Vec<Feature>,
}

/// The settings could not be used; the text names the setting.
#[derive(Debug, thiserror::Error)]
#[error("billing.{0}")]
pub struct CatalogError(pub String);

/// A subscription names a price the mapping does not know, or a
/// metered price without a way to derive its device limit.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("price {0} is not in the billing.prices mapping")]
    Unknown(String),
    #[error("price {0} has neither device_limit, devices_per_unit nor device_limit metadata")]
    NoDeviceLimit(String),
}

/// The validated mapping.
#[derive(Clone, Debug)]
pub struct PlanCatalog {
    free: PlanTerms,
    prices: Vec<(PricePlan, Vec<Feature>)>,
    grace: chrono::Duration,
}

impl PlanCatalog {
    /// Checks every entry: known feature names, one entry per price id, a
    /// non-empty tier, at most one device-limit rule per price.
    pub fn new(settings: &BillingSettings) -> Result<PlanCatalog, CatalogError> {
        if settings.free.tier.trim().is_empty() {
            return Err(CatalogError("free.tier must not be empty".into()));
        }
        let free = PlanTerms {
            tier: settings.free.tier.clone(),
            device_limit: settings.free.device_limit,
            features: parse_features("free.features", &settings.free.features)?,
        };
        let mut seen = HashSet::new();
        let mut prices = Vec::new();
        for (i, price) in settings.prices.iter().enumerate() {
            if !price.price_id.starts_with("price_") && !price.price_id.starts_with("plan_") {
                return Err(CatalogError(format!(
                    "prices[{i}].price_id `{}` is not a Stripe price id (price_...)",
                    price.price_id
                )));
            }
            if !seen.insert(price.price_id.clone()) {
                return Err(CatalogError(format!(
                    "prices[{i}].price_id `{}` is listed twice",
                    price.price_id
                )));
            }
            if price.tier.trim().is_empty() {
                return Err(CatalogError(format!("prices[{i}].tier must not be empty")));
            }
            if price.device_limit.is_some() && price.devices_per_unit.is_some() {
                return Err(CatalogError(format!(
                    "prices[{i}]: set device_limit or devices_per_unit, not both"
                )));
            }
            if price.devices_per_unit == Some(0) {
                return Err(CatalogError(format!(
                    "prices[{i}].devices_per_unit must be at least 1"
                )));
            }
            let features = parse_features(&format!("prices[{i}].features"), &price.features)?;
            prices.push((price.clone(), features));
        }
        if settings.grace_period_days > 90 {
            return Err(CatalogError("grace_period_days must be at most 90".into()));
        }
        Ok(PlanCatalog {
            free,
            prices,
            grace: chrono::Duration::days(i64::from(settings.grace_period_days)),
        })
    }

    /// The free plan.
    pub fn free(&self) -> &PlanTerms {
        &self.free
    }

    /// How long a past-due plan holds.
    pub fn grace(&self) -> chrono::Duration {
        self.grace
    }

    /// Whether the mapping knows this price id.
    pub fn knows(&self, price_id: &str) -> bool {
        self.prices.iter().any(|(p, _)| p.price_id == price_id)
    }

    /// The terms a subscription to `price_id` with `quantity` buys.
    /// `metadata_limit` is the price's `device_limit` metadata, if any.
    pub fn terms_for(
        &self,
        price_id: &str,
        quantity: Option<u64>,
        metadata_limit: Option<u64>,
    ) -> Result<PlanTerms, PriceError> {
        let (price, features) = self
            .prices
            .iter()
            .find(|(p, _)| p.price_id == price_id)
            .ok_or_else(|| PriceError::Unknown(price_id.to_owned()))?;
        let device_limit = match (price.devices_per_unit, price.device_limit) {
            (Some(per_unit), _) => Some(quantity.unwrap_or(1).saturating_mul(per_unit)),
            (None, Some(limit)) => Some(limit),
            (None, None) => {
                Some(metadata_limit.ok_or_else(|| PriceError::NoDeviceLimit(price_id.to_owned()))?)
            }
        };
        Ok(PlanTerms {
            tier: price.tier.clone(),
            device_limit,
            features: features.clone(),
        })
    }
}

/// The configuration name of a premium feature (`saml`, ...).
pub fn feature_key(feature: Feature) -> &'static str {
    match feature {
        Feature::Saml => "saml",
        Feature::CustomWebhooks => "custom_webhooks",
        Feature::TeamPolicies => "team_policies",
    }
}

/// Every premium feature, for parsing and listing.
pub const ALL_FEATURES: &[Feature] = &[
    Feature::Saml,
    Feature::CustomWebhooks,
    Feature::TeamPolicies,
];

/// A feature by its configuration name.
pub fn feature_by_key(key: &str) -> Option<Feature> {
    ALL_FEATURES
        .iter()
        .copied()
        .find(|f| feature_key(*f) == key)
}

fn parse_features(setting: &str, names: &[String]) -> Result<Vec<Feature>, CatalogError> {
    names
        .iter()
        .map(|name| {
            feature_by_key(name).ok_or_else(|| {
                let known: Vec<&str> = ALL_FEATURES.iter().map(|f| feature_key(*f)).collect();
                CatalogError(format!(
                    "{setting}: unknown feature `{name}` (known: {})",
                    known.join(", ")
                ))
            })
        })
        .collect()
}

fn redact_all<S: Serializer>(value: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(value.iter().map(|_| "***"))
}

fn redact_one<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        None => s.serialize_none(),
        Some(_) => s.serialize_str("***"),
    }
}
