//! Trusting a Mobius server on first contact by the pin an enrollment token
//! carries: the SHA-256 of its TLS CA's SubjectPublicKeyInfo, as kubeadm
//! pins its cluster CA. A fresh agent has no CA certificate yet, and a
//! public CA has no say over a self-hosted server; the pin is what the
//! operator handed it, through the token, out of band.
//!
//! [`PinnedCaVerifier`] accepts the server only if a certificate it
//! presents carries the pinned key *and* the whole chain verifies against
//! that certificate as the sole root, hostname and validity included. It
//! is the one implementation `mobius-agent` (enrollment) and
//! `mobius-loadgen` (simulated enrollments) use; it lives in its own crate
//! rather than in `mobius-api` so that the wire types stay free of rustls
//! and everything depending on them (the server, core) links none of it.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// SHA-256 of a certificate's DER SubjectPublicKeyInfo: the form of the CA
/// pin in enrollment tokens. Hashing the key rather than the certificate
/// lets the server re-issue its CA certificate (new validity) without
/// invalidating tokens already handed out. `None` for a DER text that is
/// not a certificate.
pub fn spki_sha256(cert_der: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(Sha256::digest(cert.public_key().raw).into())
}

/// Why the pinned verifier turned the server down, kept so a caller can
/// say so plainly instead of relaying a generic handshake failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PinRefusal {
    #[error(
        "the server's CA does not match the token's pin (expected sha256 {expected}, got {presented}): refusing to enroll"
    )]
    NoPinnedCertificate { expected: String, presented: String },
    #[error(
        "the server's certificate does not verify against the CA pinned in the token ({reason}): refusing to enroll"
    )]
    ChainInvalid { reason: String },
}

/// Trusts exactly the CA whose SubjectPublicKeyInfo hashes to the pin.
///
/// The pinned certificate must be among those the server presents (the
/// agent has no other copy of it), and it need not be the top of the
/// chain: whatever it is, it becomes the only trust anchor, so anything
/// presented above it is ignored and the leaf must chain to it. A pinned
/// leaf is not a CA and never anchors itself.
pub struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    refusal: Mutex<Option<PinRefusal>>,
}

impl fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCaVerifier")
            .field("pin", &hex::encode(self.pin))
            .finish_non_exhaustive()
    }
}

impl PinnedCaVerifier {
    /// `provider` is named rather than taken from the process default
    /// because more than one may be linked into a binary (reqwest brings
    /// its own).
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> PinnedCaVerifier {
        PinnedCaVerifier {
            pin,
            provider,
            refusal: Mutex::new(None),
        }
    }

    /// The reason for the last refusal, if a handshake failed here.
    pub fn refusal(&self) -> Option<PinRefusal> {
        self.refusal.lock().ok().and_then(|slot| slot.clone())
    }

