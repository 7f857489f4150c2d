//! The GraphQL admin API at `/api/graphql`: POST for queries and
//! mutations, GET for GraphiQL, and graphql-ws subscriptions on the same
//! path.

mod agent_options;
mod audit;
mod backbone;
mod billing;
mod devices;
mod enrollment;
pub(crate) mod errors;
mod expansion;
pub mod gate;
mod identity;
pub mod ids;
mod licensing;
mod loaders;
mod node;
mod osquery;
mod pagination;
mod plans;
mod policies;
mod portal;
mod queries;
pub mod signup;
mod software;
mod sso;
mod tenancy;

/// What every area's resolvers and types use: async-graphql, the gate,
/// errors, pagination, ids, loaders and each area's object types.
pub(crate) mod prelude {
    pub(crate) use std::collections::HashMap;
    pub(crate) use std::sync::Arc;

    pub(crate) use async_graphql::connection::{Connection, Edge, EmptyFields};
    pub(crate) use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
    pub(crate) use async_graphql::{
        ComplexObject, Context, Enum, ID, InputObject, Json, Object, Result, SimpleObject,
    };
    pub(crate) use base64::Engine;
    pub(crate) use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    pub(crate) use chrono::{DateTime, Utc};
    pub(crate) use mobius_api::device::EnrollmentToken as TokenString;
    pub(crate) use mobius_core::authz::{Operation, Role as CoreRole};
    pub(crate) use mobius_core::devices::{
        DeviceFilter, DeviceOrder as CoreOrder, DeviceStatus as CoreStatus,
    };
    pub(crate) use mobius_core::enrollment::NewEnrollmentToken;
    pub(crate) use mobius_core::identity::{Identity, NewApiToken, Session};
    pub(crate) use mobius_core::{StoreError, Uuid};

    pub(crate) use super::devices::{
        device_node, heartbeat_interval, prefetch_sites_and_teams, reload,
    };
    pub(crate) use super::gate::{self, ReadScope, RequestContext};
    pub(crate) use super::ids::*;
    pub(crate) use super::loaders::*;
    pub(crate) use super::pagination::*;
    pub(crate) use super::tenancy::types::*;
    pub(crate) use super::{DeviceAdmin, errors};
    pub(crate) use crate::http::errors::ErrorCode;
    pub(crate) use crate::http::limits::{LoginLimiter, RateLimited};
}

use std::net::SocketAddr;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::http::GraphiQLSource;
use async_graphql::{Data, Schema};
use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE, USER_AGENT};
use axum::response::{Html, IntoResponse, Response};
use mobius_core::Store;
use mobius_core::authz::Entitlements;
use mobius_core::identity::ApiTokenUsage;
use mobius_core::identity::{Identity, IdentityError, RequestMeta};

use crate::http::limits::LoginLimiter;
pub use errors::sanitize;
use gate::{Caller, ReadScope, RequestContext, WriteStore};
use loaders::{SiteLoader, TeamLoader};

pub type MobiusSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

// Each area's queries, merged: a new area adds its folder and one entry
// here (and in the mutation and subscription roots when it has them).
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    identity::IdentityQuery,
    tenancy::TenancyQuery,
    devices::DeviceQuery,
    enrollment::EnrollmentQuery,
    audit::AuditQuery,
    node::NodeQuery,
    sso::SsoQuery,
    sso::SamlQuery,
    licensing::LicenseQuery,
    plans::PlanQuery,
    backbone::BackboneQuery,
    software::SoftwareQuery,
    queries::LiveQueryQuery,
    policies::PolicyQuery,
    agent_options::AgentOptionsQuery,
    osquery::OsqueryQuery,
    portal::PortalQuery,
);

