//! `/admin/api/*`: service tokens, principals, grants, services, cluster.
//! Callers authenticate as a Mobius admin (`Authorization: Bearer` with an
//! access token or a `mob_pat_` API token) whose role permits
//! `ManageBackbone` (owner, admin).

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mobius_core::TenantScope;
use mobius_core::Uuid;
use mobius_core::audit::Actor;
use mobius_core::authz::{Operation, Principal};
use mobius_core::identity::{IdentityError, RequestMeta};
use serde::Deserialize;
use serde_json::json;

use super::listener::ClientAddr;
use super::{Shared, negotiate};
use crate::http::errors::{ApiError, ErrorCode};

/// A Mobius admin allowed to manage the backbone, with the scope their
/// authentication read through (still open: handlers write through it
/// and commit).
pub struct BackboneAdmin {
    pub principal: Principal,
    pub scope: TenantScope,
}

impl FromRequestParts<Shared> for BackboneAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "sign in: Authorization: Bearer <access or API token>",
                )
            })?;
        let meta = RequestMeta {
            ip: parts
                .extensions
                .get::<ClientAddr>()
                .map(|a| a.0.ip().to_string()),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let authenticated =
            state
                .identity
                .authenticate(bearer, &meta)
                .await
                .map_err(|e| match e {
                    IdentityError::Store(e) => ApiError::from(e),
                    _ => ApiError::new(
                        ErrorCode::Unauthenticated,
                        "invalid, expired or revoked credentials",
                    ),
                })?;
        authenticated
            .principal
            .authorize(Operation::ManageBackbone, None)
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::Forbidden,
                    "your role may not manage the backbone (owner or admin needed)",
                )
            })?;
        Ok(BackboneAdmin {
            principal: authenticated.principal,
            scope: authenticated.scope,
        })
    }
}

impl BackboneAdmin {
    fn actor(&self) -> Actor {
        self.principal.actor()
    }
}

fn parse_id(field: &'static str, value: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(value).map_err(|_| ApiError {
        field: Some(field.to_owned()),
        ..ApiError::new(ErrorCode::BadUserInput, format!("{field} must be a UUID"))
    })
}

/// Parses a JSON body into `T`, answering BAD_USER_INPUT (not axum's
/// plain-text 422) when it does not fit.
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
struct CreateToken {
    service_name: String,
}

pub async fn create_token(
    admin: BackboneAdmin,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let input: CreateToken = body(&bytes)?;
    let (secret, token) = admin
        .scope
        .backbone()
        .create_service_token(
            &admin.actor(),
            &input.service_name,
            Some(admin.principal.user_id),
        )
        .await?;
    admin.scope.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": secret,
            "service": token.service,
            "id": token.id,
            "created_at": token.created_at,
        })),
    )
        .into_response())
}

pub async fn list_tokens(admin: BackboneAdmin, headers: HeaderMap) -> Result<Response, ApiError> {
    let tokens = admin.scope.backbone().service_tokens().await?;
    Ok(negotiate(
        &headers,
        "Service tokens",
        json!({ "tokens": tokens }),
    ))
}

pub async fn revoke_token(
    State(state): State<Shared>,
    admin: BackboneAdmin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id("id", &id)?;
    let token = admin
        .scope
        .backbone()
        .revoke_service_token(&admin.actor(), id)
        .await?;
    admin.scope.commit().await?;
    // Tunnels parked here close now; other nodes within their next poll.
    let closed = state.registry.close_tokens(&[id]);
    Ok(Json(json!({ "revoked": token, "tunnels_closed_here": closed })).into_response())
}

pub async fn list_principals(
    admin: BackboneAdmin,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principals = admin.scope.backbone().principals().await?;
    Ok(negotiate(
        &headers,
        "Principals",
        json!({ "principals": principals }),
    ))
}

pub async fn revoke_principal(
    admin: BackboneAdmin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id("cid", &id)?;
    let principal = admin
        .scope
        .backbone()
        .revoke_principal(&admin.actor(), id)
        .await?;
    admin.scope.commit().await?;
    Ok(Json(json!({ "revoked": principal })).into_response())
}

