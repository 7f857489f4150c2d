//! Identity mutations: each passes the gate with its operation, writes in
//! one transaction (audit event included) and commits.

use super::types::*;
use super::*;
use crate::admin::graphql::prelude::*;

/// Mutations of this area, merged into the root `Mutation`.
#[derive(Default)]
pub struct IdentityMutation;

#[Object]
impl IdentityMutation {
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
        limited(ctx, limiter.admit(&request.client_key, &input.email).await)?;
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
            id: global_id("Invitation", invitation.id),
            email: invitation.email,
            role: input.role,
            expires_at: invitation.expires_at,
            code: Some(code),
        })
    }

    /// Removes a user, their sessions and API tokens. Only owners remove
    /// owners, and the last owner stays.
    async fn remove_user(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let uuid = parse_id(&id, "User")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageUsers, None).await?;
        let target = scope.users().get(uuid).await.map_err(errors::store)?;
        if target.id == principal.user_id {
            return Err(errors::bad_input("id", "you cannot remove yourself"));
        }
        let target_role = target.role;
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
        let uuid = parse_id(&id, "User")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageUsers, None).await?;
        let target = scope.users().get(uuid).await.map_err(errors::store)?;
        let current = target.role;
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
                .count_with_role(CoreRole::Owner)
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
            .set_role(&principal.actor(), uuid, wanted)
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
            .map(|id| parse_id(id, "Team"))
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
        let uuid = parse_id(&id, "ApiToken")?;
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
