//! TLS for the device listener: the server's own identity (a server CA
//! and an ECDSA P-256 leaf, generated on first run or read from files) and
//! client-certificate verification against every tenant's trusted CAs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName as TlsName, RootCertStore, SignatureScheme};

use mobius_core::crypto::sealing::write_private_file;

/// The listener CA's certificate in the data directory.
pub const SERVER_CA_FILE: &str = "device-ca.pem";
const SERVER_CA_KEY_FILE: &str = "device-ca.key";
const SERVER_CERT_FILE: &str = "device-server.pem";
const SERVER_KEY_FILE: &str = "device-server.key";

/// The device listener's certificate chain and key, and the pin of its CA.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// PEM of the CA agents should trust after enrolling.
    pub ca_pem: String,
    /// SHA-256 of the CA's DER SubjectPublicKeyInfo: the pin in every
    /// enrollment token.
    pub ca_pin: [u8; 32],
}

/// Configured files, or the identity generated on first run in `data_dir`
/// (regenerating the leaf when `hostnames` change or it nears expiry).
pub fn server_identity(
    data_dir: &Path,
    configured: Option<(&Path, &Path, &Path)>,
    hostnames: &[String],
) -> anyhow::Result<ServerIdentity> {
    let (cert_path, key_path, ca_path) = match configured {
        Some((cert, key, ca)) => (cert.to_path_buf(), key.to_path_buf(), ca.to_path_buf()),
        None => generate_if_needed(data_dir, hostnames)?,
    };
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let (cert_pem, key_pem, ca_pem) = (read(&cert_path)?, read(&key_path)?, read(&ca_path)?);
    let mut chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", cert_path.display()))?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .with_context(|| format!("parsing {}", ca_path.display()))?;
    // Agents verify the pin against a CA in the presented chain.
    if !chain.iter().any(|c| c.as_ref() == ca_der.as_ref()) {
        chain.push(ca_der.clone());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .with_context(|| format!("parsing {}", key_path.display()))?;
    Ok(ServerIdentity {
        chain,
        key,
        ca_pin: spki_sha256(&ca_der)?,
        ca_pem,
    })
}

/// SHA-256 of a certificate's DER SubjectPublicKeyInfo: the pin agents
/// check (computed by the same function they use, `mobius-tls-pin`).
pub fn spki_sha256(cert: &CertificateDer<'_>) -> anyhow::Result<[u8; 32]> {
    mobius_tls_pin::spki_sha256(cert.as_ref()).context("parsing the listener's CA certificate")
}

fn generate_if_needed(
    data_dir: &Path,
    hostnames: &[String],
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_path = data_dir.join(SERVER_CA_FILE);
    let ca_key_path = data_dir.join(SERVER_CA_KEY_FILE);
    let cert_path = data_dir.join(SERVER_CERT_FILE);
    let key_path = data_dir.join(SERVER_KEY_FILE);
    if !ca_path.exists() || !ca_key_path.exists() {
        let (cert_pem, key_pem) = new_listener_ca()?;
        write_private_file(&ca_key_path, &key_pem)?;
        write_private_file(&ca_path, &cert_pem)?;
        // A new CA invalidates any leaf made by an old one.
        let _ = std::fs::remove_file(&cert_path);
        tracing::info!(path = %ca_path.display(), "created the device listener's CA");
    }
    let wanted = listener_names(hostnames);
    if leaf_is_current(&cert_path, &wanted) && key_path.exists() {
        return Ok((cert_path, key_path, ca_path));
    }
    let (cert_pem, key_pem) = issue_listener_leaf(
        &std::fs::read_to_string(&ca_path)?,
        &std::fs::read_to_string(&ca_key_path)?,
        &wanted,
    )?;
    write_private_file(&key_path, &key_pem)?;
    write_private_file(&cert_path, &cert_pem)?;
    tracing::info!(names = ?wanted, "issued the device listener's certificate");
    Ok((cert_path, key_path, ca_path))
}

/// The generated CA and key files in `data_dir`, if a previous run made
/// them (imported into the shared store so enrolled agents keep their pin).
pub fn data_dir_ca(data_dir: &Path) -> Option<(String, String)> {
    let cert = std::fs::read_to_string(data_dir.join(SERVER_CA_FILE)).ok()?;
    let key = std::fs::read_to_string(data_dir.join(SERVER_CA_KEY_FILE)).ok()?;
    Some((cert, key))
}

/// The names the listener's certificate covers: the loopback names plus
/// `hostnames`.
pub fn listener_names(hostnames: &[String]) -> Vec<String> {
    [
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ]
    .into_iter()
    .chain(hostnames.iter().cloned())
    .collect()
}

/// A new device listener CA (ECDSA P-256, 20 years): certificate and key PEM.
pub fn new_listener_ca() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Mobius device listener CA");
    dn.push(DnType::OrganizationName, "Mobius");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A one-year server leaf for `names`, signed by the listener CA:
/// certificate and key PEM.
pub fn issue_listener_leaf(
    ca_pem: &str,
    ca_key_pem: &str,
    names: &[String],
) -> anyhow::Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(name.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Mobius device listener");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(365);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// An identity from PEM text (the shared store's CA and a leaf issued in
/// memory).
pub fn identity_from_pems(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> anyhow::Result<ServerIdentity> {
    let mut chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("parsing the listener certificate")?;
    let ca_der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("parsing the listener CA")?;
    if !chain.iter().any(|c| c.as_ref() == ca_der.as_ref()) {
        chain.push(ca_der.clone());
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("parsing the listener key")?;
    Ok(ServerIdentity {
        chain,
        key,
        ca_pin: spki_sha256(&ca_der)?,
        ca_pem: ca_pem.to_owned(),
    })
}

/// The leaf exists, covers `names`, and has more than 30 days left.
fn leaf_is_current(path: &Path, names: &[String]) -> bool {
    let Ok(pem) = std::fs::read(path) else {
        return false;
    };
    let Ok(der) = CertificateDer::from_pem_slice(&pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let month = 30 * 24 * 3600;
    if cert.validity().not_after.timestamp() - chrono::Utc::now().timestamp() < month {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let present: Vec<String> =
        san.value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                        .to_string(),
                    16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                        .to_string(),
                    _ => String::new(),
                },
                _ => String::new(),
            })
            .collect();
    names.iter().all(|n| present.contains(n))
}

/// Client-certificate verification against the trusted CAs of every
/// tenant. The set changes when a tenant gets or rotates a CA, so the inner
/// WebPKI verifier is swapped atomically. A client certificate is optional
/// at the TLS layer (the enroll endpoint has none); every other endpoint
/// requires one.
#[derive(Debug)]
pub struct TenantCaVerifier {
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl Default for TenantCaVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl TenantCaVerifier {
    /// Trusts nothing until [`TenantCaVerifier::set_roots`] is called.
    pub fn new() -> TenantCaVerifier {
        TenantCaVerifier {
            inner: RwLock::new(WebPkiClientVerifier::no_client_auth()),
        }
    }

    /// Replaces the trusted CAs; returns how many were loaded.
    pub fn set_roots(&self, pems: &[String]) -> anyhow::Result<usize> {
        let mut roots = RootCertStore::empty();
        for pem in pems {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert?)?;
            }
        }
        let count = roots.len();
        let verifier = if count == 0 {
            WebPkiClientVerifier::no_client_auth()
        } else {
            WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .context("building the client verifier")?
        };
        match self.inner.write() {
            Ok(mut inner) => *inner = verifier,
            Err(_) => bail!("client verifier lock poisoned"),
        }
        Ok(count)
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        match self.inner.read() {
            Ok(inner) => inner.clone(),
            Err(_) => WebPkiClientVerifier::no_client_auth(),
        }
    }
}

impl ClientCertVerifier for TenantCaVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// Many tenants share the listener: naming every CA would leak the
    /// tenant list and bloat the handshake, so no hints are sent.
    fn root_hint_subjects(&self) -> &[TlsName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS 1.3 only, with the tenant-CA verifier.
pub fn server_config(
    identity: &ServerIdentity,
    verifier: Arc<TenantCaVerifier>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
