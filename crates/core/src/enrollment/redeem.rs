//! Redeeming an enrollment token: one transaction checks the token, creates
//! (or finds) the device, issues its certificate, claims a use of the token
//! and writes the audit event.
//!
//! The use is claimed last, with a conditional `UPDATE ... WHERE uses <
//! max_uses`: concurrent enrollments do their work in parallel and queue
//! only on that statement (the row lock it takes lasts to commit), where
//! all but the allowed number find nothing to update and roll back. So 50
//! concurrent enrollments on a single-use token still give exactly one
//! device, without holding the lock through certificate signing. The device
//! count is checked under a per-tenant lock, so a limit of N admits N.

use std::net::IpAddr;

use mobius_api::device::{DeviceName, HostFacts};
use sea_orm::prelude::Uuid;

use crate::audit::{Actor, ActorKind, AuditRecord};
use crate::authz::Entitlements;
use crate::crypto::secrets;
use crate::db::locks::TenantLock;
use crate::db::{SecretKind, Store, StoreError};
use crate::pki::{DeviceCsr, IssuedCertificate, Pki};

pub struct EnrollmentRequest<'a> {
    /// The secret part of the enrollment token.
    pub secret: &'a str,
    pub csr: &'a DeviceCsr,
    pub host_fingerprint: &'a str,
    pub facts: &'a HostFacts,
    pub client_ip: Option<IpAddr>,
}

#[derive(Debug)]
pub struct Enrolled {
    pub tenant_id: Uuid,
    pub site_id: Uuid,
    pub device_id: Uuid,
    pub certificate: IssuedCertificate,
    pub ca_bundle_pem: String,
    /// False when the host re-enrolled and kept its device id.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("unknown enrollment token")]
    UnknownToken,
    #[error("the enrollment token has expired")]
    TokenExpired,
    #[error("the enrollment token was revoked")]
    TokenRevoked,
    #[error("the enrollment token has no uses left")]
    TokenUsedUp,
    #[error("this address may not use the enrollment token")]
    AddressNotAllowed,
    #[error(
        "this host's device was revoked; an administrator must delete it before it can enroll again"
    )]
    DeviceRevoked,
    #[error("the device limit of {limit} was reached")]
    DeviceLimit { limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for EnrollError {
    fn from(err: sea_orm::DbErr) -> Self {
        EnrollError::Store(err.into())
    }
}

pub async fn enroll(
    store: &Store,
    pki: &Pki,
    entitlements: &dyn Entitlements,
    request: EnrollmentRequest<'_>,
) -> Result<Enrolled, EnrollError> {
    // Refused before the token is looked at, so a bad request uses nothing.
    crate::db::no_nul("host_fingerprint", request.host_fingerprint)?;
    crate::devices::facts_json(request.facts)?;
    let hash = secrets::sha256(request.secret);
    let owner = store
        .tenant_by_secret_hash(SecretKind::EnrollmentToken, &hash)
        .await?
        .ok_or(EnrollError::UnknownToken)?;
    let tenant_id = owner.id();
    let scope = store.begin(&owner).await?;
    let token = scope
        .enrollment_tokens()
        .find_by_hash(&hash)
        .await?
        .ok_or(EnrollError::UnknownToken)?;
    if token.revoked_at.is_some() {
        return Err(EnrollError::TokenRevoked);
    }
    if token.expires_at <= chrono::Utc::now() {
        return Err(EnrollError::TokenExpired);
    }
    if token.uses >= token.max_uses {
        return Err(EnrollError::TokenUsedUp);
    }
    if !address_allowed(token.allowed_ips.as_ref(), request.client_ip) {
        return Err(EnrollError::AddressNotAllowed);
    }
    let site_id = token.site_id;
    let token_id = token.id;

    let existing = scope
        .devices()
        .find_by_fingerprint(request.host_fingerprint)
        .await?;
    let (device, created) = match existing {
        Some(device) if device.revoked_at.is_some() => return Err(EnrollError::DeviceRevoked),
        Some(device) => (device, false),
        None => {
            if let Some(limit) = entitlements.device_limit(tenant_id) {
                // Serializes enrollments of this tenant for the count.
                scope.lock(TenantLock::DeviceLimit).await?;
                if scope.devices().count().await? >= limit {
                    return Err(EnrollError::DeviceLimit { limit });
                }
            }
            let hostname = if request.facts.hostname.trim().is_empty() {
                request.host_fingerprint
            } else {
                &request.facts.hostname
            };
            let device = scope
                .devices()
                .create_enrolled(site_id, hostname, request.host_fingerprint)
                .await?;
            (device, true)
        }
    };
    let ca = pki.current_ca(&scope, &Actor::system()).await?;
    let name = DeviceName {
        tenant_id,
        site_id: device.site_id,
        device_id: device.id,
    };
    let certificate = pki.issue(&ca, request.csr, name).await?;
    scope
        .devices()
        .set_certificate(device.id, &certificate)
        .await?;
    scope
        .devices()
        .record_facts(device.id, request.facts)
        .await?;
    if !scope.enrollment_tokens().claim_use(token_id).await? {
        // Another enrollment took the last use (or the token was revoked
        // or expired) while this one worked: roll everything back.
        return Err(EnrollError::TokenUsedUp);
    }
    let actor = Actor {
        kind: ActorKind::Device,
        id: Some(device.id),
        ip: request.client_ip.map(|ip| ip.to_string()),
        user_agent: None,
    };
    scope
        .audit()
        .record(
            &actor,
            AuditRecord::new(
                if created {
                    "device.enrolled"
                } else {
                    "device.re_enrolled"
                },
                "device",
                Some(device.id),
            )
            .with_details(serde_json::json!({
                "hostname": device.hostname,
                "site_id": device.site_id,
                "enrollment_token_id": token_id,
                "certificate_serial": certificate.serial,
            })),
        )
        .await?;
    let ca_bundle_pem = pki.bundle(&scope).await?;
    scope.commit().await?;
    Ok(Enrolled {
        tenant_id,
        site_id: device.site_id,
        device_id: device.id,
        certificate,
        ca_bundle_pem,
        created,
    })
}

/// An empty or missing list allows every address; otherwise the client's
/// address must fall in one of the listed networks or addresses.
fn address_allowed(allowed: Option<&serde_json::Value>, client: Option<IpAddr>) -> bool {
    let Some(list) = allowed.and_then(|v| v.as_array()).filter(|l| !l.is_empty()) else {
        return true;
    };
    let Some(client) = client else {
        return false;
    };
    list.iter()
        .filter_map(|v| v.as_str())
        .any(|entry| match parse_network(entry) {
            Some(net) => net.contains(&client),
            None => false,
        })
}

/// An address or a network in CIDR notation.
pub fn parse_network(entry: &str) -> Option<ipnet::IpNet> {
    entry
        .parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists() {
        let list = serde_json::json!(["10.0.0.0/8", "192.0.2.7"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(address_allowed(None, None));
        assert!(address_allowed(
            Some(&serde_json::json!([])),
            ip("203.0.113.1")
        ));
        assert!(address_allowed(Some(&list), ip("10.1.2.3")));
        assert!(address_allowed(Some(&list), ip("192.0.2.7")));
        assert!(!address_allowed(Some(&list), ip("192.0.2.8")));
        assert!(!address_allowed(Some(&list), None));
    }
}
