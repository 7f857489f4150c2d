//! The backbone's own listener: TLS (or plain HTTP behind a TLS proxy),
//! HTTP/1.1 and HTTP/2 with upgrades (tunnel agents park by upgrading,
//! browsers open WebSockets), and the client address on every request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// The address a request came from (for per-client rate limits).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Serves `router` until `shutdown`. No request timeout and no body
/// limit: tunnelled requests stream for as long as the service takes
/// (the issue asks for no fixed time-to-first-byte limit); only the
/// request head must arrive within `client_read_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    router: axum::Router,
    client_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tls.map(|config| TlsAcceptor::from(Arc::new(config)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(client_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONNECTION_WINDOW);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "backbone listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service =
                router.map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ClientAddr(addr));
                    request.map(axum::body::Body::new)
                });
            let service = TowerToHyperService::new(service);
            let result = match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(client_read_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            _ => return,
                        };
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await
                }
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "backbone connection ended with an error");
            }
        });
    }
    tracing::info!("backbone listener stopped accepting");
}

/// The TLS configuration from a certificate chain and key (PEM files).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading backbone_tls_cert_file {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading backbone_tls_key_file {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the backbone certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
