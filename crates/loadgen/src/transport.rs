//! One agent's connection to the device listener: TCP from a chosen
//! loopback source address, TLS 1.3, then HTTP/1.1 kept alive for every
//! request after, as the agent's HTTP client keeps its connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use mobius_api::ErrorBody;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

const USER_AGENT_VALUE: &str = concat!("mobius-loadgen/", env!("CARGO_PKG_VERSION"));
/// Loopback source addresses start here: 127.0.0.1 is left to everything
/// else on the machine.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Why a request failed, as a short label with few distinct values, so
/// errors can be counted by kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

impl Failure {
    pub(crate) fn new(stage: &str, detail: impl std::fmt::Display) -> Failure {
        Failure(format!("{stage}: {detail}"))
    }

    pub fn timeout() -> Failure {
        Failure("timeout".into())
    }
}

/// The device listener, and how to reach it.
pub struct Target {
    /// The URL as given, without a trailing slash.
    pub url: String,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    authority: String,
    /// Path prefix of a listener mounted below `/` by a proxy.
    prefix: String,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    pub timeout: Duration,
}

impl Target {
    /// Parses `https://host:port[/prefix]` and resolves the host once.
    /// Source addresses are spread only for a server on 127.0.0.0/8.
    pub async fn resolve(server: &str, source_ips: u32, timeout: Duration) -> Result<Target> {
        let url = url::Url::parse(server.trim())
            .with_context(|| format!("--server {server:?} is not a URL"))?;
        if url.scheme() != "https" {
            bail!("--server must be the device listener's https:// URL, not {server:?}");
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .with_context(|| format!("--server {server:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(443);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("{host} is not a valid TLS server name"))?;
        let sources = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => {
                let first = u32::from(FIRST_SOURCE);
                (0..source_ips.min(0x00ff_fff0))
                    .map(|i| IpAddr::V4(Ipv4Addr::from(first + i)))
                    .collect()
            }
            _ => Vec::new(),
        };
        Ok(Target {
            url: url.as_str().trim_end_matches('/').to_owned(),
            addr,
            server_name,
            authority: url[url::Position::BeforeHost..url::Position::AfterPort].to_owned(),
            prefix: url.path().trim_end_matches('/').to_owned(),
            sources,
            next_source: AtomicUsize::new(0),
            timeout,
        })
    }

    /// Opens a connection and completes the TLS handshake. The next source
    /// address in turn is bound first, so each address carries an equal
    /// share of the ephemeral ports.
    pub async fn connect(&self, tls: Arc<ClientConfig>) -> Result<Connection, Failure> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| Failure::new("socket", e))?;
        if !self.sources.is_empty() {
            let turn = self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            socket
                .bind(SocketAddr::new(self.sources[turn], 0))
                .map_err(|e| Failure::new("bind", e))?;
        }
        let tcp = socket
            .connect(self.addr)
            .await
            .map_err(|e| Failure::new("connect", e))?;
        // As the agent's HTTP client does: requests are small and sent whole.
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(tls)
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| Failure::new("tls", e))?;
        let (sender, connection) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| Failure::new("http", e))?;
        tokio::spawn(async move {
            // Ends when the server or the sender closes it; a failure shows
            // up on the next request.
            let _ = connection.await;
        });
        Ok(Connection { sender })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, Failure> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, self.authority.as_str())
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(ACCEPT, "*/*");
        if !body.is_empty() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(body))
            .map_err(|e| Failure::new("request", e))
    }
}

/// A kept-alive HTTP/1.1 connection: one request at a time.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Whether the connection can still carry a request.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// POSTs `body` as JSON and reads the JSON answer.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        target: &Target,
        path: &str,
        body: &Req,
    ) -> Result<Resp, Failure> {
        let json = serde_json::to_vec(body).map_err(|e| Failure::new("request", e))?;
        let request = target.request(Method::POST, path, Bytes::from(json))?;
        let (status, bytes) = self.send(request).await?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|_| Failure::new("answer", "unreadable JSON"))
    }

    /// POSTs `body` as JSON where the answer has no body (204).
    pub async fn post_accepted<Req: Serialize>(
        &mut self,
        target: &Target,
        path: &str,
        body: &Req,
    ) -> Result<(), Failure> {
        let json = serde_json::to_vec(body).map_err(|e| Failure::new("request", e))?;
        let request = target.request(Method::POST, path, Bytes::from(json))?;
        let (status, bytes) = self.send(request).await?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        Ok(())
    }

    /// GETs a long-lived response (the work stream) and hands back its
    /// body to read frame by frame; the connection is busy until it ends.
    pub async fn open_stream(
        &mut self,
        target: &Target,
        path: &str,
    ) -> Result<hyper::body::Incoming, Failure> {
        let request = target.request(Method::GET, path, Bytes::new())?;
        self.sender
            .ready()
            .await
            .map_err(|e| Failure::new("connection", e))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| Failure::new("connection", e))?;
        if !response.status().is_success() {
            return Err(Failure(format!("http {}", response.status().as_u16())));
        }
        Ok(response.into_body())
    }

    /// HEADs `path`, expecting 204.
    pub async fn head(&mut self, target: &Target, path: &str) -> Result<(), Failure> {
        let request = target.request(Method::HEAD, path, Bytes::new())?;
        let (status, bytes) = self.send(request).await?;
        if status != StatusCode::NO_CONTENT {
            return Err(refusal(status, &bytes));
        }
        Ok(())
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        self.sender
            .ready()
            .await
            .map_err(|e| Failure::new("connection", e))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| Failure::new("connection", e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::new("connection", e))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// `http 401 UNAUTHENTICATED`: the status and the server's stable code.
fn refusal(status: StatusCode, body: &[u8]) -> Failure {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => Failure(format!("http {} {}", status.as_u16(), body.error.code)),
        Err(_) => Failure(format!("http {}", status.as_u16())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_servers_get_spread_source_addresses() {
        let target = Target::resolve("https://127.0.0.1:8443/", 3, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(target.url, "https://127.0.0.1:8443");
        assert_eq!(target.authority, "127.0.0.1:8443");
        assert_eq!(target.prefix, "");
        let sources: Vec<String> = target.sources.iter().map(ToString::to_string).collect();
        assert_eq!(sources, ["127.0.0.2", "127.0.0.3", "127.0.0.4"]);

        let none = Target::resolve("https://127.0.0.1:8443/mobius/", 0, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(none.sources.is_empty());
        assert_eq!(none.prefix, "/mobius");
        assert!(
            Target::resolve("http://127.0.0.1:8443", 1, Duration::from_secs(1))
                .await
                .is_err()
        );
    }

    #[test]
    fn refusals_name_status_and_code() {
        let body = br#"{"error":{"code":"UNAUTHENTICATED","message":"no"}}"#;
        assert_eq!(
            refusal(StatusCode::UNAUTHORIZED, body).0,
            "http 401 UNAUTHENTICATED"
        );
        assert_eq!(refusal(StatusCode::BAD_GATEWAY, b"<html>").0, "http 502");
    }
}
