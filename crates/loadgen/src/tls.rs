//! TLS as mobius-agent speaks it: TLS 1.3 only, no ALPN (HTTP/1.1), the
//! server trusted through the token's CA pin until enrollment hands over
//! the server CA, then mutual TLS with the device certificate.
//!
//! Every simulated agent is a different host, so no configuration here
//! resumes sessions: each connection pays the full handshake, as a fleet
//! of real agents would.

use std::fmt;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// Named explicitly: reqwest links a provider of its own.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Certificates in a PEM text.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("unreadable PEM certificate")?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in the PEM text"));
    }
    Ok(certs)
}

/// SHA-256 of a certificate's DER SubjectPublicKeyInfo, as tokens pin it.
fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(Sha256::digest(parsed.tbs_certificate.subject_pki.raw).into())
}

/// Trusts the server only if its chain holds a CA whose key matches the
/// token's pin and the leaf verifies against that CA alone (hostname
/// included): the same rule as the agent's enrollment.
pub struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCaVerifier").finish_non_exhaustive()
    }
}

impl PinnedCaVerifier {
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> PinnedCaVerifier {
        PinnedCaVerifier { pin, provider }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .chain(std::iter::once(end_entity))
            .find(|cert| spki_sha256(cert) == Some(self.pin))
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not match the token's pin: refusing to enroll".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(pinned.clone().into_owned())
            .map_err(|err| rustls::Error::General(format!("the pinned CA is unusable: {err}")))?;
        // The root need not be presented again as an intermediate.
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|cert| cert.as_ref() != pinned.as_ref())
            .cloned()
            .collect();
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|err| rustls::Error::General(err.to_string()))?
            .verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How the simulator decides to trust the device listener.
#[derive(Clone)]
pub enum ServerTrust {
    /// Before any enrollment, without --server-ca: the token's pin.
    Pinned(Arc<PinnedCaVerifier>),
    /// The server CA (from --server-ca, an enrollment answer or the
    /// identities file).
    Ca(Arc<WebPkiServerVerifier>),
}

impl ServerTrust {
    pub fn pinned(pin: [u8; 32]) -> ServerTrust {
        ServerTrust::Pinned(Arc::new(PinnedCaVerifier::new(pin, crypto_provider())))
    }

    pub fn from_ca_pem(pem: &str) -> Result<ServerTrust> {
        let mut roots = RootCertStore::empty();
        for cert in certificates_from_pem(pem)? {
            roots
                .add(cert)
                .context("the server CA cannot be a trust anchor")?;
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
                .build()
                .context("cannot build a verifier for the server CA")?;
        Ok(ServerTrust::Ca(verifier))
    }

    fn verifier(&self) -> Arc<dyn ServerCertVerifier> {
        match self {
            ServerTrust::Pinned(pinned) => pinned.clone(),
            ServerTrust::Ca(ca) => ca.clone(),
        }
    }

    /// TLS for enrollment: no client certificate.
    pub fn enrollment_config(&self) -> Result<Arc<ClientConfig>> {
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 is not available")?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier())
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        Ok(Arc::new(config))
    }

    /// Mutual TLS for one agent: its certificate (leaf only, as the agent
    /// sends it) and key.
    pub fn agent_config(
        &self,
        certificate: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ClientConfig>> {
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 is not available")?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier())
            .with_client_auth_cert(vec![certificate], key)
            .context("the device certificate and key do not form a TLS identity")?;
        config.resumption = Resumption::disabled();
        Ok(Arc::new(config))
    }
}