/// Mutations are split by area and merged.
#[derive(async_graphql::MergedObject, Default)]
pub struct MutationRoot(
    identity::IdentityMutation,
    tenancy::TenancyMutation,
    devices::DeviceMutation,
    enrollment::EnrollmentMutation,
    sso::SsoMutation,
    sso::SamlMutation,
    signup::SignUpMutation,
    plans::PlanMutation,
    backbone::BackboneMutation,
    software::SoftwareMutation,
    queries::LiveQueryMutation,
    policies::PolicyMutation,
    agent_options::AgentOptionsMutation,
    osquery::OsqueryMutation,
    portal::PortalMutation,
);

// Each area's subscriptions, merged.
#[derive(async_graphql::MergedSubscription, Default)]
#[graphql(name = "Subscription")]
pub struct SubscriptionRoot(
    audit::AuditSubscription,
    plans::PlanSubscription,
    queries::LiveQuerySubscription,
    software::SoftwareSubscription,
);

/// Depth 15 admits GraphiQL's introspection query; complexity 1000 admits a
/// full 500-device page with its sites and teams but not nested abuse.
const MAX_DEPTH: usize = 15;
const MAX_COMPLEXITY: usize = 1000;

/// What the GraphQL layer needs from the server.
#[derive(Clone)]
pub struct GraphqlState {
    pub schema: MobiusSchema,
    pub store: Store,
    pub identity: Identity,
    pub api_token_usage: Arc<ApiTokenUsage>,
    /// The edition's entitlement gate (the REST license endpoints read it).
    pub entitlements: Arc<dyn Entitlements>,
}

/// What resolvers use besides the request context.
pub struct Services {
    pub store: Store,
    pub identity: Identity,
    pub limiter: LoginLimiter,
    pub devices: DeviceAdmin,
    /// Seals SSO client secrets.
    pub sealer: Arc<dyn mobius_core::crypto::sealing::SecretSealer>,
    /// The entitlement gate (the tenant's device limit, premium features).
    pub entitlements: Arc<dyn Entitlements>,
    /// Self sign-up, where the edition and settings turn it on.
    pub signup: Option<Arc<signup::SignUpService>>,
    pub plans: crate::device::PlanServices,
    /// The edition's SAML engine (none in the OSS edition).
    pub saml: Option<Arc<dyn mobius_core::identity::sso::saml::SamlProtocol>>,
    pub queries: crate::queries::QueryServices,
    /// The agent options cache and push.
    pub options: Arc<crate::osquery::OptionsHub>,
}

/// The device side, as the admin API needs it.
pub struct DeviceAdmin {
    pub pki: Arc<mobius_core::pki::Pki>,
    /// Reloaded after a CA is created or rotated, so the device listener
    /// trusts it at once.
    pub trust: Arc<crate::device::Trust>,
    /// Updated at once on revocation (other servers poll).
    pub revocations: Arc<mobius_core::devices::presence::Revocations>,
    /// Heartbeats seen here and not necessarily written yet: a device's
    /// status is judged from the newest of these and the database.
    pub presence: Arc<mobius_core::devices::presence::Presence>,
    /// Pin of the device listener's CA, embedded in enrollment tokens.
    pub ca_pin: [u8; 32],
    pub heartbeat_interval_secs: u64,
}

/// The schema with its services. `print-schema` builds it without them.
pub fn schema(services: Option<Services>) -> MobiusSchema {
    let mut builder = Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        SubscriptionRoot::default(),
    )
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
    .extension(expansion::ExpansionLimit);
    if let Some(services) = services {
        builder = builder
            .data(WriteStore(services.store))
            .data(services.identity)
            .data(services.limiter)
            .data(services.devices)
            .data(sso::SsoSealer(services.sealer))
            .data(sso::SamlEngine(services.saml))
            .data(services.entitlements)
            .data(services.plans)
            .data(services.queries)
            .data(services.options);
        if let Some(signup) = services.signup {
            builder = builder.data(signup);
        }
    }
    builder.finish()
}

/// The SDL checked in as `graphql/schema.graphql`.
pub fn sdl() -> String {
    schema(None).sdl()
}

