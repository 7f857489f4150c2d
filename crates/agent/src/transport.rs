//! HTTP to the device listener, and the one distinction every caller needs:
//! did the server turn us down (do not retry blindly), or could we not
//! reach it (retry later)?

use std::error::Error as StdError;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mobius_api::ErrorBody;
use mobius_api::device::{
    ENROLL_PATH, EnrollRequest, EnrollResponse, PING_PATH, PingRequest, PingResponse, RENEW_PATH,
    RenewRequest, RenewResponse,
};
use reqwest::{StatusCode, Url};
use rustls::AlertDescription;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A request can hang on a half-open connection; the agent would rather
/// give up and retry than sit silent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The work stream ends with the certificate (at most days); this only
/// replaces the client's per-request timeout.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Connection, TLS or timeout errors, 5xx answers and unreadable bodies:
    /// the server may be back later.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered 4xx with its reason.
    #[error("{message} ({code})")]
    Refused {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// The server aborted the handshake over our certificate: it will not
    /// accept this identity again, whatever the agent retries.
    #[error("the server rejected the device certificate during the TLS handshake: {0}")]
    CertificateRejected(String),
}

/// The device listener, reached with one TLS configuration.
#[derive(Clone, Debug)]
pub struct DeviceClient {
    http: reqwest::Client,
    base: String,
}

/// Checks and normalizes `--server`: an `https` URL with a host. Plain
/// HTTP is refused: the token and the key exchange must never travel in
/// the clear.
pub fn parse_server_url(server: &str) -> Result<Url> {
    let url =
        Url::parse(server.trim()).with_context(|| format!("--server {server:?} is not a URL"))?;
    if url.scheme() != "https" {
        bail!(
            "--server must be an https:// URL (the device listener, e.g. https://mobius.example.com:8443), not {server:?}"
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("--server {server:?} has no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--server {server:?} must not carry a query or fragment");
    }
    Ok(url)
}

impl DeviceClient {
    pub fn new(server: &Url, tls: rustls::ClientConfig) -> Result<DeviceClient> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("mobius-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTPS client")?;
        Ok(DeviceClient {
            http,
            // Keep any path prefix (a reverse proxy mounting the listener
            // under /mobius): `Url::join` with an absolute path would drop it.
            base: server.as_str().trim_end_matches('/').to_owned(),
        })
    }

    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, CallError> {
        self.post(ENROLL_PATH, request).await
    }

    pub async fn ping(&self, request: &PingRequest) -> Result<PingResponse, CallError> {
        self.post(PING_PATH, request).await
    }

    pub async fn renew(&self, request: &RenewRequest) -> Result<RenewResponse, CallError> {
        self.post(RENEW_PATH, request).await
    }

    pub async fn report(
        &self,
        request: &mobius_api::plans::ExecutionReport,
    ) -> Result<mobius_api::plans::ReportResponse, CallError> {
        self.post(mobius_api::plans::WORK_REPORT_PATH, request)
            .await
    }

    /// Asks for a download URL of an install's installer.
    pub async fn software_download_url(
        &self,
        request: &mobius_api::software::DownloadUrlRequest,
    ) -> Result<mobius_api::software::DownloadUrl, CallError> {
        self.post(mobius_api::software::DOWNLOAD_URL_PATH, request)
            .await
    }

    /// Reports the installed packages.
    pub async fn software_inventory(
        &self,
        report: &mobius_api::software::InventoryReport,
    ) -> Result<(), CallError> {
        self.post::<_, serde_json::Value>(mobius_api::software::INVENTORY_PATH, report)
            .await
            .map(drop)
    }

    /// A fresh self-service portal link for this device.
    pub async fn portal_link(&self) -> Result<mobius_api::portal::PortalLink, CallError> {
        self.post(
            mobius_api::portal::PORTAL_TOKEN_PATH,
            &serde_json::json!({}),
        )
        .await
    }

    /// Reports an install's progress.
    pub async fn software_progress(
        &self,
        progress: &mobius_api::software::InstallProgress,
    ) -> Result<serde_json::Value, CallError> {
        self.post(mobius_api::software::PROGRESS_PATH, progress)
            .await
    }

    /// Starts a download of `path` from byte `from` (a `Range` request
    /// when `from` > 0). No overall timeout: the caller times out each
    /// chunk instead, so a large installer on a slow link is not cut.
    pub async fn download(&self, path: &str, from: u64) -> Result<reqwest::Response, CallError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.get(&url).timeout(STREAM_TIMEOUT);
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let response = request
            .send()
            .await
            .map_err(|err| classify_transport_error(&err))?;
        let status = response.status();
        if status.is_success() || status == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => (format!("HTTP {}", status.as_u16()), "error".to_owned()),
        };
        if status.is_server_error() {
            return Err(CallError::Unreachable(format!(
                "the server failed: {message} ({code})"
            )));
        }
        Err(CallError::Refused {
            status,
            code,
            message,
        })
    }

    /// Answers a live query or policy check; the server answers 204.
    pub async fn submit_query_result(
        &self,
        result: &mobius_api::queries::QueryResult,
    ) -> Result<(), CallError> {
        self.post_bytes(mobius_api::queries::QUERY_RESULTS_PATH, result)
            .await
            .map(drop)
    }

    /// Opens a long-lived response (the work stream): no overall timeout,
    /// the caller watches for silence instead.
    pub async fn open_stream(&self, path: &str) -> Result<reqwest::Response, CallError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .timeout(STREAM_TIMEOUT)
            .send()
            .await
            .map_err(|err| classify_transport_error(&err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        Err(CallError::Unreachable(format!(
            "the work stream answered HTTP {}",
            status.as_u16()
        )))
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, CallError> {
        let bytes = self.post_bytes(path, body).await?;
        serde_json::from_slice(&bytes).map_err(|err| {
            CallError::Unreachable(format!("unexpected answer from {}{path}: {err}", self.base))
        })
    }

    /// A successful answer's body, whatever it holds (204s hold nothing).
    async fn post_bytes<Req: Serialize>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Vec<u8>, CallError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .post(&url)
            .json(body)
            .send()
            .await
            .map_err(|err| classify_transport_error(&err))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| classify_transport_error(&err))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => (
                format!("HTTP {}", status.as_u16()),
                status.canonical_reason().unwrap_or("error").to_owned(),
            ),
        };
        if status.is_server_error() {
            return Err(CallError::Unreachable(format!(
                "the server failed: {message} ({code})"
            )));
        }
        Err(CallError::Refused {
            status,
            code,
            message,
        })
    }
}

