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

/// How long a connection that presented a device certificate may sit idle
/// between requests: past two heartbeat intervals, so an agent's
/// keep-alive connection carries its next heartbeat instead of a new TCP
/// and mTLS handshake every time.
pub fn device_keepalive(client_read_timeout: Duration, heartbeat_interval: Duration) -> Duration {
    client_read_timeout.max(heartbeat_interval * 2 + Duration::from_secs(10))
}

/// An HTTP/1 connection builder whose header read timeout is `timeout`.
/// hyper's header read timeout also covers the idle time between requests
/// on a keep-alive connection (hyper has no separate idle timeout).
fn connection_builder(timeout: Duration) -> Arc<Builder<TokioExecutor>> {
    let mut builder = Builder::new(TokioExecutor::new());
    // Above our own limit, so too many headers get a JSON 431 from
    // `error_bodies::refuse_oversized_head` rather than hyper's empty one.
    builder
        .http1()
        .max_headers(HYPER_MAX_HEADERS)
        // Without a timer hyper silently ignores the header timeout.
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    Arc::new(builder)
}

/// Serves devices until `shutdown`. `client_read_timeout` bounds the TLS
/// handshake and the wait for each request head: a client that connects
/// and then sends nothing (or half a ClientHello, or half a request) is
/// disconnected after it, without a client certificate ever being asked.
/// Connections without a device certificate (enrollment) get that much
/// idle time between requests too; connections with a verified device
/// certificate get `device_keepalive`, so heartbeats reuse them.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: axum::Router,
    client_read_timeout: Duration,
    device_keepalive: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let graceful = GracefulShutdown::new();
    let anonymous = connection_builder(client_read_timeout);
    let authenticated = connection_builder(device_keepalive);
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
        let (anonymous, authenticated) = (anonymous.clone(), authenticated.clone());
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
            let builder = if device.is_some() {
                authenticated
            } else {
                anonymous
            };
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
