//! GraphQL errors: every error a client sees carries `extensions.code`
//! from the fixed list, and internal causes never leave the server.

use async_graphql::{Error, ErrorExtensions, ParseRequestError, Response};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use mobius_core::StoreError;
use mobius_core::authz::Denied;
use mobius_core::identity::IdentityError;

use crate::http::errors::{ApiError, ErrorCode};
use crate::http::request_id;

/// An error with a stable code (and the input field, when there is one).
pub fn coded(code: ErrorCode, message: impl Into<String>, field: Option<&str>) -> Error {
    Error::new(message).extend_with(|_, e| {
        e.set("code", code.as_str());
        if let Some(field) = field {
            e.set("field", field);
        }
    })
}

pub fn not_found(what: &str) -> Error {
    coded(ErrorCode::NotFound, format!("{what} not found"), None)
}

pub fn bad_input(field: &str, message: impl Into<String>) -> Error {
    coded(ErrorCode::BadUserInput, message, Some(field))
}

pub fn forbidden(message: impl Into<String>) -> Error {
    coded(ErrorCode::Forbidden, message, None)
}

/// A retryable error (the database is unreachable) says so in
/// `extensions.retryable`, GraphQL's stand-in for a 503.
impl From<ApiError> for Error {
    fn from(err: ApiError) -> Error {
        let error = coded(err.code, err.message, err.field.as_deref());
        if err.retryable {
            error.extend_with(|_, e| e.set("retryable", true))
        } else {
            error
        }
    }
}

pub fn store(err: StoreError) -> Error {
    ApiError::from(err).into()
}

pub fn denied(_: Denied) -> Error {
    forbidden("your role does not permit this")
}

/// Exhaustive, so a new identity failure needs a decision here.
pub fn identity(err: IdentityError) -> Error {
    match err {
        IdentityError::InvalidCredentials
        | IdentityError::InvalidToken
        | IdentityError::AccessTokenExpired
        | IdentityError::RefreshTokenReused => {
            coded(ErrorCode::Unauthenticated, err.to_string(), None)
        }
        IdentityError::InvalidCode => coded(ErrorCode::BadUserInput, err.to_string(), Some("code")),
        IdentityError::SsoRequired => coded(ErrorCode::Forbidden, err.to_string(), None),
        IdentityError::Store(e) => store(e),
    }
}

/// Gives every error in a response a code. Errors from parsing and
/// validation (no path) are the client's: BAD_USER_INPUT, and so are
/// arguments that only fail to coerce when the field runs (a variable
/// `Int` beyond 32 bits). Any other resolver error without a code is an
/// unexpected failure: logged, and answered with a generic INTERNAL so its
/// text cannot leak.
/// async-graphql's messages for an argument value that does not parse as
/// its input type (`InputValueError::custom` and `::expected_type`); they
/// describe the client's value, never server state.
fn is_argument_coercion(message: &str) -> bool {
    message.starts_with("Failed to parse \"") || message.starts_with("Expected input type \"")
}

pub fn sanitize(mut response: Response) -> Response {
    for error in &mut response.errors {
        let has_code = error
            .extensions
            .as_ref()
            .is_some_and(|ext| ext.get("code").is_some());
        if has_code {
            continue;
        }
        if error.path.is_empty() || is_argument_coercion(&error.message) {
            let mut ext = error.extensions.take().unwrap_or_default();
            ext.set("code", ErrorCode::BadUserInput.as_str());
            error.extensions = Some(ext);
        } else {
            let id = request_id::current();
            let id = id.as_deref().unwrap_or("-");
            tracing::error!(
                request_id = %id,
                error = %error.message,
                path = ?error.path,
                "GraphQL resolver failed"
            );
            error.message = if id == "-" {
                "internal error".into()
            } else {
                format!("internal error (request {id})")
            };
            let mut ext = async_graphql::ErrorExtensionValues::default();
            ext.set("code", ErrorCode::Internal.as_str());
            error.extensions = Some(ext);
        }
    }
    response
}

/// The answer to a body that is not a GraphQL request (`{"query": 5}`,
/// `[1,2]`, a multipart upload): GraphQL's error shape with BAD_USER_INPUT
/// and a fixed message, since async-graphql's text names its own types.
pub fn unreadable_request(err: ParseRequestError) -> axum::response::Response {
    // The body limit cut the body off: a bare 413, which
    // `json_error_bodies` words with the limit in force.
    let too_large = match &err {
        ParseRequestError::PayloadTooLarge => true,
        ParseRequestError::Io(io) => is_length_limit(io),
        _ => false,
    };
    if too_large {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    // Every other variant (the enum is non-exhaustive) is a body that is
    // not one GraphQL request.
    let message = if matches!(err, ParseRequestError::UnsupportedBatch) {
        "batch requests are not supported: send one {\"query\": ...} object"
    } else {
        "the body is not a GraphQL request: send a JSON object with a string \"query\" \
         and optional \"variables\" (an object) and \"operationName\" (a string)"
    };
    tracing::debug!(error = %err, "unreadable GraphQL request");
    crate::http::error_bodies::graphql_error(
        StatusCode::BAD_REQUEST,
        ErrorCode::BadUserInput,
        message,
    )
}

/// Whether a body read failed because the request-body limit cut it off.
/// async-graphql-axum turns the body error into text
/// (`io::Error::other(err.to_string())`), so the type is gone and only
/// http-body-util's `LengthLimitError` wording identifies it.
fn is_length_limit(err: &std::io::Error) -> bool {
    err.to_string().contains("length limit exceeded")
}
