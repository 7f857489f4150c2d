//! Test doubles for the server side: CAs made with rcgen as the server makes
//! its own, and a small HTTPS listener speaking just enough HTTP/1.1 for the
//! device endpoints. The real server's end-to-end tests live in `tests/`;
//! these let the agent's own tests exercise real TLS handshakes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mobius_api::device::{
    DeviceName, ENROLL_PATH, EnrollRequest, EnrollResponse, EnrollmentToken, PING_PATH,
    PingResponse, RENEW_PATH, RenewRequest, RenewResponse,
};
use mobius_api::{ErrorBody, ErrorDetail};
use uuid::Uuid;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, PublicKeyData, SanType};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::tls::crypto_provider;

pub use mobius_tls_pin::testing::TestCa;

/// A device certificate for `public_key` signed by `ca`, as the server
/// issues it with a tenant CA.
pub fn device_certificate(
    ca: &TestCa,
    public_key: &impl PublicKeyData,
    uri: &str,
    valid_from: SystemTime,
    valid_until: SystemTime,
) -> rcgen::Certificate {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // rcgen's timestamps, reached without naming its `time` crate.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + valid_from.duration_since(UNIX_EPOCH).unwrap();
    params.not_after = epoch + valid_until.duration_since(UNIX_EPOCH).unwrap();
    params.signed_by(public_key, &ca.issuer).unwrap()
}

/// Signs the key in a PEM CSR with `ca`, as the server's enroll and renew do.
pub fn sign_csr(
    ca: &TestCa,
    csr_pem: &str,
    uri: &str,
    valid_from: SystemTime,
    valid_until: SystemTime,
) -> rcgen::Certificate {
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).unwrap();
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents).unwrap();
    let key = P256PublicKey(
        csr.certification_request_info
            .subject_pki
            .subject_public_key
            .data
            .to_vec(),
    );
    device_certificate(ca, &key, uri, valid_from, valid_until)
}

/// A P-256 public key taken from a CSR.
struct P256PublicKey(Vec<u8>);

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// One request as the fake listener saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: String,
    /// The client certificate, when the agent presented one.
    pub client_certificate: Option<CertificateDer<'static>>,
}

/// Answers a request with a status and a JSON body.
pub type Handler = Arc<dyn Fn(&Recorded) -> (u16, String) + Send + Sync>;

/// An HTTPS listener on 127.0.0.1 presenting `chain`. With `client_ca`,
/// client certificates are optional but, when presented, must chain to it
/// (as the device listener: enroll has none, the rest must). Every request
/// is recorded; each connection serves one request and closes.
pub async fn serve(
    chain: Vec<CertificateDer<'static>>,
    key: &KeyPair,
    client_ca: Option<CertificateDer<'static>>,
    handler: Handler,
) -> (SocketAddr, Arc<Mutex<Vec<Recorded>>>) {
    let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
                    .allow_unauthenticated()
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, handler, log) =
                (acceptor.clone(), Arc::clone(&handler), Arc::clone(&log));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client_certificate = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first().cloned());
                let Some((method, path, body)) = read_request(&mut tls).await else {
                    return;
                };
                let request = Recorded {
                    method,
                    path,
                    body,
                    client_certificate,
                };
                let (status, body) = handler(&request);
                log.lock().unwrap().push(request);
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, requests)
}

/// A listener that answers every request `200 ok`.
pub async fn serve_ok(
    chain: Vec<CertificateDer<'static>>,
    key: &KeyPair,
    client_ca: Option<CertificateDer<'static>>,
) -> SocketAddr {
    let handler: Handler = Arc::new(|_| (200, "ok".into()));
    serve(chain, key, client_ca, handler).await.0
}

async fn read_request(
    stream: &mut (impl AsyncReadExt + Unpin),
) -> Option<(String, String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.lines();
    let mut request_line = lines.next()?.split_whitespace();
    let (method, path) = (
        request_line.next()?.to_owned(),
        request_line.next()?.to_owned(),
    );
    let length: usize = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[header_end..header_end + length]).into_owned();
    Some((method, path, body))
}

