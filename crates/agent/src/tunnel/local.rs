//! The local side of a tunnel: each request from the backbone is sent to
//! the `--to` service and its answer streamed back. Plain requests go
//! through a pooled keep-alive client; upgrades (WebSockets) get their own
//! HTTP/1.1 connection whose raw bytes are spliced onto the HTTP/2 stream.
//! A stream the backbone resets (its client went away) drops the local
//! request with it.

use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type Body = BoxBody<Bytes, hyper::Error>;

pub struct Local {
    target: url::Url,
    client: Client<HttpConnector, Incoming>,
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let body = http_body_util::Full::new(Bytes::from(format!(
        "{{\"error\":{{\"code\":\"BAD_GATEWAY\",\"message\":{}}}}}",
        serde_json::Value::String(message.to_owned())
    )))
    .map_err(|never| match never {})
    .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

impl Local {
    pub fn new(target: url::Url) -> Local {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Local { target, client }
    }

    fn local_uri(&self, request_uri: &Uri) -> Option<Uri> {
        let path = request_uri.path_and_query().map_or("/", |p| p.as_str());
        let base = self.target.as_str().trim_end_matches('/');
        format!("{base}{path}").parse().ok()
    }

    pub async fn forward(&self, request: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let Some(uri) = self.local_uri(&parts.uri) else {
            return text(StatusCode::BAD_REQUEST, "the request path is not valid");
        };
        // The original host (the backbone's `<service>.<domain>`).
        if let Some(host) = parts.uri.authority().map(|a| a.as_str().to_owned())
            && let Ok(value) = hyper::header::HeaderValue::from_str(&host)
        {
            parts.headers.insert(hyper::header::HOST, value);
        }
        parts.uri = uri;
        parts.version = hyper::Version::HTTP_11;
        if let Some(protocol) = parts.headers.remove("x-backbone-upgrade") {
            return self.upgrade(parts, body, protocol).await;
        }
        let request = Request::from_parts(parts, body);
        match self.client.request(request).await {
            Ok(response) => response.map(|b| b.boxed()),
            Err(e) => {
                tracing::debug!(error = %e, "local service request failed");
                text(StatusCode::BAD_GATEWAY, "the local service did not answer")
            }
        }
    }

    /// An upgrade (WebSocket): its own connection to the local service,
    /// the 101 passed back as `x-backbone-upgrade-status: 101`, then the
    /// raw bytes both ways over this HTTP/2 stream.
    async fn upgrade(
        &self,
        mut parts: hyper::http::request::Parts,
        body: Incoming,
        protocol: hyper::header::HeaderValue,
    ) -> Response<Body> {
        let host = self.target.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = self.target.port_or_known_default().unwrap_or(80);
        let stream = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
            Ok(s) => s,
            Err(_) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    "the local service is not reachable",
                );
            }
        };
        let (mut sender, connection) = match hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<Bytes>,
        >(TokioIo::new(stream))
        .await
        {
            Ok(pair) => pair,
            Err(_) => return text(StatusCode::BAD_GATEWAY, "the local service did not answer"),
        };
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        parts.headers.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("upgrade"),
        );
        parts.headers.insert(hyper::header::UPGRADE, protocol);
        // Origin-form on the wire.
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = match path.parse() {
            Ok(u) => u,
            Err(_) => return text(StatusCode::BAD_REQUEST, "the request path is not valid"),
        };
        let request = Request::from_parts(parts, http_body_util::Empty::new());
        let mut response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(_) => return text(StatusCode::BAD_GATEWAY, "the local service did not answer"),
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return response.map(|b| b.boxed());
        }
        let on_upgrade = hyper::upgrade::on(&mut response);
        let (head, _) = response.into_parts();
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(_) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    "the local service's upgrade failed",
                );
            }
        };
        let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
        // Backbone → local: the HTTP/2 request body.
        tokio::spawn(async move {
            let mut stream = body.into_data_stream();
            while let Some(Ok(chunk)) = stream.next().await {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        // Local → backbone: the HTTP/2 response body.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(8);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n]))))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        let body = BodyExt::boxed(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let mut out = Response::new(body);
        *out.status_mut() = StatusCode::OK;
        for (name, value) in head.headers.iter() {
            let n = name.as_str();
            if matches!(
                n,
                "connection" | "upgrade" | "transfer-encoding" | "keep-alive"
            ) {
                continue;
            }
            out.headers_mut().append(name.clone(), value.clone());
        }
        out.headers_mut().insert(
            "x-backbone-upgrade-status",
            hyper::header::HeaderValue::from_static("101"),
        );
        out
    }
}
