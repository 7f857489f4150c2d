//! Mutations. Sign-in mutations need no caller; the rest pass the gate
//! with their operation, write in one transaction (audit event included)
//! and commit.

use async_graphql::{Context, ID, InputObject, Object, Result};
use mobius_core::StoreError;
use mobius_core::authz::{Operation, Role as CoreRole};
use mobius_core::identity::NewApiToken;
use mobius_core::identity::{Identity, Session};

use super::errors;
use super::gate::{self, RequestContext};
use super::types::*;
use crate::http::errors::ErrorCode;
use crate::http::limits::{LoginLimiter, RateLimited};

#[derive(Default)]
pub struct Mutation;

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
pub struct TenantInput {
    pub name: Option<String>,
    /// Longest lifetime an API token may be given, in days (1 to 3650).
    pub api_token_max_days: Option<i32>,
}

#[derive(InputObject)]
pub struct SiteInput {
    pub name: String,
}

#[derive(InputObject)]
pub struct TeamInput {
    pub name: String,
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

const REFRESH_COOKIE: &str = "mobius_refresh";
const CSRF_COOKIE: &str = "mobius_csrf";

#[Object]
impl Mutation {
    /// Creates the first owner with the setup code printed at first start.
    async fn setup(&self, ctx: &Context<'_>, input: SetupInput) -> Result<AuthPayload> {
        let request = gate::request(ctx)?;
        limited(
            ctx,
            ctx.data::<LoginLimiter>()?
                .check_client(&request.client_key),
        )?;
        let session = ctx
            .data::<Identity>()?
            .setup(
                &input.code,
                &input.email,
                &input.password,
                &input.display_name,
                &request.meta,
            )
            .await
            .map_err(errors::identity)?;
        Ok(deliver(ctx, session, false))
    }

    /// Signs in with email and password. Rate-limited per client and per
    /// account; an unknown email and a wrong password get the same answer.
    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> Result<AuthPayload> {
        let request = gate::request(ctx)?;
        let limiter = ctx.data::<LoginLimiter>()?;
        limited(ctx, limiter.check_client(&request.client_key))?;
        limited(ctx, limiter.check_account(&input.email))?;
        let session = ctx
            .data::<Identity>()?
            .login(
                &input.email,
                &input.password,
                input.tenant.as_deref(),
                &request.meta,
            )
            .await
            .map_err(errors::identity)?;
        Ok(deliver(ctx, session, input.use_cookie))
    }

    /// Exchanges a refresh token (argument, or the SPA's cookie plus the
    /// `X-CSRF-Token` header) for a new access token and a new refresh
    /// token. The old refresh token stops working; reusing it revokes the
    /// whole session.
    async fn refresh_session(
        &self,
        ctx: &Context<'_>,
        refresh_token: Option<String>,
    ) -> Result<AuthPayload> {
        let request = gate::request(ctx)?;
        limited(
            ctx,
            ctx.data::<LoginLimiter>()?
                .check_client(&request.client_key),
        )?;
        let (token, from_cookie) = presented_refresh_token(request, refresh_token)?;
        let session = ctx
            .data::<Identity>()?
            .refresh(&token, &request.meta)
            .await
            .map_err(errors::identity)?;
        Ok(deliver(ctx, session, from_cookie))
    }

    /// Ends the session the refresh token belongs to.
    async fn logout(&self, ctx: &Context<'_>, refresh_token: Option<String>) -> Result<bool> {
        let request = gate::request(ctx)?;
        let (token, from_cookie) = presented_refresh_token(request, refresh_token)?;
        ctx.data::<Identity>()?
            .logout(&token, &request.meta)
            .await
            .map_err(errors::identity)?;
        if from_cookie {
            ctx.append_http_header(
                "set-cookie",
                clear_cookie(REFRESH_COOKIE, "/api/graphql", true),
            );
            ctx.append_http_header("set-cookie", clear_cookie(CSRF_COOKIE, "/", false));
        }
        Ok(true)
    }

    /// Creates the invited user and signs them in.
    async fn accept_invitation(
        &self,
        ctx: &Context<'_>,
        input: AcceptInvitationInput,
    ) -> Result<AuthPayload> {
        let request = gate::request(ctx)?;
        limited(
            ctx,
            ctx.data::<LoginLimiter>()?
                .check_client(&request.client_key),
        )?;
        let session = ctx
            .data::<Identity>()?
            .accept_invitation(
                &input.code,
                &input.password,
                &input.display_name,
                &request.meta,
            )
            .await
            .map_err(errors::identity)?;
        Ok(deliver(ctx, session, input.use_cookie))
    }

    /// Renames the tenant or changes its API-token policy (owners and admins).
    async fn update_tenant(&self, ctx: &Context<'_>, input: TenantInput) -> Result<TenantNode> {
        let (principal, scope) = gate::write(ctx, Operation::ManageTenant, None).await?;
        let tenant = scope
            .tenant()
            .update(
                &principal.actor(),
                input.name.as_deref(),
                input.api_token_max_days,
            )
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(tenant.into())
    }

