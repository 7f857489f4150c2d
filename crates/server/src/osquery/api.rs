//! The handlers of `/api/osquery/*` (formats: osquery
//! `docs/wiki/deployment/remote.md` and `logging.md`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mobius_api::queries::{QueryKind, QueryOutcome, QueryResult};
use mobius_core::TenantScope;
use mobius_core::crypto::secrets;
use mobius_core::db::FoundTenant;
use mobius_core::osquery::{
    OsqueryEnrollRequest, OsqueryError, OsqueryNode, enroll_host, open_node, parse_result_logs,
    parse_status_logs,
};
use mobius_core::queries::QueryError;
use serde_json::{Value, json};

use super::OsqueryState;
use crate::queries::{pending_queries_for, record_query_result};

/// How long osquery polls quickly after a read that carried a live query.
const ACCELERATE_SECS: u64 = 60;
const LIVE_PREFIX: &str = "mobius_live_";
const POLICY_PREFIX: &str = "mobius_policy_";

/// The name a query gets in `distributed/read`, which osquery echoes in
/// `distributed/write`: it carries the kind and the id.
fn query_name(kind: QueryKind, id: mobius_core::Uuid) -> String {
    match kind {
        QueryKind::Live => format!("{LIVE_PREFIX}{id}"),
        QueryKind::Policy => format!("{POLICY_PREFIX}{id}"),
    }
}

fn parse_query_name(name: &str) -> Option<(QueryKind, mobius_core::Uuid)> {
    if let Some(id) = name.strip_prefix(LIVE_PREFIX) {
        return Some((QueryKind::Live, id.parse().ok()?));
    }
    let id = name.strip_prefix(POLICY_PREFIX)?;
    Some((QueryKind::Policy, id.parse().ok()?))
}
use crate::http::errors::{ApiError, ErrorCode};

/// `{"error": {code, message, field}}` like every Mobius error, plus
/// `node_invalid` where osquery must enroll again.
fn error(status: StatusCode, code: ErrorCode, message: &str, field: Option<&str>) -> Response {
    (
        status,
        Json(json!({
            "error": {"code": code.as_str(), "message": message, "field": field},
            "node_invalid": false,
        })),
    )
        .into_response()
}

fn node_invalid(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "node_invalid": true,
            "error": {"code": ErrorCode::Unauthenticated.as_str(), "message": message},
        })),
    )
        .into_response()
}

/// Maps the area's errors by exhaustive match.
fn osquery_error(err: OsqueryError) -> Response {
    let message = err.to_string();
    match err {
        OsqueryError::Invalid { field, reason } => error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            &format!("invalid {field}: {reason}"),
            Some(&field),
        ),
        OsqueryError::UnknownSecret => node_invalid(&message),
        OsqueryError::NodeInvalid => node_invalid(&message),
        OsqueryError::DeviceRevoked => (
            StatusCode::FORBIDDEN,
            Json(json!({
                "node_invalid": true,
                "error": {"code": ErrorCode::Forbidden.as_str(), "message": message},
            })),
        )
            .into_response(),
        OsqueryError::DeviceLimit { .. } => error(
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::LicenseRequired,
            &message,
            None,
        ),
        OsqueryError::Store(err) => ApiError::from(err).into_response(),
    }
}

/// The body as JSON. osquery sends plain JSON unless
/// `--logger_tls_compress` is on, which is refused with a clear message.
// The error is the handler's answer itself, returned at once: boxing it
// would only add an allocation to every refusal.
#[allow(clippy::result_large_err)]
fn parse_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Value, Response> {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return Err(error(
                rejection.status(),
                ErrorCode::BadUserInput,
                &rejection.body_text(),
                None,
            ));
        }
    };
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity")
    {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadUserInput,
            "compressed bodies are not accepted: turn --logger_tls_compress off",
            None,
        ));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            "the body must be a JSON object",
            None,
        )),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            "the body is not valid JSON",
            None,
        )),
    }
}

/// Checks the node key in `body`, the node's rate limit, and opens a scope
/// in its tenant.
async fn authenticate(
    state: &OsqueryState,
    body: &Value,
) -> Result<(TenantScope, OsqueryNode, FoundTenant), Response> {
    let Some(node_key) = body.get("node_key").and_then(Value::as_str) else {
        return Err(node_invalid("node_key is missing"));
    };
    if state.limiter.check_key(&secrets::sha256(node_key)).is_err() {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many requests for this node: slow down",
            None,
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("10"));
        return Err(response);
    }
    let (scope, node, tenant) = open_node(&state.store, node_key)
        .await
        .map_err(osquery_error)?;
    // Seen: live queries count the host online while it polls.
    state
        .queries
        .presence
        .record(scope.tenant_id(), node.device_id);
    Ok((scope, node, tenant))
}