/// The device listener's side of the protocol, faked: enroll signs the CSR
/// with a tenant CA, renew does the same for a client-authenticated device,
/// and ping answers with what the test scripts (given the ping's number,
/// from 0).
pub struct FakeMobius {
    pub url: String,
    /// A valid token for this listener (its server CA pinned).
    pub token: String,
    pub device: DeviceName,
    pub server_ca: Arc<TestCa>,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

/// A token secret the fake refuses as expired.
pub const EXPIRED_SECRET: &str = "expiredexpiredexpiredexpiredexpired";

pub type PingScript = Arc<dyn Fn(usize) -> (u16, String) + Send + Sync>;

/// A `PingResponse` body.
pub fn ping_ok(interval_secs: u64, renew_after: chrono::DateTime<chrono::Utc>) -> (u16, String) {
    let response = PingResponse {
        interval_secs,
        renew_after: renew_after.to_rfc3339(),
        work: Vec::new(),
    };
    (200, serde_json::to_string(&response).unwrap())
}

/// An `ErrorBody`.
pub fn error_body(status: u16, code: &str, message: &str) -> (u16, String) {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message: message.into(),
            field: None,
        },
    };
    (status, serde_json::to_string(&body).unwrap())
}

impl FakeMobius {
    pub async fn start(ping: PingScript) -> FakeMobius {
        let server_ca = Arc::new(TestCa::new("Mobius device listener CA"));
        let tenant_ca = Arc::new(TestCa::new("tenant CA"));
        let (leaf, key) = server_ca.server_leaf(&["localhost", "127.0.0.1"]);
        let chain = vec![leaf.der().clone(), server_ca.cert.der().clone()];
        let device = DeviceName {
            tenant_id: Uuid::from_u128(0x7e),
            site_id: Uuid::from_u128(0x51),
            device_id: Uuid::from_u128(0xde),
        };
        let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (server_ca_pem, tenant_ca_pem) = (server_ca.cert.pem(), tenant_ca.cert.pem());
        let signer = Arc::clone(&tenant_ca);
        let handler: Handler = Arc::new(move |request| {
            let issue = |csr_pem: &str| {
                let now = SystemTime::now();
                sign_csr(
                    &signer,
                    csr_pem,
                    &device.to_uri(),
                    now - Duration::from_secs(60),
                    now + Duration::from_secs(3600),
                )
            };
            let expires_at = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
            match request.path.as_str() {
                ENROLL_PATH => {
                    let Ok(enroll) = serde_json::from_str::<EnrollRequest>(&request.body) else {
                        return error_body(400, "BAD_USER_INPUT", "bad body");
                    };
                    if enroll.token.contains(EXPIRED_SECRET) {
                        return error_body(
                            401,
                            "UNAUTHENTICATED",
                            "the enrollment token has expired",
                        );
                    }
                    let response = EnrollResponse {
                        device_id: device.device_id,
                        tenant_id: device.tenant_id,
                        site_id: device.site_id,
                        certificate_pem: issue(&enroll.csr_pem).pem(),
                        ca_bundle_pem: tenant_ca_pem.clone(),
                        server_ca_pem: server_ca_pem.clone(),
                        expires_at,
                        heartbeat_interval_secs: 60,
                        plan_verification_key: None,
                    };
                    (200, serde_json::to_string(&response).unwrap())
                }
                _ if request.client_certificate.is_none() => {
                    error_body(401, "UNAUTHENTICATED", "a client certificate is required")
                }
                RENEW_PATH => {
                    let renew: RenewRequest = serde_json::from_str(&request.body).unwrap();
                    let response = RenewResponse {
                        certificate_pem: issue(&renew.csr_pem).pem(),
                        ca_bundle_pem: tenant_ca_pem.clone(),
                        expires_at,
                        plan_verification_key: None,
                    };
                    (200, serde_json::to_string(&response).unwrap())
                }
                PING_PATH => ping(pings.fetch_add(1, std::sync::atomic::Ordering::SeqCst)),
                mobius_api::queries::QUERY_RESULTS_PATH => (204, String::new()),
                _ => error_body(404, "NOT_FOUND", "no such endpoint"),
            }
        });
        let (addr, requests) =
            serve(chain, &key, Some(tenant_ca.cert.der().clone()), handler).await;
        let token = EnrollmentToken {
            secret: "s".repeat(43),
            ca_pin_sha256: server_ca.pin(),
        };
        FakeMobius {
            url: format!("https://127.0.0.1:{}", addr.port()),
            token: token.to_string(),
            device,
            server_ca,
            requests,
        }
    }

    /// The requests seen so far on `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|request| request.path == path)
            .cloned()
            .collect()
    }
}
