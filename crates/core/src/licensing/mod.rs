//! Licenses for the OSS edition: an EdDSA-signed JWT whose public key is
//! compiled into the binary, read once at start-up, and the
//! [`Entitlements`] it grants (tier, device limit, premium features, and
//! what happens as it expires).
//!
//! See `docs/operations/license.md` for the claims, the states and why the
//! test key cannot forge a license for a release binary.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sea_orm::prelude::Uuid;
use serde::Deserialize;

use crate::authz::{
    EntitlementSource, EntitlementStatus, Entitlements, Feature, LicenseRequired, LicenseState,
    Tier,
};

/// The `iss` every Mobius license carries.
pub const LICENSE_ISSUER: &str = "https://licenses.mobius.dev";

/// Devices allowed without a license: no limit. An exact limit costs
/// every enrollment a per-tenant lock and a count (five statements become
/// seven, and a tenant's enrollments serialize), which the free tier should
/// not pay; it differs from paid tiers by the premium features. The
/// `device_limit` setting can still set one.
pub const FREE_DEVICE_LIMIT: Option<u64> = None;

/// Warnings start this long before `exp`.
pub const WARN_BEFORE_EXPIRY_DAYS: i64 = 30;
/// Full function continues this long after `exp`.
pub const GRACE_DAYS: i64 = 14;

/// The vendor's Ed25519 public key (raw 32 bytes, base64): the only key a
/// release binary trusts. Its private half never enters this repository.
const VENDOR_PUBLIC_KEY: &str = "ktF/xglQsfH/YbX8zmoenVGSf+YYYWB/MIcFfI9QM70=";

/// The test key's public half, compiled only into debug builds
/// (`cfg(debug_assertions)`, off in every `--release` build), and trusted
/// there only when the `license_trust_test_key` setting is on. Its private
/// half is public (in the test harness), so a release binary must never
/// contain it: this constant does not exist in one.
#[cfg(debug_assertions)]
const TEST_PUBLIC_KEY: Option<&str> = Some("kN/OT7sb4lBLflZc7TIP6LHpOUe+GuhiZoPwWAPNmnw=");
#[cfg(not(debug_assertions))]
const TEST_PUBLIC_KEY: Option<&str> = None;

/// Whether this binary can trust the test key at all (debug builds only).
pub fn test_key_available() -> bool {
    TEST_PUBLIC_KEY.is_some()
}

/// Why a license was refused. The message names the problem, never the
/// token's text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LicenseError {
    #[error("the license is not a well-formed JWT ({0})")]
    Malformed(String),
    #[error("the license is signed with {0}, not EdDSA")]
    WrongAlgorithm(String),
    #[error(
        "the license's signature does not verify: it was signed by a key this binary does not trust"
    )]
    BadSignature,
    #[error("the license's issuer (`iss`) is {found:?}, expected {LICENSE_ISSUER:?}")]
    WrongIssuer { found: String },
    #[error("the license's claim `{claim}` is invalid: {reason}")]
    InvalidClaim {
        claim: &'static str,
        reason: &'static str,
    },
    #[error(
        "the setting `license_trust_test_key` is only honoured by debug builds; this is a release build"
    )]
    TestKeyUnavailable,
}

/// The claims of a license, as signed.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    tier: String,
    devices: u64,
    iat: i64,
    exp: i64,
    jti: String,
}

/// A license whose signature, issuer and claims were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct License {
    /// `sub`: the organization it was issued to.
    pub organization: String,
    pub tier: Tier,
    /// `devices`: the device limit it grants.
    pub devices: u64,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `jti`: the license's id, for support and revocation lists.
    pub id: String,
    /// Verified with the debug-only test key, not the vendor's.
    pub signed_by_test_key: bool,
}

