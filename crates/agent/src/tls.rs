//! TLS for the two phases of a device's life.
//!
//! * Enrollment: the agent has no CA certificate yet, only the pin in the
//!   token. [`PinnedCaVerifier`] (shared with mobius-loadgen, in
//!   `mobius-tls-pin`) accepts the server only if a certificate it presents
//!   carries the pinned key *and* the whole chain verifies against that
//!   certificate as the sole root, hostname included. Never is an unpinned
//!   server trusted, even "just for enrollment".
//! * Afterwards: mutual TLS, the device certificate as client
//!   authentication and the server verified against `server-ca.pem` alone
//!   (no system roots: a public CA has no say over this server).
//!
//! Both speak TLS 1.3 only, as the device listener does, and offer no ALPN:
//! the agent speaks HTTP/1.1, which the listener detects without it.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

pub use mobius_tls_pin::PinnedCaVerifier;

/// The provider every configuration here uses, named explicitly because
/// more than one may be linked into the binary.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// TLS for enrollment: no client certificate, server pinned.
pub fn enrollment_config(verifier: Arc<PinnedCaVerifier>) -> Result<ClientConfig> {
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// TLS after enrollment: the device certificate (leaf only; the server
/// holds the tenant CAs) and the server verified against its own CA.
pub fn mutual_tls_config(
    server_ca: &[CertificateDer<'static>],
    device_cert: Vec<CertificateDer<'static>>,
    device_key: PrivateKeyDer<'static>,
) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in server_ca {
        roots
            .add(cert.clone())
            .context("server-ca.pem holds a certificate that cannot be a trust anchor")?;
    }
    ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available")?
        .with_root_certificates(roots)
        .with_client_auth_cert(device_cert, device_key)
        .context("the device certificate and key do not form a TLS identity")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use mobius_tls_pin::{PinRefusal, spki_sha256};
    use rcgen::KeyPair;

    use super::*;
    use crate::testing::{TestCa, device_certificate, serve_ok};

    async fn get(config: ClientConfig, url: &str) -> Result<String, reqwest::Error> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .build()?;
        client.get(url).send().await?.text().await
    }

    async fn enroll_handshake(
        pin: [u8; 32],
        chain: Vec<CertificateDer<'static>>,
        key: &KeyPair,
        host: &str,
    ) -> (Result<String, reqwest::Error>, Option<PinRefusal>) {
        let addr = serve_ok(chain, key, None).await;
        let verifier = Arc::new(PinnedCaVerifier::new(pin, crypto_provider()));
        let config = enrollment_config(Arc::clone(&verifier)).unwrap();
        let url = format!("https://{host}:{}/", addr.port());
        (get(config, &url).await, verifier.refusal())
    }

    #[tokio::test]
    async fn a_server_whose_ca_matches_the_pin_is_trusted() {
        let ca = TestCa::new("server CA");
        let (leaf, key) = ca.server_leaf(&["localhost", "127.0.0.1"]);
        let chain = vec![leaf.der().clone(), ca.cert.der().clone()];
        for host in ["127.0.0.1", "localhost"] {
            let (answer, refusal) = enroll_handshake(ca.pin(), chain.clone(), &key, host).await;
            assert_eq!(answer.unwrap(), "ok", "{host}");
            assert_eq!(refusal, None);
        }
    }

    #[tokio::test]
    async fn a_server_with_another_ca_is_refused_with_both_pins_named() {
        let ca = TestCa::new("server CA");
        let (leaf, key) = ca.server_leaf(&["127.0.0.1"]);
        let chain = vec![leaf.der().clone(), ca.cert.der().clone()];
        let wrong_pin = TestCa::new("someone else").pin();
        let (answer, refusal) = enroll_handshake(wrong_pin, chain, &key, "127.0.0.1").await;
        assert!(answer.is_err());
        let refusal = refusal.unwrap();
        let message = refusal.to_string();
        assert!(message.starts_with("the server's CA does not match the token's pin"));
        assert!(message.contains(&hex::encode(wrong_pin)), "{message}");
        assert!(message.contains(&hex::encode(ca.pin())), "{message}");
        assert!(message.ends_with("refusing to enroll"), "{message}");
    }

    #[tokio::test]
    async fn a_leaf_not_signed_by_the_pinned_ca_is_refused() {
        // The attacker presents the real CA certificate (public) beside a
        // leaf it signed with its own CA: the pin matches, the chain doesn't.
        let real = TestCa::new("server CA");
        let rogue = TestCa::new("rogue CA");
        let (leaf, key) = rogue.server_leaf(&["127.0.0.1"]);
        let chain = vec![leaf.der().clone(), real.cert.der().clone()];
        let (answer, refusal) = enroll_handshake(real.pin(), chain, &key, "127.0.0.1").await;
        assert!(answer.is_err());
        assert!(
            matches!(refusal, Some(PinRefusal::ChainInvalid { .. })),
            "{refusal:?}"
        );
    }

    #[tokio::test]
    async fn a_leaf_for_another_host_is_refused() {
        let ca = TestCa::new("server CA");
        let (leaf, key) = ca.server_leaf(&["mobius.example.com"]);
        let chain = vec![leaf.der().clone(), ca.cert.der().clone()];
        let (answer, refusal) = enroll_handshake(ca.pin(), chain, &key, "127.0.0.1").await;
        assert!(answer.is_err());
        assert!(
            matches!(refusal, Some(PinRefusal::ChainInvalid { .. })),
            "{refusal:?}"
        );
    }

    #[tokio::test]
    async fn a_pinned_leaf_without_its_ca_is_not_a_trust_anchor_for_itself() {
        // Pinning the leaf's own key must not turn the leaf into a root.
        let ca = TestCa::new("server CA");
        let (leaf, key) = ca.server_leaf(&["127.0.0.1"]);
        let leaf_pin = spki_sha256(leaf.der()).unwrap();
        let (answer, _) =
            enroll_handshake(leaf_pin, vec![leaf.der().clone()], &key, "127.0.0.1").await;
        assert!(answer.is_err());
    }

    #[tokio::test]
    async fn mutual_tls_presents_the_device_certificate_and_trusts_only_the_server_ca() {
        let server_ca = TestCa::new("server CA");
        let tenant_ca = TestCa::new("tenant CA");
        let (leaf, key) = server_ca.server_leaf(&["127.0.0.1"]);
        let chain = vec![leaf.der().clone(), server_ca.cert.der().clone()];
        let addr = serve_ok(chain, &key, Some(tenant_ca.cert.der().clone())).await;
        let url = format!("https://127.0.0.1:{}/", addr.port());

        let device = crate::identity::DeviceKey::generate().unwrap();
        let device_key = KeyPair::from_pem(&device.to_pem()).unwrap();
        let now = SystemTime::now();
        let cert = device_certificate(
            &tenant_ca,
            &device_key,
            "urn:mobius:device:a:b:c",
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        );

        let config = mutual_tls_config(
            &[server_ca.cert.der().clone()],
            vec![cert.der().clone()],
            device.to_rustls().unwrap(),
        )
        .unwrap();
        assert_eq!(get(config, &url).await.unwrap(), "ok");

        // The same identity, but trusting another CA for the server: refused.
        let other = TestCa::new("other");
        let config = mutual_tls_config(
            &[other.cert.der().clone()],
            vec![cert.der().clone()],
            device.to_rustls().unwrap(),
        )
        .unwrap();
        assert!(get(config, &url).await.is_err());
    }
}
