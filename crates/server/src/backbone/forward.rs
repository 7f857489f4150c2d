//! Forwarding a client request to its service through a parked tunnel:
//! the identity checks (credential, grant, assertion, URL token), the
//! header rewrite (every incoming `x-backbone-*` / `x-mosb-*` removed,
//! then `x-mosb-*` injected), streaming both ways, and WebSocket (any
//! HTTP/1.1 `Upgrade`) pass-through.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame};
use hyper_util::rt::TokioIo;
use mobius_core::backbone::{BackboneError, keys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Shared;
use super::registry::Parked;
use crate::http::errors::{ApiError, ErrorCode};

/// Who a request speaks for, once verified.
struct Identity {
    sub: mobius_core::Uuid,
    name: String,
    email: String,
    sub_id: Option<String>,
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), and
/// which HTTP/2 forbids anyway.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    ApiError::new(code, message).into_response()
}

pub async fn forward(state: Shared, service: String, request: Request) -> Response {
    let started = Instant::now();
    let tunnels = state.registry.tunnels(&service);
    let Some(first) = tunnels.first() else {
        // Not parked here: tell "no such service" from "not connected".
        return match state.store.backbone_service_tenant(&service).await {
            Ok(Some(_)) => {
                state.metrics.count("not_connected");
                bad_gateway(
                    "NOT_CONNECTED",
                    format!(
                        "service `{service}` is not connected: no tunnel agent is parked for it right now"
                    ),
                )
            }
            Ok(None) => {
                state.metrics.count("no_service");
                error(ErrorCode::NotFound, format!("no service named `{service}`"))
            }
            Err(e) => ApiError::from(e).into_response(),
        };
    };
    let (mut parts, body) = request.into_parts();
    let identity = match verify_identity(&state, first, &mut parts).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    if identity.is_none() && first.require_identity {
        state.metrics.count("unauthenticated");
        return error(
            ErrorCode::Unauthenticated,
            format!(
                "service `{service}` requires a principal (x-backbone-principal or a URL token)"
            ),
        );
    }
    let upgrade = is_upgrade(&parts.headers).then(|| {
        parts
            .headers
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("websocket"))
    });
    let client_upgrade = upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    rewrite_headers(&mut parts.headers, identity.as_ref());
    if let Some(protocol) = &upgrade {
        parts.headers.insert("x-backbone-upgrade", protocol.clone());
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&service)
        .to_owned();
    if let Ok(value) = HeaderValue::from_str(&host) {
        parts.headers.insert("x-forwarded-host", value);
    }
    parts.headers.remove(header::HOST);
    if let Some(client) = parts.extensions.get::<super::listener::ClientAddr>() {
        let ip = client.0.ip().to_string();
        let forwarded = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip,
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded) {
            parts.headers.insert("x-forwarded-for", value);
        }
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static(state.scheme));
    // HTTP/2 needs an absolute URI (its :scheme and :authority).
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(host.as_str())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(_) => {
            return error(
                ErrorCode::BadUserInput,
                "the Host header is not a valid authority",
            );
        }
    };
    parts.version = axum::http::Version::HTTP_2;

    // The request body: streamed as it arrives (counted), or for an
    // upgrade, a channel the client's upgraded connection will feed.
    let metrics_state = state.clone();
    let (body, upgrade_feed) = if upgrade.is_some() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        (Body::new(http_body_util::StreamBody::new(stream)), Some(tx))
    } else {
        let counted = body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                metrics_state
                    .metrics
                    .bytes_to_service
                    .inc_by(data.len() as u64);
            }
            frame
        });
        (Body::new(counted), None)
    };
    let request = Request::from_parts(parts, body);

    // Try each parked connection in turn until one takes the request
    // (a connection closing under us is not the client's problem).
    let mut last_error = None;
    let mut response = None;
    for tunnel in &tunnels {
        let mut sender = tunnel.sender.clone();
        if sender.ready().await.is_err() {
            continue;
        }
        state
            .metrics
            .added_latency
            .observe(started.elapsed().as_secs_f64());
        tunnel.requests.fetch_add(1, Ordering::Relaxed);
        match sender.send_request(request).await {
            Ok(r) => {
                response = Some(r);
                break;
            }
            Err(e) => {
                // The request (and its body) is consumed: no retry.
                last_error = Some(e);
                break;
            }
        }
    }
    let Some(response) = response else {
        state.metrics.count("tunnel_error");
        if let Some(e) = last_error {
            tracing::debug!(error = %e, service, "tunnel request failed");
        }
        return bad_gateway(
            "BAD_GATEWAY",
            format!("service `{service}` did not answer through its tunnel"),
        );
    };
    state
        .metrics
        .response_latency
        .observe(started.elapsed().as_secs_f64());
    let (mut head, body) = response.into_parts();

    // An accepted upgrade: answer 101 and splice the two connections.
    let upgraded_status = head
        .headers
        .remove("x-backbone-upgrade-status")
        .is_some_and(|s| s.as_bytes() == b"101");
    if let (true, Some(protocol), Some(on_client), Some(feed)) =
        (upgraded_status, upgrade, client_upgrade, upgrade_feed)
    {
        state.metrics.count("upgraded");
        tokio::spawn(async move {
            let Ok(client) = on_client.await else { return };
            let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
            let inbound = async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let chunk = Bytes::copy_from_slice(&buf[..n]);
                            if feed.send(Ok(Frame::data(chunk))).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            let outbound = async move {
                let mut stream = body.into_data_stream();
                while let Some(Ok(chunk)) = stream.next().await {
                    if client_write.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = client_write.shutdown().await;
            };
            tokio::join!(inbound, outbound);
        });
        head.status = StatusCode::SWITCHING_PROTOCOLS;
        head.version = axum::http::Version::HTTP_11;
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(header::UPGRADE, protocol);
        return Response::from_parts(head, Body::empty());
    }
    state.metrics.count("forwarded");
    let counted = body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            state.metrics.bytes_to_client.inc_by(data.len() as u64);
        }
        frame
    });
    for name in HOP_BY_HOP {
        head.headers.remove(*name);
    }
    head.version = axum::http::Version::HTTP_11;
    Response::from_parts(head, Body::new(counted))
}

