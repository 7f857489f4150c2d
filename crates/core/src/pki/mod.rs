//! Device PKI: one CA per tenant (ECDSA P-256), short-lived client
//! certificates issued from agents' CSRs, and CA rotation.
//!
//! The server, not the CSR, decides what a certificate says: only the
//! CSR's public key is used. Certificates name tenant, site and device in
//! a URI SAN (see [`mobius_api::device::DeviceName`]), and their issuer's
//! common name carries the tenant id, which the device listener checks
//! against the SAN.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mobius_api::device::DeviceName;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, Set,
    prelude::Uuid,
};

use crate::audit::{Actor, AuditRecord};
use crate::crypto::sealing::SecretSealer;
use crate::db::TenantScope;
use crate::db::entities::certificate_authority;
use crate::db::{StoreError, StoreResult};

pub type CertificateAuthority = certificate_authority::Model;

/// Tenant CAs live five years; rotation replaces them sooner.
const CA_LIFETIME_DAYS: i64 = 5 * 365;
/// Clock skew allowance on `notBefore`.
const BACKDATE_MINUTES: i64 = 5;

/// What a refused CSR gets told.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is not valid PEM/PKCS#10 or its signature does not verify")]
    Unreadable,
    #[error("the CSR's key must be ECDSA P-256 or Ed25519")]
    UnsupportedKey,
}

/// A CSR whose signature verified, reduced to what we use: its key.
pub struct DeviceCsr {
    public_key: rcgen::PublicKey,
}

impl DeviceCsr {
    pub fn parse(pem: &str) -> Result<DeviceCsr, CsrError> {
        let csr =
            CertificateSigningRequestParams::from_pem(pem).map_err(|_| CsrError::Unreadable)?;
        let alg = csr.public_key.algorithm();
        if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ED25519 {
            return Err(CsrError::UnsupportedKey);
        }
        Ok(DeviceCsr {
            public_key: csr.public_key,
        })
    }
}

/// A certificate just issued.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub pem: String,
    pub serial: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub ca_id: Uuid,
}

/// Issues and rotates tenant CAs. CA keys are opened once and kept in
/// memory (they are needed on every enrollment and renewal).
pub struct Pki {
    sealer: Arc<dyn SecretSealer>,
    certificate_ttl: chrono::Duration,
    signers: Mutex<HashMap<Uuid, Arc<Issuer<'static, KeyPair>>>>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("certificate_ttl", &self.certificate_ttl)
            .finish_non_exhaustive()
    }
}

impl Pki {
    pub fn new(sealer: Arc<dyn SecretSealer>, certificate_ttl: chrono::Duration) -> Pki {
        Pki {
            sealer,
            certificate_ttl,
            signers: Mutex::new(HashMap::new()),
        }
    }

    pub fn certificate_ttl(&self) -> chrono::Duration {
        self.certificate_ttl
    }

    /// The tenant's current CA (the newest not being retired), created on
    /// first use.
    pub async fn current_ca(
        &self,
        scope: &TenantScope,
        actor: &Actor,
    ) -> StoreResult<CertificateAuthority> {
        let current = certificate_authority::Entity::find()
            .filter(certificate_authority::Column::TenantId.eq(scope.tenant_id()))
            .filter(certificate_authority::Column::RetireAfter.is_null())
            .order_by_desc(certificate_authority::Column::Id)
            .one(scope.connection())
            .await?;
        match current {
            Some(ca) => Ok(ca),
            None => self.create_ca(scope, actor).await,
        }
    }

    /// Every CA of the tenant still trusted: the current one and any being
    /// retired whose certificates may still be valid.
    pub async fn trusted(&self, scope: &TenantScope) -> StoreResult<Vec<CertificateAuthority>> {
        let now = chrono::Utc::now();
        Ok(certificate_authority::Entity::find()
            .filter(certificate_authority::Column::TenantId.eq(scope.tenant_id()))
            .order_by_desc(certificate_authority::Column::Id)
            .all(scope.connection())
            .await?
            .into_iter()
            .filter(|ca| ca.retire_after.is_none_or(|t| t > now))
            .collect())
    }

    /// PEM bundle of [`Pki::trusted`].
    pub async fn bundle(&self, scope: &TenantScope) -> StoreResult<String> {
        Ok(self
            .trusted(scope)
            .await?
            .into_iter()
            .map(|ca| ca.cert_pem)
            .collect())
    }

    /// Starts signing with a new CA. The old one stays trusted until every
    /// certificate it signed has expired (one certificate lifetime).
    pub async fn rotate(
        &self,
        scope: &TenantScope,
        actor: &Actor,
    ) -> StoreResult<CertificateAuthority> {
        let old = self.current_ca(scope, actor).await?;
        let retire_after = chrono::Utc::now() + self.certificate_ttl;
        let old_id = old.id;
        let mut row = old.into_active_model();
        row.retire_after = Set(Some(retire_after));
        row.updated_at = Set(chrono::Utc::now());
        row.update(scope.connection()).await?;
        let new = self.create_ca(scope, actor).await?;
        scope
            .audit()
            .record(
                actor,
                AuditRecord::new("tenant.ca_rotated", "certificate_authority", Some(new.id)).with_details(
                    serde_json::json!({ "previous_ca_id": old_id, "previous_trusted_until": retire_after }),
                ),
            )
            .await?;
        Ok(new)
    }

