//! `POST /api/v1/mobius/device/renew`: a device renews its certificate
//! over mTLS (at half-life, or at once when its CA is being retired).

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mobius_api::device::{RenewRequest, RenewResponse};
use mobius_core::audit::{Actor, ActorKind, AuditRecord};
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
    let result = async {
        let scope = state.store.begin(&device.identity).await?;
        let existing = scope.devices().get(device.identity.device_id()).await?;
        if existing.revoked_at.is_some() {
            return Err(mobius_core::StoreError::NotFound { entity: "device" });
        }
        let actor = Actor {
            kind: ActorKind::Device,
            id: Some(device.identity.device_id()),
            ip: Some(device.addr.ip().to_string()),
            user_agent: None,
        };
        let ca = state.pki.current_ca(&scope, &actor).await?;
        let certificate = state.pki.issue(&ca, &csr, *device.identity.name()).await?;
        scope
            .devices()
            .set_certificate(device.identity.device_id(), &certificate)
            .await?;
        scope
            .audit()
            .record(
                &actor,
                AuditRecord::new(
                    "device.renewed",
                    "device",
                    Some(device.identity.device_id()),
                )
                .with_details(serde_json::json!({
                    "certificate_serial": certificate.serial,
                    "ca_id": certificate.ca_id,
                    "previous_ca_id": device.identity.ca_id(),
                })),
            )
            .await?;
        let bundle = state.pki.bundle(&scope).await?;
        scope.commit().await?;
        Ok((certificate, bundle))
    }
    .await;
    match result {
        Ok((certificate, ca_bundle_pem)) => Json(RenewResponse {
            certificate_pem: certificate.pem,
            ca_bundle_pem,
            expires_at: certificate.not_after.to_rfc3339(),
        })
        .into_response(),
        Err(mobius_core::StoreError::NotFound { .. }) => revoked(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