/// POST: queries and mutations.
pub async fn execute(
    State(state): State<GraphqlState>,
    headers: HeaderMap,
    peer: Peer,
    request: Result<GraphQLRequest, GraphQLRejection>,
) -> Response {
    let request = match request {
        Ok(request) => request,
        Err(GraphQLRejection(err)) => return errors::unreadable_request(err),
    };
    let context = request_context(&state, &headers, peer.0, true).await;
    let reads = context.reads.clone();
    let request = request
        .into_inner()
        .data(DataLoader::with_cache(
            SiteLoader(reads.clone()),
            tokio::spawn,
            HashMapCache::default(),
        ))
        .data(DataLoader::with_cache(
            TeamLoader(reads),
            tokio::spawn,
            HashMapCache::default(),
        ))
        .data(context);
    let response = sanitize(state.schema.execute(request).await);
    GraphQLResponse::from(response).into_response()
}

/// GET: GraphiQL for a browser, or the graphql-ws upgrade. The socket's
/// `connection_init` payload carries `{"authorization": "Bearer ..."}`.
pub async fn graphiql_or_socket(State(state): State<GraphqlState>, request: Request) -> Response {
    let is_upgrade = request
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return Html(
            GraphiQLSource::build()
                .endpoint("/api/graphql")
                .subscription_endpoint("/api/graphql")
                .finish(),
        )
        .into_response();
    }
    let (mut parts, _body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(protocol) => protocol,
        Err(rejection) => return rejection.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let headers = parts.headers.clone();
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let schema = state.schema.clone();
            GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let mut headers = headers;
                    let bearer = payload
                        .get("authorization")
                        .or_else(|| payload.get("Authorization"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned);
                    if let Some(bearer) = bearer
                        && let Ok(value) = bearer.parse()
                    {
                        headers.insert(AUTHORIZATION, value);
                    }
                    let mut data = Data::default();
                    data.insert(request_context(&state, &headers, peer, false).await);
                    Ok(data)
                })
                .serve()
                .await
        })
}

/// The client's address, when the server was started with connect info.
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// Authenticates the request's bearer credential (if any) before the
/// operation runs, and gathers what resolvers may need from the headers.
async fn request_context(
    state: &GraphqlState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    // A socket lives long: it must not hold a pool connection open.
    keep_auth_scope: bool,
) -> RequestContext {
    let meta = RequestMeta {
        ip: peer.map(|p| p.ip().to_string()),
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
        .map(str::trim);
    let mut auth_scope = None;
    let caller = match bearer {
        None => Caller::Anonymous,
        Some(token) => match state.identity.authenticate(token, &meta).await {
            Ok(authenticated) => {
                if let Some(token) = &authenticated.api_token {
                    state.api_token_usage.record(token.tenant_id, token.id);
                }
                if keep_auth_scope {
                    auth_scope = Some(authenticated.scope);
                }
                Caller::Authenticated(authenticated.principal)
            }
            Err(IdentityError::Store(err)) => Caller::Failed(errors::store(err)),
            Err(err) => Caller::Refused(err),
        },
    };
    let reader = match &caller {
        Caller::Authenticated(principal) => Some(principal.clone()),
        _ => None,
    };
    let cookies = parse_cookies(headers);
    RequestContext {
        caller,
        client_key: meta.ip.clone().unwrap_or_else(|| "unknown".into()),
        meta,
        refresh_cookie: cookies
            .iter()
            .find(|(k, _)| k == "mobius_refresh")
            .map(|(_, v)| v.clone()),
        csrf_cookie: cookies
            .iter()
            .find(|(k, _)| k == "mobius_csrf")
            .map(|(_, v)| v.clone()),
        csrf_header: headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        reads: Arc::new(ReadScope::new(state.store.clone(), reader, auth_scope)),
    }
}

fn parse_cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}
