//! Identity in the admin API: who is calling, users, invitations, API
//! tokens, and the sign-in mutations (setup, login, refresh, logout).

mod mutation;
mod query;
mod session;
pub mod types;

pub use mutation::IdentityMutation;
pub use query::IdentityQuery;
use session::*;