async fn commit(scope: TenantScope) -> Result<(), Response> {
    scope
        .commit()
        .await
        .map_err(|err| ApiError::from(err).into_response())
}

/// `POST /api/osquery/enroll`.
pub(super) async fn enroll(
    State(state): State<OsqueryState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match parse_body(&headers, body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let secret = body
        .get("enroll_secret")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let host_identifier = match body.get("host_identifier") {
        Some(Value::String(id)) => id.as_str(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                "host_identifier is required",
                Some("host_identifier"),
            );
        }
    };
    let details = body.get("host_details").cloned().unwrap_or(Value::Null);
    match enroll_host(
        &state.store,
        state.entitlements.as_ref(),
        OsqueryEnrollRequest {
            enroll_secret: secret,
            host_identifier,
            host_details: &details,
            client_ip: None,
        },
    )
    .await
    {
        Ok(enrolled) => {
            tracing::info!(device_id = %enrolled.device_id, tenant_id = %enrolled.tenant_id, created = enrolled.created, "osquery host enrolled");
            Json(json!({"node_key": enrolled.node_key, "node_invalid": false})).into_response()
        }
        Err(err) => osquery_error(err),
    }
}

/// `POST /api/osquery/config`: the merged options at the top level.
pub(super) async fn config(
    State(state): State<OsqueryState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = parse_body(&headers, body)?;
        let (scope, node, _) = authenticate(&state, &body).await?;
        let merged = state
            .options
            .merged(&scope, node.team_id)
            .await
            .map_err(|err| ApiError::from(err).into_response())?;
        scope
            .osquery()
            .touch(&node)
            .await
            .map_err(|err| ApiError::from(err).into_response())?;
        commit(scope).await?;
        let mut document = merged.document.clone();
        if let Value::Object(map) = &mut document {
            map.insert("node_invalid".into(), Value::Bool(false));
        }
        Ok::<_, Response>(Json(document).into_response())
    }
    .await;
    result.unwrap_or_else(|response| response)
}

/// `POST /api/osquery/distributed/read`.
pub(super) async fn distributed_read(
    State(state): State<OsqueryState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = parse_body(&headers, body)?;
        let (scope, node, tenant) = authenticate(&state, &body).await?;
        commit(scope).await?;
        let requests = pending_queries_for(&state.store, &tenant, node.device_id)
            .await
            .map_err(|err| ApiError::from(err).into_response())?;
        let mut queries = serde_json::Map::new();
        let mut live = false;
        for request in requests {
            live |= request.kind == QueryKind::Live;
            queries.insert(
                query_name(request.kind, request.query_id),
                Value::String(request.sql),
            );
        }
        let mut answer = json!({"queries": queries, "node_invalid": false});
        if live {
            // osquery polls every few seconds for this long while a live
            // query runs, instead of every --distributed_interval.
            answer["accelerate"] = json!(ACCELERATE_SECS);
        }
        Ok::<_, Response>(Json(answer).into_response())
    }
    .await;
    result.unwrap_or_else(|response| response)
}

/// `POST /api/osquery/distributed/write`: `{queries, statuses, messages}`.
/// Statuses may be numbers or (osquery < 3) strings; a query with no rows
/// may come as `""` instead of `[]`.
pub(super) async fn distributed_write(
    State(state): State<OsqueryState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = parse_body(&headers, body)?;
        let (scope, node, tenant) = authenticate(&state, &body).await?;
        let answers = distributed_answers(&body).map_err(osquery_error)?;
        commit(scope).await?;
        for answer in answers {
            // Names this server did not hand out (another server's, or
            // hand-made) are not ours to record.
            let Some((kind, query_id)) = parse_query_name(&answer.id) else {
                tracing::debug!(name = %answer.id, "osquery answered a query name it was not given");
                continue;
            };
            let ok = answer.status == 0;
            let result = QueryResult {
                query_id,
                kind,
                outcome: if ok { QueryOutcome::Ok } else { QueryOutcome::Error },
                rows: if ok { answer.rows } else { Vec::new() },
                error: (!ok).then(|| {
                    answer
                        .message
                        .unwrap_or_else(|| format!("osquery status {}", answer.status))
                }),
                truncated: false,
                duration_ms: 0,
            };
            if let Err(err) =
                record_query_result(&state.queries, &tenant, node.device_id, &result).await
            {
                return Err(match err {
                    QueryError::Invalid { field, reason } => error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadUserInput,
                        &format!("invalid {field}: {reason}"),
                        Some(&field),
                    ),
                    // Late answers to an ended campaign are no error for osquery.
                    QueryError::AlreadyEnded => continue,
                    QueryError::Store(err) => ApiError::from(err).into_response(),
                });
            }
        }
        Ok::<_, Response>(Json(json!({"node_invalid": false})).into_response())
    }
    .await;
    result.unwrap_or_else(|response| response)
}

