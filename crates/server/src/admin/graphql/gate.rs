//! The one choke point between GraphQL resolvers and tenant data. The
//! store is not in the schema's context at all: resolvers reach it only
//! through [`read`] and [`write`], which check the caller's permission for
//! the operation first.

use std::sync::Arc;

use async_graphql::{Context, Result};
use mobius_core::authz::{Operation, Principal};
use mobius_core::identity::{IdentityError, RequestMeta};
use mobius_core::{Store, TenantScope, Uuid};
use tokio::sync::OnceCell;

use super::errors;
use crate::http::errors::ErrorCode;

/// Who is calling, as established before the operation ran.
pub enum Caller {
    Anonymous,
    Authenticated(Principal),
    /// A credential was presented and refused (expired, revoked, unknown).
    Refused(IdentityError),
    /// The credential could not be checked on our side (database down,
    /// signing keys unreadable): the INTERNAL answer, cause already
    /// logged. Not UNAUTHENTICATED, which would send a client with a
    /// perfectly good token back to the login page.
    Failed(async_graphql::Error),
}

/// Per-request context: the caller, where the request came from, and the
/// read transaction shared by the request's queries and loaders.
pub struct RequestContext {
    pub caller: Caller,
    pub meta: RequestMeta,
    /// Key for per-client rate limits (the peer IP).
    pub client_key: String,
    /// The refresh-token cookie and the CSRF proof, for the SPA.
    pub refresh_cookie: Option<String>,
    pub csrf_cookie: Option<String>,
    pub csrf_header: Option<String>,
    pub reads: Arc<ReadScope>,
}

/// One transaction for the request's reads, so a page and its batched
/// loads see the same snapshot and pay for one BEGIN. It starts as the
/// transaction authentication read through (one pool checkout for both),
/// or is opened on first use.
pub struct ReadScope {
    store: Store,
    /// The authenticated caller, the proof the scope is opened with (it
    /// carries a team-scoped token's team, so device reads are filtered).
    principal: Option<Principal>,
    /// Authentication's scope until the first read or write claims it.
    from_auth: std::sync::Mutex<Option<TenantScope>>,
    scope: OnceCell<TenantScope>,
}

impl ReadScope {
    pub fn new(
        store: Store,
        principal: Option<Principal>,
        from_auth: Option<TenantScope>,
    ) -> ReadScope {
        ReadScope {
            store,
            principal,
            from_auth: std::sync::Mutex::new(from_auth),
            scope: OnceCell::new(),
        }
    }

    fn principal(&self) -> Result<&Principal> {
        self.principal
            .as_ref()
            .ok_or_else(|| errors::coded(ErrorCode::Unauthenticated, "sign in first", None))
    }

    /// Authentication's open scope, if nothing claimed it yet.
    fn claim_auth_scope(&self) -> Option<TenantScope> {
        self.from_auth.lock().ok().and_then(|mut s| s.take())
    }

    pub async fn get(&self) -> Result<&TenantScope> {
        let principal = self.principal()?;
        self.scope
            .get_or_try_init(|| async {
                match self.claim_auth_scope() {
                    Some(scope) => Ok(scope),
                    None => self.store.begin(principal).await.map_err(errors::store),
                }
            })
            .await
    }

    /// A scope to write in: authentication's, when no read has claimed it
    /// (a mutation-only request then uses one connection), else a new one.
    async fn for_write(&self, store: &Store) -> Result<TenantScope> {
        let principal = self.principal()?;
        match self.claim_auth_scope() {
            Some(scope) => Ok(scope),
            None => store.begin(principal).await.map_err(errors::store),
        }
    }
}

/// The store for writes; deliberately not `Clone` and only in this module.
pub struct WriteStore(pub(super) Store);

pub fn request<'c>(ctx: &Context<'c>) -> Result<&'c RequestContext> {
    ctx.data::<RequestContext>()
}

/// The authenticated caller, or UNAUTHENTICATED saying why not.
pub fn principal<'c>(ctx: &Context<'c>) -> Result<&'c Principal> {
    match &request(ctx)?.caller {
        Caller::Authenticated(principal) => Ok(principal),
        Caller::Anonymous => Err(errors::coded(
            ErrorCode::Unauthenticated,
            "sign in first: send `Authorization: Bearer <token>`",
            None,
        )),
        Caller::Refused(err) => Err(errors::coded(
            ErrorCode::Unauthenticated,
            err.to_string(),
            None,
        )),
        Caller::Failed(err) => Err(err.clone()),
    }
}

/// Checks `op` (on `team`, for device operations), then hands out the
/// request's read scope.
pub async fn read<'c>(
    ctx: &Context<'c>,
    op: Operation,
    team: Option<Uuid>,
) -> Result<(&'c Principal, &'c TenantScope)> {
    let principal = principal(ctx)?;
    principal.authorize(op, team).map_err(errors::denied)?;
    let scope = request(ctx)?.reads.get().await?;
    Ok((principal, scope))
}

/// For operations on one device: finds it (NOT_FOUND if it is not in the
/// caller's tenant), then checks `op` against the device's team before
/// anything is changed or returned.
pub async fn write_on_device<'c>(
    ctx: &Context<'c>,
    op: Operation,
    device: Uuid,
) -> Result<(&'c Principal, TenantScope)> {
    let principal = principal(ctx)?;
    let store = &ctx.data::<WriteStore>()?.0;
    let scope = request(ctx)?.reads.for_write(store).await?;
    let found = scope.devices().get(device).await.map_err(errors::store)?;
    principal
        .authorize(op, found.team_id)
        .map_err(errors::denied)?;
    Ok((principal, scope))
}

/// Checks `op`, then opens a write transaction in the caller's tenant; the
/// resolver commits it.
pub async fn write<'c>(
    ctx: &Context<'c>,
    op: Operation,
    team: Option<Uuid>,
) -> Result<(&'c Principal, TenantScope)> {
    let principal = principal(ctx)?;
    principal.authorize(op, team).map_err(errors::denied)?;
    let store = &ctx.data::<WriteStore>()?.0;
    let scope = request(ctx)?.reads.for_write(store).await?;
    Ok((principal, scope))
}