/// Turns a reqwest failure into a one-line cause, and spots the TLS alerts
/// that mean the server refuses our certificate for good (a server that
/// checks expiry or revocation in the handshake rather than answering 401).
fn classify_transport_error(err: &reqwest::Error) -> CallError {
    if let Some(rustls::Error::AlertReceived(
        alert @ (AlertDescription::CertificateRevoked | AlertDescription::CertificateExpired),
    )) = find_rustls_error(err)
    {
        return CallError::CertificateRejected(format!("{alert:?}"));
    }
    CallError::Unreachable(describe(err))
}

/// The error and its causes on one line, without repeats (reqwest and
/// hyper often restate their source).
pub fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// rustls errors reach us wrapped in `io::Error`, whose `source()` skips
/// the wrapped error itself, so look inside each `io::Error` too.
pub fn find_rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_must_be_https_with_a_host() {
        assert!(parse_server_url("https://127.0.0.1:8443").is_ok());
        assert!(parse_server_url("https://mobius.example.com:8443/prefix/").is_ok());
        for bad in [
            "http://127.0.0.1:8443",
            "127.0.0.1:8443",
            "https://",
            "ftp://x",
        ] {
            assert!(parse_server_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_appended_to_the_base() {
        let url = parse_server_url("https://h:8443/prefix/").unwrap();
        let client = DeviceClient::new(&url, test_config()).unwrap();
        assert_eq!(client.base, "https://h:8443/prefix");
    }

    #[test]
    fn rustls_errors_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRevoked),
        );
        assert!(matches!(
            find_rustls_error(&io),
            Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateRevoked
            ))
        ));
    }

    #[tokio::test]
    async fn a_handshake_refusing_an_expired_certificate_is_final() {
        use std::time::{Duration, SystemTime};

        use crate::testing::{TestCa, device_certificate, serve_ok};

        let server_ca = TestCa::new("server CA");
        let tenant_ca = TestCa::new("tenant CA");
        let (leaf, key) = server_ca.server_leaf(&["127.0.0.1"]);
        let chain = vec![leaf.der().clone(), server_ca.cert.der().clone()];
        let addr = serve_ok(chain, &key, Some(tenant_ca.cert.der().clone())).await;

        let device = crate::identity::DeviceKey::generate().unwrap();
        let device_key = rcgen::KeyPair::from_pem(&device.to_pem()).unwrap();
        let now = SystemTime::now();
        let expired = device_certificate(
            &tenant_ca,
            &device_key,
            "urn:mobius:device:a:b:c",
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        );
        let config = crate::tls::mutual_tls_config(
            &[server_ca.cert.der().clone()],
            vec![expired.der().clone()],
            device.to_rustls().unwrap(),
        )
        .unwrap();
        let url = parse_server_url(&format!("https://127.0.0.1:{}", addr.port())).unwrap();
        let client = DeviceClient::new(&url, config).unwrap();
        let err = client.ping(&PingRequest::default()).await.unwrap_err();
        assert!(matches!(err, CallError::CertificateRejected(_)), "{err:?}");
    }

    fn test_config() -> rustls::ClientConfig {
        let verifier = std::sync::Arc::new(crate::tls::PinnedCaVerifier::new(
            [0; 32],
            crate::tls::crypto_provider(),
        ));
        crate::tls::enrollment_config(verifier).unwrap()
    }
}
