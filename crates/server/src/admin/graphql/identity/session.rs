//! Sessions over GraphQL: rate limits on sign-in, refresh tokens in the
//! body (CLI) or an HttpOnly cookie with a CSRF proof (SPA).

use super::types::*;
use crate::admin::graphql::prelude::*;

pub(crate) const REFRESH_COOKIE: &str = "mobius_refresh";

pub(crate) const CSRF_COOKIE: &str = "mobius_csrf";

/// RATE_LIMITED with a `Retry-After` header and `extensions.retryAfter`.
pub(crate) fn limited(ctx: &Context<'_>, check: Result<(), RateLimited>) -> Result<()> {
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
pub(crate) fn presented_refresh_token(
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
pub(crate) fn deliver(ctx: &Context<'_>, session: Session, as_cookie: bool) -> AuthPayload {
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

pub(crate) fn clear_cookie(name: &str, path: &str, http_only: bool) -> String {
    let http_only = if http_only { "; HttpOnly" } else { "" };
    format!("{name}=; Path={path}; Max-Age=0{http_only}; Secure; SameSite=Strict")
}
