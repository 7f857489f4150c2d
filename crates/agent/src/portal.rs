//! The self-service portal link: the running agent asks the server for a
//! fresh link token every `rotate_after_secs` (hourly by default) and
//! keeps it in the portal file; `mobius-agent portal` prints (or opens)
//! it. The server keeps the previous link valid for a short overlap, so a
//! link printed just before a rotation still opens.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mobius_api::portal::PortalLink;
use reqwest::StatusCode;

use crate::cli::{Output, PortalArgs};
use crate::state::StateDir;
use crate::transport::CallError;

const DEFAULT_FILE: &str = "portal.json";
/// A link closer than this to its expiry is replaced before it is shown:
/// the user needs a moment to open it.
const FRESH_ENOUGH_SECS: i64 = 120;
/// Retry after a failed rotation (server away, certificate renewing).
const RETRY: Duration = Duration::from_secs(60);
/// The server has no portal: ask again this much later, in case one is set up.
const NO_PORTAL_RETRY: Duration = Duration::from_secs(3600);

/// Where the link is kept: in the state directory (the agent's user only)
/// or at an operator-chosen path (readable by the device's users).
#[derive(Clone, Debug)]
pub struct PortalFile {
    path: PathBuf,
    shared: bool,
}

impl PortalFile {
    pub fn new(dir: &StateDir, configured: Option<PathBuf>) -> PortalFile {
        match configured {
            Some(path) => PortalFile { path, shared: true },
            None => PortalFile {
                path: dir.file(DEFAULT_FILE),
                shared: false,
            },
        }
    }

    fn read(&self) -> Option<PortalLink> {
        let text = fs::read_to_string(&self.path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Replaces the file whole (temp file, then rename), 0600 in the state
    /// directory, 0644 at a shared path.
    fn write(&self, link: &PortalLink) -> Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mode = if self.shared { 0o644 } else { 0o600 };
        let temp = dir.join(format!(
            ".{}.tmp",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(DEFAULT_FILE)
        ));
        let written = (|| -> std::io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)?;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.write_all(&serde_json::to_vec_pretty(link).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            fs::rename(&temp, &self.path)
        })();
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            return Err(err).with_context(|| format!("cannot write {}", self.path.display()));
        }
        Ok(())
    }
}

fn seconds_left(link: &PortalLink) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&link.expires_at)
        .map(|at| (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds())
        .unwrap_or(0)
}

fn no_portal(err: &CallError) -> bool {
    matches!(err, CallError::Refused { status, .. } if *status == StatusCode::NOT_FOUND)
}

/// Asks the server for a new link and stores it.
async fn fetch(dir: &StateDir, file: &PortalFile) -> Result<PortalLink, FetchError> {
    let client = crate::work::client(dir).map_err(FetchError::Local)?;
    let link = client.portal_link().await.map_err(FetchError::Call)?;
    file.write(&link).map_err(FetchError::Local)?;
    Ok(link)
}

enum FetchError {
    Local(anyhow::Error),
    Call(CallError),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Local(err) => write!(f, "{err:#}"),
            FetchError::Call(err) => write!(f, "{err}"),
        }
    }
}

/// The agent's rotation loop: a new link now, then whenever the server
/// says the current one is due.
pub async fn keep_fresh(dir: StateDir, file: PortalFile) {
    let mut told_no_portal = false;
    loop {
        let wait = match fetch(&dir, &file).await {
            Ok(link) => {
                told_no_portal = false;
                tracing::debug!(expires_at = %link.expires_at, "portal link rotated");
                Duration::from_secs(link.rotate_after_secs.clamp(1, 86_400))
            }
            Err(FetchError::Call(err)) if no_portal(&err) => {
                if !told_no_portal {
                    tracing::info!("the server has no self-service portal set up (portal_url)");
                    told_no_portal = true;
                }
                NO_PORTAL_RETRY
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not rotate the portal link; retrying");
                RETRY
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// `mobius-agent portal`.
pub async fn command(args: PortalArgs) -> Result<()> {
    let dir = StateDir::new(&args.state.state_dir);
    let file = PortalFile::new(&dir, args.portal.portal_file);
    let link = match file.read() {
        Some(link) if seconds_left(&link) > FRESH_ENOUGH_SECS => link,
        stale => match fetch(&dir, &file).await {
            Ok(link) => link,
            Err(FetchError::Call(err)) if no_portal(&err) => {
                bail!("this device's server has no self-service portal: {err}")
            }
            Err(err) => match stale.filter(|l| seconds_left(l) > 0) {
                // Better a link that still opens for a minute than none.
                Some(link) => {
                    eprintln!(
                        "mobius-agent: could not get a fresh link ({err}); this one expires soon"
                    );
                    link
                }
                None => bail!(
                    "no portal link on file ({}) and none from the server: {err}. \
                     Is the agent running and enrolled?",
                    file.path.display()
                ),
            },
        },
    };
    match args.output {
        Output::Json => crate::output::print(&serde_json::to_string_pretty(&link)?)?,
        Output::Table => crate::output::print(&format!(
            "Open your device's self-service portal:\n\n  {}\n\nThe link works until {} (run this command again for a new one).",
            link.url, link.expires_at
        ))?,
    }
    if args.open {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        match std::process::Command::new(opener).arg(&link.url).status() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!(
                "mobius-agent: {opener} could not open a browser ({status}); open the link above yourself"
            ),
            Err(err) => {
                eprintln!("mobius-agent: cannot run {opener} ({err}); open the link above yourself")
            }
        }
    }
    Ok(())
}
