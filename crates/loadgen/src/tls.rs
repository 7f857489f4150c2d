//! TLS as mobius-agent speaks it: TLS 1.3 only, no ALPN (HTTP/1.1), the
//! server trusted through the token's CA pin until enrollment hands over
//! the server CA, then mutual TLS with the device certificate.
//!
//! Every simulated agent is a different host, so no configuration here
//! resumes sessions: each connection pays the full handshake, as a fleet
//! of real agents would.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use mobius_tls_pin::PinnedCaVerifier;
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

/// How the simulator decides to trust the device listener.
#[derive(Clone)]
pub enum ServerTrust {
    /// Before any enrollment, without --server-ca: the token's pin, checked
    /// as mobius-agent checks it (the same verifier).
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
