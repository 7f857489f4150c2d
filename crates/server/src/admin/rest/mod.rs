//! REST endpoints of the admin surface beside GraphQL: the license, the
//! platform operator, sign-up verification and single sign-on redirects
//! and callbacks. The license endpoints share the GraphQL layer's
//! authentication: a bearer access or API token.

pub mod license;
pub mod platform;
pub mod signup;
pub mod sso;

use axum::Router;
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::routing::get;
use mobius_core::authz::Operation;
use mobius_core::identity::{Authenticated, IdentityError, RequestMeta};

use crate::admin::graphql::{GraphqlState, Peer};
use crate::http::errors::{ApiError, ErrorCode};

/// The REST routes, served with the GraphQL state (store, identity,
/// entitlements).
pub fn router<S: Clone + Send + Sync + 'static>(state: GraphqlState) -> Router<S> {
    Router::new()
        .route("/api/v1/mobius/license/status", get(license::status))
        .route(
            "/api/v1/mobius/license",
            axum::routing::put(license::update),
        )
        .with_state(state)
}

/// Authenticates the request's bearer token and checks `op`, as the
/// GraphQL gate does: UNAUTHENTICATED without a valid credential,
/// FORBIDDEN when the role does not permit `op`.
pub async fn authorize(
    state: &GraphqlState,
    headers: &HeaderMap,
    peer: &Peer,
    op: Operation,
) -> Result<Authenticated, ApiError> {
    let meta = RequestMeta {
        ip: peer.0.map(|p| p.ip().to_string()),
        user_agent: headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(512).collect()),
    };
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "sign in first: send `Authorization: Bearer <token>`",
            )
        })?;
    let authenticated = match state.identity.authenticate(bearer, &meta).await {
        Ok(authenticated) => authenticated,
        Err(IdentityError::Store(err)) => return Err(err.into()),
        Err(
            err @ (IdentityError::InvalidCredentials
            | IdentityError::InvalidToken
            | IdentityError::AccessTokenExpired
            | IdentityError::RefreshTokenReused
            | IdentityError::InvalidCode),
        ) => return Err(ApiError::new(ErrorCode::Unauthenticated, err.to_string())),
        Err(err @ IdentityError::SsoRequired) => {
            return Err(ApiError::new(ErrorCode::Forbidden, err.to_string()));
        }
    };
    if let Some(token) = &authenticated.api_token {
        state.api_token_usage.record(token.tenant_id, token.id);
    }
    authenticated
        .principal
        .authorize(op, None)
        .map_err(|_| ApiError::new(ErrorCode::Forbidden, "your role does not permit this"))?;
    Ok(authenticated)
}
