//! `/api/v1/mobius/portal/*`, the device-scoped REST surface of the
//! self-service portal (the table is in `mobius_api::portal`). Callers
//! prove themselves with a portal token through [`PortalCaller`], an
//! extractor of its own: admin tokens are refused here, and portal tokens
//! are refused everywhere else (they match no other token format).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mobius_api::device::HostFacts;
use mobius_api::portal::{
    ACTIVITY_PATH, DEVICE_PATH, LOGO_PATH, POLICIES_PATH, PortalActivity, PortalBranding,
    PortalDevice, PortalDisk, PortalPolicies, PortalSession, PortalSoftware, PortalSoftwareList,
    SESSION_PATH, SOFTWARE_PATH,
};
use mobius_core::devices::DeviceStatus;
use mobius_core::devices::presence::Presence;
use mobius_core::portal::{PortalError, PortalGrant, TokenKind, authenticate};
use mobius_core::{Store, TenantScope, Uuid};

use super::PortalServices;
use crate::device::PlanServices;
use crate::http::errors::{ApiError, ErrorCode};

#[derive(Clone)]
pub struct PortalRestState {
    pub store: Store,
    pub portal: PortalServices,
    pub plans: PlanServices,
    pub presence: Arc<Presence>,
    pub heartbeat_interval_secs: u64,
}

/// The portal routes; the admin router wraps them in its own layers
/// (request ids, limits, timeout, hardening headers, metrics).
pub fn router(state: PortalRestState) -> Router {
    Router::new()
        .route(SESSION_PATH, post(open_session))
        .route(DEVICE_PATH, get(device))
        .route(POLICIES_PATH, get(policies))
        .route(SOFTWARE_PATH, get(software))
        .route(&format!("{SOFTWARE_PATH}/{{id}}/{{action}}"), post(act))
        .route(ACTIVITY_PATH, get(activity))
        .route(LOGO_PATH, get(logo))
        .with_state(state)
}

/// Exhaustive: a new portal error needs a decision here.
pub(crate) fn portal_error(err: PortalError) -> ApiError {
    match err {
        PortalError::Unauthenticated => ApiError::new(ErrorCode::Unauthenticated, err.to_string()),
        PortalError::NotOffered => ApiError::new(ErrorCode::NotFound, err.to_string()),
        PortalError::NotAllowed(message) => ApiError::new(ErrorCode::Conflict, message),
        PortalError::Invalid { field, reason } => ApiError {
            field: Some(field.to_owned()),
            ..ApiError::new(
                ErrorCode::BadUserInput,
                format!("invalid {field}: {reason}"),
            )
        },
        PortalError::Software(err) => crate::software::rest::software_error(err),
        PortalError::Store(err) => err.into(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// A request that presented a valid portal token of kind `LINK` (a link
/// when true, a session otherwise), with a scope in its tenant.
pub struct PortalCaller<const LINK: bool> {
    pub scope: TenantScope,
    pub grant: PortalGrant,
}

impl<const LINK: bool> FromRequestParts<PortalRestState> for PortalCaller<LINK> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &PortalRestState,
    ) -> Result<Self, Self::Rejection> {
        let kind = if LINK {
            TokenKind::Link
        } else {
            TokenKind::Session
        };
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "send the portal token: `Authorization: Bearer <token>`",
            )
        })?;
        let (scope, grant) = authenticate(&state.store, token, kind)
            .await
            .map_err(portal_error)?;
        Ok(PortalCaller { scope, grant })
    }
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `POST /api/v1/mobius/portal/session`: a link opens a session.
async fn open_session(
    State(state): State<PortalRestState>,
    caller: PortalCaller<true>,
) -> Result<(StatusCode, Json<PortalSession>), ApiError> {
    let issued = caller
        .scope
        .portal()
        .open_session(&caller.grant, state.portal.session_ttl)
        .await
        .map_err(portal_error)?;
    caller.scope.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(PortalSession {
            token: issued.token,
            expires_at: time(issued.expires_at),
        }),
    ))
}

