//! Device PKI: one CA per tenant (ECDSA P-256), short-lived client
//! certificates issued from agents' CSRs, and CA rotation.
//!
//! The server, not the CSR, decides what a certificate says: only the
//! CSR's public key is used. Certificates name tenant, site and device in
//! a URI SAN (see [`mobius_api::device::DeviceName`]), and their issuer's
//! common name carries the tenant id, which the device listener checks
//! against the SAN.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

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
use crate::crypto::sealing::{SealContext, SecretSealer};
use crate::db::TenantScope;
use crate::db::entities::certificate_authority;
use crate::db::{StoreError, StoreResult, TrustedCa};

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
/// memory (they are needed on every enrollment and renewal), and so is the
/// trust registry: each tenant's current CA and its bundle of trusted CA
/// certificates, as last loaded with [`Pki::load_trust`].
pub struct Pki {
    sealer: Arc<dyn SecretSealer>,
    certificate_ttl: chrono::Duration,
    signers: Mutex<HashMap<Uuid, Arc<Issuer<'static, KeyPair>>>>,
    trust: RwLock<HashMap<Uuid, TenantTrust>>,
}

/// One tenant's CAs as the trust registry last loaded them.
#[derive(Clone, Debug, Default)]
struct TenantTrust {
    /// The CA that signs (none while every CA is being retired).
    current: Option<Uuid>,
    /// PEM of every trusted CA, newest first.
    bundle_pem: String,
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
            trust: RwLock::new(HashMap::new()),
        }
    }

    /// Replaces the trust registry with `cas` (every tenant's trusted CAs,
    /// as `Store::trusted_device_cas` answers). The server reloads it at
    /// start, after its own CA changes and every few seconds for other
    /// servers' changes; until then another server's rotation is not seen
    /// here, which is safe because a retiring CA stays trusted for a whole
    /// certificate lifetime.
    pub fn load_trust(&self, cas: &[TrustedCa]) {
        let mut sorted: Vec<&TrustedCa> = cas.iter().collect();
        // UUIDv7: newest first, as `trusted` orders them.
        sorted.sort_by_key(|ca| std::cmp::Reverse(ca.ca_id));
        let mut registry: HashMap<Uuid, TenantTrust> = HashMap::new();
        for ca in sorted {
            let tenant = registry.entry(ca.tenant_id).or_default();
            if !ca.retiring && tenant.current.is_none() {
                tenant.current = Some(ca.ca_id);
            }
            tenant.bundle_pem.push_str(&ca.cert_pem);
        }
        if let Ok(mut trust) = self.trust.write() {
            *trust = registry;
        }
    }

    /// The tenant's signing CA as last loaded.
    fn loaded_current(&self, tenant_id: Uuid) -> Option<Uuid> {
        self.trust
            .read()
            .ok()
            .and_then(|t| t.get(&tenant_id).and_then(|t| t.current))
    }

    /// Whether `ca_id` is the tenant's signing CA as last loaded.
    pub fn knows(&self, tenant_id: Uuid, ca_id: Uuid) -> bool {
        self.loaded_current(tenant_id) == Some(ca_id)
    }

    /// Whether `ca_id` is still the tenant's signing CA as last loaded (if
    /// not, the device should renew now to move to the new one). A tenant
    /// not loaded yet counts as current.
    pub fn is_current(&self, tenant_id: Uuid, ca_id: Uuid) -> bool {
        self.loaded_current(tenant_id).is_none_or(|c| c == ca_id)
    }

    /// Signs a client certificate for `name` with the tenant's current CA:
    /// from memory when the registry knows it and its key is open, else
    /// read (or created, on the tenant's first enrollment) in `scope`.
    pub async fn issue_current(
        &self,
        scope: &TenantScope,
        actor: &Actor,
        csr: &DeviceCsr,
        name: DeviceName,
    ) -> StoreResult<IssuedCertificate> {
        let cached = self.loaded_current(scope.tenant_id()).and_then(|ca_id| {
            self.signers
                .lock()
                .ok()
                .and_then(|s| s.get(&ca_id).cloned())
                .map(|signer| (ca_id, signer))
        });
        let (ca_id, signer) = match cached {
            Some(found) => found,
            None => {
                let ca = self.current_ca(scope, actor).await?;
                (ca.id, self.signer(&ca).await?)
            }
        };
        self.sign(ca_id, &signer, csr, name)
    }

    /// The PEM bundle of the tenant's trusted CAs for a device whose
    /// certificate `ca_id` just signed: from memory when the registry's
    /// current CA is `ca_id`, else read in `scope` (a CA created by this
    /// very transaction is not loaded yet).
    pub async fn bundle_for(&self, scope: &TenantScope, ca_id: Uuid) -> StoreResult<String> {
        let loaded = self.trust.read().ok().and_then(|t| {
            t.get(&scope.tenant_id())
                .filter(|t| t.current == Some(ca_id))
                .map(|t| t.bundle_pem.clone())
        });
        match loaded {
            Some(bundle) => Ok(bundle),
            None => self.bundle(scope).await,
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
        self.sign(ca.id, &signer, csr, name)
    }

    fn sign(
        &self,
        ca_id: Uuid,
        signer: &Issuer<'static, KeyPair>,
        csr: &DeviceCsr,
        name: DeviceName,
    ) -> StoreResult<IssuedCertificate> {
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
            .signed_by(&csr.public_key, signer)
            .map_err(StoreError::internal("signing a device certificate"))?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial: hex::encode(&serial_bytes),
            not_after: chrono::DateTime::from_timestamp(not_after.timestamp(), 0)
                .unwrap_or(not_after),
            ca_id,
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

pub fn seal_context(tenant_id: Uuid, ca_id: Uuid) -> SealContext {
    SealContext::tenant(tenant_id, "tenant-ca", ca_id)
}

fn to_offset(t: chrono::DateTime<chrono::Utc>) -> StoreResult<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(StoreError::internal("converting a certificate date"))
}
