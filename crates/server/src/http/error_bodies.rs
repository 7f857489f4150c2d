//! Error answers that axum and tower-http write themselves (405 from the
//! router, 413 from the body limit, 408 from the timeout, text rejections)
//! carry an empty or plain-text body. Clients parse one shape, so this
//! layer replaces any non-JSON error body with the API's JSON error (or
//! GraphQL's `errors` array on the GraphQL endpoint), keeping the status
//! and headers such as `Allow`.
//!
//! It also refuses over-long request targets (414) and header blocks (431)
//! itself, with JSON, well below hyper's own limits: hyper answers those
//! before any service runs, with a status line and no body at all
//! (`hyper::proto::h1::role::Server::on_error`), so only a limit of ours
//! that trips first can say why in JSON.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mobius_api::{ErrorBody, ErrorDetail};
use serde_json::json;

use super::errors::ErrorCode;

/// Longest request target (path and query) accepted, in bytes. Hyper's
/// own limit (65,534) answers with an empty 414; nothing Mobius serves
/// needs more than a few hundred.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header lines accepted. Hyper's limit is raised above this (see
/// [`HYPER_MAX_HEADERS`]) so this check, with its JSON answer, runs first.
pub const MAX_HEADERS: usize = 100;
/// Largest header block accepted (names and values), in bytes. Hyper
/// buffers up to ~400 KiB of head before answering an empty 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Hyper's header-count limit, set on the connection builders: above
/// [`MAX_HEADERS`], so a request with a few too many headers reaches
/// [`refuse_oversized_head`] and gets a JSON 431.
pub const HYPER_MAX_HEADERS: usize = 4 * MAX_HEADERS;

/// Where the GraphQL endpoint answers (its errors use GraphQL's shape).
const GRAPHQL_PATH: &str = "/api/graphql";

/// 414 and 431 with a JSON body, before any handler runs.
pub async fn refuse_oversized_head(request: Request, next: Next) -> Response {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return shaped(
            request.uri().path(),
            StatusCode::URI_TOO_LONG,
            ErrorCode::BadUserInput,
            &format!("request target longer than {MAX_URI_BYTES} bytes"),
        );
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return shaped(
            request.uri().path(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::BadUserInput,
            &format!("request headers exceed {MAX_HEADERS} lines or {MAX_HEADER_BYTES} bytes"),
        );
    }
    next.run(request).await
}

/// Gives an error answer without a JSON body one. `body_limit` is the
/// request-body limit in force, quoted in 413 answers.
pub async fn json_error_bodies(
    State(body_limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            ErrorCode::BadUserInput,
            format!("request body larger than {body_limit} bytes"),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::BadUserInput,
            "method not allowed on this path".to_owned(),
        ),
        StatusCode::REQUEST_TIMEOUT => (
            ErrorCode::Internal,
            "the request took too long and was stopped".to_owned(),
        ),
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route".to_owned()),
        StatusCode::UNAUTHORIZED => (
            ErrorCode::Unauthenticated,
            "authentication required".to_owned(),
        ),
        StatusCode::FORBIDDEN => (ErrorCode::Forbidden, "forbidden".to_owned()),
        StatusCode::TOO_MANY_REQUESTS => (ErrorCode::RateLimited, "too many requests".to_owned()),
        // Other client errors are axum's extractor rejections (wrong
        // content type, unparsable body): the text describes the client's
        // input, but is replaced anyway so no library wording becomes API.
        s if s.is_client_error() => (
            ErrorCode::BadUserInput,
            format!(
                "bad request: {}",
                s.canonical_reason()
                    .unwrap_or("client error")
                    .to_lowercase()
            ),
        ),
        _ => (ErrorCode::Internal, "internal error".to_owned()),
    };
    let (mut parts, _) = response.into_parts();
    let shaped = shaped(&path, status, code, &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let (_, body) = shaped.into_parts();
    Response::from_parts(parts, body)
}

/// An error in the shape the path's clients parse.
pub fn shaped(path: &str, status: StatusCode, code: ErrorCode, message: &str) -> Response {
    if path == GRAPHQL_PATH {
        return graphql_error(status, code, message);
    }
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_str().to_owned(),
            message: message.to_owned(),
            field: None,
        },
    };
    (status, Json(body)).into_response()
}

/// GraphQL's error shape, for failures before an operation runs.
pub fn graphql_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = json!({
        "errors": [{ "message": message, "extensions": { "code": code.as_str() } }]
    });
    (status, Json(body)).into_response()
}
