//! Redeeming an enrollment token for a device certificate.
//!
//! The token's use is claimed first, in one autocommit statement that only
//! succeeds while uses are left (`mobius_claim_enrollment_token` on
//! Postgres): concurrent enrollments on one token contend on its row for
//! that statement, not for a whole transaction, and 50 concurrent
//! enrollments on a single-use token still give exactly one device. If the
//! enrollment then fails, the use is given back. One transaction then finds
//! or writes the device with its certificate and facts (one statement),
//! and records the audit event (unchained: the chainer links it after
//! commit, so no per-tenant lock is held). The current CA and the CA bundle
//! come from the PKI's in-memory trust registry. The device count is
//! checked under a per-tenant lock only when a device limit applies, so a
//! limit of N admits N.
//!
//! Round trips on Postgres for a new device without a device limit: claim,
//! `BEGIN`, `set_config`, device by fingerprint, device insert, audit
//! insert, `COMMIT` (seven).

use std::net::IpAddr;

use mobius_api::device::{DeviceName, HostFacts};
use sea_orm::prelude::Uuid;

use crate::audit::{Actor, ActorKind, AuditRecord};
use crate::authz::Entitlements;
use crate::crypto::secrets;
use crate::db::locks::TenantLock;
use crate::db::{Backend, FoundTenant, SecretKind, Store, StoreError, TokenClaim};
use crate::devices::{CheckedFacts, EnrolledDevice, HostFingerprint};
use crate::pki::{DeviceCsr, IssuedCertificate, Pki};

pub struct EnrollmentRequest<'a> {
    /// The secret part of the enrollment token.
    pub secret: &'a str,
    pub csr: &'a DeviceCsr,
    pub host_fingerprint: &'a HostFingerprint,
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

/// An enrollment token as its secret presents it.
pub struct EnrollmentTokenSecret<'a>(pub &'a str);

impl EnrollmentTokenSecret<'_> {
    /// Redeems the token: claims one use, then creates (or, for a host
    /// enrolling again, finds) the device and issues its certificate. A
    /// failure after the claim gives the use back.
    pub async fn redeem(
        &self,
        store: &Store,
        pki: &Pki,
        entitlements: &dyn Entitlements,
        request: EnrollmentRequest<'_>,
    ) -> Result<Enrolled, EnrollError> {
        // Refused before the token is claimed, so a bad request uses nothing
        // (the fingerprint is a parsed HostFingerprint already).
        let facts = CheckedFacts::new(request.facts)?;
        let hash = secrets::sha256(self.0);
        let claim = claim(store, &hash).await?;
        if !claim.claimed {
            return Err(if claim.revoked {
                EnrollError::TokenRevoked
            } else if claim.expired {
                EnrollError::TokenExpired
            } else {
                EnrollError::TokenUsedUp
            });
        }
        let result = enroll_claimed(store, pki, entitlements, &claim, &request, facts).await;
        if result.is_err() {
            give_back(store, &claim).await;
        }
        result
    }
}

/// [`EnrollmentTokenSecret::redeem`] for `request.secret`.
pub async fn enroll(
    store: &Store,
    pki: &Pki,
    entitlements: &dyn Entitlements,
    request: EnrollmentRequest<'_>,
) -> Result<Enrolled, EnrollError> {
    EnrollmentTokenSecret(request.secret)
        .redeem(store, pki, entitlements, request)
        .await
}

/// Claims one use of the token (see the module comment). The embedded
/// store has one writer and no row-level security: it checks and claims in
/// one short transaction instead.
async fn claim(store: &Store, hash: &[u8; 32]) -> Result<TokenClaim, EnrollError> {
    if store.backend() == Backend::Postgres {
        return store
            .claim_enrollment_token_pg(hash)
            .await?
            .ok_or(EnrollError::UnknownToken);
    }
    let owner = store
        .tenant_by_secret_hash(SecretKind::EnrollmentToken, hash)
        .await?
        .ok_or(EnrollError::UnknownToken)?;
    let scope = store.begin(&owner).await?;
    let token = scope
        .enrollment_tokens()
        .find_by_hash(hash)
        .await?
        .ok_or(EnrollError::UnknownToken)?;
    let claimed = scope.enrollment_tokens().claim_use(token.id).await?;
    scope.commit().await?;
    Ok(TokenClaim {
        tenant: owner,
        token_id: token.id,
        site_id: token.site_id,
        allowed_ips: token.allowed_ips,
        expired: token.expires_at <= chrono::Utc::now(),
        revoked: token.revoked_at.is_some(),
        used_up: token.uses >= token.max_uses,
        claimed,
    })
}

/// Gives back a claimed use after a failed enrollment. Best effort: if
/// this fails too, the token has one use fewer than it could have.
async fn give_back(store: &Store, claim: &TokenClaim) {
    let result = async {
        let scope = store.begin(&claim.tenant).await?;
        scope
            .enrollment_tokens()
            .release_use(claim.token_id)
            .await?;
        scope.commit().await
    }
    .await;
    if let Err(err) = result {
        tracing::warn!(error = %err, token_id = %claim.token_id, "could not give back an enrollment token use");
    }
}

async fn enroll_claimed(
    store: &Store,
    pki: &Pki,
    entitlements: &dyn Entitlements,
    claim: &TokenClaim,
    request: &EnrollmentRequest<'_>,
    facts: CheckedFacts<'_>,
) -> Result<Enrolled, EnrollError> {
    if !address_allowed(claim.allowed_ips.as_ref(), request.client_ip) {
        return Err(EnrollError::AddressNotAllowed);
    }
    let owner: &FoundTenant = &claim.tenant;
    let tenant_id = owner.id();
    let scope = store.begin(owner).await?;
    let existing = scope
        .devices()
        .find_by_fingerprint(request.host_fingerprint)
        .await?;
    let (device_id, site_id, hostname, created) = match existing {
        Some(device) if device.revoked_at.is_some() => return Err(EnrollError::DeviceRevoked),
        Some(device) => (device.id, device.site_id, device.hostname, false),
        None => {
            if let Some(limit) = entitlements.device_limit(tenant_id) {
                // Serializes enrollments of this tenant for the count.
                scope.lock(TenantLock::DeviceLimit).await?;
                if scope.devices().count().await? >= limit {
                    return Err(EnrollError::DeviceLimit { limit });
                }
            }
            let hostname = request.host_fingerprint.as_str().to_owned();
            (Uuid::now_v7(), claim.site_id, hostname, true)
        }
    };
    let actor = Actor {
        kind: ActorKind::Device,
        id: Some(device_id),
        ip: request.client_ip.map(|ip| ip.to_string()),
        user_agent: None,
    };
    let name = DeviceName {
        tenant_id,
        site_id,
        device_id,
    };
    let certificate = pki
        .issue_current(&scope, &Actor::system(), request.csr, name)
        .await?;
    let hostname = scope
        .devices()
        .write_enrolled(
            EnrolledDevice {
                id: device_id,
                site_id,
                hostname: &hostname,
                fingerprint: request.host_fingerprint,
                created,
            },
            &certificate,
            facts,
        )
        .await?;
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
                Some(device_id),
            )
            .with_details(serde_json::json!({
                "hostname": hostname,
                "site_id": site_id,
                "enrollment_token_id": claim.token_id,
                "certificate_serial": certificate.serial,
            })),
        )
        .await?;
    let ca_bundle_pem = pki.bundle_for(&scope, certificate.ca_id).await?;
    scope.commit().await?;
    Ok(Enrolled {
        tenant_id,
        site_id,
        device_id,
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
