//! Enrollment tokens in the admin API: create (the secret is shown once),
//! list, revoke.

mod list;
mod mutation;
mod query;
pub mod types;

use list::enrollment_tokens;
pub use mutation::EnrollmentMutation;
pub use query::EnrollmentQuery;
