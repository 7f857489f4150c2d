//! Certificate authorities for tests, made with rcgen as the server makes
//! its own (ECDSA P-256), so tests of anything that trusts a Mobius server
//! by its pin (this crate, the agent's handshakes) build chains alike.
//! Behind the `testing` feature: no production build links rcgen for it.

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

use crate::spki_sha256;

/// A CA: its certificate, and the issuer that signs with its key.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    pub issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A self-signed root CA.
    pub fn new(name: &str) -> TestCa {
        TestCa::make(name, None)
    }

    /// An intermediate CA signed by `parent`.
    pub fn intermediate(name: &str, parent: &TestCa) -> TestCa {
        TestCa::make(name, Some(parent))
    }

    fn make(name: &str, parent: Option<&TestCa>) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = match parent {
            Some(parent) => params.signed_by(&key, &parent.issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        TestCa {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// The pin an enrollment token would carry for this CA.
    pub fn pin(&self) -> [u8; 32] {
        spki_sha256(self.cert.der()).unwrap()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server leaf for `names` (DNS names or IP addresses), with its key.
    pub fn server_leaf(&self, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
        self.server_leaf_with(names, |_| {})
    }

    /// [`TestCa::server_leaf`], its parameters changed by `edit` first
    /// (validity, ...). rcgen's default validity is 1975 to 4096.
    pub fn server_leaf_with(
        &self,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert, key)
    }
}