    async fn create_site(&self, ctx: &Context<'_>, input: SiteInput) -> Result<SiteNode> {
        let (principal, scope) = gate::write(ctx, Operation::ManageSites, None).await?;
        let site = scope
            .sites()
            .create(&principal.actor(), &input.name)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(site.into())
    }

    async fn update_site(&self, ctx: &Context<'_>, id: ID, input: SiteInput) -> Result<SiteNode> {
        let id = parse_id(&id, "site")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageSites, None).await?;
        let site = scope
            .sites()
            .rename(&principal.actor(), id, &input.name)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(site.into())
    }

    /// Deletes an empty site (one with devices is a CONFLICT).
    async fn delete_site(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let uuid = parse_id(&id, "site")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageSites, None).await?;
        scope
            .sites()
            .delete(&principal.actor(), uuid)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(id)
    }

    async fn create_team(&self, ctx: &Context<'_>, input: TeamInput) -> Result<TeamNode> {
        let (principal, scope) = gate::write(ctx, Operation::ManageTeams, None).await?;
        let team = scope
            .teams()
            .create(&principal.actor(), &input.name)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(team.into())
    }

    async fn update_team(&self, ctx: &Context<'_>, id: ID, input: TeamInput) -> Result<TeamNode> {
        let id = parse_id(&id, "team")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageTeams, None).await?;
        let team = scope
            .teams()
            .rename(&principal.actor(), id, &input.name)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(team.into())
    }

    async fn delete_team(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let uuid = parse_id(&id, "team")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageTeams, None).await?;
        scope
            .teams()
            .delete(&principal.actor(), uuid)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(id)
    }

    /// Invites an email with a role no higher than yours. The answer holds
    /// the single-use code (valid 7 days) to send to the invitee.
    async fn invite_user(
        &self,
        ctx: &Context<'_>,
        input: InviteUserInput,
    ) -> Result<InvitationNode> {
        let (principal, scope) = gate::write(ctx, Operation::ManageUsers, None).await?;
        let role = CoreRole::from(input.role);
        if !principal.grants.role.can_grant(role) {
            return Err(errors::forbidden(format!(
                "you cannot grant the {role} role"
            )));
        }
        if scope
            .users()
            .find_by_email(&input.email)
            .await
            .map_err(errors::store)?
            .is_some()
        {
            return Err(errors::coded(
                ErrorCode::Conflict,
                "a user with this email already exists",
                Some("email"),
            ));
        }
        let (code, invitation) = scope
            .invitations()
            .create(&principal.actor(), &input.email, role)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(InvitationNode {
            id: ID(invitation.id.to_string()),
            email: invitation.email,
            role: input.role,
            expires_at: invitation.expires_at,
            code: Some(code),
        })
    }

    /// Removes a user, their sessions and API tokens. Only owners remove
    /// owners, and the last owner stays.
    async fn remove_user(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let uuid = parse_id(&id, "user")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageUsers, None).await?;
        let target = scope.users().get(uuid).await.map_err(errors::store)?;
        if target.id == principal.user_id {
            return Err(errors::bad_input("id", "you cannot remove yourself"));
        }
        let target_role: CoreRole = target.role.parse().unwrap_or(CoreRole::Observer);
        if !principal.grants.role.can_grant(target_role) {
            return Err(errors::forbidden(format!(
                "you cannot remove a user with the {target_role} role"
            )));
        }
        scope
            .users()
            .delete(&principal.actor(), uuid)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(id)
    }

    /// Changes a user's role. You can move users only between roles you
    /// could grant, and the last owner cannot be demoted.
    async fn change_user_role(&self, ctx: &Context<'_>, id: ID, role: Role) -> Result<UserNode> {
        let uuid = parse_id(&id, "user")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageUsers, None).await?;
        let target = scope.users().get(uuid).await.map_err(errors::store)?;
        let current: CoreRole = target.role.parse().unwrap_or(CoreRole::Observer);
        let wanted = CoreRole::from(role);
        if !principal.grants.role.can_grant(current) || !principal.grants.role.can_grant(wanted) {
            return Err(errors::forbidden(format!(
                "you cannot change a {current} into a {wanted}"
            )));
        }
        if current == CoreRole::Owner
            && wanted != CoreRole::Owner
            && scope
                .users()
                .count_with_role("owner")
                .await
                .map_err(errors::store)?
                <= 1
        {
            return Err(errors::coded(
                ErrorCode::Conflict,
                "the tenant's last owner cannot be demoted",
                Some("role"),
            ));
        }
        let user = scope
            .users()
            .set_role(&principal.actor(), uuid, wanted.as_str())
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(user.into())
    }

    /// Creates an API token acting for you with at most your role. The
    /// answer holds the token once; only its hash is kept.
    async fn create_api_token(
        &self,
        ctx: &Context<'_>,
        input: CreateApiTokenInput,
    ) -> Result<CreatedApiToken> {
        let (principal, scope) = gate::write(ctx, Operation::ManageOwnApiTokens, None).await?;
        let role = CoreRole::from(input.role);
        if !principal.grants.role.can_grant(role) {
            return Err(errors::forbidden(format!(
                "you cannot create a token with the {role} role"
            )));
        }
        let team_id = input
            .team_id
            .as_ref()
            .map(|id| parse_id(id, "team"))
            .transpose()?;
        if team_id.is_some() && !matches!(role, CoreRole::Maintainer | CoreRole::Observer) {
            return Err(errors::bad_input(
                "role",
                "a team-scoped token must be a maintainer or observer",
            ));
        }
        let (secret, token) = scope
            .api_tokens()
            .create(
                &principal.actor(),
                NewApiToken {
                    user_id: principal.user_id,
                    name: &input.name,
                    role,
                    team_id,
                    expires_in_days: input.expires_in_days.map(i64::from),
                },
            )
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(CreatedApiToken {
            token: secret,
            api_token: token.into(),
        })
    }

    /// Revokes one of your tokens (any token, for owners and admins).
    async fn revoke_api_token(&self, ctx: &Context<'_>, id: ID) -> Result<ApiTokenNode> {
        let uuid = parse_id(&id, "API token")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageOwnApiTokens, None).await?;
        let token = scope.api_tokens().get(uuid).await.map_err(errors::store)?;
        if token.user_id != principal.user_id
            && principal
                .authorize(Operation::ManageAllApiTokens, None)
                .is_err()
        {
            // Someone else's token is not yours to see either.
            return Err(errors::store(StoreError::NotFound {
                entity: "API token",
            }));
        }
        let token = scope
            .api_tokens()
            .revoke(&principal.actor(), uuid)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(token.into())
    }
}

