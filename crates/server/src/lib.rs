//! The Mobius server: the axum application and its start-up, by surface
//! (`http`, `admin`, `device`) with background work in `jobs`.

pub mod admin;
pub mod backbone;
pub mod cli;
pub mod cluster;
mod data_dir;
pub mod device;
pub mod edition;
pub mod http;
pub mod jobs;
pub mod mail;
pub mod osquery;
pub mod portal;
pub mod queries;
pub mod serve;
pub mod settings;
pub mod software;
pub mod telemetry;

pub use edition::{Edition, EditionServices};
pub use settings::Settings;
