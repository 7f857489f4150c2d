//! Error answers of the device listener: JSON bodies with stable codes.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mobius_api::{ErrorBody, ErrorDetail};
use mobius_core::enrollment::EnrollError;

use super::MAX_DEVICE_BODY_BYTES;
use crate::http::errors::{ApiError, ErrorCode};

pub(crate) fn error(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
    field: Option<&str>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_str().to_owned(),
            message: message.to_owned(),
            field: field.map(str::to_owned),
        },
    };
    (status, Json(body)).into_response()
}

/// A malformed or oversized body is the client's mistake, with its status
/// kept (413 for too large) and a stable code.
pub(crate) fn body_error(rejection: JsonRejection) -> Response {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body larger than {MAX_DEVICE_BODY_BYTES} bytes")
    } else {
        rejection.body_text()
    };
    error(status, ErrorCode::BadUserInput, &message, None)
}

/// Exhaustive: a new enrollment failure needs a decision here.
pub(super) fn enroll_error(err: EnrollError) -> Response {
    let message = err.to_string();
    match err {
        EnrollError::UnknownToken
        | EnrollError::TokenExpired
        | EnrollError::TokenRevoked
        | EnrollError::TokenUsedUp => error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            &message,
            Some("token"),
        ),
        EnrollError::AddressNotAllowed | EnrollError::DeviceRevoked => {
            error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, &message, None)
        }
        EnrollError::DeviceLimit { .. } => error(
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::LicenseRequired,
            &message,
            None,
        ),
        EnrollError::Store(e) => ApiError::from(e).into_response(),
    }
}

pub(crate) fn revoked() -> Response {
    error(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        "device revoked: an administrator revoked or deleted this device",
        None,
    )
}