pub async fn rotate_principal(
    State(state): State<Shared>,
    admin: BackboneAdmin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id("id", &id)?;
    let (credential, principal) = admin
        .scope
        .backbone()
        .rotate_principal_key(&admin.actor(), state.sealer.as_ref(), id)
        .await?;
    admin.scope.commit().await?;
    Ok(Json(json!({ "credential": credential, "principal": principal })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGrant {
    principal_id: String,
    service: String,
}

pub async fn create_grant(
    admin: BackboneAdmin,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let input: CreateGrant = body(&bytes)?;
    let principal_id = parse_id("principal_id", &input.principal_id)?;
    admin
        .scope
        .backbone()
        .grant(&admin.actor(), principal_id, &input.service)
        .await?;
    admin.scope.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "principal_id": principal_id, "service": input.service.trim().to_ascii_lowercase() })),
    )
        .into_response())
}

pub async fn revoke_grant(
    admin: BackboneAdmin,
    Path((pid, svc)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let principal_id = parse_id("pid", &pid)?;
    admin
        .scope
        .backbone()
        .revoke_grant(&admin.actor(), principal_id, &svc)
        .await?;
    admin.scope.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list_grants(
    admin: BackboneAdmin,
    headers: HeaderMap,
    Path(pid): Path<String>,
) -> Result<Response, ApiError> {
    let principal_id = parse_id("pid", &pid)?;
    let services = admin.scope.backbone().grants_of(principal_id).await?;
    Ok(negotiate(
        &headers,
        "Grants",
        json!({ "principal_id": principal_id, "services": services }),
    ))
}

/// The tenant's services, with the tunnels parked for each on this node.
pub async fn list_services(
    State(state): State<Shared>,
    admin: BackboneAdmin,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let services = admin.scope.backbone().services().await?;
    let parked = state.registry.view(admin.scope.tenant_id());
    let list: Vec<serde_json::Value> = services
        .into_iter()
        .map(|s| {
            let connections = parked
                .iter()
                .find(|(name, _)| *name == s.name)
                .map(|(_, list)| serde_json::to_value(list).unwrap_or_default())
                .unwrap_or_else(|| json!([]));
            let connected = connections.as_array().is_some_and(|a| !a.is_empty());
            json!({
                "service": s.name,
                "url": format!("{}://{}.{}/", state.scheme, s.name, state.domain),
                "require_identity": s.require_identity,
                "connected": connected,
                "connections": connections,
            })
        })
        .collect();
    Ok(negotiate(&headers, "Services", json!({ "services": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateService {
    require_identity: bool,
}

pub async fn update_service(
    admin: BackboneAdmin,
    Path(name): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let input: UpdateService = body(&bytes)?;
    let service = admin
        .scope
        .backbone()
        .set_require_identity(&admin.actor(), &name, input.require_identity)
        .await?;
    admin.scope.commit().await?;
    Ok(Json(
        json!({ "service": service, "note": "parked tunnels pick this up when they reconnect" }),
    )
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateSettings {
    open_registration: bool,
}

pub async fn update_settings(
    State(state): State<Shared>,
    admin: BackboneAdmin,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let input: UpdateSettings = body(&bytes)?;
    admin
        .scope
        .backbone()
        .set_open_registration(
            &admin.actor(),
            state.sealer.as_ref(),
            input.open_registration,
        )
        .await?;
    admin.scope.commit().await?;
    Ok(Json(json!({ "open_registration": input.open_registration })).into_response())
}

/// This node and the services of the caller's tenant it holds. Other
/// nodes are not listed (no shared node table yet: see the operator doc).
pub async fn cluster(
    State(state): State<Shared>,
    admin: BackboneAdmin,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let held: Vec<serde_json::Value> = state
        .registry
        .view(admin.scope.tenant_id())
        .into_iter()
        .map(|(name, list)| json!({ "service": name, "connections": list.len() }))
        .collect();
    Ok(negotiate(
        &headers,
        "Cluster",
        json!({ "nodes": [{
            "node_id": state.node_id,
            "started_at": state.started_at,
            "last_heartbeat": chrono::Utc::now(),
            "this_node": true,
            "services": held,
        }]}),
    ))
}
