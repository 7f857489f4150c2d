//! The Mobius server: the axum application and its start-up.

pub mod app;
pub mod cli;
pub mod edition;
pub mod error;
pub mod graphql;
pub mod hardening;
pub mod limits;
pub mod metrics;
pub mod serve;
pub mod settings;
pub mod telemetry;

pub use edition::Edition;
pub use settings::Settings;
pub mod device_api;
pub mod device_listener;
pub mod device_tls;