/// A 502 with the error body every Mobius error has; the code says
/// whether no tunnel is parked (`NOT_CONNECTED`) or the tunnel failed.
fn bad_gateway(code: &str, message: String) -> Response {
    let body = mobius_api::ErrorBody {
        error: mobius_api::ErrorDetail {
            code: code.to_owned(),
            message,
            field: None,
        },
    };
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes every header a client could use to claim an identity, and the
/// hop-by-hop ones, then injects the verified identity.
fn rewrite_headers(headers: &mut HeaderMap, identity: Option<&Identity>) {
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            n.starts_with("x-backbone-") || n.starts_with("x-mosb-") || HOP_BY_HOP.contains(&n)
        })
        .cloned()
        .collect();
    for name in drop {
        headers.remove(name);
    }
    let Some(identity) = identity else { return };
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set("x-mosb-sub", &identity.sub.to_string());
    set("x-mosb-name", &identity.name);
    set("x-mosb-email", &identity.email);
    if let Some(sub_id) = &identity.sub_id {
        set("x-mosb-sub-id", sub_id);
    }
}

/// Verifies the request's principal, if it names one: a credential header
/// (plus an optional assertion) or a `_mosb` URL token, which is removed
/// from the query. Answers the refusal as a response.
async fn verify_identity(
    state: &Shared,
    tunnel: &Parked,
    parts: &mut axum::http::request::Parts,
) -> Result<Option<Identity>, Response> {
    let credential = parts
        .headers
        .get("x-backbone-principal")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let assertion = parts
        .headers
        .get("x-backbone-assertion")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let url_token = take_url_token(&mut parts.uri);
    if credential.is_none() && url_token.is_none() {
        if assertion.is_some() {
            state.metrics.count("unauthenticated");
            return Err(error(
                ErrorCode::Unauthenticated,
                "an assertion needs the principal's credential (x-backbone-principal)",
            ));
        }
        return Ok(None);
    }
    let refuse = |state: &Shared, e: BackboneError| -> Response {
        match e {
            BackboneError::Unauthenticated => {
                state.metrics.count("unauthenticated");
                error(
                    ErrorCode::Unauthenticated,
                    "invalid, expired or revoked backbone credential",
                )
            }
            BackboneError::Forbidden => {
                state.metrics.count("forbidden");
                error(
                    ErrorCode::Forbidden,
                    format!(
                        "this principal has no grant to service `{}`",
                        tunnel.service
                    ),
                )
            }
            BackboneError::Store(e) => ApiError::from(e).into_response(),
        }
    };
    let now = chrono::Utc::now().timestamp();
    // The service's tenant: a principal of another tenant is simply not
    // found there (tenant A's credentials never reach tenant B).
    let scope = state
        .store
        .begin(&tunnel.tenant)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    let backbone = scope.backbone();
    let result: Result<Identity, BackboneError> = async {
        let (principal, key) = match &credential {
            Some(credential) => {
                backbone
                    .authenticate_principal(state.sealer.as_ref(), credential)
                    .await?
            }
            None => {
                let token = url_token.as_deref().unwrap_or_default();
                let claims =
                    keys::peek_url_token(token).map_err(|_| BackboneError::Unauthenticated)?;
                let (principal, key) = backbone
                    .principal_key(state.sealer.as_ref(), claims.sub)
                    .await?;
                let claims = keys::verify_url_token(&key, token, now)
                    .map_err(|_| BackboneError::Unauthenticated)?;
                if claims.svc != tunnel.service {
                    return Err(BackboneError::Unauthenticated);
                }
                (principal, key)
            }
        };
        if !backbone
            .has_grant(principal.principal_id, tunnel.service_id)
            .await?
        {
            return Err(BackboneError::Forbidden);
        }
        let mut identity = Identity {
            sub: principal.principal_id,
            name: principal.name,
            email: principal.email,
            sub_id: None,
        };
        if let Some(assertion) = &assertion {
            let claims = keys::verify_assertion(&key, assertion, now)
                .map_err(|_| BackboneError::Unauthenticated)?;
            identity.sub_id = Some(claims.sub_id);
            if let Some(name) = claims.name {
                identity.name = name;
            }
            if let Some(email) = claims.email {
                identity.email = email;
            }
        }
        Ok(identity)
    }
    .await;
    drop(scope);
    result.map(Some).map_err(|e| refuse(state, e))
}

/// Removes `_mosb=<token>` from the query and returns the token.
fn take_url_token(uri: &mut Uri) -> Option<String> {
    let query = uri.query()?;
    let mut token = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("_mosb=") {
            Some(value) => {
                token = Some(value.to_owned());
                false
            }
            None => true,
        })
        .collect();
    let token = token?;
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = rebuilt.parse().ok();
    if let Ok(new) = Uri::from_parts(parts) {
        *uri = new;
    }
    Some(token)
}
