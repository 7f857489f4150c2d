//! Software distribution on the wire: the `install_software` workload's
//! parameters (signed inside a plan), the device endpoints an agent uses
//! while installing, and the admin REST bodies.
//!
//! | endpoint | auth | body |
//! |---|---|---|
//! | `POST /api/v1/mobius/device/software/download-url` | client certificate | [`DownloadUrlRequest`] → [`DownloadUrl`] |
//! | `GET /api/v1/mobius/device/software/download/{token}` | client certificate + the token | the installer (HTTP `Range` honoured) |
//! | `POST /api/v1/mobius/device/software/progress` | client certificate | [`InstallProgress`] → `{}` |

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const DOWNLOAD_URL_PATH: &str = "/api/v1/mobius/device/software/download-url";
/// Followed by the signed token.
pub const DOWNLOAD_PATH: &str = "/api/v1/mobius/device/software/download/";
pub const PROGRESS_PATH: &str = "/api/v1/mobius/device/software/progress";

/// Installer kinds a version can have.
pub const INSTALLER_KINDS: &[&str] = &["deb", "rpm", "sh", "tarball"];
pub const PLATFORMS: &[&str] = &["linux", "darwin", "windows"];
/// The default time an installer (or uninstall script) may run.
pub const DEFAULT_INSTALL_TIMEOUT_SECS: u64 = 1800;

/// Parameters of the `install_software` workload. Everything the agent
/// needs except the installer's bytes, which it fetches through a
/// short-lived URL signed for it alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallSoftwareParams {
    /// The install request; with the device (from its certificate) it
    /// names the install whose progress the agent reports.
    pub request_id: Uuid,
    /// `install` or `uninstall`.
    pub action: String,
    pub name: String,
    pub version: String,
    /// One of [`INSTALLER_KINDS`].
    pub installer_kind: String,
    pub file_name: String,
    pub size_bytes: u64,
    /// SHA-256 (hex) the downloaded installer must have before anything runs.
    pub sha256: String,
    #[serde(default)]
    pub install_script: Option<String>,
    #[serde(default)]
    pub uninstall_script: Option<String>,
    #[serde(default)]
    pub post_install_script: Option<String>,
    /// SQL over the host tables; the install goes ahead only when it
    /// answers at least one row.
    #[serde(default)]
    pub pre_install_condition: Option<String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Where an install stands on its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstallStatus {
    Pending,
    Downloading,
    Installing,
    Installed,
    Uninstalling,
    Uninstalled,
    Failed,
}

impl InstallStatus {
    pub const ALL: [InstallStatus; 7] = [
        InstallStatus::Pending,
        InstallStatus::Downloading,
        InstallStatus::Installing,
        InstallStatus::Installed,
        InstallStatus::Uninstalling,
        InstallStatus::Uninstalled,
        InstallStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstallStatus::Pending => "PENDING",
            InstallStatus::Downloading => "DOWNLOADING",
            InstallStatus::Installing => "INSTALLING",
            InstallStatus::Installed => "INSTALLED",
            InstallStatus::Uninstalling => "UNINSTALLING",
            InstallStatus::Uninstalled => "UNINSTALLED",
            InstallStatus::Failed => "FAILED",
        }
    }

    /// The word a person reads (the portal, activity summaries).
    pub fn label(self) -> &'static str {
        match self {
            InstallStatus::Pending => "Pending",
            InstallStatus::Downloading => "Downloading",
            InstallStatus::Installing => "Installing",
            InstallStatus::Installed => "Installed",
            InstallStatus::Uninstalling => "Uninstalling",
            InstallStatus::Uninstalled => "Uninstalled",
            InstallStatus::Failed => "Failed",
        }
    }

    pub fn parse(text: &str) -> Option<InstallStatus> {
        InstallStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            InstallStatus::Installed | InstallStatus::Uninstalled | InstallStatus::Failed
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DownloadUrlRequest {
    pub request_id: Uuid,
}

/// A URL on the device listener, valid for this device until `expires_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DownloadUrl {
    /// A path on the device listener (the agent prefixes its server URL).
    pub path: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// What an agent reports while it works on an install.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstallProgress {
    pub request_id: Uuid,
    pub status: InstallStatus,
    #[serde(default)]
    pub bytes_downloaded: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// Why it failed, in words a person can act on.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The last lines of the installer's output.
    #[serde(default)]
    pub output_tail: Option<String>,
}

/// A version as the admin REST API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoftwareVersion {
    pub id: Uuid,
    pub title_id: Uuid,
    pub name: String,
    pub version: String,
    pub platform: String,
    pub installer_kind: String,
    pub file_name: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub self_service: bool,
    pub available_site_ids: Vec<Uuid>,
    pub available_team_ids: Vec<Uuid>,
    #[serde(default)]
    pub install_script: Option<String>,
    #[serde(default)]
    pub uninstall_script: Option<String>,
    #[serde(default)]
    pub post_install_script: Option<String>,
    #[serde(default)]
    pub pre_install_condition: Option<String>,
    pub created_at: String,
}

/// The metadata part of an upload (multipart field `metadata`, before the
/// `installer` field).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadMetadata {
    pub name: String,
    pub version: String,
    #[serde(default = "default_platform")]
    pub platform: String,
    pub installer_kind: String,
    /// Expected SHA-256 (hex) of the installer: the upload is refused when
    /// the bytes received differ.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub install_script: Option<String>,
    #[serde(default)]
    pub uninstall_script: Option<String>,
    #[serde(default)]
    pub post_install_script: Option<String>,
    #[serde(default)]
    pub pre_install_condition: Option<String>,
    #[serde(default)]
    pub self_service: bool,
    #[serde(default)]
    pub available_site_ids: Vec<String>,
    #[serde(default)]
    pub available_team_ids: Vec<String>,
}

fn default_platform() -> String {
    "linux".into()
}

/// `POST /api/v1/mobius/software/{id}/install` (and `/uninstall`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    #[serde(default)]
    pub device_ids: Vec<String>,
    #[serde(default)]
    pub site_ids: Vec<String>,
    #[serde(default)]
    pub team_ids: Vec<String>,
    /// The same key answers the same request (24 h). Default: a new one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// One device's install, as the admin REST API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SoftwareInstall {
    pub id: Uuid,
    pub version_id: Uuid,
    pub device_id: Uuid,
    pub request_id: Uuid,
    pub plan_id: Uuid,
    pub execution_id: Uuid,
    pub action: String,
    pub status: InstallStatus,
    pub bytes_downloaded: u64,
    pub bytes_total: u64,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub output_tail: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

pub const INVENTORY_PATH: &str = "/api/v1/mobius/device/software/inventory";

/// A package a device has installed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstalledPackage {
    /// `deb` or `rpm`.
    pub source: String,
    pub name: String,
    pub version: String,
}

/// What an agent reports: every package it has installed, whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InventoryReport {
    pub packages: Vec<InstalledPackage>,
}

/// At most this many packages per report (a large server has ~3,000).
pub const MAX_INVENTORY_PACKAGES: usize = 50_000;
