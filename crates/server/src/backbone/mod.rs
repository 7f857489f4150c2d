//! The backbone: a reverse tunnel. Backend services (a `mobius-agent
//! tunnel` beside them) dial out, authenticate with a service token and
//! park an HTTP/2 connection here; clients reach them at
//! `https://<service>.<domain>/` on this listener, with principals,
//! grants, identity headers, sub-assertions and pre-signed URL tokens.
//!
//! The tunnel: the agent sends `GET /_backbone/tunnel` with
//! `Upgrade: mosb-tunnel` and its token; after `101` the roles reverse and
//! this server is the HTTP/2 *client* (hyper's `client::conn::http2`, on
//! the `h2` crate) over that connection, the agent the HTTP/2 server.
//! Every client request becomes one HTTP/2 stream, so one parked
//! connection multiplexes many requests; bodies stream both ways under
//! HTTP/2 flow control, so memory per stream is bounded by its window.
//!
//! Files: `listener` (TLS, upgrades), `registry` (parked connections),
//! `tunnel` (parking), `forward` (routing, identity, streaming,
//! WebSockets), `admin` (`/admin/api/*`), `public` (`/principals`,
//! `/url-tokens`, `/healthz`), `metrics`.

mod admin;
mod forward;
pub mod listener;
mod metrics;
mod public;
pub mod registry;
mod tunnel;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use mobius_core::Store;
use mobius_core::crypto::sealing::{SealContext, SealError, SecretSealer};
use mobius_core::identity::Identity;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::settings::Settings;
pub use metrics::BackboneMetrics;
use registry::Registry;

/// HTTP/2 stream window: how much of one response (or request) may be in
/// flight unacknowledged. 4 MiB keeps a 1 Gbit/s stream busy at ~30 ms RTT.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection window: the bound on what all streams of one parked
/// connection may buffer together (the memory bound per tunnel).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// The path tunnel agents park on.
pub const TUNNEL_PATH: &str = "/_backbone/tunnel";
/// The `Upgrade` protocol token of a tunnel.
pub const TUNNEL_PROTOCOL: &str = "mosb-tunnel";

/// Everything the backbone's handlers share.
pub struct BackboneState {
    pub store: Store,
    pub identity: Identity,
    pub sealer: Arc<dyn SecretSealer>,
    pub registry: Registry,
    pub metrics: BackboneMetrics,
    pub domain: String,
    pub scheme: &'static str,
    pub node_id: mobius_core::Uuid,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub registrations: DefaultKeyedRateLimiter<String>,
}

pub type Shared = Arc<BackboneState>;

/// A sealed value and its context: what [`CachedSealer`] remembers by.
type SealedKey = (String, Vec<u8>);

/// Opens a tenant's master secret once per process: principal checks
/// run on every request, and a KMS round trip each time would dominate.
#[derive(Debug)]
pub struct CachedSealer {
    inner: Arc<dyn SecretSealer>,
    opened: Mutex<HashMap<SealedKey, Vec<u8>>>,
}

#[async_trait::async_trait]
impl SecretSealer for CachedSealer {
    async fn seal(&self, context: &SealContext, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.inner.seal(context, plaintext).await
    }

    async fn open(&self, context: &SealContext, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = (context.associated_data(), sealed.to_vec());
        if let Some(hit) = self.opened.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(hit);
        }
        let plain = self.inner.open(context, sealed).await?;
        if let Ok(mut m) = self.opened.lock() {
            m.insert(key, plain.clone());
        }
        Ok(plain)
    }
}

/// The backbone side of a server: its listener and what it serves.
pub struct BackboneSide {
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    state: Shared,
    client_read_timeout: Duration,
}

