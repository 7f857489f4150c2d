//! The software inventory: the packages this host has installed, read
//! from its `deb_packages` and `rpm_packages` host tables and reported to
//! the server at start, hourly, and after each install or uninstall. The
//! server stores a report only when it differs from the last.

use std::time::Duration;

use mobius_api::software::{InstalledPackage, InventoryReport};

use crate::state::StateDir;
use crate::tables::{AgentInfo, Limits};

const INTERVAL: Duration = Duration::from_secs(3600);

const QUERIES: &[(&str, &str)] = &[
    (
        "deb",
        "SELECT name, version FROM deb_packages WHERE status LIKE '% installed'",
    ),
    ("rpm", "SELECT name, version FROM rpm_packages"),
];

/// The host's packages (a table that cannot be read counts as empty).
fn installed(dir: &StateDir) -> Vec<InstalledPackage> {
    let info = AgentInfo::load(dir);
    let limits = Limits {
        timeout: Duration::from_secs(30),
        max_rows: mobius_api::software::MAX_INVENTORY_PACKAGES,
        max_bytes: 16 << 20,
    };
    let mut packages = Vec::new();
    for (source, sql) in QUERIES {
        match crate::tables::run(sql, &limits, &info) {
            Ok(answer) => {
                for row in answer.rows {
                    packages.push(InstalledPackage {
                        source: (*source).to_owned(),
                        name: row.get("name").cloned().unwrap_or_default(),
                        version: row.get("version").cloned().unwrap_or_default(),
                    });
                }
            }
            Err(err) => tracing::debug!(source, error = %err, "no packages from this source"),
        }
    }
    packages.sort();
    packages
}

/// Reads and reports the inventory once.
pub async fn report(dir: &StateDir) {
    let reading = dir.clone();
    let Ok(packages) = tokio::task::spawn_blocking(move || installed(&reading)).await else {
        return;
    };
    let count = packages.len();
    let sent = match super::client(dir) {
        Ok(client) => client
            .software_inventory(&InventoryReport { packages })
            .await
            .map_err(|e| e.to_string()),
        Err(err) => Err(format!("{err:#}")),
    };
    match sent {
        Ok(()) => tracing::info!(packages = count, "software inventory reported"),
        Err(err) => tracing::warn!(error = %err, "could not report the software inventory"),
    }
}

/// At start, then hourly.
pub async fn report_periodically(dir: StateDir) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tick.tick().await;
        report(&dir).await;
    }
}
