//! `mobius-agent tunnel`: makes a local HTTP service reachable through the
//! Mobius backbone at `https://<service>.<domain>/` without opening a port.
//!
//! The agent dials the backbone (TLS, HTTP/1.1), upgrades
//! `GET /_backbone/tunnel` to `mosb-tunnel` with its service token, and
//! then serves HTTP/2 (hyper's server, on the `h2` crate) over that
//! connection: the backbone sends each client request as one stream, the
//! agent forwards it to `--to` and streams the answer back. It keeps
//! `--connections` parked connections to every `--server` (replicas),
//! reconnecting each with exponential backoff, so one server or one
//! connection dying does not cut the service.

mod local;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The path and upgrade token the backbone parks tunnels on.
const TUNNEL_PATH: &str = "/_backbone/tunnel";
const TUNNEL_PROTOCOL: &str = "mosb-tunnel";
/// HTTP/2 windows: as the backbone's, so large responses are not
/// throttled by acknowledgements, and memory per stream stays bounded.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct TunnelArgs {
    /// The backbone's URL (its apex domain); repeat for several server
    /// replicas, each gets its own parked connections.
    #[arg(
        long = "server",
        env = "MOBIUS_TUNNEL_SERVER",
        value_delimiter = ',',
        required = true,
        value_name = "URL"
    )]
    pub servers: Vec<url::Url>,
    /// The service name (the `<service>` of `<service>.<domain>`).
    #[arg(long, env = "MOBIUS_TUNNEL_SERVICE")]
    pub service: String,
    /// The local service requests are forwarded to.
    #[arg(long, env = "MOBIUS_TUNNEL_TO", value_name = "URL")]
    pub to: url::Url,
    /// The service token (`mosb_<service>_...`), from `mobius backbone
    /// tokens create`. Prefer the environment variable or --token-file.
    #[arg(long, env = "MOBIUS_TUNNEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the service token.
    #[arg(long, env = "MOBIUS_TUNNEL_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust the backbone's certificate against this CA (PEM) instead of
    /// the system's trust store.
    #[arg(long, env = "MOBIUS_TUNNEL_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Parked connections per server.
    #[arg(long, env = "MOBIUS_TUNNEL_CONNECTIONS", default_value_t = 2)]
    pub connections: usize,
}

