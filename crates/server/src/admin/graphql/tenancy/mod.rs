//! Tenancy in the admin API: the tenant, its sites and teams.

mod mutation;
mod query;
pub mod types;

pub use mutation::TenancyMutation;
pub use query::TenancyQuery;