impl License {
    /// Verifies `token` against the vendor key (and the test key, when
    /// `trust_test_key` and this is a debug build). Expiry is not an error
    /// here: an expired license still names its tier and organization, and
    /// its state decides what it grants.
    pub fn verify(token: &str, trust_test_key: bool) -> Result<License, LicenseError> {
        let token = token.trim();
        let mut keys = vec![(VENDOR_PUBLIC_KEY, false)];
        if trust_test_key {
            match TEST_PUBLIC_KEY {
                Some(key) => keys.push((key, true)),
                None => return Err(LicenseError::TestKeyUnavailable),
            }
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| LicenseError::Malformed(describe(&e)))?;
        if header.alg != Algorithm::EdDSA {
            return Err(LicenseError::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["iss", "sub", "exp", "iat", "jti"]);
        for (key, is_test) in keys {
            let raw = STANDARD
                .decode(key)
                .map_err(|_| LicenseError::Malformed("bad compiled-in key".into()))?;
            let key = DecodingKey::from_ed_der(&raw);
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => return License::from_claims(data.claims, is_test),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(LicenseError::Malformed(describe(&e))),
            }
        }
        Err(LicenseError::BadSignature)
    }

    fn from_claims(claims: Claims, signed_by_test_key: bool) -> Result<License, LicenseError> {
        if claims.iss != LICENSE_ISSUER {
            return Err(LicenseError::WrongIssuer { found: claims.iss });
        }
        let tier = match claims.tier.as_str() {
            "basic" => Tier::Basic,
            "premium" => Tier::Premium,
            "enterprise" => Tier::Enterprise,
            _ => {
                return Err(LicenseError::InvalidClaim {
                    claim: "tier",
                    reason: "must be basic, premium or enterprise",
                });
            }
        };
        if claims.sub.trim().is_empty() {
            return Err(LicenseError::InvalidClaim {
                claim: "sub",
                reason: "must name the organization",
            });
        }
        if claims.devices == 0 {
            return Err(LicenseError::InvalidClaim {
                claim: "devices",
                reason: "must be at least 1",
            });
        }
        let time = |claim, secs| {
            DateTime::<Utc>::from_timestamp(secs, 0).ok_or(LicenseError::InvalidClaim {
                claim,
                reason: "is not a valid time",
            })
        };
        let issued_at = time("iat", claims.iat)?;
        let expires_at = time("exp", claims.exp)?;
        if expires_at <= issued_at {
            return Err(LicenseError::InvalidClaim {
                claim: "exp",
                reason: "must be after `iat`",
            });
        }
        Ok(License {
            organization: claims.sub,
            tier,
            devices: claims.devices,
            issued_at,
            expires_at,
            id: claims.jti,
            signed_by_test_key,
        })
    }

    /// Where the license stands at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> LicenseState {
        if now < self.expires_at - Duration::days(WARN_BEFORE_EXPIRY_DAYS) {
            LicenseState::Valid
        } else if now < self.expires_at {
            LicenseState::Expiring
        } else if now < self.grace_ends_at() {
            LicenseState::Grace
        } else {
            LicenseState::Expired
        }
    }

    pub fn grace_ends_at(&self) -> DateTime<Utc> {
        self.expires_at + Duration::days(GRACE_DAYS)
    }
}

/// jsonwebtoken's error, without the token's content.
fn describe(err: &jsonwebtoken::errors::Error) -> String {
    match err.kind() {
        ErrorKind::MissingRequiredClaim(claim) => format!("claim `{claim}` is missing"),
        ErrorKind::Json(e) => {
            // serde names a missing field without quoting any value.
            let text = e.to_string();
            match text.strip_prefix("missing field ") {
                Some(rest) => format!(
                    "claim {} is missing",
                    rest.split(" at line").next().unwrap_or(rest)
                ),
                None => "its claims are not the expected JSON (strings for iss, sub, tier and \
                         jti; whole numbers for devices, iat and exp)"
                    .to_owned(),
            }
        }
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => "a part is not valid base64url".to_owned(),
        ErrorKind::InvalidToken => "it does not have three dot-separated parts".to_owned(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "its algorithm is not EdDSA".to_owned()
        }
        _ => "it could not be decoded".to_owned(),
    }
}

