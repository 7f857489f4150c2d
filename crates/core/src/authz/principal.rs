//! The principal: who is asking, established by authentication.

use sea_orm::prelude::Uuid;

use super::{Operation, Role, TeamRole, permits, team_permits};
use crate::audit::{Actor, ActorKind};

/// Who is asking: established by authentication (only
/// [`crate::identity::Identity`] makes one, which is why it is also a
/// tenant proof for [`crate::Store::begin`]), checked by
/// [`Principal::authorize`].
#[derive(Clone, Debug)]
#[non_exhaustive] // so no code outside this crate can make one
pub struct Principal {
    pub tenant_id: Uuid,
    /// The user, or the user who created the API token.
    pub user_id: Uuid,
    /// The API token, when the request used one.
    pub api_token_id: Option<Uuid>,
    pub grants: Grants,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What a principal may do: its tenant role, its team roles, and the team
/// a team-scoped API token is limited to.
#[derive(Clone, Debug)]
pub struct Grants {
    pub role: Role,
    pub team_roles: Vec<(Uuid, TeamRole)>,
    /// A team-scoped API token acts only on that team's devices (plus the
    /// read-only views of the tenant, sites and teams).
    pub token_team: Option<Uuid>,
}

/// Refused: the caller may not do this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not allowed: your role does not permit this")]
pub struct Denied;

impl Principal {
    pub(crate) fn new(
        tenant_id: Uuid,
        user_id: Uuid,
        api_token_id: Option<Uuid>,
        grants: Grants,
        ip: Option<String>,
        user_agent: Option<String>,
    ) -> Principal {
        Principal {
            tenant_id,
            user_id,
            api_token_id,
            grants,
            ip,
            user_agent,
        }
    }

    /// The single check every admin operation passes before touching data.
    /// `team` is the team the target belongs to, for device operations.
    pub fn authorize(&self, op: Operation, team: Option<Uuid>) -> Result<(), Denied> {
        self.grants.authorize(op, team)
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

impl Grants {
    /// The permission check behind [`Principal::authorize`].
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
}
