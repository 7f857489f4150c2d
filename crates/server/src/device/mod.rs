//! The device endpoints, served on the mTLS device listener. Devices are
//! authenticated by their client certificate through
//! [`peer::DeviceScope`], an extractor of their own: admin authentication
//! never shares this path.

mod enroll;
pub(crate) mod errors;
pub mod listener;
pub mod peer;
mod ping;
mod renew;
pub mod tls;
pub mod trust;
mod work;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, StatusCode};
use axum::middleware;
use axum::routing::{get, head, post};
use mobius_api::device::{ENROLL_PATH, PING_PATH, RENEW_PATH};
use mobius_api::plans::{WORK_REPORT_PATH, WORK_STREAM_PATH};
use mobius_core::Store;
use mobius_core::authz::Entitlements;
use mobius_core::devices::presence::{Presence, Revocations};
use mobius_core::pki::Pki;

pub use peer::{DeviceScope, Peer};
pub use trust::Trust;
pub use work::{PlanEvent, PlanEvents, PlanServices, WorkNotifier};

use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::http::error_bodies;
use crate::http::errors::ErrorCode;
use crate::http::router;

/// Enrollment requests carry a CSR and facts: 64 KiB is plenty.
pub const MAX_DEVICE_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct DeviceState {
    pub store: Store,
    pub pki: Arc<Pki>,
    pub entitlements: Arc<dyn Entitlements>,
    pub presence: Arc<Presence>,
    pub revocations: Arc<Revocations>,
    pub trust: Arc<Trust>,
    pub server_ca_pem: Arc<String>,
    pub heartbeat_interval_secs: u64,
    /// Enrollment attempts per client address, counted across replicas
    /// (`enrollment_attempts_per_minute_per_client`; unset: no limit).
    pub enrollment_limit: Option<Arc<crate::cluster::limits::EnrollmentLimiter>>,
    pub plans: PlanServices,
    pub software: crate::software::SoftwareServices,
    pub queries: crate::queries::QueryServices,
    /// The merged agent options, sent first on every work stream and
    /// again when they change.
    pub options: Arc<crate::osquery::OptionsHub>,
    /// The self-service portal's settings (link tokens for agents).
    pub portal: crate::portal::PortalServices,
}

pub fn router(state: DeviceState) -> Router {
    let request_id = HeaderName::from_static(router::REQUEST_ID_HEADER);
    Router::new()
        .route(ENROLL_PATH, post(enroll::enroll))
        .route(PING_PATH, head(ping::ping_head).post(ping::ping))
        .route(RENEW_PATH, post(renew::renew))
        .route(WORK_STREAM_PATH, get(work::stream))
        .route(WORK_REPORT_PATH, post(work::report))
        .route(
            mobius_api::software::DOWNLOAD_URL_PATH,
            post(crate::software::device::download_url),
        )
        .route(
            "/api/v1/mobius/device/software/download/{token}",
            get(crate::software::device::download),
        )
        .route(
            mobius_api::software::PROGRESS_PATH,
            post(crate::software::device::progress),
        )
        .route(
            mobius_api::software::INVENTORY_PATH,
            post(crate::software::device::inventory).layer(DefaultBodyLimit::max(
                crate::software::device::MAX_INVENTORY_BODY_BYTES,
            )),
        )
        .route(
            mobius_api::portal::PORTAL_TOKEN_PATH,
            post(crate::portal::device::portal_token),
        )
        .route(
            mobius_api::queries::QUERY_RESULTS_PATH,
            post(crate::queries::device::results).layer(DefaultBodyLimit::max(
                crate::queries::device::MAX_RESULT_BODY_BYTES,
            )),
        )
        .fallback(|| async {
            errors::error(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such device endpoint",
                None,
            )
        })
        .layer(DefaultBodyLimit::max(MAX_DEVICE_BODY_BYTES))
        .layer(
            // As on the admin listener, so a device's 500 quotes an id
            // found in the log. Responses are not logged at INFO here:
            // heartbeats would drown everything else.
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(router::request_span))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(middleware::from_fn(crate::http::request_id::scope))
                .layer(middleware::from_fn_with_state(
                    MAX_DEVICE_BODY_BYTES,
                    error_bodies::json_error_bodies,
                ))
                .layer(middleware::from_fn(error_bodies::refuse_oversized_head)),
        )
        .with_state(state)
}