/// Runs until SIGTERM or Ctrl-C, keeping the tunnels parked.
pub async fn run(args: TunnelArgs) -> Result<()> {
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => token.trim().to_owned(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the token file {}", file.display()))?
            .trim()
            .to_owned(),
        (None, None) => {
            bail!("a service token is needed: --token, MOBIUS_TUNNEL_TOKEN or --token-file")
        }
    };
    if !matches!(args.to.scheme(), "http") {
        bail!("--to must be an http:// URL of the local service");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let tls = Arc::new(tls_config(args.ca_file.as_deref())?);
    let local = Arc::new(local::Local::new(args.to.clone()));
    let mut tasks = Vec::new();
    for server in &args.servers {
        if !matches!(server.scheme(), "http" | "https") {
            bail!("--server must be an http:// or https:// URL");
        }
        for slot in 0..args.connections {
            let dial = Dial {
                server: server.clone(),
                service: args.service.clone(),
                token: token.clone(),
                tls: tls.clone(),
            };
            tasks.push(tokio::spawn(keep_parked(dial, local.clone(), slot)));
        }
    }
    tracing::info!(service = %args.service, to = %args.to, servers = args.servers.len(), connections = args.connections, "tunnel starting");
    shutdown_signal().await;
    for task in tasks {
        task.abort();
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig> {
    let provider = crate::tls::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS is not available")?;
    let mut config = match ca_file {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading --ca-file {}", path.display()))?
            {
                let cert = cert.with_context(|| format!("parsing --ca-file {}", path.display()))?;
                roots
                    .add(cert)
                    .context("--ca-file holds a certificate that cannot be a trust anchor")?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .context("loading the system's trust store")?
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

struct Dial {
    server: url::Url,
    service: String,
    token: String,
    tls: Arc<rustls::ClientConfig>,
}

/// Why a tunnel attempt ended.
enum Ended {
    /// It was parked and served, then closed: reconnect at once.
    AfterServing,
    /// The backbone refused the token: back off long, it may be revoked.
    Refused(String),
    Failed(anyhow::Error),
}

/// Keeps one connection parked forever: reconnects with exponential
/// backoff (0.1 s doubling to 10 s, with jitter) after failures.
async fn keep_parked(dial: Dial, local: Arc<local::Local>, slot: usize) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match park_once(&dial, &local).await {
            Ended::AfterServing => {
                tracing::info!(server = %dial.server, slot, "tunnel closed; reconnecting");
                backoff = Duration::from_millis(100);
            }
            Ended::Refused(why) => {
                tracing::warn!(server = %dial.server, slot, reason = %why, "the backbone refused the tunnel");
                backoff = Duration::from_secs(10);
            }
            Ended::Failed(e) => {
                tracing::warn!(server = %dial.server, slot, error = format!("{e:#}"), "tunnel connection failed");
            }
        }
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn connect(dial: &Dial) -> Result<Box<dyn Io>> {
    let host = dial
        .server
        .host_str()
        .context("--server has no host")?
        .to_owned();
    let port = dial
        .server
        .port_or_known_default()
        .context("--server has no port")?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    .context("connecting timed out")?
    .with_context(|| format!("connecting to {host}:{port}"))?;
    let _ = tcp.set_nodelay(true);
    if dial.server.scheme() == "http" {
        return Ok(Box::new(tcp));
    }
    let name =
        ServerName::try_from(host.clone()).context("--server host is not a valid TLS name")?;
    let tls = tokio_rustls::TlsConnector::from(dial.tls.clone())
        .connect(name, tcp)
        .await
        .context("TLS handshake with the backbone")?;
    Ok(Box::new(tls))
}

async fn park_once(dial: &Dial, local: &Arc<local::Local>) -> Ended {
    let io = match connect(dial).await {
        Ok(io) => io,
        Err(e) => return Ended::Failed(e),
    };
    let (mut sender, connection) = match hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<hyper::body::Bytes>,
    >(TokioIo::new(io))
    .await
    {
        Ok(pair) => pair,
        Err(e) => return Ended::Failed(e.into()),
    };
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let authority = dial.server.authority().to_owned();
    let request = Request::get(TUNNEL_PATH)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, TUNNEL_PROTOCOL)
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", dial.token),
        )
        .header("x-backbone-service", dial.service.as_str())
        .header(
            hyper::header::USER_AGENT,
            concat!("mobius-agent/", env!("CARGO_PKG_VERSION")),
        )
        .body(http_body_util::Empty::new());
    let request = match request {
        Ok(r) => r,
        Err(e) => return Ended::Failed(e.into()),
    };
    let response = match sender.send_request(request).await {
        Ok(r) => r,
        Err(e) => return Ended::Failed(e.into()),
    };
    if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        use http_body_util::BodyExt;
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body)
            .chars()
            .take(300)
            .collect::<String>();
        if status == hyper::StatusCode::UNAUTHORIZED || status == hyper::StatusCode::FORBIDDEN {
            return Ended::Refused(format!("{status}: {text}"));
        }
        return Ended::Failed(anyhow::anyhow!("the backbone answered {status}: {text}"));
    }
    let upgraded = match hyper::upgrade::on(response).await {
        Ok(u) => u,
        Err(e) => return Ended::Failed(e.into()),
    };
    tracing::info!(server = %dial.server, service = %dial.service, "tunnel parked");
    let local = local.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let local = local.clone();
        async move { Ok::<_, std::convert::Infallible>(local.forward(request).await) }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(256 * 1024)
        .max_concurrent_streams(4096)
        .keep_alive_interval(Some(Duration::from_secs(15)))
        .keep_alive_timeout(Duration::from_secs(10))
        .serve_connection(upgraded, service)
        .await;
    match served {
        Ok(()) => Ended::AfterServing,
        Err(e) => {
            tracing::debug!(error = %e, "tunnel connection ended");
            Ended::AfterServing
        }
    }
}
