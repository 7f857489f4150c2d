//! Tenancy: tenants, their sites (where devices live) and teams (who
//! manages them), and team memberships.

mod named;
mod signup;
mod sites;
mod teams;
mod tenants;

pub use signup::{PendingSignUp, SignUp, SignUpPolicy, SignedUp, VERIFICATION_PREFIX};
pub use sites::{Site, Sites};
pub use teams::{Team, TeamMembership, TeamMemberships, Teams};
pub use tenants::{DEFAULT_SITE, DEFAULT_TENANT_SLUG, Tenant, TenantSettings};