/// One query's answer in a distributed write.
#[derive(Debug, PartialEq)]
pub(super) struct DistributedAnswer {
    pub id: String,
    pub rows: Vec<mobius_api::queries::Row>,
    /// 0 is success; anything else is a SQLite error code.
    pub status: i64,
    pub message: Option<String>,
}

/// Parses a distributed write, tolerating osquery's quirks.
pub(super) fn distributed_answers(body: &Value) -> Result<Vec<DistributedAnswer>, OsqueryError> {
    let invalid = |field: &str, reason: &str| OsqueryError::Invalid {
        field: field.to_owned(),
        reason: reason.to_owned(),
    };
    let queries = match body.get("queries") {
        Some(Value::Object(queries)) => queries,
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(_) => return Err(invalid("queries", "must be an object")),
    };
    let statuses = body.get("statuses").and_then(Value::as_object);
    let messages = body.get("messages").and_then(Value::as_object);
    let mut answers = Vec::with_capacity(queries.len());
    for (id, rows) in queries {
        let rows = match rows {
            Value::Array(rows) => rows
                .iter()
                .map(|row| match row {
                    Value::Object(columns) => Ok(columns
                        .iter()
                        .map(|(k, v)| {
                            let text = match v {
                                Value::String(s) => s.clone(),
                                Value::Null => String::new(),
                                other => other.to_string(),
                            };
                            (k.clone(), text)
                        })
                        .collect()),
                    _ => Err(invalid(&format!("queries.{id}"), "rows must be objects")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            // osquery sends "" for a query that returned nothing.
            Value::String(s) if s.is_empty() => Vec::new(),
            Value::Null => Vec::new(),
            _ => return Err(invalid(&format!("queries.{id}"), "must be a list of rows")),
        };
        let status = match statuses.and_then(|s| s.get(id)) {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(1),
            // osquery < 3 sends statuses as strings.
            Some(Value::String(s)) => s.trim().parse().unwrap_or(1),
            // No statuses at all (osquery < 2.1.2): success.
            _ => 0,
        };
        let message = messages
            .and_then(|m| m.get(id))
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(|m| m.chars().take(1000).collect());
        answers.push(DistributedAnswer {
            id: id.clone(),
            rows,
            status,
            message,
        });
    }
    Ok(answers)
}

/// `POST /api/osquery/log`: `{log_type: result|status, data: [...]}`.
pub(super) async fn log(
    State(state): State<OsqueryState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let body = parse_body(&headers, body)?;
        let (scope, node, _) = authenticate(&state, &body).await?;
        let data = body
            .get("data")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        // Some osquery versions send `data` as a JSON string of the list.
        let data = match data {
            Value::String(text) => serde_json::from_str(&text).map_err(|_| {
                osquery_error(OsqueryError::Invalid {
                    field: "data".into(),
                    reason: "must be a list".into(),
                })
            })?,
            other => other,
        };
        let store_err = |err| ApiError::from(err).into_response();
        match body.get("log_type").and_then(Value::as_str) {
            Some("result") => {
                let entries = parse_result_logs(&data).map_err(osquery_error)?;
                scope
                    .osquery()
                    .store_result_logs(node.device_id, entries)
                    .await
                    .map_err(store_err)?;
            }
            Some("status") => {
                let entries = parse_status_logs(&data).map_err(osquery_error)?;
                scope
                    .osquery()
                    .store_status_logs(node.device_id, entries)
                    .await
                    .map_err(store_err)?;
            }
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadUserInput,
                    "log_type must be result or status",
                    Some("log_type"),
                ));
            }
        }
        commit(scope).await?;
        Ok::<_, Response>(Json(json!({"node_invalid": false})).into_response())
    }
    .await;
    result.unwrap_or_else(|response| response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributed_write_quirks() {
        let answers = distributed_answers(&json!({
            "queries": {"a": [{"x": "1", "n": 2}], "b": "", "c": []},
            "statuses": {"a": 0, "b": "0", "c": "1"},
            "messages": {"c": "no such table: nope"},
        }))
        .unwrap();
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0].rows[0]["n"], "2");
        assert!(answers[1].rows.is_empty());
        assert_eq!(answers[1].status, 0);
        assert_eq!(answers[2].status, 1);
        assert_eq!(answers[2].message.as_deref(), Some("no such table: nope"));
        assert!(distributed_answers(&json!({"queries": {"a": 5}})).is_err());
    }
}
