//! `POST /api/v1/mobius/device/renew`: a device renews its certificate
//! over mTLS (at half-life, or at once when its CA is being retired).

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mobius_api::device::{RenewRequest, RenewResponse};
use mobius_core::enrollment::RenewError;
use mobius_core::pki::DeviceCsr;

use super::DeviceState;
use super::errors::{body_error, error, revoked};
use super::peer::DeviceScope;
use crate::http::errors::{ApiError, ErrorCode};

pub(super) async fn renew(
    State(state): State<DeviceState>,
    device: DeviceScope,
    body: Result<Json<RenewRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection),
    };
    let csr = match DeviceCsr::parse(&request.csr_pem) {
        Ok(csr) => csr,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                &e.to_string(),
                Some("csr"),
            );
        }
    };
    let renewed = mobius_core::enrollment::renew(
        &state.store,
        &state.pki,
        &device.identity,
        Some(device.addr.ip()),
        &csr,
    )
    .await;
    match renewed {
        Ok(renewed) => Json(RenewResponse {
            certificate_pem: renewed.certificate.pem,
            ca_bundle_pem: renewed.ca_bundle_pem,
            expires_at: renewed.certificate.not_after.to_rfc3339(),
            plan_verification_key: super::work::verification_key(
                &state,
                device.identity.tenant_id(),
                device.identity.device_id(),
            )
            .await,
        })
        .into_response(),
        Err(RenewError::DeviceRevoked) => revoked(),
        Err(RenewError::Store(e)) => ApiError::from(e).into_response(),
    }
}