    fn refuse(&self, refusal: PinRefusal) -> rustls::Error {
        if let Ok(mut slot) = self.refusal.lock() {
            *slot = Some(refusal.clone());
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refusal))))
    }

    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
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
        let presented: Vec<&CertificateDer<'_>> =
            std::iter::once(end_entity).chain(intermediates).collect();
        let pinned = presented
            .iter()
            .position(|cert| spki_sha256(cert) == Some(self.pin));
        let Some(pinned) = pinned else {
            let seen: Vec<String> = presented
                .iter()
                .map(|cert| spki_sha256(cert).map_or_else(|| "unparsable".into(), hex::encode))
                .collect();
            return Err(self.refuse(PinRefusal::NoPinnedCertificate {
                expected: hex::encode(self.pin),
                presented: seen.join(", "),
            }));
        };

        let mut roots = RootCertStore::empty();
        roots
            .add(presented[pinned].clone().into_owned())
            .map_err(|err| {
                self.refuse(PinRefusal::ChainInvalid {
                    reason: format!("the pinned certificate is not a usable CA: {err}"),
                })
            })?;
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|err| rustls::Error::General(err.to_string()))?;
        // The root need not be presented again as an intermediate.
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .enumerate()
            .filter(|(i, _)| i + 1 != pinned)
            .map(|(_, cert)| cert.clone())
            .collect();
        webpki
            .verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
            .map_err(|err| {
                self.refuse(PinRefusal::ChainInvalid {
                    reason: err.to_string(),
                })
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, PublicKeyData};

    use super::*;
    use crate::testing::TestCa;

    type Outcome = (Result<(), rustls::Error>, Option<PinRefusal>);

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// Runs the verifier as rustls would on `chain` (leaf first) for `host`.
    fn verify(pin: [u8; 32], chain: &[CertificateDer<'static>], host: &str) -> Outcome {
        let verifier = PinnedCaVerifier::new(pin, provider());
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let result = verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .map(|_| ());
        (result, verifier.refusal())
    }

    fn assert_trusted((result, refusal): Outcome) {
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(refusal, None);
    }

    /// Refused because no presented certificate carries the pinned key.
    fn assert_not_pinned((result, refusal): Outcome) {
        assert!(result.is_err());
        assert!(
            matches!(refusal, Some(PinRefusal::NoPinnedCertificate { .. })),
            "{refusal:?}"
        );
    }

    /// Refused because the chain does not verify against the pinned CA.
    fn assert_chain_invalid((result, refusal): Outcome) -> String {
        assert!(result.is_err());
        match refusal {
            Some(PinRefusal::ChainInvalid { reason }) => reason,
            other => panic!("{other:?}"),
        }
    }

    fn der(cert: &rcgen::Certificate) -> CertificateDer<'static> {
        cert.der().clone()
    }

    #[test]
    fn the_pin_is_the_sha256_of_the_ca_key_and_junk_has_none() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let expected: [u8; 32] = Sha256::digest(key.subject_public_key_info()).into();
        assert_eq!(spki_sha256(cert.der()), Some(expected));
        assert_eq!(spki_sha256(b"junk"), None);
        assert_eq!(spki_sha256(&[]), None);
    }

    #[test]
    fn a_chain_to_the_pinned_ca_is_trusted_by_name_and_by_address() {
        let ca = TestCa::new("server CA");
        let (leaf, _) = ca.server_leaf(&["localhost", "127.0.0.1"]);
        for host in ["localhost", "127.0.0.1"] {
            assert_trusted(verify(ca.pin(), &[der(&leaf), ca.der()], host));
        }
    }

    #[test]
    fn another_pin_is_refused_with_both_pins_named() {
        let ca = TestCa::new("server CA");
        let (leaf, _) = ca.server_leaf(&["127.0.0.1"]);
        let wrong = TestCa::new("someone else").pin();
        let (result, refusal) = verify(wrong, &[der(&leaf), ca.der()], "127.0.0.1");
        let Err(rustls::Error::InvalidCertificate(CertificateError::Other(_))) = result else {
            panic!("refused as an invalid certificate: {result:?}");
        };
        let Some(PinRefusal::NoPinnedCertificate {
            expected,
            presented,
        }) = refusal.clone()
        else {
            panic!("{refusal:?}");
        };
        assert_eq!(expected, hex::encode(wrong));
        // Every presented certificate's key, leaf first.
        let leaf_pin = hex::encode(spki_sha256(leaf.der()).unwrap());
        assert_eq!(presented, format!("{leaf_pin}, {}", hex::encode(ca.pin())));
        let message = refusal.unwrap().to_string();
        assert!(message.starts_with("the server's CA does not match the token's pin"));
        assert!(message.ends_with("refusing to enroll"), "{message}");
    }

    #[test]
    fn a_pinned_ca_the_server_does_not_present_is_refused() {
        // The verifier has no copy of the CA but the one presented.
        let ca = TestCa::new("server CA");
        let (leaf, _) = ca.server_leaf(&["127.0.0.1"]);
        assert_not_pinned(verify(ca.pin(), &[der(&leaf)], "127.0.0.1"));
    }

    #[test]
    fn a_leaf_signed_by_another_ca_beside_the_pinned_one_is_refused() {
        // The attacker presents the real CA certificate (it is public)
        // beside a leaf it signed itself: the pin matches, the chain not.
        let real = TestCa::new("server CA");
        let rogue = TestCa::new("rogue CA");
        let (leaf, _) = rogue.server_leaf(&["127.0.0.1"]);
        assert_chain_invalid(verify(real.pin(), &[der(&leaf), real.der()], "127.0.0.1"));
        // Presenting the rogue CA too changes nothing.
        let chain = [der(&leaf), rogue.der(), real.der()];
        assert_chain_invalid(verify(real.pin(), &chain, "127.0.0.1"));
    }

    #[test]
    fn a_leaf_for_another_host_is_refused() {
        let ca = TestCa::new("server CA");
        let (leaf, _) = ca.server_leaf(&["mobius.example.com"]);
        assert_chain_invalid(verify(ca.pin(), &[der(&leaf), ca.der()], "127.0.0.1"));
    }

    #[test]
    fn an_expired_leaf_is_refused() {
        let ca = TestCa::new("server CA");
        let (leaf, _) = ca.server_leaf_with(&["127.0.0.1"], |params| {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        let reason = assert_chain_invalid(verify(ca.pin(), &[der(&leaf), ca.der()], "127.0.0.1"));
        assert!(reason.contains("expired"), "{reason}");
    }

    #[test]
    fn a_pinned_leaf_is_not_a_trust_anchor_for_itself() {
        // Pinning the leaf's own key must not turn the leaf into a root,
        // with or without its CA beside it.
        let ca = TestCa::new("server CA");
        let (leaf, key) = ca.server_leaf(&["127.0.0.1"]);
        let leaf_pin = spki_sha256(leaf.der()).unwrap();
        assert_eq!(
            leaf_pin,
            <[u8; 32]>::from(Sha256::digest(key.subject_public_key_info()))
        );
        for chain in [vec![der(&leaf)], vec![der(&leaf), ca.der()]] {
            assert_chain_invalid(verify(leaf_pin, &chain, "127.0.0.1"));
        }
    }

    #[test]
    fn the_pinned_ca_anchors_the_chain_wherever_it_stands_in_it() {
        // root -> intermediate -> leaf, presented leaf first.
        let root = TestCa::new("root CA");
        let intermediate = TestCa::intermediate("issuing CA", &root);
        let (leaf, _) = intermediate.server_leaf(&["127.0.0.1"]);
        let full = [der(&leaf), intermediate.der(), root.der()];

        // Pinning the root: the intermediate links the leaf to it.
        assert_trusted(verify(root.pin(), &full, "127.0.0.1"));
        // Pinning the intermediate: it is the sole anchor, the root above
        // it is ignored, and a server that omits the root is still trusted.
        assert_trusted(verify(intermediate.pin(), &full, "127.0.0.1"));
        assert_trusted(verify(intermediate.pin(), &full[..2], "127.0.0.1"));
        // Pinning the root of a chain that does not reach it: refused.
        assert_not_pinned(verify(root.pin(), &full[..2], "127.0.0.1"));
        // The root without the intermediate cannot anchor the leaf.
        let skipped = [der(&leaf), root.der()];
        assert_chain_invalid(verify(root.pin(), &skipped, "127.0.0.1"));
    }

    #[test]
    fn the_last_refusal_is_kept_and_debug_shows_only_the_pin() {
        let ca = TestCa::new("server CA");
        let (leaf, _) = ca.server_leaf(&["127.0.0.1"]);
        let verifier = PinnedCaVerifier::new(ca.pin(), provider());
        assert_eq!(verifier.refusal(), None);
        let chain = [ca.der()];
        let wrong_host = ServerName::try_from("other.example").unwrap();
        verifier
            .verify_server_cert(leaf.der(), &chain, &wrong_host, &[], UnixTime::now())
            .unwrap_err();
        assert!(matches!(
            verifier.refusal(),
            Some(PinRefusal::ChainInvalid { .. })
        ));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        verifier
            .verify_server_cert(leaf.der(), &chain, &name, &[], UnixTime::now())
            .unwrap();
        let pin = hex::encode(ca.pin());
        assert_eq!(
            format!("{verifier:?}"),
            format!("PinnedCaVerifier {{ pin: \"{pin}\", .. }}")
        );
        assert!(!verifier.supported_verify_schemes().is_empty());
    }
}
