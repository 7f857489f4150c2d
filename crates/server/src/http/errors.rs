//! HTTP errors: the mapping from domain errors to a status and a stable
//! code. The match over [`StoreError`] has no `_` arm, so a new variant
//! forces a decision here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mobius_api::{ErrorBody, ErrorDetail};
use mobius_core::StoreError;

/// The stable error codes of the API (the same list GraphQL uses in
/// `extensions.code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    Forbidden,
    NotFound,
    BadUserInput,
    Conflict,
    LicenseRequired,
    RateLimited,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::BadUserInput => "BAD_USER_INPUT",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::LicenseRequired => "LICENSE_REQUIRED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::BadUserInput => StatusCode::BAD_REQUEST,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::LicenseRequired => StatusCode::PAYMENT_REQUIRED,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error as a client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { .. } => ApiError::new(ErrorCode::NotFound, err.to_string()),
            StoreError::Conflict { field, .. } => ApiError {
                code: ErrorCode::Conflict,
                message: err.to_string(),
                field: Some(field.to_owned()),
            },
            StoreError::InUse { .. } => ApiError::new(ErrorCode::Conflict, err.to_string()),
            StoreError::Invalid { field, .. } => ApiError {
                code: ErrorCode::BadUserInput,
                message: err.to_string(),
                field: Some(field.to_owned()),
            },
            StoreError::MultiTenantRequiresPostgres => {
                ApiError::new(ErrorCode::BadUserInput, err.to_string())
            }
            StoreError::UnsafeRequestRole { .. } | StoreError::Database(_) => {
                // The cause goes to the log, never to the client.
                tracing::error!(error = %err, "internal error");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        (self.code.status(), Json(body)).into_response()
    }
}
