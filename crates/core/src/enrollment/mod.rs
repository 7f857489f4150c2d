//! Enrollment: one-time, site-scoped enrollment tokens, redeeming one for
//! a device certificate, and renewing that certificate.

mod redeem;
mod renew;
mod tokens;

pub use redeem::{
    EnrollError, Enrolled, EnrollmentRequest, EnrollmentTokenSecret, enroll, parse_network,
};
pub use renew::{RenewError, Renewed, renew};
pub use tokens::{EnrollmentToken, EnrollmentTokens, NewEnrollmentToken};
