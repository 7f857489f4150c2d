//! `HEAD`/`POST /api/mobius/device/ping`: heartbeats, with facts when
//! they changed.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mobius_api::device::{PingRequest, PingResponse};
use mobius_core::devices::DeviceIdentity;

use super::DeviceState;
use super::errors::{body_error, revoked};
use super::peer::DeviceScope;
use crate::http::errors::ApiError;

/// The cheapest authenticated request: answered from the certificate and
/// memory alone.
pub(super) async fn ping_head(State(state): State<DeviceState>, device: DeviceScope) -> StatusCode {
    state
        .presence
        .record(device.identity.tenant_id(), device.identity.device_id());
    StatusCode::NO_CONTENT
}

pub(super) async fn ping(
    State(state): State<DeviceState>,
    device: DeviceScope,
    body: Result<Json<PingRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection),
    };
    if let Some(facts) = &request.facts {
        let result = async {
            let scope = state.store.begin(&device.identity).await?;
            scope
                .devices()
                .record_facts(device.identity.device_id(), facts)
                .await?;
            scope.commit().await
        }
        .await;
        match result {
            Ok(()) => {}
            Err(mobius_core::StoreError::NotFound { .. }) => return revoked(),
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    state
        .presence
        .record(device.identity.tenant_id(), device.identity.device_id());
    // The same frames the push stream carries, so an agent whose stream
    // broke loses nothing.
    let work = match super::work::heartbeat_work(&state, &device.identity).await {
        Ok(frames) => frames,
        Err(mobius_core::StoreError::NotFound { .. }) => return revoked(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    Json(PingResponse {
        interval_secs: state.heartbeat_interval_secs,
        renew_after: renew_after(&state, &device.identity).to_rfc3339(),
        work,
    })
    .into_response()
}

/// Half-life of the certificate; at once when its CA is being retired.
fn renew_after(state: &DeviceState, identity: &DeviceIdentity) -> chrono::DateTime<chrono::Utc> {
    if !state
        .trust
        .is_current(identity.tenant_id(), identity.ca_id())
    {
        return chrono::Utc::now();
    }
    identity.not_before() + (identity.not_after() - identity.not_before()) / 2
}
