//! Identity object and input types, built from core rows.

use crate::admin::graphql::prelude::*;

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Role {
    Owner,
    Admin,
    Maintainer,
    Observer,
    Gitops,
}

impl From<CoreRole> for Role {
    fn from(role: CoreRole) -> Role {
        match role {
            CoreRole::Owner => Role::Owner,
            CoreRole::Admin => Role::Admin,
            CoreRole::Maintainer => Role::Maintainer,
            CoreRole::Observer => Role::Observer,
            CoreRole::Gitops => Role::Gitops,
        }
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "User")]
pub struct UserNode {
    pub id: ID,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl From<mobius_core::identity::User> for UserNode {
    fn from(u: mobius_core::identity::User) -> Self {
        UserNode {
            id: global_id("User", u.id),
            role: u.role.into(),
            email: u.email,
            display_name: u.display_name,
            created_at: u.created_at,
        }
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "ApiToken")]
pub struct ApiTokenNode {
    pub id: ID,
    pub name: String,
    pub role: Role,
    pub team_id: Option<ID>,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<mobius_core::identity::ApiToken> for ApiTokenNode {
    fn from(t: mobius_core::identity::ApiToken) -> Self {
        ApiTokenNode {
            id: global_id("ApiToken", t.id),
            role: t.role.into(),
            name: t.name,
            team_id: t.team_id.map(|id| global_id("Team", id)),
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
            created_at: t.created_at,
        }
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Invitation")]
pub struct InvitationNode {
    pub id: ID,
    pub email: String,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
    /// The secret code, only in `inviteUser`'s answer: send it to the invitee.
    pub code: Option<String>,
}

#[derive(SimpleObject)]
pub struct CreatedApiToken {
    /// The token itself. Shown once: only its hash is kept.
    pub token: String,
    pub api_token: ApiTokenNode,
}

#[derive(SimpleObject)]
pub struct AuthPayload {
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    /// Null when the session was delivered as an HttpOnly cookie.
    pub refresh_token: Option<String>,
    pub user: UserNode,
}

#[derive(SimpleObject)]
pub struct Viewer {
    /// `user` or `api_token`.
    pub kind: String,
    pub role: Role,
    pub user: UserNode,
    pub tenant: TenantNode,
    /// Set for team-scoped API tokens.
    pub team_id: Option<ID>,
}

#[derive(InputObject)]
pub struct SetupInput {
    /// The one-time code the server printed on first start.
    pub code: String,
    pub email: String,
    /// At least 12 characters.
    pub password: String,
    pub display_name: String,
}

#[derive(InputObject)]
pub struct LoginInput {
    pub email: String,
    pub password: String,
    /// The tenant's slug, when the email belongs to several tenants.
    pub tenant: Option<String>,
    /// Deliver the refresh token as an HttpOnly cookie (for the SPA)
    /// instead of in the response body (for the CLI).
    #[graphql(default = false)]
    pub use_cookie: bool,
}

#[derive(InputObject)]
pub struct AcceptInvitationInput {
    pub code: String,
    pub password: String,
    pub display_name: String,
    #[graphql(default = false)]
    pub use_cookie: bool,
}

#[derive(InputObject)]
pub struct InviteUserInput {
    pub email: String,
    pub role: Role,
}

#[derive(InputObject)]
pub struct CreateApiTokenInput {
    pub name: String,
    /// No higher than your own role.
    pub role: Role,
    /// Limit the token to one team's devices.
    pub team_id: Option<ID>,
    /// Default 90, at most the tenant's maximum.
    pub expires_in_days: Option<i32>,
}

impl From<Role> for CoreRole {
    fn from(role: Role) -> CoreRole {
        match role {
            Role::Owner => CoreRole::Owner,
            Role::Admin => CoreRole::Admin,
            Role::Maintainer => CoreRole::Maintainer,
            Role::Observer => CoreRole::Observer,
            Role::Gitops => CoreRole::Gitops,
        }
    }
}
