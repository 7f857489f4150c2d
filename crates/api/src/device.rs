//! The device protocol: what `mobius-agent` and the server's device
//! listener (mTLS, default port 8443) exchange.
//!
//! | endpoint | auth | body |
//! |---|---|---|
//! | `POST /api/v1/mobius/device/enroll` | enrollment token | [`EnrollRequest`] → [`EnrollResponse`] |
//! | `HEAD /api/mobius/device/ping` | client certificate | none → 204 |
//! | `POST /api/mobius/device/ping` | client certificate | [`PingRequest`] → [`PingResponse`] |
//! | `POST /api/v1/mobius/device/renew` | client certificate | [`RenewRequest`] → [`RenewResponse`] |
//!
//! Errors are [`crate::ErrorBody`]. A revoked or deleted device gets 403
//! with code `FORBIDDEN` on every endpoint: the agent stops.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const ENROLL_PATH: &str = "/api/v1/mobius/device/enroll";
pub const PING_PATH: &str = "/api/mobius/device/ping";
pub const RENEW_PATH: &str = "/api/v1/mobius/device/renew";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The whole enrollment token string (see [`EnrollmentToken`]).
    pub token: String,
    /// A PKCS#10 request (PEM) for the agent's own key: ECDSA P-256 or
    /// Ed25519. The server ignores the names in it and decides its own.
    pub csr_pem: String,
    /// Stable identity of the host (e.g. SHA-256 of the machine id); the
    /// same fingerprint re-enrolling in the same tenant keeps its device id.
    pub host_fingerprint: String,
    pub facts: HostFacts,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub device_id: Uuid,
    pub tenant_id: Uuid,
    pub site_id: Uuid,
    /// The device's client certificate (PEM).
    pub certificate_pem: String,
    /// The tenant CA certificates a client certificate may chain to (PEM,
    /// concatenated): the current CA, plus one being retired.
    pub ca_bundle_pem: String,
    /// The CA of the device listener's server certificate (PEM): trust it
    /// from now on instead of the pin in the token.
    pub server_ca_pem: String,
    /// RFC 3339.
    pub expires_at: String,
    pub heartbeat_interval_secs: u64,
    /// The tenant's plan-verification key (Ed25519, standard base64):
    /// the agent runs only work signed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_verification_key: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PingRequest {
    /// Host facts, sent only when they changed since the last ping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<HostFacts>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PingResponse {
    /// Heartbeat every this many seconds (±10% jitter).
    pub interval_secs: u64,
    /// Renew the certificate at or after this time (RFC 3339): its
    /// half-life, or now when its CA is being retired.
    pub renew_after: String,
    /// Pending work for the agent: [`crate::plans::WorkFrame`]s, the same
    /// the push stream carries, so an agent whose stream broke loses nothing.
    #[serde(default)]
    pub work: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// A new PKCS#10 request (PEM); the agent may keep its key or make a new one.
    pub csr_pem: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenewResponse {
    pub certificate_pem: String,
    pub ca_bundle_pem: String,
    /// RFC 3339.
    pub expires_at: String,
    /// As in [`EnrollResponse::plan_verification_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_verification_key: Option<String>,
}

/// What the agent reports about its host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel_version: String,
    /// e.g. `x86_64`, `aarch64`.
    pub architecture: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub interfaces: Vec<NetworkInterface>,
    pub uptime_secs: u64,
    /// `/dev/kvm` is usable.
    pub kvm_available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    pub agent_version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    pub mount_point: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkInterface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Addresses with prefix length, e.g. `192.0.2.10/24`.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// An enrollment token as handed to an operator:
/// `mobius1.<secret>.<pin>`, where `secret` is 32 random bytes in URL-safe
/// base64 (the server keeps only its SHA-256) and `pin` is the hex SHA-256
/// of the DER SubjectPublicKeyInfo of the device listener's CA, as kubeadm
/// pins its CA: a fresh agent trusts a server only if its chain includes a
/// CA with that key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentToken {
    pub secret: String,
    pub ca_pin_sha256: [u8; 32],
}

const TOKEN_PREFIX: &str = "mobius1";

impl EnrollmentToken {
    pub fn parse(token: &str) -> Option<EnrollmentToken> {
        let mut parts = token.trim().split('.');
        let (prefix, secret, pin) = (parts.next()?, parts.next()?, parts.next()?);
        if prefix != TOKEN_PREFIX || parts.next().is_some() || secret.len() < 32 || pin.len() != 64
        {
            return None;
        }
        let mut ca_pin_sha256 = [0u8; 32];
        for (i, byte) in ca_pin_sha256.iter_mut().enumerate() {
            *byte = u8::from_str_radix(pin.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(EnrollmentToken {
            secret: secret.to_owned(),
            ca_pin_sha256,
        })
    }
}

impl std::fmt::Display for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.", self.secret)?;
        for byte in self.ca_pin_sha256 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Who a device certificate names, carried as its URI SAN
/// `urn:mobius:device:<tenant>:<site>:<device>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceName {
    pub tenant_id: Uuid,
    pub site_id: Uuid,
    pub device_id: Uuid,
}

const DEVICE_URN: &str = "urn:mobius:device:";

impl DeviceName {
    pub fn to_uri(&self) -> String {
        format!(
            "{DEVICE_URN}{}:{}:{}",
            self.tenant_id, self.site_id, self.device_id
        )
    }

    pub fn from_uri(uri: &str) -> Option<DeviceName> {
        let mut ids = uri.strip_prefix(DEVICE_URN)?.split(':');
        let name = DeviceName {
            tenant_id: ids.next()?.parse().ok()?,
            site_id: ids.next()?.parse().ok()?,
            device_id: ids.next()?.parse().ok()?,
        };
        ids.next().is_none().then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let token = EnrollmentToken {
            secret: "a".repeat(43),
            ca_pin_sha256: [0xab; 32],
        };
        let text = token.to_string();
        assert_eq!(EnrollmentToken::parse(&text), Some(token));
        for bad in [
            "",
            "mobius1",
            "mobius2.x.y",
            &text.replace("mobius1", "mobius0"),
            &format!("{text}.extra"),
            &text[..text.len() - 2],
        ] {
            assert_eq!(EnrollmentToken::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn device_names_round_trip() {
        let name = DeviceName {
            tenant_id: Uuid::from_u128(1),
            site_id: Uuid::from_u128(2),
            device_id: Uuid::from_u128(3),
        };
        assert_eq!(DeviceName::from_uri(&name.to_uri()), Some(name));
        assert_eq!(DeviceName::from_uri("urn:mobius:device:x:y:z"), None);
        assert_eq!(DeviceName::from_uri(&format!("{}:4", name.to_uri())), None);
    }
}
