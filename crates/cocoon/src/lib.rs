//! Cocoon, the Mobius self-service portal: a small web service that shows
//! one device's user that device's status, policies and self-service
//! software. It holds no data of its own and talks to the Mobius server
//! only through the device-scoped portal API (`mobius_api::portal`).

pub mod branding;
pub mod live;
pub mod pages;
pub mod portal;
pub mod routes;
pub mod session;
pub mod settings;
pub mod wording;

pub use routes::{AppState, router};
