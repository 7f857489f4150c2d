//! `mobius-agent status` and `mobius-agent facts`: local reports, no
//! network.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use mobius_api::device::HostFacts;
use serde::Serialize;
use uuid::Uuid;

use crate::cli::{FactsArgs, Output, StatusArgs};
use crate::facts;
use crate::identity::CertificateInfo;
use crate::output;
use crate::state::{AgentState, CERT_FILE, StateDir};

/// What `status --output json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub device_id: Uuid,
    pub tenant_id: Uuid,
    pub site_id: Uuid,
    pub server_url: String,
    pub enrolled_at: DateTime<Utc>,
    /// Read from cert.pem, so it is right even if state.json is stale.
    pub certificate_expires_at: DateTime<Utc>,
    pub certificate_expired: bool,
    pub renew_after: Option<DateTime<Utc>>,
    pub last_renewed_at: Option<DateTime<Utc>>,
    pub heartbeat_interval_secs: u64,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub last_heartbeat_ok: Option<bool>,
    pub last_error: Option<String>,
    /// The agent options bundle last applied (options.json).
    pub options_version: Option<i64>,
}

impl StatusReport {
    pub fn load(dir: &StateDir, now: DateTime<Utc>) -> Result<StatusReport> {
        let state = dir.load_state()?;
        let certificate = CertificateInfo::from_pem(&dir.read_string(CERT_FILE)?)
            .with_context(|| format!("{CERT_FILE} is unreadable"))?;
        let mut report = StatusReport::new(state, &certificate, now);
        report.options_version = crate::queries::options::stored_version(dir);
        Ok(report)
    }

    fn new(state: AgentState, certificate: &CertificateInfo, now: DateTime<Utc>) -> StatusReport {
        StatusReport {
            device_id: state.device_id,
            tenant_id: state.tenant_id,
            site_id: state.site_id,
            server_url: state.server_url,
            enrolled_at: state.enrolled_at,
            certificate_expires_at: certificate.not_after,
            certificate_expired: certificate.is_expired(now),
            renew_after: state.renew_after,
            last_renewed_at: state.last_renewed_at,
            heartbeat_interval_secs: state.heartbeat_interval_secs,
            last_heartbeat_at: state.last_heartbeat_at,
            last_heartbeat_ok: state.last_heartbeat_ok,
            last_error: state.last_error,
            options_version: None,
        }
    }

    fn table(&self) -> String {
        let expiry = if self.certificate_expired {
            format!("{} (EXPIRED)", self.certificate_expires_at.to_rfc3339())
        } else {
            self.certificate_expires_at.to_rfc3339()
        };
        let heartbeat = match (self.last_heartbeat_at, self.last_heartbeat_ok) {
            (Some(at), Some(true)) => format!("ok at {}", at.to_rfc3339()),
            (Some(at), _) => format!(
                "failed at {}: {}",
                at.to_rfc3339(),
                self.last_error.as_deref().unwrap_or("unknown error")
            ),
            (None, _) => "none yet".to_owned(),
        };
        let rows = [
            ("device", self.device_id.to_string()),
            ("tenant", self.tenant_id.to_string()),
            ("site", self.site_id.to_string()),
            ("server", self.server_url.clone()),
            ("enrolled", self.enrolled_at.to_rfc3339()),
            ("certificate expires", expiry),
            ("last heartbeat", heartbeat),
            (
                "options version",
                self.options_version
                    .map_or_else(|| "none yet".to_owned(), |v| v.to_string()),
            ),
        ];
        rows.iter()
            .map(|(label, value)| format!("{label:<20} {value}\n"))
            .collect()
    }
}

pub fn status(args: StatusArgs) -> Result<()> {
    let report = StatusReport::load(&StateDir::new(&args.state.state_dir), Utc::now())?;
    match args.output {
        Output::Table => output::print(&report.table())?,
        Output::Json => output::print(&serde_json::to_string_pretty(&report)?)?,
    }
    Ok(())
}

pub fn facts(args: FactsArgs) -> Result<()> {
    let facts = facts::collect();
    match args.output {
        Output::Json => output::print(&serde_json::to_string_pretty(&facts)?)?,
        Output::Table => output::print(&facts_table(&facts))?,
    }
    Ok(())
}

fn facts_table(facts: &HostFacts) -> String {
    let gib = |bytes: u64| format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64);
    let mut rows = vec![
        ("hostname", facts.hostname.clone()),
        ("os", format!("{} {}", facts.os_name, facts.os_version)),
        ("kernel", facts.kernel_version.clone()),
        ("architecture", facts.architecture.clone()),
        (
            "cpu",
            format!("{} ({} cores)", facts.cpu_model, facts.cpu_cores),
        ),
        ("memory", gib(facts.memory_bytes)),
        ("uptime", format!("{} s", facts.uptime_secs)),
        (
            "kvm",
            if facts.kvm_available {
                "available"
            } else {
                "not available"
            }
            .into(),
        ),
        (
            "hardware uuid",
            facts.hardware_uuid.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "serial",
            facts.serial_number.clone().unwrap_or_else(|| "-".into()),
        ),
        ("agent", facts.agent_version.clone()),
    ];
    for disk in &facts.disks {
        rows.push((
            "disk",
            format!(
                "{} {} free of {}",
                disk.mount_point,
                gib(disk.available_bytes),
                gib(disk.total_bytes)
            ),
        ));
    }
    for interface in &facts.interfaces {
        rows.push((
            "interface",
            format!(
                "{} {} {}",
                interface.name,
                interface.mac_address.as_deref().unwrap_or("-"),
                interface.addresses.join(" ")
            )
            .trim_end()
            .to_owned(),
        ));
    }
    rows.iter()
        .map(|(label, value)| format!("{label:<14} {value}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn the_table_shows_a_failed_heartbeat_and_an_expired_certificate() {
        let now = Utc::now();
        let state = AgentState {
            server_url: "https://127.0.0.1:8443/".into(),
            device_id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(2),
            site_id: Uuid::from_u128(3),
            enrolled_at: now,
            certificate_expires_at: now + TimeDelta::days(1),
            heartbeat_interval_secs: 60,
            renew_after: None,
            last_renewed_at: None,
            last_heartbeat_at: Some(now),
            last_heartbeat_ok: Some(false),
            last_error: Some("connection refused".into()),
        };
        let certificate = CertificateInfo {
            not_before: now - TimeDelta::days(2),
            not_after: now - TimeDelta::days(1),
            public_key_der: Vec::new(),
        };
        let report = StatusReport::new(state, &certificate, now);
        let table = report.table();
        assert!(table.contains("(EXPIRED)"), "{table}");
        assert!(table.contains("connection refused"), "{table}");
        assert!(table.contains(&Uuid::from_u128(1).to_string()), "{table}");
        // The certificate, not state.json, is the truth about expiry.
        assert_eq!(report.certificate_expires_at, certificate.not_after);
    }

    #[test]
    fn facts_print_as_a_table() {
        let table = facts_table(&facts::collect());
        assert!(table.starts_with("hostname"), "{table}");
        assert!(table.contains("interface"), "{table}");
    }
}