/// The clock entitlements read, injectable so tests can move through a
/// license's life.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The OSS entitlement gate: the license (or the free tier), capped by the
/// `device_limit` setting when that is lower.
#[derive(Clone)]
pub struct LicenseEntitlements {
    license: Option<License>,
    /// The operator's own cap (`device_limit`), never above the license's.
    device_cap: Option<u64>,
    clock: Clock,
}

impl std::fmt::Debug for LicenseEntitlements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseEntitlements")
            .field("license", &self.license)
            .field("device_cap", &self.device_cap)
            .finish_non_exhaustive()
    }
}

impl LicenseEntitlements {
    pub fn new(license: Option<License>, device_cap: Option<u64>) -> LicenseEntitlements {
        LicenseEntitlements {
            license,
            device_cap,
            clock: Arc::new(Utc::now),
        }
    }

    /// The same gate reading time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> LicenseEntitlements {
        self.clock = clock;
        self
    }

    pub fn license(&self) -> Option<&License> {
        self.license.as_ref()
    }

    fn state(&self) -> LicenseState {
        match &self.license {
            None => LicenseState::Free,
            Some(license) => license.state((self.clock)()),
        }
    }
}

impl Entitlements for LicenseEntitlements {
    fn describe(&self) -> String {
        let cap = match self.device_cap {
            Some(cap) => format!(", capped at {cap} devices by `device_limit`"),
            None => String::new(),
        };
        match &self.license {
            None => match self.device_cap {
                Some(cap) => {
                    format!("free tier, no license (device limit {cap} from `device_limit`)")
                }
                None => "free tier, no license (no device limit)".to_owned(),
            },
            Some(l) => format!(
                "{} license for {:?} ({} devices, expires {}, {}{}{cap})",
                l.tier.name(),
                l.organization,
                l.devices,
                l.expires_at.format("%Y-%m-%d"),
                self.state().name(),
                if l.signed_by_test_key {
                    ", signed by the TEST key"
                } else {
                    ""
                },
            ),
        }
    }

    /// The license's limit in every state (an expired license keeps
    /// limiting what it covered; only its premium features stop), else
    /// the free tier's; the `device_limit` setting can only lower it.
    fn device_limit(&self, _: Uuid) -> Option<u64> {
        let licensed = match &self.license {
            Some(license) => Some(license.devices),
            None => FREE_DEVICE_LIMIT,
        };
        match (licensed, self.device_cap) {
            (Some(l), Some(cap)) => Some(l.min(cap)),
            (l, cap) => l.or(cap),
        }
    }

    fn require(&self, tenant_id: Uuid, feature: Feature) -> Result<(), LicenseRequired> {
        if self.status(tenant_id).effective_tier().includes(feature) {
            Ok(())
        } else {
            Err(LicenseRequired { feature })
        }
    }

