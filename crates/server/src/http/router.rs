//! The axum application: routes and the layers every request passes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, middleware};
use mobius_api::{HealthCheck, HealthStatus};
use mobius_core::Store;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::admin::graphql::{self, GraphqlState};
use crate::http::errors::{ApiError, ErrorCode};
use crate::http::metrics::{self, Metrics};
use crate::http::{error_bodies, hardening, request_id};
use crate::settings::Settings;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
}

/// The admin router. `graphql` is `None` only in tests of the bare
/// health endpoints.
pub fn router(state: AppState, settings: &Settings, graphql: Option<GraphqlState>) -> Router {
    router_with(state, settings, graphql, Router::new())
}

/// The admin router with `rest` routes (SSO, ...) behind the same layers
/// (request ids, limits, hardening headers, metrics) as GraphQL.
pub fn router_with(
    state: AppState,
    settings: &Settings,
    graphql: Option<GraphqlState>,
    rest: Router,
) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let trace = TraceLayer::new_for_http()
        .make_span_with(request_span)
        .on_response(DefaultOnResponse::new().level(Level::INFO));

    let mut routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        .with_state(state.clone());
    if let Some(graphql) = graphql {
        routes = routes.merge(
            Router::new()
                .route(
                    "/api/graphql",
                    get(graphql::graphiql_or_socket).post(graphql::execute),
                )
                .with_state(graphql),
        );
    }
    let mut routes = routes
        .merge(rest.with_state(()))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ));
    for layer in hardening::security_headers(settings.serves_tls()) {
        routes = routes.layer(layer);
    }
    if let Some(cors) = hardening::cors(settings) {
        routes = routes.layer(cors);
    }
    routes
        .layer(
            // Outermost first: the id is set before the span opens, so
            // every log line of the request carries it.
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(trace)
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(middleware::from_fn(request_id::scope))
                .layer(middleware::from_fn_with_state(
                    settings.request_body_limit_bytes,
                    error_bodies::json_error_bodies,
                ))
                .layer(middleware::from_fn(error_bodies::refuse_oversized_head))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    Duration::from_secs(settings.request_timeout_secs),
                ))
                .layer(RequestBodyLimitLayer::new(
                    settings.request_body_limit_bytes,
                )),
        )
        .with_state(state)
}

/// The span every request's log lines carry, with its id (set by
/// `SetRequestIdLayer` before the span opens).
pub fn request_span(request: &Request<Body>) -> tracing::Span {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
    )
}

/// The process is alive and serving HTTP; says nothing about the store.
async fn healthz() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "ok".into(),
        checks: Vec::new(),
    })
}

/// Ready to serve: the store answers and no migration is pending.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = match state.store.ping().await {
        Ok(()) => HealthCheck {
            name: "store".into(),
            ok: true,
            detail: None,
        },
        Err(err) => {
            tracing::warn!(error = %err, "readiness: store unreachable");
            HealthCheck {
                name: "store".into(),
                ok: false,
                detail: Some("store unreachable".into()),
            }
        }
    };
    let migrations = match state.store.pending_migrations().await {
        Ok(pending) if pending.is_empty() => HealthCheck {
            name: "migrations".into(),
            ok: true,
            detail: None,
        },
        Ok(pending) => HealthCheck {
            name: "migrations".into(),
            ok: false,
            detail: Some(format!("pending: {}", pending.join(", "))),
        },
        Err(err) => {
            tracing::warn!(error = %err, "readiness: cannot read migration state");
            HealthCheck {
                name: "migrations".into(),
                ok: false,
                detail: Some("cannot read migration state".into()),
            }
        }
    };
    let ready = store.ok && migrations.ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = HealthStatus {
        status: if ready { "ready" } else { "not_ready" }.into(),
        checks: vec![store, migrations],
    };
    (status, Json(body))
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state
            .metrics
            .render(state.store.pool_stats(), state.store.statement_count()),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
