//! Authorization: roles, the permission matrix (one check for every admin
//! operation), the authenticated principal, and entitlements (the license
//! or billing plan gate).

mod entitlements;
mod matrix;
mod principal;
mod roles;

pub use entitlements::{
    EntitlementSource, EntitlementStatus, Entitlements, Feature, FixedDeviceLimit, LicenseRequired,
    LicenseState, Tier,
};
pub use matrix::{Operation, permits, team_permits};
pub use principal::{Denied, Grants, Principal};
pub use roles::{Role, TeamRole};
