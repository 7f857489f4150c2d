//! The admin surface: the GraphQL API (and, as they come, REST endpoints
//! for licenses, software, SSO callbacks and billing webhooks).

pub mod graphql;
pub mod rest;
