//! Renewing a device's certificate over mTLS: at half-life, or at once when
//! its CA is being retired.

use std::net::IpAddr;

use crate::audit::{Actor, ActorKind, AuditRecord};
use crate::db::{Store, StoreError};
use crate::devices::DeviceIdentity;
use crate::pki::{DeviceCsr, IssuedCertificate, Pki};

/// A renewed certificate and the tenant's CA bundle to trust with it.
#[derive(Debug)]
pub struct Renewed {
    pub certificate: IssuedCertificate,
    pub ca_bundle_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// Revoked or deleted since its certificate was issued.
    #[error("the device was revoked or deleted")]
    DeviceRevoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Issues a new certificate for the device `identity` names, with the
/// tenant's current CA, and records `device.renewed`.
pub async fn renew(
    store: &Store,
    pki: &Pki,
    identity: &DeviceIdentity,
    client_ip: Option<IpAddr>,
    csr: &DeviceCsr,
) -> Result<Renewed, RenewError> {
    let scope = store.begin(identity).await?;
    let device_id = identity.device_id();
    let existing = match scope.devices().get(device_id).await {
        Ok(device) => device,
        Err(StoreError::NotFound { .. }) => return Err(RenewError::DeviceRevoked),
        Err(e) => return Err(e.into()),
    };
    if existing.revoked_at.is_some() {
        return Err(RenewError::DeviceRevoked);
    }
    let actor = Actor {
        kind: ActorKind::Device,
        id: Some(device_id),
        ip: client_ip.map(|ip| ip.to_string()),
        user_agent: None,
    };
    let certificate = pki
        .issue_current(&scope, &actor, csr, *identity.name())
        .await?;
    scope
        .devices()
        .set_certificate(device_id, &certificate)
        .await?;
    scope
        .audit()
        .record(
            &actor,
            AuditRecord::new("device.renewed", "device", Some(device_id)).with_details(
                serde_json::json!({
                    "certificate_serial": certificate.serial,
                    "ca_id": certificate.ca_id,
                    "previous_ca_id": identity.ca_id(),
                }),
            ),
        )
        .await?;
    let ca_bundle_pem = pki.bundle_for(&scope, certificate.ca_id).await?;
    scope.commit().await?;
    Ok(Renewed {
        certificate,
        ca_bundle_pem,
    })
}