    /// Signs a client certificate for `name` with `ca`, for the CSR's key.
    pub async fn issue(
        &self,
        ca: &CertificateAuthority,
        csr: &DeviceCsr,
        name: DeviceName,
    ) -> StoreResult<IssuedCertificate> {
        let signer = self.signer(ca).await?;
        let now = chrono::Utc::now();
        let not_after = now + self.certificate_ttl;
        let serial: [u8; 16] = rand::random();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.device_id.to_string());
        dn.push(DnType::OrganizationName, tenant_label(name.tenant_id));
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(name.to_uri().try_into().map_err(
                StoreError::internal("naming a device certificate"),
            )?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = to_offset(now - chrono::Duration::minutes(BACKDATE_MINUTES))?;
        params.not_after = to_offset(not_after)?;
        // Positive, 127 bits of randomness.
        let mut serial_bytes = serial.to_vec();
        serial_bytes[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        let cert = params
            .signed_by(&csr.public_key, signer.as_ref())
            .map_err(StoreError::internal("signing a device certificate"))?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial: hex::encode(&serial_bytes),
            not_after: chrono::DateTime::from_timestamp(not_after.timestamp(), 0)
                .unwrap_or(not_after),
            ca_id: ca.id,
        })
    }

    async fn create_ca(
        &self,
        scope: &TenantScope,
        actor: &Actor,
    ) -> StoreResult<CertificateAuthority> {
        let id = Uuid::now_v7();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(StoreError::internal("generating a CA key"))?;
        let now = chrono::Utc::now();
        let not_after = now + chrono::Duration::days(CA_LIFETIME_DAYS);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ca_common_name(scope.tenant_id(), id));
        dn.push(DnType::OrganizationName, "Mobius");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now - chrono::Duration::minutes(BACKDATE_MINUTES))?;
        params.not_after = to_offset(not_after)?;
        let cert = params
            .self_signed(&key)
            .map_err(StoreError::internal("self-signing a CA certificate"))?;
        let sealed = self
            .sealer
            .seal(
                &seal_context(scope.tenant_id(), id),
                key.serialize_pem().as_bytes(),
            )
            .await
            .map_err(StoreError::internal("sealing a CA key"))?;
        let row = certificate_authority::ActiveModel {
            id: Set(id),
            tenant_id: Set(scope.tenant_id()),
            cert_pem: Set(cert.pem()),
            sealed_key: Set(sealed),
            not_after: Set(not_after),
            retire_after: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(scope.connection())
        .await?;
        scope
            .audit()
            .record(
                actor,
                AuditRecord::new("tenant.ca_created", "certificate_authority", Some(id)),
            )
            .await?;
        Ok(row)
    }

    async fn signer(
        &self,
        ca: &CertificateAuthority,
    ) -> StoreResult<Arc<Issuer<'static, KeyPair>>> {
        if let Some(signer) = self
            .signers
            .lock()
            .ok()
            .and_then(|s| s.get(&ca.id).cloned())
        {
            return Ok(signer);
        }
        let pem = self
            .sealer
            .open(&seal_context(ca.tenant_id, ca.id), &ca.sealed_key)
            .await
            .map_err(|e| StoreError::Internal {
                context: "opening a CA key",
                source: format!("CA {}: {e}", ca.id).into(),
            })?;
        let key = KeyPair::from_pem(&String::from_utf8_lossy(&pem))
            .map_err(StoreError::internal("reading an opened CA key"))?;
        let issuer = Arc::new(
            Issuer::from_ca_cert_pem(&ca.cert_pem, key)
                .map_err(StoreError::internal("loading a CA certificate"))?,
        );
        if let Ok(mut signers) = self.signers.lock() {
            signers.insert(ca.id, issuer.clone());
        }
        Ok(issuer)
    }
}

/// The CA's common name carries the tenant id: a certificate's issuer must
/// belong to the tenant its SAN names.
pub fn ca_common_name(tenant_id: Uuid, ca_id: Uuid) -> String {
    format!("{} CA {ca_id}", tenant_label(tenant_id))
}

/// The CA id in a tenant CA's common name, if the name is one of
/// `tenant_id`'s CAs (the inverse of [`ca_common_name`]).
pub fn ca_id_from_common_name(tenant_id: Uuid, common_name: &str) -> Option<Uuid> {
    common_name
        .strip_prefix(&tenant_label(tenant_id))?
        .strip_prefix(" CA ")?
        .parse()
        .ok()
}

/// How certificates name a tenant (device certificates' organizational
/// unit and the CA names).
fn tenant_label(tenant_id: Uuid) -> String {
    format!("Mobius tenant {tenant_id}")
}

fn seal_context(tenant_id: Uuid, ca_id: Uuid) -> String {
    format!("mobius:tenant-ca:{tenant_id}:{ca_id}")
}

fn to_offset(t: chrono::DateTime<chrono::Utc>) -> StoreResult<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(StoreError::internal("converting a certificate date"))
}
