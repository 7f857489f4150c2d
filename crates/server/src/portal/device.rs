//! `POST /api/v1/mobius/device/portal-token` on the mTLS device listener:
//! a fresh portal link for the device its certificate names.

use axum::Json;
use axum::extract::State;
use mobius_api::portal::{PortalLink, START_PATH};

use crate::device::{DeviceScope, DeviceState};
use crate::http::errors::{ApiError, ErrorCode};

pub async fn portal_token(
    State(state): State<DeviceState>,
    device: DeviceScope,
) -> Result<Json<PortalLink>, ApiError> {
    let portal = &state.portal;
    let Some(base) = &portal.portal_url else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "this server has no self-service portal: an operator sets portal_url to mobius-cocoon's address (docs/operations/cocoon.md)",
        ));
    };
    let identity = &device.identity;
    let scope = state.store.begin(identity).await?;
    let issued = scope
        .portal()
        .issue_link(identity.device_id(), portal.link_ttl + portal.link_overlap)
        .await?;
    scope.commit().await?;
    Ok(Json(PortalLink {
        url: format!("{base}{START_PATH}?token={}", issued.token),
        token: issued.token,
        expires_at: issued
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        rotate_after_secs: u64::try_from(portal.link_ttl.num_seconds()).unwrap_or(3600),
        portal_url: base.clone(),
    }))
}
