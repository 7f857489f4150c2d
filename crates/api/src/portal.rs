//! The self-service portal (Cocoon) on the wire. Cocoon is its own small
//! service: it reaches the server only through these endpoints, acting for
//! one device with a device-scoped token, never with an admin's rights.
//!
//! Two kinds of token, both `Authorization: Bearer` on the admin listener:
//!
//! - a **link token** (`mpl_…`): the running agent asks for one over mTLS
//!   ([`PORTAL_TOKEN_PATH`]) and rotates it hourly; the previous one stays
//!   valid for a short overlap. `mobius-agent portal` prints it inside the
//!   portal URL. It is good for one thing only: opening a session.
//! - a **session token** (`mps_…`): Cocoon trades the link token for one
//!   ([`SESSION_PATH`]) when the user opens the link, and keeps it in an
//!   HttpOnly cookie. It is valid for a fixed time (default 8 h) whatever
//!   the agent rotates meanwhile, so rotation never shows to the user.
//!
//! | endpoint | auth | body |
//! |---|---|---|
//! | `POST /api/v1/mobius/device/portal-token` | client certificate | → [`PortalLink`] |
//! | `POST /api/v1/mobius/portal/session` | link token | → [`PortalSession`] |
//! | `GET /api/v1/mobius/portal/device` | session token | → [`PortalDevice`] |
//! | `GET /api/v1/mobius/portal/policies` | session token | → [`PortalPolicies`] |
//! | `GET /api/v1/mobius/portal/software` | session token | → [`PortalSoftwareList`] |
//! | `POST /api/v1/mobius/portal/software/{versionId}/{action}` | session token | action `install`, `retry` or `uninstall` → [`PortalSoftware`] |
//! | `GET /api/v1/mobius/portal/activity` | session token | → [`PortalActivity`] |
//! | `GET /api/v1/mobius/portal/logo` | session token | the tenant's logo image (404 when none) |
//!
//! Errors use the server's usual body, `{"error": {"code", "message",
//! "field"}}`. An unknown, expired or revoked token (or one of the wrong
//! kind) is 401 `UNAUTHENTICATED`; a software id that is not a
//! self-service title offered to this device is 404 `NOT_FOUND`; an action
//! the install's state does not allow is 409 `CONFLICT`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::software::InstallStatus;

/// On the device listener (mTLS): a fresh link token for this device.
pub const PORTAL_TOKEN_PATH: &str = "/api/v1/mobius/device/portal-token";
/// The prefix of every portal endpoint on the admin listener.
pub const PORTAL_PREFIX: &str = "/api/v1/mobius/portal";
pub const SESSION_PATH: &str = "/api/v1/mobius/portal/session";
pub const DEVICE_PATH: &str = "/api/v1/mobius/portal/device";
pub const POLICIES_PATH: &str = "/api/v1/mobius/portal/policies";
/// Also the prefix of `/{versionId}/{action}`.
pub const SOFTWARE_PATH: &str = "/api/v1/mobius/portal/software";
pub const ACTIVITY_PATH: &str = "/api/v1/mobius/portal/activity";
pub const LOGO_PATH: &str = "/api/v1/mobius/portal/logo";

/// Prefix of a link token (shown in the portal URL).
pub const LINK_TOKEN_PREFIX: &str = "mpl_";
/// Prefix of a session token (kept in Cocoon's cookie).
pub const SESSION_TOKEN_PREFIX: &str = "mps_";

/// The portal's path that opens a session from a link token:
/// `<portal_url>/start?token=<link token>`.
pub const START_PATH: &str = "/start";

/// What the agent gets for its portal link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalLink {
    /// The link token (shown once; the server keeps its SHA-256).
    pub token: String,
    /// RFC 3339: the token is refused after this.
    pub expires_at: String,
    /// When the agent should ask for the next token (seconds from now);
    /// the current one stays valid for the overlap after that.
    pub rotate_after_secs: u64,
    /// Cocoon's public base URL (setting `portal_url`), no trailing slash.
    pub portal_url: String,
    /// `portal_url` + [`START_PATH`] + `?token=` + token: what the user opens.
    pub url: String,
}

/// A browser session for one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalSession {
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// The tenant's white-labeling, as the portal shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortalBranding {
    /// The name shown in the header: the configured display name, else
    /// the tenant's name.
    pub name: String,
    /// `#rrggbb`, or none for the portal's default.
    pub accent_color: Option<String>,
    /// Whether [`LOGO_PATH`] has an image.
    pub has_logo: bool,
    /// Who to ask for help (free text, e.g. "IT desk, ext. 4357").
    pub support_contact: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalDisk {
    pub mount_point: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// The device the session acts for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalDevice {
    pub id: Uuid,
    pub hostname: String,
    pub online: bool,
    /// RFC 3339; none if the device never checked in.
    pub last_seen_at: Option<String>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub agent_version: Option<String>,
    pub disks: Vec<PortalDisk>,
    /// RFC 3339: when this session ends.
    pub session_expires_at: String,
    pub branding: PortalBranding,
}

/// One policy that applies to the device, and its latest result here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalPolicy {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// What the user can do to make it pass.
    pub resolution: String,
    /// `true` passing, `false` failing, none not checked yet.
    pub passing: Option<bool>,
    /// RFC 3339.
    pub checked_at: Option<String>,
}

/// Failing policies first, then unknown, then passing; by name within each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortalPolicies {
    pub policies: Vec<PortalPolicy>,
}

/// The device's latest install or uninstall of a version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalInstall {
    /// `install` or `uninstall`.
    pub action: String,
    pub status: InstallStatus,
    pub bytes_downloaded: u64,
    pub bytes_total: u64,
    /// For FAILED: what went wrong, in words a person can act on.
    pub reason: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
}

/// A self-service title offered to the device (its newest version).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalSoftware {
    pub version_id: Uuid,
    pub name: String,
    pub version: String,
    pub installer_kind: String,
    pub size_bytes: u64,
    pub install: Option<PortalInstall>,
    /// What the user may do now, among `install`, `retry`, `uninstall`
    /// (none while an install is under way).
    pub actions: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortalSoftwareList {
    pub software: Vec<PortalSoftware>,
}

/// One thing that happened on or to the device, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortalEvent {
    /// RFC 3339.
    pub at: String,
    /// The audit action (`software.install_status`, `device.enrolled`, …).
    pub action: String,
    /// A sentence for the user ("Firefox 128.0: Installed").
    pub summary: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortalActivity {
    pub events: Vec<PortalEvent>,
}