    fn status(&self, tenant_id: Uuid) -> EntitlementStatus {
        let license = self.license.as_ref();
        EntitlementStatus {
            source: EntitlementSource::License,
            tier: license.map_or(Tier::Free, |l| l.tier),
            state: self.state(),
            organization: license.map(|l| l.organization.clone()),
            device_limit: self.device_limit(tenant_id),
            expires_at: license.map(|l| l.expires_at),
            grace_ends_at: license.map(License::grace_ends_at),
            license_id: license.map(|l| l.id.clone()),
            signed_by_test_key: license.is_some_and(|l| l.signed_by_test_key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    /// The test key's private half (PKCS#8 DER, base64): public on purpose.
    const TEST_PRIVATE_KEY: &str =
        "MC4CAQAwBQYDK2VwBCIEIKE4JCyumrQhEQEvV15+uv3jepXla891dTvbzsqf5AKV";

    fn sign(claims: serde_json::Value) -> String {
        let der = STANDARD.decode(TEST_PRIVATE_KEY).unwrap();
        jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_der(&der),
        )
        .unwrap()
    }

    fn claims(tier: &str, exp: DateTime<Utc>) -> serde_json::Value {
        json!({
            "iss": LICENSE_ISSUER, "sub": "Acme", "tier": tier, "devices": 50,
            "iat": (exp - Duration::days(365)).timestamp(), "exp": exp.timestamp(), "jti": "lic-1",
        })
    }

    #[test]
    fn the_test_key_is_trusted_only_when_asked() {
        let token = sign(claims("premium", Utc::now() + Duration::days(100)));
        assert_eq!(
            License::verify(&token, false),
            Err(LicenseError::BadSignature)
        );
        let license = License::verify(&token, true).unwrap();
        assert!(license.signed_by_test_key);
        assert_eq!(license.tier, Tier::Premium);
        assert_eq!(license.devices, 50);
    }

    #[test]
    fn bad_licenses_name_their_problem() {
        let exp = Utc::now() + Duration::days(100);
        let mut wrong_iss = claims("premium", exp);
        wrong_iss["iss"] = json!("someone-else");
        assert_eq!(
            License::verify(&sign(wrong_iss), true),
            Err(LicenseError::WrongIssuer {
                found: "someone-else".into()
            })
        );
        let mut free = claims("free", exp);
        free["tier"] = json!("gold");
        assert!(matches!(
            License::verify(&sign(free), true),
            Err(LicenseError::InvalidClaim { claim: "tier", .. })
        ));
        let mut no_jti = claims("basic", exp);
        no_jti.as_object_mut().unwrap().remove("jti");
        assert!(matches!(
            License::verify(&sign(no_jti), true),
            Err(LicenseError::Malformed(m)) if m.contains("jti")
        ));
        assert!(matches!(
            License::verify("not-a-jwt", true),
            Err(LicenseError::Malformed(_))
        ));
    }

    #[test]
    fn a_license_warns_then_graces_then_stops_premium_features() {
        let exp = Utc::now();
        let license = License::verify(&sign(claims("premium", exp)), true).unwrap();
        let tenant = Uuid::now_v7();
        let at = |days: i64| {
            let now = exp + Duration::days(days);
            LicenseEntitlements::new(Some(license.clone()), None).with_clock(Arc::new(move || now))
        };
        assert_eq!(at(-31).status(tenant).state, LicenseState::Valid);
        assert_eq!(at(-29).status(tenant).state, LicenseState::Expiring);
        assert_eq!(
            at(-29)
                .status(tenant)
                .days_left(license.expires_at - Duration::days(29)),
            Some(29)
        );
        let grace = at(13);
        assert_eq!(grace.status(tenant).state, LicenseState::Grace);
        assert_eq!(grace.require(tenant, Feature::Saml), Ok(()));
        assert_eq!(grace.device_limit(tenant), Some(50));
        let expired = at(15);
        assert_eq!(expired.status(tenant).state, LicenseState::Expired);
        let refused = expired.require(tenant, Feature::TeamPolicies).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "policies per team requires a premium license or plan"
        );
        assert_eq!(expired.device_limit(tenant), Some(50));
    }

    #[test]
    fn tiers_decide_features_and_the_setting_only_lowers_the_limit() {
        let exp = Utc::now() + Duration::days(100);
        let basic = License::verify(&sign(claims("basic", exp)), true).unwrap();
        let tenant = Uuid::now_v7();
        let gate = LicenseEntitlements::new(Some(basic), Some(10));
        assert!(gate.require(tenant, Feature::Saml).is_err());
        assert_eq!(gate.device_limit(tenant), Some(10));
        let free = LicenseEntitlements::new(None, None);
        assert_eq!(free.device_limit(tenant), FREE_DEVICE_LIMIT);
        let capped = LicenseEntitlements::new(None, Some(7));
        assert_eq!(capped.device_limit(tenant), Some(7));
        assert_eq!(free.status(tenant).state, LicenseState::Free);
        assert!(free.require(tenant, Feature::CustomWebhooks).is_err());
    }
}
