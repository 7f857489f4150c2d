//! Enrollment: one-time, site-scoped enrollment tokens, and redeeming one
//! for a device certificate.

mod redeem;
mod tokens;

pub use redeem::{EnrollError, Enrolled, EnrollmentRequest, enroll, parse_network};
pub use tokens::{EnrollmentToken, EnrollmentTokens, NewEnrollmentToken};
