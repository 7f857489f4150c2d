//! `POST /api/v1/mobius/device/enroll`: a new agent redeems an enrollment
//! token for its first certificate.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mobius_api::device::{EnrollRequest, EnrollResponse, EnrollmentToken};
use mobius_core::devices::HostFingerprint;
use mobius_core::enrollment::{EnrollmentRequest, EnrollmentTokenSecret};
use mobius_core::pki::DeviceCsr;

use super::DeviceState;
use super::errors::{body_error, enroll_error, error};
use super::peer::Peer;
use crate::http::errors::{ApiError, ErrorCode};

pub(super) async fn enroll(
    State(state): State<DeviceState>,
    peer: Peer,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Response {
    if let Some(limit) = &state.enrollment_limit
        && let Err(limited) = limit.admit(peer.addr.ip()).await
    {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            &format!(
                "too many enrollment attempts from this address; retry in {} s",
                limited.retry_after_secs
            ),
            None,
        );
        if let Ok(value) = limited.retry_after_secs.to_string().parse() {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        return response;
    }
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection),
    };
    let Some(token) = EnrollmentToken::parse(&request.token) else {
        return error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "malformed enrollment token (expected mobius1.<secret>.<pin>)",
            Some("token"),
        );
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
    let host_fingerprint = match HostFingerprint::parse(&request.host_fingerprint) {
        Ok(fingerprint) => fingerprint,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let enrolled = match EnrollmentTokenSecret(&token.secret)
        .redeem(
            &state.store,
            &state.pki,
            state.entitlements.as_ref(),
            EnrollmentRequest {
                secret: &token.secret,
                csr: &csr,
                host_fingerprint: &host_fingerprint,
                facts: &request.facts,
                client_ip: Some(peer.addr.ip()),
            },
        )
        .await
    {
        Ok(enrolled) => enrolled,
        Err(e) => return enroll_error(e),
    };
    // The CA may have been created by this enrollment: trust it before the
    // agent's first ping (a known CA needs no reload).
    if !state
        .trust
        .knows(enrolled.tenant_id, enrolled.certificate.ca_id)
        && let Err(e) = state.trust.reload().await
    {
        tracing::error!(error = %e, "reloading trusted CAs after enrollment");
    }
    tracing::info!(device_id = %enrolled.device_id, tenant_id = %enrolled.tenant_id, created = enrolled.created, "device enrolled");
    let plan_verification_key =
        super::work::verification_key(&state, enrolled.tenant_id, enrolled.device_id).await;
    Json(EnrollResponse {
        device_id: enrolled.device_id,
        tenant_id: enrolled.tenant_id,
        site_id: enrolled.site_id,
        certificate_pem: enrolled.certificate.pem,
        ca_bundle_pem: enrolled.ca_bundle_pem,
        server_ca_pem: state.server_ca_pem.as_ref().clone(),
        expires_at: enrolled.certificate.not_after.to_rfc3339(),
        heartbeat_interval_secs: state.heartbeat_interval_secs,
        plan_verification_key,
    })
    .into_response()
}