/// RATE_LIMITED with a `Retry-After` header and `extensions.retryAfter`.
fn limited(ctx: &Context<'_>, check: Result<(), RateLimited>) -> Result<()> {
    check.map_err(|limit| {
        let seconds = limit.retry_after_secs;
        ctx.insert_http_header("retry-after", seconds.to_string());
        errors::coded(
            ErrorCode::RateLimited,
            format!("too many attempts; retry in {seconds} s"),
            None,
        )
        .extend_with(|_, e| e.set("retryAfter", seconds))
    })
}

use async_graphql::ErrorExtensions;

/// The refresh token from the argument, else from the cookie, which then
/// needs the CSRF header to match the CSRF cookie (double submit: a
/// cross-site page can make the browser send cookies but cannot read the
/// CSRF cookie to copy it into a header).
fn presented_refresh_token(
    request: &RequestContext,
    argument: Option<String>,
) -> Result<(String, bool)> {
    if let Some(token) = argument {
        return Ok((token, false));
    }
    let token = request
        .refresh_cookie
        .clone()
        .ok_or_else(|| errors::coded(ErrorCode::Unauthenticated, "no refresh token given", None))?;
    let csrf_ok = match (&request.csrf_cookie, &request.csrf_header) {
        (Some(cookie), Some(header)) => {
            mobius_core::crypto::secrets::hashes_match(cookie.as_bytes(), header.as_bytes())
        }
        _ => false,
    };
    if !csrf_ok {
        return Err(errors::forbidden(
            "missing or wrong X-CSRF-Token header for a cookie session",
        ));
    }
    Ok((token, true))
}

/// Returns the session, putting the refresh token in an HttpOnly cookie
/// (plus a CSRF cookie) instead of the body when `as_cookie`.
fn deliver(ctx: &Context<'_>, session: Session, as_cookie: bool) -> AuthPayload {
    let refresh_token = if as_cookie {
        let max_age = mobius_core::identity::REFRESH_TOKEN_DAYS * 24 * 3600;
        ctx.append_http_header(
            "set-cookie",
            format!(
                "{REFRESH_COOKIE}={}; Path=/api/graphql; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict",
                session.refresh_token
            ),
        );
        let csrf = mobius_core::crypto::secrets::generate("");
        ctx.append_http_header(
            "set-cookie",
            format!("{CSRF_COOKIE}={csrf}; Path=/; Max-Age={max_age}; Secure; SameSite=Strict"),
        );
        None
    } else {
        Some(session.refresh_token)
    };
    AuthPayload {
        access_token: session.access_token,
        access_token_expires_at: session.access_token_expires_at,
        refresh_token,
        user: session.user.into(),
    }
}

fn clear_cookie(name: &str, path: &str, http_only: bool) -> String {
    let http_only = if http_only { "; HttpOnly" } else { "" };
    format!("{name}=; Path={path}; Max-Age=0{http_only}; Secure; SameSite=Strict")
}
