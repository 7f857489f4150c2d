//! HTTP errors: the mapping from domain errors to a status and a stable
//! code. The match over [`StoreError`] has no `_` arm, so a new variant
//! forces a decision here.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mobius_api::{ErrorBody, ErrorDetail};
use mobius_core::StoreError;
use mobius_core::platform::TenantBlock;

use super::request_id;

/// How long a client should wait before retrying while the database is
/// unreachable: long enough not to hammer a recovering server, short
/// enough that a blip costs a user little.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

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
    /// The tenant is suspended by the platform operator (data kept).
    TenantSuspended,
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
            ErrorCode::TenantSuspended => "TENANT_SUSPENDED",
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
            ErrorCode::TenantSuspended => StatusCode::FORBIDDEN,
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
    /// An INTERNAL failure that may pass (the database is unreachable):
    /// answered 503 with `Retry-After` instead of 500.
    pub retryable: bool,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
            retryable: false,
        }
    }

    /// Logs `cause` at error level with the request id, and answers with
    /// a generic INTERNAL that quotes the id but none of the cause.
    pub fn internal(cause: &dyn std::error::Error, retryable: bool) -> Self {
        let id = request_id::current();
        let id = id.as_deref().unwrap_or("-");
        tracing::error!(request_id = %id, error = %cause, retryable, "internal error");
        let message = if id == "-" {
            "internal error".to_owned()
        } else {
            format!("internal error (request {id})")
        };
        ApiError {
            retryable,
            ..ApiError::new(ErrorCode::Internal, message)
        }
    }

    /// The HTTP status: a retryable INTERNAL is 503, not 500.
    pub fn status(&self) -> StatusCode {
        if self.retryable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            self.code.status()
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
                retryable: false,
            },
            StoreError::InUse { .. } => ApiError::new(ErrorCode::Conflict, err.to_string()),
            StoreError::Invalid { field, .. } => ApiError {
                code: ErrorCode::BadUserInput,
                message: err.to_string(),
                field: Some(field.to_owned()),
                retryable: false,
            },
            StoreError::TenantBlocked(block) => match block {
                TenantBlock::Suspended => {
                    ApiError::new(ErrorCode::TenantSuspended, err.to_string())
                }
                TenantBlock::AwaitingVerification => {
                    ApiError::new(ErrorCode::Forbidden, err.to_string())
                }
            },
            StoreError::MultiTenantRequiresPostgres => {
                ApiError::new(ErrorCode::BadUserInput, err.to_string())
            }
            // The cause goes to the log, never to the client.
            StoreError::Unavailable(_) => ApiError::internal(&err, true),
            StoreError::Internal { .. }
            | StoreError::UnsafeRequestRole { .. }
            | StoreError::Database(_) => ApiError::internal(&err, false),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if self.retryable {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
            );
        }
        response
    }
}
