//! Parking a tunnel: the agent upgrades `GET /_backbone/tunnel` with its
//! service token; this server then speaks HTTP/2 as the client over the
//! upgraded connection and registers it for the service.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mobius_core::Uuid;
use mobius_core::backbone::BackboneError;
use mobius_core::crypto::secrets;
use tokio::sync::Notify;

use super::listener::ClientAddr;
use super::registry::Parked;
use super::{CONNECTION_WINDOW, STREAM_WINDOW, Shared, TUNNEL_PROTOCOL};
use crate::http::errors::{ApiError, ErrorCode};

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub async fn park(State(state): State<Shared>, mut request: Request) -> Response {
    let Some(token) = bearer(&request).map(str::to_owned) else {
        return ApiError::new(
            ErrorCode::Unauthenticated,
            "a service token is required (Authorization: Bearer mosb_...)",
        )
        .into_response();
    };
    let upgrade_ok = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|u| u.to_str().ok())
        .is_some_and(|u| u.eq_ignore_ascii_case(TUNNEL_PROTOCOL));
    if !upgrade_ok {
        return ApiError::new(
            ErrorCode::BadUserInput,
            format!(
                "a tunnel is opened with `Connection: Upgrade` and `Upgrade: {TUNNEL_PROTOCOL}`"
            ),
        )
        .into_response();
    }
    let unauthenticated = || {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "invalid or revoked service token",
        )
        .into_response()
    };
    let hash = secrets::sha256(&token);
    let tenant = match state.store.backbone_token_tenant(&hash).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => return unauthenticated(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (service_token, service) = {
        let scope = match state.store.begin(&tenant).await {
            Ok(scope) => scope,
            Err(e) => return ApiError::from(e).into_response(),
        };
        let found = match scope.backbone().authenticate_service_token(&token).await {
            Ok(found) => found,
            Err(BackboneError::Unauthenticated | BackboneError::Forbidden) => {
                return unauthenticated();
            }
            Err(BackboneError::Store(e)) => return ApiError::from(e).into_response(),
        };
        if let Err(e) = scope.commit().await {
            return ApiError::from(e).into_response();
        }
        found
    };
    if let Some(wanted) = request
        .headers()
        .get("x-backbone-service")
        .and_then(|v| v.to_str().ok())
        && wanted != service.name
    {
        return ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this token is for service `{}`, not `{wanted}`",
                service.name
            ),
        )
        .into_response();
    }
    let remote = request
        .extensions()
        .get::<ClientAddr>()
        .map(|a| a.0.to_string())
        .unwrap_or_default();
    let on_upgrade = hyper::upgrade::on(&mut request);
    let id = Uuid::now_v7();
    let state_for_task = state.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "tunnel upgrade failed");
                return;
            }
        };
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(256 * 1024)
            // Finds a dead agent (or a dead path to it) within ~25 s.
            .keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake::<_, Body>(upgraded)
            .await;
        let (sender, connection) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "tunnel HTTP/2 handshake failed");
                return;
            }
        };
        let parked = Arc::new(Parked {
            id,
            tenant,
            service_id: service.id,
            service: service.name.clone(),
            require_identity: service.require_identity,
            token_id: service_token.id,
            since: chrono::Utc::now(),
            remote,
            sender,
            requests: AtomicU64::new(0),
            close: Notify::new(),
        });
        let state = state_for_task;
        state.registry.park(parked.clone());
        state.metrics.parked.inc();
        tracing::info!(service = %service.name, tunnel = %id, "tunnel parked");
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "tunnel connection ended");
                }
            }
            () = parked.close.notified() => {
                tracing::info!(service = %service.name, tunnel = %id, "tunnel closed: its service token was revoked");
            }
        }
        state.registry.unpark(&service.name, id);
        state.metrics.parked.dec();
        tracing::info!(service = %service.name, tunnel = %id, "tunnel unparked");
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(TUNNEL_PROTOCOL));
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        headers.insert("x-backbone-tunnel", value);
    }
    response
}
