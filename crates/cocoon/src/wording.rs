//! How numbers, times and install states read to a person. Pure functions,
//! shared by the HTML pages and the live updates so both say the same.

use chrono::{DateTime, Utc};
use mobius_api::portal::PortalInstall;
use mobius_api::software::InstallStatus;

/// Decimal units, as disk vendors and download dialogs count them:
/// `512 B`, `1.2 MB`, `256 GB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if value < 99.95 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// Whole percent of `part` in `whole`, rounded down; 0 of nothing is 0.
pub fn percent(part: u64, whole: u64) -> u64 {
    let percent = u128::from(part) * 100 / u128::from(whole.max(1));
    u64::try_from(percent).unwrap_or(u64::MAX)
}

/// Parses an RFC 3339 time from the server; `None` when it is not one
/// (shown as "unknown" rather than failing the page).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// "2 minutes ago", "in 7 hours", "just now".
pub fn relative(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds();
    let future = secs < 0;
    let secs = secs.unsigned_abs();
    let span = if secs < 45 {
        return "just now".to_owned();
    } else if secs < 90 {
        "1 minute".to_owned()
    } else if secs < 45 * 60 {
        format!("{} minutes", secs.div_ceil(60).max(2))
    } else if secs < 90 * 60 {
        "1 hour".to_owned()
    } else if secs < 22 * 3600 {
        format!("{} hours", (secs + 1800) / 3600)
    } else if secs < 36 * 3600 {
        "1 day".to_owned()
    } else {
        format!("{} days", (secs + 43_200) / 86_400)
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// The exact time, for the `<time>` element's text and title.
pub fn exact(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The status labels the portal shows, exactly these words (shared with
/// the server's activity summaries through `mobius-api`).
pub fn status_label(status: InstallStatus) -> &'static str {
    status.label()
}

/// The sentence in a software row's status cell. A failure always carries
/// its reason, so the user is never left with a bare "Failed".
pub fn status_text(install: Option<&PortalInstall>) -> String {
    let Some(install) = install else {
        return "Not installed".to_owned();
    };
    let label = status_label(install.status);
    match install.status {
        InstallStatus::Downloading if install.bytes_total > 0 => {
            let done = install.bytes_downloaded.min(install.bytes_total);
            let percent = percent(done, install.bytes_total);
            format!(
                "{label} {percent}% ({} of {})",
                bytes(done),
                bytes(install.bytes_total)
            )
        }
        InstallStatus::Installing | InstallStatus::Uninstalling => format!("{label}…"),
        InstallStatus::Failed => {
            let reason = install
                .reason
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .unwrap_or("no reason was reported");
            format!("{label}: {reason}")
        }
        InstallStatus::Pending
        | InstallStatus::Downloading
        | InstallStatus::Installed
        | InstallStatus::Uninstalled => label.to_owned(),
    }
}

/// A progress bar's state: a known fraction while downloading, an
/// indeterminate bar while waiting or running the installer, none at rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub value: Option<u64>,
    pub max: Option<u64>,
}

pub fn progress(install: Option<&PortalInstall>) -> Option<Progress> {
    let install = install?;
    match install.status {
        InstallStatus::Downloading if install.bytes_total > 0 => Some(Progress {
            value: Some(install.bytes_downloaded.min(install.bytes_total)),
            max: Some(install.bytes_total),
        }),
        InstallStatus::Pending
        | InstallStatus::Downloading
        | InstallStatus::Installing
        | InstallStatus::Uninstalling => Some(Progress {
            value: None,
            max: None,
        }),
        InstallStatus::Installed | InstallStatus::Uninstalled | InstallStatus::Failed => None,
    }
}

/// The words on a button for an action the server allows; `None` for an
/// action this portal does not know (it is then not offered).
pub fn action_label(action: &str, title: &str) -> Option<String> {
    let verb = match action {
        "install" => "Install",
        "retry" => "Retry",
        "uninstall" => "Uninstall",
        _ => return None,
    };
    Some(format!("{verb} {title}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(
        status: InstallStatus,
        done: u64,
        total: u64,
        reason: Option<&str>,
    ) -> PortalInstall {
        PortalInstall {
            action: "install".into(),
            status,
            bytes_downloaded: done,
            bytes_total: total,
            reason: reason.map(Into::into),
            updated_at: "2026-12-01T10:00:00Z".into(),
        }
    }

    #[test]
    fn sizes_read_like_a_download_dialog() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_000), "1.0 KB");
        assert_eq!(bytes(1_200_000), "1.2 MB");
        assert_eq!(bytes(2_600_000), "2.6 MB");
        assert_eq!(bytes(45_300_000), "45.3 MB");
        assert_eq!(bytes(256_000_000_000), "256 GB");
        assert_eq!(bytes(999_999_999), "1.0 GB");
        assert_eq!(bytes(u64::MAX), "18447 PB");
    }

    #[test]
    fn times_read_relative_to_now() {
        let now = parse_time("2026-12-01T12:00:00Z").unwrap();
        let at = |s: &str| parse_time(s).unwrap();
        assert_eq!(relative(at("2026-12-01T11:59:50Z"), now), "just now");
        assert_eq!(relative(at("2026-12-01T11:58:00Z"), now), "2 minutes ago");
        assert_eq!(relative(at("2026-12-01T11:59:00Z"), now), "1 minute ago");
        assert_eq!(relative(at("2026-12-01T09:00:00Z"), now), "3 hours ago");
        assert_eq!(relative(at("2026-11-28T12:00:00Z"), now), "3 days ago");
        assert_eq!(relative(at("2026-12-01T19:00:00Z"), now), "in 7 hours");
        assert_eq!(exact(now), "2026-12-01 12:00 UTC");
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn status_labels_are_exactly_the_documented_words() {
        let words: Vec<_> = InstallStatus::ALL.into_iter().map(status_label).collect();
        assert_eq!(
            words,
            [
                "Pending",
                "Downloading",
                "Installing",
                "Installed",
                "Uninstalling",
                "Uninstalled",
                "Failed"
            ]
        );
    }

    #[test]
    fn status_text_says_progress_and_failure_reason() {
        assert_eq!(status_text(None), "Not installed");
        let downloading = install(InstallStatus::Downloading, 1_170_000, 2_600_000, None);
        assert_eq!(
            status_text(Some(&downloading)),
            "Downloading 45% (1.2 MB of 2.6 MB)"
        );
        assert_eq!(
            progress(Some(&downloading)),
            Some(Progress {
                value: Some(1_170_000),
                max: Some(2_600_000)
            })
        );
        let installing = install(InstallStatus::Installing, 0, 0, None);
        assert_eq!(status_text(Some(&installing)), "Installing…");
        assert_eq!(
            progress(Some(&installing)),
            Some(Progress {
                value: None,
                max: None
            })
        );
        let failed = install(InstallStatus::Failed, 0, 0, Some("Not enough disk space"));
        assert_eq!(status_text(Some(&failed)), "Failed: Not enough disk space");
        assert_eq!(progress(Some(&failed)), None);
        let silent = install(InstallStatus::Failed, 0, 0, Some("  "));
        assert_eq!(status_text(Some(&silent)), "Failed: no reason was reported");
    }

    #[test]
    fn buttons_name_the_title() {
        assert_eq!(
            action_label("install", "Firefox").as_deref(),
            Some("Install Firefox")
        );
        assert_eq!(
            action_label("uninstall", "Firefox").as_deref(),
            Some("Uninstall Firefox")
        );
        assert_eq!(action_label("format-disk", "Firefox"), None);
    }
}
