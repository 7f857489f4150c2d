//! The backbone's unauthenticated and principal-authenticated endpoints:
//! `POST /principals` (rate limited per client address; a tenant may
//! switch it off), `POST /url-tokens`, `POST /principals/rotate`,
//! `/healthz`, `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mobius_core::audit::{Actor, ActorKind};
use mobius_core::backbone::{BackboneError, keys};
use mobius_core::crypto::secrets;
use mobius_core::tenancy::DEFAULT_TENANT_SLUG;
use serde::Deserialize;
use serde_json::json;

use super::Shared;
use super::listener::ClientAddr;
use crate::http::errors::{ApiError, ErrorCode};

pub async fn healthz(State(state): State<Shared>) -> Response {
    Json(json!({ "status": "ok", "parked_connections": state.registry.count() })).into_response()
}

pub async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::BadUserInput,
            format!(
                "invalid JSON body: {}",
                e.to_string().split(" at line").next().unwrap_or("")
            ),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    name: String,
    email: String,
    #[serde(default)]
    note: Option<String>,
    /// The tenant to join, by slug (default: the default tenant).
    #[serde(default)]
    tenant: Option<String>,
}

fn client_of(request_ext: &axum::http::Extensions) -> Option<std::net::SocketAddr> {
    request_ext.get::<ClientAddr>().map(|a| a.0)
}

pub async fn register_principal(
    State(state): State<Shared>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let client = client_of(&extensions);
    let key = client.map(|a| a.ip().to_string()).unwrap_or_default();
    if let Err(not_until) = state.registrations.check_key(&key) {
        use governor::clock::Clock;
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let mut response = ApiError::new(
            ErrorCode::RateLimited,
            "too many registrations from this address; try again later",
        )
        .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(response);
    }
    let input: Register = body(&bytes)?;
    let slug = input.tenant.as_deref().unwrap_or(DEFAULT_TENANT_SLUG);
    let closed = || {
        ApiError::new(
            ErrorCode::Forbidden,
            "this tenant does not accept principal registrations (or does not exist)",
        )
    };
    let tenant = state
        .store
        .backbone_registration_tenant(slug)
        .await?
        .ok_or_else(closed)?;
    let scope = state.store.begin(&tenant).await?;
    let actor = Actor {
        kind: ActorKind::System,
        id: None,
        ip: client.map(|a| a.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let (credential, principal) = scope
        .backbone()
        .create_principal(
            &actor,
            state.sealer.as_ref(),
            &input.name,
            &input.email,
            input.note.as_deref(),
        )
        .await?;
    scope.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "credential": credential, "principal": principal })),
    )
        .into_response())
}

/// The principal a request's `x-backbone-principal` header proves, with
/// its tenant scope open and its derived key.
async fn principal_of(
    state: &Shared,
    headers: &HeaderMap,
) -> Result<
    (
        mobius_core::TenantScope,
        mobius_core::backbone::Principal,
        [u8; 32],
    ),
    ApiError,
> {
    let unauthenticated = || {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "a valid principal credential is required (x-backbone-principal: mosb_pr_...)",
        )
    };
    let credential = headers
        .get("x-backbone-principal")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthenticated)?;
    let tenant = state
        .store
        .backbone_principal_tenant(&secrets::sha256(credential))
        .await?
        .ok_or_else(unauthenticated)?;
    let scope = state.store.begin(&tenant).await?;
    let (principal, key) = match scope
        .backbone()
        .authenticate_principal(state.sealer.as_ref(), credential)
        .await
    {
        Ok(found) => found,
        Err(BackboneError::Unauthenticated | BackboneError::Forbidden) => {
            return Err(unauthenticated());
        }
        Err(BackboneError::Store(e)) => return Err(e.into()),
    };
    Ok((scope, principal, key))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUrlToken {
    service: String,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// Longest a URL token may live: a week (they travel in URLs, which end
/// up in logs and histories; rotate `key_version` to kill them sooner).
const MAX_URL_TOKEN_SECS: i64 = 7 * 24 * 3600;

pub async fn create_url_token(
    State(state): State<Shared>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (scope, principal, key) = principal_of(&state, &headers).await?;
    let input: CreateUrlToken = body(&bytes)?;
    let expires_in = input.expires_in.unwrap_or(3600);
    if !(1..=MAX_URL_TOKEN_SECS).contains(&expires_in) {
        return Err(ApiError {
            field: Some("expires_in".into()),
            ..ApiError::new(
                ErrorCode::BadUserInput,
                format!("expires_in must be between 1 and {MAX_URL_TOKEN_SECS} seconds"),
            )
        });
    }
    let name = input.service.trim().to_ascii_lowercase();
    let service = scope
        .backbone()
        .service_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no service named `{name}`")))?;
    if !scope
        .backbone()
        .has_grant(principal.principal_id, service.id)
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this principal has no grant to service `{name}`"),
        ));
    }
    let exp = chrono::Utc::now().timestamp() + expires_in;
    let token = keys::sign_url_token(
        &key,
        &keys::UrlToken {
            sub: principal.principal_id,
            svc: service.name.clone(),
            exp,
        },
    );
    let url = format!(
        "{}://{}.{}/?_mosb={token}",
        state.scheme, service.name, state.domain
    );
    Ok(Json(json!({ "token": token, "url": url, "expires_at": exp })).into_response())
}

/// A principal rotates its own key: a new credential (shown once), and
/// every outstanding URL token and assertion stops working.
pub async fn rotate_own_key(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (scope, principal, _) = principal_of(&state, &headers).await?;
    let actor = Actor::system();
    let (credential, principal) = scope
        .backbone()
        .rotate_principal_key(&actor, state.sealer.as_ref(), principal.principal_id)
        .await?;
    scope.commit().await?;
    Ok(Json(json!({ "credential": credential, "principal": principal })).into_response())
}
