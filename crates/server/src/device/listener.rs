//! The device listener: TLS 1.3 with optional client certificates, a
//! [`Peer`] extension on every request telling handlers who is on the
//! other end, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use mobius_core::devices::DeviceIdentity;

use crate::device::Peer;
use crate::http::error_bodies::HYPER_MAX_HEADERS;
use crate::http::first_byte::FirstByteDeadline;

/// In-flight device requests get this long to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves devices until `shutdown`. `client_read_timeout` bounds the TLS
/// handshake and the wait for each request head: a client that connects
/// and then sends nothing (or half a ClientHello, or half a request) is
/// disconnected after it, without a client certificate ever being asked.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: axum::Router,
    client_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    // Above our own limit, so too many headers get a JSON 431 from
    // `error_bodies::refuse_oversized_head` rather than hyper's empty one.
    builder
        .http1()
        .max_headers(HYPER_MAX_HEADERS)
        // Without a timer hyper silently ignores the header timeout.
        .timer(TokioTimer::new())
        .header_read_timeout(client_read_timeout);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "device listener accept failed");
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
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(client_read_timeout, acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "device TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "device TLS handshake timed out");
                    return;
                }
            };
            let device = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| DeviceIdentity::from_verified_certificate(leaf.as_ref()));
            let peer = Peer { addr, device };
            let service =
                router.map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(peer.clone());
                    request.map(axum::body::Body::new)
                });
            let connection = builder.serve_connection(
                TokioIo::new(FirstByteDeadline::new(tls, client_read_timeout)),
                TowerToHyperService::new(service),
            );
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%addr, error = %e, "device connection ended with an error");
            }
        });
    }
    tracing::info!(connections = graceful.count(), "device listener draining");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("device connections still open after the drain timeout; closing them");
    }
}
