//! The osquery TLS remote API (`/api/osquery/*`) on the admin listener,
//! and the layered agent options both osquery hosts and Mobius agents get.
//!
//! | endpoint | auth | answer |
//! |---|---|---|
//! | `POST /api/osquery/enroll` | enroll secret | `{node_key}` |
//! | `POST /api/osquery/config` | node key | the merged options document at the top level |
//! | `POST /api/osquery/distributed/read` | node key | `{queries: {id: sql}}` |
//! | `POST /api/osquery/distributed/write` | node key | `{}` |
//! | `POST /api/osquery/log` | node key | `{}` |
//!
//! The admin listener, not the device listener: osquery authenticates the
//! server by its certificate (`--tls_server_certs`) and itself by the node
//! key, with no client certificate. An unknown node key, or one whose
//! device was revoked or deleted, answers 401 `{"node_invalid": true}`, on
//! which osquery enrolls again. Requests are limited per node key
//! (`osquery_requests_per_minute_per_node`) and in size
//! (`osquery_body_limit_bytes`).

mod api;
pub mod options;

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use mobius_core::Store;
use mobius_core::authz::Entitlements;

pub use options::OptionsHub;

/// What the osquery endpoints share.
#[derive(Clone)]
pub struct OsqueryState {
    pub store: Store,
    pub entitlements: Arc<dyn Entitlements>,
    pub options: Arc<OptionsHub>,
    /// Requests per node key (by its hash), on this replica.
    pub limiter: Arc<DefaultKeyedRateLimiter<[u8; 32]>>,
    /// Live queries and policies: osquery hosts answer them through
    /// distributed read/write exactly as agents do over the work stream.
    pub queries: crate::queries::QueryServices,
}

impl OsqueryState {
    /// The state, with a task that trims the limiter (call inside the runtime).
    pub fn new(
        store: Store,
        entitlements: Arc<dyn Entitlements>,
        options: Arc<OptionsHub>,
        queries: crate::queries::QueryServices,
        requests_per_minute_per_node: u32,
    ) -> OsqueryState {
        let per_minute =
            NonZeroU32::new(requests_per_minute_per_node.max(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute)));
        // The limiter keeps a cell per node key it saw: forget the keys
        // idle for a minute, so departed hosts do not accumulate.
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
        OsqueryState {
            store,
            entitlements,
            options,
            limiter,
            queries,
        }
    }
}

pub const ENROLL_PATH: &str = "/api/osquery/enroll";
pub const CONFIG_PATH: &str = "/api/osquery/config";
pub const DISTRIBUTED_READ_PATH: &str = "/api/osquery/distributed/read";
pub const DISTRIBUTED_WRITE_PATH: &str = "/api/osquery/distributed/write";
pub const LOG_PATH: &str = "/api/osquery/log";

/// The routes, with their own body limit (`body_limit_bytes`; the admin
/// listener's overall limit still applies outside it).
pub fn router(state: OsqueryState, body_limit_bytes: usize) -> Router {
    Router::new()
        .route(ENROLL_PATH, post(api::enroll))
        .route(CONFIG_PATH, post(api::config))
        .route(DISTRIBUTED_READ_PATH, post(api::distributed_read))
        .route(DISTRIBUTED_WRITE_PATH, post(api::distributed_write))
        .route(LOG_PATH, post(api::log))
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .with_state(state)
}
