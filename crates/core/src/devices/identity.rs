//! [`DeviceIdentity`]: who a device is, read from the client certificate
//! the device listener's TLS handshake verified. It is the tenant proof
//! device requests pass to [`crate::Store::begin`].

use mobius_api::device::DeviceName;
use sea_orm::prelude::Uuid;

use crate::pki::ca_id_from_common_name;

/// A device that presented a certificate from one of its tenant's CAs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    name: DeviceName,
    ca_id: Uuid,
    not_before: chrono::DateTime<chrono::Utc>,
    not_after: chrono::DateTime<chrono::Utc>,
}

impl DeviceIdentity {
    /// Reads the identity out of a client certificate that TLS already
    /// verified against the trusted tenant CAs (the device listener's
    /// verifier; never call this on a certificate that was not verified).
    /// The issuer's common name must name the same tenant as the SAN, so
    /// one tenant's CA can never vouch for another tenant's device.
    pub fn from_verified_certificate(der: &[u8]) -> Option<DeviceIdentity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let name = san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => DeviceName::from_uri(uri),
            _ => None,
        })?;
        let issuer_cn = cert.issuer().iter_common_name().next()?.as_str().ok()?;
        let ca_id = ca_id_from_common_name(name.tenant_id, issuer_cn)?;
        let time =
            |t: x509_parser::time::ASN1Time| chrono::DateTime::from_timestamp(t.timestamp(), 0);
        Some(DeviceIdentity {
            name,
            ca_id,
            not_before: time(cert.validity().not_before)?,
            not_after: time(cert.validity().not_after)?,
        })
    }

    pub fn tenant_id(&self) -> Uuid {
        self.name.tenant_id
    }

    pub fn site_id(&self) -> Uuid {
        self.name.site_id
    }

    pub fn device_id(&self) -> Uuid {
        self.name.device_id
    }

    pub fn name(&self) -> &DeviceName {
        &self.name
    }

    /// The CA that issued the certificate.
    pub fn ca_id(&self) -> Uuid {
        self.ca_id
    }

    pub fn not_before(&self) -> chrono::DateTime<chrono::Utc> {
        self.not_before
    }

    pub fn not_after(&self) -> chrono::DateTime<chrono::Utc> {
        self.not_after
    }
}
