//! The device's key pair and what the agent needs to know about its
//! certificate.
//!
//! The key is ECDSA P-256: small, fast to sign with on every handshake, and
//! accepted by the server's CSR check. It is made here and stays here;
//! renewal sends a new CSR signed by the same key, so a stolen certificate
//! file alone is worthless.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, TimeDelta, Utc};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The device's private key.
pub struct DeviceKey {
    key_pair: KeyPair,
}

impl DeviceKey {
    pub fn generate() -> Result<DeviceKey> {
        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("cannot generate the device key")?;
        Ok(DeviceKey { key_pair })
    }

    pub fn from_pem(pem: &str) -> Result<DeviceKey> {
        let key_pair = KeyPair::from_pem(pem).context("the device key is not a valid PEM key")?;
        Ok(DeviceKey { key_pair })
    }

    /// PKCS#8 PEM, for `key.pem`.
    pub fn to_pem(&self) -> String {
        self.key_pair.serialize_pem()
    }

    /// The key in the form rustls presents as client authentication.
    pub fn to_rustls(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.to_pem().as_bytes())
            .context("cannot load the device key for TLS")
    }

    /// The DER SubjectPublicKeyInfo, to check a certificate is really ours.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key_pair.subject_public_key_info()
    }

    /// A PKCS#10 request for this key. The server ignores the names in it
    /// and writes its own (tenant, site, device), so the common name is only
    /// a label for humans reading the CSR.
    pub fn certificate_request_pem(&self, hostname: &str) -> Result<String> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        let label = if hostname.is_empty() {
            "mobius-agent"
        } else {
            hostname
        };
        name.push(DnType::CommonName, label);
        params.distinguished_name = name;
        params
            .serialize_request(&self.key_pair)
            .and_then(|csr| csr.pem())
            .context("cannot build the certificate request")
    }
}

/// The parts of a certificate the agent acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
}

impl CertificateInfo {
    pub fn from_der(der: &[u8]) -> Result<CertificateInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|err| anyhow::anyhow!("not a valid X.509 certificate: {err}"))?;
        let validity = cert.validity();
        let time =
            |ts: i64| DateTime::from_timestamp(ts, 0).context("certificate validity out of range");
        Ok(CertificateInfo {
            not_before: time(validity.not_before.timestamp())?,
            not_after: time(validity.not_after.timestamp())?,
            public_key_der: cert.public_key().raw.to_vec(),
        })
    }

    /// The first certificate of a PEM file (the leaf, by convention).
    pub fn from_pem(pem: &str) -> Result<CertificateInfo> {
        let first = certificates_from_pem(pem)?
            .into_iter()
            .next()
            .context("no certificate in the PEM data")?;
        CertificateInfo::from_der(&first)
    }

    /// Half of the lifetime: the renewal point when the server has not
    /// said otherwise. Renewing at half-life (as SPIRE and step-ca do)
    /// leaves the other half to ride out a server outage.
    pub fn half_life(&self) -> DateTime<Utc> {
        let lifetime = self.not_after - self.not_before;
        self.not_before + TimeDelta::seconds(lifetime.num_seconds() / 2)
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.not_after
    }
}

/// Every certificate in a PEM text, in order.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("invalid PEM certificate data")?;
    if certs.is_empty() {
        bail!("no certificate in the PEM data");
    }
    Ok(certs)
}

/// Refuses a certificate that does not carry our key: storing it would
/// leave a device that cannot authenticate.
pub fn ensure_certificate_matches_key(cert: &CertificateInfo, key: &DeviceKey) -> Result<()> {
    if cert.public_key_der != key.public_key_der() {
        bail!("the server returned a certificate for a different key");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rcgen::Issuer;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;

    use super::*;

    #[test]
    fn keys_round_trip_through_pem_and_sign_requests() {
        let key = DeviceKey::generate().unwrap();
        let again = DeviceKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(key.public_key_der(), again.public_key_der());
        assert!(key.to_pem().contains("BEGIN PRIVATE KEY"));
        key.to_rustls().unwrap();

        let csr = again.certificate_request_pem("host-1").unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr.as_bytes()).unwrap();
        assert_eq!(pem.label, "CERTIFICATE REQUEST");
        let (_, parsed) = X509CertificationRequest::from_der(&pem.contents).unwrap();
        assert_eq!(
            parsed.certification_request_info.subject_pki.raw,
            key.public_key_der().as_slice()
        );
    }

    #[test]
    fn certificate_info_reads_validity_and_checks_the_key() {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = Issuer::new(ca_params, ca_key);

        let device = DeviceKey::generate().unwrap();
        let mut params = CertificateParams::default();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 3);
        let cert = params.signed_by(&device.key_pair, &issuer).unwrap();

        let info = CertificateInfo::from_pem(&cert.pem()).unwrap();
        assert_eq!(info.not_after.to_rfc3339(), "2030-01-03T00:00:00+00:00");
        assert_eq!(info.half_life().to_rfc3339(), "2030-01-02T00:00:00+00:00");
        assert!(!info.is_expired(info.half_life()));
        assert!(info.is_expired(info.not_after));
        ensure_certificate_matches_key(&info, &device).unwrap();
        let stranger = DeviceKey::generate().unwrap();
        assert!(ensure_certificate_matches_key(&info, &stranger).is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(CertificateInfo::from_pem("hello").is_err());
        assert!(certificates_from_pem("").is_err());
    }
}