impl BackboneSide {
    /// Binds the backbone listener when `backbone_listen` is set.
    pub async fn prepare(
        settings: &Settings,
        store: &Store,
        identity: &Identity,
        sealer: Arc<dyn SecretSealer>,
    ) -> anyhow::Result<Option<BackboneSide>> {
        use anyhow::Context;
        let Some(addr) = settings.backbone_listen else {
            return Ok(None);
        };
        let tls = match (
            &settings.backbone_tls_cert_file,
            &settings.backbone_tls_key_file,
        ) {
            (Some(cert), Some(key)) => Some(listener::tls_config(cert, key)?),
            _ => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (setting `backbone_listen`)"))?;
        let per_minute =
            NonZeroU32::new(settings.backbone_registrations_per_minute_per_client.max(1))
                .unwrap_or(NonZeroU32::MIN);
        let state = Arc::new(BackboneState {
            store: store.clone(),
            identity: identity.clone(),
            sealer: Arc::new(CachedSealer {
                inner: sealer,
                opened: Mutex::new(HashMap::new()),
            }),
            registry: Registry::default(),
            metrics: BackboneMetrics::new(),
            domain: settings.backbone_domain.clone(),
            scheme: if tls.is_some() { "https" } else { "http" },
            node_id: mobius_core::Uuid::now_v7(),
            started_at: chrono::Utc::now(),
            registrations: RateLimiter::keyed(Quota::per_minute(per_minute)),
        });
        Ok(Some(BackboneSide {
            listener,
            tls,
            state,
            client_read_timeout: Duration::from_secs(settings.client_read_timeout_secs),
        }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown`; also runs the revocation poll that closes
    /// tunnels whose token was revoked on any node.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let poll = tokio::spawn(poll_revocations(self.state.clone()));
        let router = router(self.state.clone());
        listener::serve(
            self.listener,
            self.tls,
            router,
            self.client_read_timeout,
            shutdown,
        )
        .await;
        poll.abort();
    }
}

/// Every request: `<service>.<domain>` is forwarded to the service; the
/// apex (`<domain>`, or any other host) serves the backbone's own API.
fn router(state: Shared) -> Router {
    let apex = Router::new()
        .route("/healthz", get(public::healthz))
        .route("/metrics", get(public::metrics))
        .route("/principals", post(public::register_principal))
        .route("/principals/rotate", post(public::rotate_own_key))
        .route("/url-tokens", post(public::create_url_token))
        .route(TUNNEL_PATH, get(tunnel::park))
        .route(
            "/admin/api/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route("/admin/api/tokens/{id}", delete(admin::revoke_token))
        .route("/admin/api/principals", get(admin::list_principals))
        .route(
            "/admin/api/principals/{id}",
            delete(admin::revoke_principal),
        )
        .route(
            "/admin/api/principals/{id}/rotate",
            post(admin::rotate_principal),
        )
        .route("/admin/api/grants", post(admin::create_grant))
        .route("/admin/api/grants/{pid}", get(admin::list_grants))
        .route("/admin/api/grants/{pid}/{svc}", delete(admin::revoke_grant))
        .route("/admin/api/services", get(admin::list_services))
        .route(
            "/admin/api/services/{name}",
            axum::routing::patch(admin::update_service),
        )
        .route(
            "/admin/api/settings",
            axum::routing::put(admin::update_settings),
        )
        .route("/admin/api/cluster", get(admin::cluster))
        .fallback(public::not_found)
        .with_state(state.clone());
    Router::new()
        .fallback(move |State(state): State<Shared>, request: Request| {
            let apex = apex.clone();
            async move {
                match service_of(&state.domain, &request) {
                    Some(service) => forward::forward(state, service, request).await,
                    None => match apex.oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                }
            }
        })
        .with_state(state)
}

/// The service a request's host names (`<service>.<domain>`, one label),
/// if it names one.
fn service_of(domain: &str, request: &Request) -> Option<String> {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())?;
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.to_ascii_lowercase();
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then(|| label.to_owned())
}

/// Every 250 ms: service tokens revoked anywhere (on any node) close the
/// tunnels they parked here, so revocation takes effect within a second.
async fn poll_revocations(state: Shared) {
    let mut since = chrono::Utc::now() - chrono::Duration::seconds(5);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if state.registry.count() == 0 {
            since = chrono::Utc::now() - chrono::Duration::seconds(5);
            continue;
        }
        match state.store.backbone_revoked_tokens_since(since).await {
            Ok(revoked) => {
                if let Some(latest) = revoked.iter().map(|(_, at)| *at).max() {
                    // Overlap by a little: clocks of concurrent commits.
                    since = since.max(latest - chrono::Duration::seconds(2));
                }
                let ids: Vec<_> = revoked.into_iter().map(|(id, _)| id).collect();
                let closed = state.registry.close_tokens(&ids);
                if closed > 0 {
                    tracing::info!(closed, "closed tunnels of revoked service tokens");
                }
            }
            Err(e) => tracing::warn!(error = %e, "backbone revocation poll failed"),
        }
    }
}

/// JSON for API clients, HTML for browsers (the seed: "JSON? Send
/// Accept: application/json").
pub(crate) fn negotiate(
    headers: &axum::http::HeaderMap,
    title: &str,
    value: serde_json::Value,
) -> Response {
    let wants_json = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_none_or(|a| a.contains("json") || !a.contains("text/html"));
    if wants_json {
        return axum::Json(value).into_response();
    }
    let pretty = serde_json::to_string_pretty(&value).unwrap_or_default();
    let escaped = pretty
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let title = title.replace('<', "&lt;");
    axum::response::Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><pre>{escaped}</pre></body></html>"
    ))
    .into_response()
}
