//! Roles: a user's (or API token's) role in the tenant, and team roles.
//! Stored as text; the entities hold them as these enums (sea-orm's
//! `DeriveActiveEnum` converts at the row boundary), so no code parses a
//! role string, and an unknown value in the database is an error on load
//! rather than a silent downgrade somewhere.

use std::fmt;
use std::str::FromStr;

use sea_orm::sea_query::StringLen;
use sea_orm::{DeriveActiveEnum, EnumIter};

/// A user's (or API token's) role in the tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum Role {
    #[sea_orm(string_value = "owner")]
    Owner,
    #[sea_orm(string_value = "admin")]
    Admin,
    #[sea_orm(string_value = "maintainer")]
    Maintainer,
    #[sea_orm(string_value = "observer")]
    Observer,
    /// Automation that writes configuration but reads no inventory.
    #[sea_orm(string_value = "gitops")]
    Gitops,
}

/// A role within one team, granting device access in that team only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum TeamRole {
    #[sea_orm(string_value = "maintainer")]
    Maintainer,
    #[sea_orm(string_value = "observer")]
    Observer,
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
