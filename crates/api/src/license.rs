//! The license status, as `GET /api/v1/mobius/license/status` answers it
//! and `mobius license status` prints it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseStatus {
    /// `license` (OSS: a signed license file) or `plan` (cloud: the
    /// tenant's billing plan).
    pub source: String,
    /// `free`, `basic`, `premium` or `enterprise`: what the license names.
    pub tier: String,
    /// `valid`, `expiring` (30 days or fewer left), `grace` (expired, 14
    /// days of full function), `expired` (premium features refuse) or
    /// `free` (no license).
    pub state: String,
    /// The tier in force now (`free` once a license's grace has ended).
    pub effective_tier: String,
    /// Whom the license was issued to (its `sub`).
    pub organization: Option<String>,
    /// The limit enforced on new enrollments (`None`: no limit).
    pub device_limit: Option<u64>,
    /// Devices in the tenant now.
    pub device_count: u64,
    /// RFC 3339.
    pub expires_at: Option<String>,
    /// RFC 3339: when premium features stop.
    pub grace_ends_at: Option<String>,
    /// Whole days until expiry, negative once past.
    pub days_left: Option<i64>,
    /// The license's `jti`.
    pub license_id: Option<String>,
    /// Signed by the test key only debug builds can be told to trust.
    pub signed_by_test_key: bool,
    /// Premium features, each with the tier that has it and whether it is
    /// available now.
    pub features: Vec<FeatureStatus>,
    /// What to do, when something needs doing (expiring, grace, expired).
    pub warning: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureStatus {
    pub name: String,
    pub tier: String,
    pub available: bool,
}
