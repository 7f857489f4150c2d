//! The HTTP surface shared by every listener: the admin router, error
//! bodies and codes, health, metrics, hardening headers and limits.

pub mod error_bodies;
pub mod errors;
pub mod first_byte;
pub mod hardening;
pub mod limits;
pub mod metrics;
pub mod plain;
pub mod request_id;
pub mod router;