/// `GET /api/v1/mobius/portal/device`.
async fn device(
    State(state): State<PortalRestState>,
    caller: PortalCaller<false>,
) -> Result<Json<PortalDevice>, ApiError> {
    let portal = caller.scope.portal();
    let mut device = portal.device(&caller.grant).await.map_err(portal_error)?;
    state.presence.overlay(&mut device);
    let online = DeviceStatus::of(&device, chrono::Utc::now(), state.heartbeat_interval_secs)
        == DeviceStatus::Online;
    let facts: Option<HostFacts> = device
        .facts
        .clone()
        .and_then(|f| serde_json::from_value(f).ok());
    let branding = portal.branding().await?;
    let tenant = caller.scope.tenant().get().await?;
    Ok(Json(PortalDevice {
        id: device.id,
        hostname: device.hostname,
        online,
        last_seen_at: device.last_seen_at.map(time),
        os_name: device.os_name,
        os_version: device.os_version,
        agent_version: device.agent_version,
        disks: facts
            .map(|f| {
                f.disks
                    .into_iter()
                    .map(|d| PortalDisk {
                        mount_point: d.mount_point,
                        total_bytes: d.total_bytes,
                        available_bytes: d.available_bytes,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        session_expires_at: time(caller.grant.expires_at()),
        branding: PortalBranding {
            name: branding.display_name.unwrap_or(tenant.name),
            accent_color: branding.accent_color,
            has_logo: branding.logo_content_type.is_some(),
            support_contact: branding.support_contact,
        },
    }))
}

/// `GET /api/v1/mobius/portal/policies`.
async fn policies(caller: PortalCaller<false>) -> Result<Json<PortalPolicies>, ApiError> {
    let policies = caller
        .scope
        .portal()
        .policies(&caller.grant)
        .await
        .map_err(portal_error)?;
    Ok(Json(PortalPolicies { policies }))
}

/// `GET /api/v1/mobius/portal/software`.
async fn software(caller: PortalCaller<false>) -> Result<Json<PortalSoftwareList>, ApiError> {
    let software = caller
        .scope
        .portal()
        .software(&caller.grant)
        .await
        .map_err(portal_error)?;
    Ok(Json(PortalSoftwareList { software }))
}

/// `POST /api/v1/mobius/portal/software/{id}/{action}`.
async fn act(
    State(state): State<PortalRestState>,
    caller: PortalCaller<false>,
    Path((id, action)): Path<(String, String)>,
) -> Result<(StatusCode, Json<PortalSoftware>), ApiError> {
    if !matches!(action.as_str(), "install" | "retry" | "uninstall") {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "no such action: use install, retry or uninstall",
        ));
    }
    let version_id =
        Uuid::try_parse(id.trim()).map_err(|_| portal_error(PortalError::NotOffered))?;
    let grant = caller.grant;
    let requested = caller
        .scope
        .portal()
        .act(&grant, &state.plans.signer, version_id, &action)
        .await
        .map_err(portal_error)?;
    caller.scope.commit().await?;
    state.plans.announce_installs(&requested);
    let scope = state.store.begin(&grant).await?;
    let item = scope
        .portal()
        .software(&grant)
        .await
        .map_err(portal_error)?
        .into_iter()
        .find(|s| s.version_id == version_id)
        .ok_or_else(|| portal_error(PortalError::NotOffered))?;
    Ok((StatusCode::CREATED, Json(item)))
}

/// `GET /api/v1/mobius/portal/activity`.
async fn activity(caller: PortalCaller<false>) -> Result<Json<PortalActivity>, ApiError> {
    let events = caller
        .scope
        .portal()
        .activity(&caller.grant)
        .await
        .map_err(portal_error)?;
    Ok(Json(PortalActivity { events }))
}

/// `GET /api/v1/mobius/portal/logo`: the image, or 404 when none is set.
async fn logo(caller: PortalCaller<false>) -> Result<Response, ApiError> {
    let Some((bytes, content_type)) = caller.scope.portal().logo().await? else {
        return Err(ApiError::new(ErrorCode::NotFound, "no logo is set"));
    };
    let content_type =
        HeaderValue::from_str(&content_type).unwrap_or(HeaderValue::from_static("image/png"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=300"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        bytes,
    )
        .into_response())
}
