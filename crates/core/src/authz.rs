//! Role-based access control: one permission matrix and one check.
//!
//! The matrix is documented in `docs/security/rbac.md`; a table-driven
//! test covers every (role, operation) pair, denials included.

use std::fmt;
use std::str::FromStr;

use sea_orm::prelude::Uuid;

use crate::audit::{Actor, ActorKind};

/// A user's (or API token's) role in the tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Owner,
    Admin,
    Maintainer,
    Observer,
    /// Automation that writes configuration but reads no inventory.
    Gitops,
}

/// A role within one team, granting device access in that team only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TeamRole {
    Maintainer,
    Observer,
}

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
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Maintainer,
        Role::Observer,
        Role::Gitops,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Maintainer => "maintainer",
            Role::Observer => "observer",
            Role::Gitops => "gitops",
        }
    }

    /// Whether a holder of `self` may give `role` to someone (an invitation,
    /// a role change, an API token): never above one's own. Gitops sits
    /// outside the ladder and can only hand out gitops.
    pub fn can_grant(self, role: Role) -> bool {
        match self {
            Role::Owner => true,
            Role::Admin => role != Role::Owner,
            Role::Maintainer => matches!(role, Role::Maintainer | Role::Observer),
            Role::Observer => role == Role::Observer,
            Role::Gitops => role == Role::Gitops,
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown role `{s}`"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TeamRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Maintainer => "maintainer",
            TeamRole::Observer => "observer",
        }
    }
}

impl FromStr for TeamRole {
    type Err = String;
    fn from_str(s: &str) -> Result<TeamRole, String> {
        match s {
            "maintainer" => Ok(TeamRole::Maintainer),
            "observer" => Ok(TeamRole::Observer),
            other => Err(format!("unknown team role `{other}`")),
        }
    }
}

impl Operation {
    pub const ALL: [Operation; 14] = [
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
            | ManageTenant => true,
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
            | ManageTenant => false,
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
            | ManageTenant => false,
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
            | ViewAuditLog | ManageTenant => false,
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

/// Who is asking: established by authentication, checked by [`Principal::authorize`].
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant_id: Uuid,
    /// The user, or the user who created the API token.
    pub user_id: Uuid,
    /// The API token, when the request used one.
    pub api_token_id: Option<Uuid>,
    pub role: Role,
    pub team_roles: Vec<(Uuid, TeamRole)>,
    /// A team-scoped API token acts only on that team's devices (plus the
    /// read-only views of the tenant, sites and teams).
    pub token_team: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Refused: the caller may not do this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not allowed: your role does not permit this")]
pub struct Denied;

impl Principal {
    /// The single check every admin operation passes before touching data.
    /// `team` is the team the target belongs to, for device operations.
    pub fn authorize(&self, op: Operation, team: Option<Uuid>) -> Result<(), Denied> {
        if let Some(scope) = self.token_team {
            let allowed = match op {
                Operation::ViewTenant | Operation::ViewSites | Operation::ViewTeams => true,
                Operation::ViewDevices | Operation::ManageDevices => {
                    team == Some(scope) && permits(self.role, op)
                }
                _ => false,
            };
            return if allowed { Ok(()) } else { Err(Denied) };
        }
        if permits(self.role, op) {
            return Ok(());
        }
        let by_team = team.is_some_and(|team| {
            self.team_roles
                .iter()
                .any(|(t, role)| *t == team && team_permits(*role, op))
        });
        if by_team { Ok(()) } else { Err(Denied) }
    }

    /// The audit actor for changes this principal makes.
    pub fn actor(&self) -> Actor {
        Actor {
            kind: if self.api_token_id.is_some() {
                ActorKind::ApiToken
            } else {
                ActorKind::User
            },
            id: Some(self.api_token_id.unwrap_or(self.user_id)),
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
        }
    }
}
