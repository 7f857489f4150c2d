//! REST endpoints of the admin surface that are not GraphQL: browser
//! redirects and callbacks (single sign-on).

pub mod sso;
