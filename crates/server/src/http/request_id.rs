//! The request's id (the `x-request-id` header the listeners set) for code
//! far from the handler: a 500's body quotes it so a user's report can be
//! matched to the log line that holds the cause.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use super::router::REQUEST_ID_HEADER;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Middleware: runs the rest of the request with its id in scope. Must sit
/// inside the layer that sets the header.
pub async fn scope(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    REQUEST_ID.scope(id, next.run(request)).await
}

/// The id of the request being served, if this task serves one (a GraphQL
/// subscription's stream, for one, runs outside it).
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}
