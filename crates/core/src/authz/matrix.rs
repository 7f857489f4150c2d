//! Operations and the permission matrix: which role may do what.
//!
//! The matrix is documented in `docs/security/rbac.md`; a table-driven
//! test covers every (role, operation) pair, denials included.

use super::{Role, TeamRole};

/// Everything the admin API can be asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    ViewTenant,
    ViewSites,
    ManageSites,
    ViewTeams,
    ManageTeams,
    ViewUsers,
    /// Invite, remove, change roles.
    ManageUsers,
    /// List and create the caller's own API tokens, revoke them.
    ManageOwnApiTokens,
    /// See and revoke every API token in the tenant.
    ManageAllApiTokens,
    ViewDevices,
    ManageDevices,
    ManageEnrollmentTokens,
    ViewAuditLog,
    /// Tenant-wide settings and the tenant CA.
    ManageTenant,
    /// Single sign-on configuration: owners only, since it decides who
    /// can sign in at all and with which role.
    ManageSso,
    /// Backbone service tokens, principals and grants.
    ManageBackbone,
}

impl Operation {
    pub const ALL: [Operation; 16] = [
        Operation::ViewTenant,
        Operation::ViewSites,
        Operation::ManageSites,
        Operation::ViewTeams,
        Operation::ManageTeams,
        Operation::ViewUsers,
        Operation::ManageUsers,
        Operation::ManageOwnApiTokens,
        Operation::ManageAllApiTokens,
        Operation::ViewDevices,
        Operation::ManageDevices,
        Operation::ManageEnrollmentTokens,
        Operation::ViewAuditLog,
        Operation::ManageTenant,
        Operation::ManageSso,
        Operation::ManageBackbone,
    ];
}

/// The permission matrix for tenant roles. Exhaustive on both sides, so a
/// new role or operation does not compile until it has a row here.
pub fn permits(role: Role, op: Operation) -> bool {
    use Operation::*;
    match role {
        Role::Owner => true,
        Role::Admin => match op {
            ViewTenant
            | ViewSites
            | ManageSites
            | ViewTeams
            | ManageTeams
            | ViewUsers
            | ManageUsers
            | ManageOwnApiTokens
            | ManageAllApiTokens
            | ViewDevices
            | ManageDevices
            | ManageEnrollmentTokens
            | ViewAuditLog
            | ManageTenant
            | ManageBackbone => true,
            ManageSso => false,
        },
        Role::Maintainer => match op {
            ViewTenant
            | ViewSites
            | ViewTeams
            | ViewUsers
            | ManageOwnApiTokens
            | ViewDevices
            | ManageDevices
            | ManageEnrollmentTokens => true,
            ManageSites | ManageTeams | ManageUsers | ManageAllApiTokens | ViewAuditLog
            | ManageTenant | ManageSso | ManageBackbone => false,
        },
        Role::Observer => match op {
            ViewTenant | ViewSites | ViewTeams | ManageOwnApiTokens | ViewDevices => true,
            ManageSites
            | ManageTeams
            | ViewUsers
            | ManageUsers
            | ManageAllApiTokens
            | ManageDevices
            | ManageEnrollmentTokens
            | ViewAuditLog
            | ManageTenant
            | ManageSso
            | ManageBackbone => false,
        },
        Role::Gitops => match op {
            ViewTenant
            | ViewSites
            | ManageSites
            | ViewTeams
            | ManageTeams
            | ManageOwnApiTokens
            | ManageEnrollmentTokens => true,
            ViewUsers | ManageUsers | ManageAllApiTokens | ViewDevices | ManageDevices
            | ViewAuditLog | ManageTenant | ManageSso | ManageBackbone => false,
        },
    }
}

/// What a team role adds, for that team's devices only.
pub fn team_permits(role: TeamRole, op: Operation) -> bool {
    match role {
        TeamRole::Maintainer => matches!(op, Operation::ViewDevices | Operation::ManageDevices),
        TeamRole::Observer => op == Operation::ViewDevices,
    }
}
