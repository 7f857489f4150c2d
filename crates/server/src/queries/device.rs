//! `POST /api/v1/mobius/device/queries/results` on the mTLS device
//! listener: an agent's answer to a live query or a policy check.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mobius_api::queries::QueryResult;
use mobius_core::StoreError;
use mobius_core::queries::QueryError;

use crate::device::DeviceScope;
use crate::device::DeviceState;
use crate::device::errors::{body_error, error, revoked};
use crate::http::errors::{ApiError, ErrorCode};

/// Answers are capped by the agent (rows and bytes); this leaves room for
/// JSON overhead on a capped answer.
pub const MAX_RESULT_BODY_BYTES: usize = 8 * 1024 * 1024;

pub(crate) async fn results(
    State(state): State<DeviceState>,
    device: DeviceScope,
    body: Result<Json<QueryResult>, JsonRejection>,
) -> Response {
    let Json(result) = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection),
    };
    let identity = &device.identity;
    match super::record_query_result(&state.queries, identity, identity.device_id(), &result).await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(QueryError::Invalid { field, reason }) => error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            &reason,
            Some(&field),
        ),
        Err(QueryError::AlreadyEnded) => StatusCode::NO_CONTENT.into_response(),
        Err(QueryError::Store(StoreError::NotFound { entity: "device" })) => revoked(),
        Err(QueryError::Store(StoreError::Invalid { field, reason })) => error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            &reason,
            Some(field),
        ),
        Err(QueryError::Store(err)) => ApiError::from(err).into_response(),
    }
}
