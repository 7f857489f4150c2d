//! The GraphQL object types, built from core rows.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use async_graphql::{ComplexObject, Context, Enum, ID, Json, Result, SimpleObject};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use mobius_core::Uuid;
use mobius_core::authz::Role as CoreRole;
use mobius_core::devices::DeviceStatus as CoreStatus;

use super::errors;
use super::gate::ReadScope;

/// Largest page a client may ask for.
pub const MAX_PAGE: i32 = 500;
pub const DEFAULT_PAGE: i32 = 50;

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Role {
    Owner,
    Admin,
    Maintainer,
    Observer,
    Gitops,
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

/// Roles are stored as text; an unreadable one shows as the least privileged.
pub fn role_of(stored: &str) -> Role {
    stored
        .parse::<CoreRole>()
        .map(Role::from)
        .unwrap_or(Role::Observer)
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum DeviceStatus {
    Online,
    Offline,
    NeverSeen,
    Revoked,
}

impl From<DeviceStatus> for CoreStatus {
    fn from(status: DeviceStatus) -> CoreStatus {
        match status {
            DeviceStatus::Online => CoreStatus::Online,
            DeviceStatus::Offline => CoreStatus::Offline,
            DeviceStatus::NeverSeen => CoreStatus::NeverSeen,
            DeviceStatus::Revoked => CoreStatus::Revoked,
        }
    }
}

impl From<CoreStatus> for DeviceStatus {
    fn from(status: CoreStatus) -> DeviceStatus {
        match status {
            CoreStatus::Online => DeviceStatus::Online,
            CoreStatus::Offline => DeviceStatus::Offline,
            CoreStatus::NeverSeen => DeviceStatus::NeverSeen,
            CoreStatus::Revoked => DeviceStatus::Revoked,
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug, Default)]
pub enum DeviceOrder {
    #[default]
    Hostname,
    LastSeen,
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Tenant")]
pub struct TenantNode {
    pub id: ID,
    pub name: String,
    pub slug: String,
    /// Longest lifetime an API token may be given, in days.
    pub api_token_max_days: i32,
}

impl From<mobius_core::tenancy::Tenant> for TenantNode {
    fn from(t: mobius_core::tenancy::Tenant) -> Self {
        TenantNode {
            id: ID(t.id.to_string()),
            name: t.name,
            slug: t.slug,
            api_token_max_days: t.api_token_max_days,
        }
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Site")]
pub struct SiteNode {
    pub id: ID,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<mobius_core::tenancy::Site> for SiteNode {
    fn from(s: mobius_core::tenancy::Site) -> Self {
        SiteNode {
            id: ID(s.id.to_string()),
            name: s.name,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Team")]
pub struct TeamNode {
    pub id: ID,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<mobius_core::tenancy::Team> for TeamNode {
    fn from(t: mobius_core::tenancy::Team) -> Self {
        TeamNode {
            id: ID(t.id.to_string()),
            name: t.name,
            created_at: t.created_at,
            updated_at: t.updated_at,
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
            id: ID(u.id.to_string()),
            role: role_of(&u.role),
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
            id: ID(t.id.to_string()),
            role: role_of(&t.role),
            name: t.name,
            team_id: t.team_id.map(|id| ID(id.to_string())),
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
            created_at: t.created_at,
        }
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Device", complex)]
pub struct DeviceNode {
    pub id: ID,
    pub hostname: String,
    pub status: DeviceStatus,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub kernel_version: Option<String>,
    pub architecture: Option<String>,
    pub cpu_model: Option<String>,
    pub cpu_cores: Option<i32>,
    pub memory_bytes: Option<i64>,
    pub agent_version: Option<String>,
    pub hardware_uuid: Option<String>,
    /// The latest full facts report (disks, interfaces, ...).
    pub facts: Option<Json<serde_json::Value>>,
    pub facts_updated_at: Option<DateTime<Utc>>,
    pub certificate_serial: Option<String>,
    pub certificate_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[graphql(skip)]
    pub site_id: Uuid,
    #[graphql(skip)]
    pub team_id: Option<Uuid>,
}

impl DeviceNode {
    /// `interval_secs`: the heartbeat interval agents are told.
    pub fn new(d: mobius_core::devices::Device, now: DateTime<Utc>, interval_secs: u64) -> Self {
        DeviceNode {
            id: ID(d.id.to_string()),
            status: CoreStatus::of(&d, now, interval_secs).into(),
            hostname: d.hostname,
            last_seen_at: d.last_seen_at,
            revoked_at: d.revoked_at,
            os_name: d.os_name,
            os_version: d.os_version,
            kernel_version: d.kernel_version,
            architecture: d.architecture,
            cpu_model: d.cpu_model,
            cpu_cores: d.cpu_cores,
            memory_bytes: d.memory_bytes,
            agent_version: d.agent_version,
            hardware_uuid: d.hardware_uuid,
            facts: d.facts.map(Json),
            facts_updated_at: d.facts_updated_at,
            certificate_serial: d.cert_serial,
            certificate_expires_at: d.cert_not_after,
            created_at: d.created_at,
            site_id: d.site_id,
            team_id: d.team_id,
        }
    }
}

#[ComplexObject]
impl DeviceNode {
    /// Batched: a page of devices costs one query for all their sites.
    async fn site(&self, ctx: &Context<'_>) -> Result<SiteNode> {
        ctx.data::<SiteLoads>()?
            .load_one(self.site_id)
            .await?
            .ok_or_else(|| errors::not_found("site"))
    }

    /// Batched like `site`.
    async fn team(&self, ctx: &Context<'_>) -> Result<Option<TeamNode>> {
        match self.team_id {
            None => Ok(None),
            Some(team) => ctx.data::<TeamLoads>()?.load_one(team).await,
        }
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "AuditEvent")]
pub struct AuditEventNode {
    pub id: ID,
    /// Position in the tenant's hash chain; null until the chainer has linked
    /// the event (within about a second of its commit).
    pub seq: Option<i64>,
    pub actor_kind: String,
    pub actor_id: Option<ID>,
    pub action: String,
    pub target_kind: String,
    pub target_id: Option<ID>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

impl From<mobius_core::audit::AuditEvent> for AuditEventNode {
    fn from(e: mobius_core::audit::AuditEvent) -> Self {
        AuditEventNode {
            id: ID(e.id.to_string()),
            seq: e.seq,
            actor_kind: e.actor_kind,
            actor_id: e.actor_id.map(|id| ID(id.to_string())),
            action: e.action,
            target_kind: e.target_kind,
            target_id: e.target_id.map(|id| ID(id.to_string())),
            ip: e.ip,
            user_agent: e.user_agent,
            details: Json(e.details),
            created_at: e.created_at,
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

/// `totalCount` on every connection.
#[derive(SimpleObject)]
pub struct TotalCount {
    pub total_count: i64,
}

pub type Page<T> = Connection<String, T, TotalCount, EmptyFields>;

/// Decodes `first`/`after` into an offset and limit. Cursors are opaque
/// offsets; `first` is capped at [`MAX_PAGE`].
pub fn page_window(first: Option<i32>, after: Option<&str>) -> Result<(u64, u64)> {
    let first = first.unwrap_or(DEFAULT_PAGE);
    if first < 0 {
        return Err(errors::bad_input("first", "must not be negative"));
    }
    let offset = match after {
        None => 0,
        Some(cursor) => {
            decode_cursor(cursor)
                .ok_or_else(|| errors::bad_input("after", "not a cursor from this API"))?
                + 1
        }
    };
    Ok((offset, first.min(MAX_PAGE) as u64))
}

fn encode_cursor(position: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("o:{position}"))
}

fn decode_cursor(cursor: &str) -> Option<u64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("o:")?
        .parse()
        .ok()
}

/// Builds a connection from one page of rows.
pub fn page<T: async_graphql::OutputType, R>(
    rows: Vec<R>,
    total: u64,
    offset: u64,
    to_node: impl Fn(R) -> T,
) -> Page<T> {
    let count = rows.len() as u64;
    let mut connection = Connection::with_additional_fields(
        offset > 0,
        offset + count < total,
        TotalCount {
            total_count: total as i64,
        },
    );
    connection.edges.extend(
        rows.into_iter()
            .enumerate()
            .map(|(i, row)| Edge::new(encode_cursor(offset + i as u64), to_node(row))),
    );
    connection
}

/// Parses a client-supplied ID. A malformed id cannot name anything, so it
/// is "not found", like an id of another tenant.
pub fn parse_id(id: &ID, what: &str) -> Result<Uuid> {
    id.parse::<Uuid>().map_err(|_| errors::not_found(what))
}

/// The request's cached site and team loaders (one of each per request).
pub type SiteLoads = DataLoader<SiteLoader, HashMapCache>;
pub type TeamLoads = DataLoader<TeamLoader, HashMapCache>;

/// Loads sites by id within the request's read scope.
pub struct SiteLoader(pub Arc<ReadScope>);
/// Loads teams by id within the request's read scope.
pub struct TeamLoader(pub Arc<ReadScope>);

impl Loader<Uuid> for SiteLoader {
    type Value = SiteNode;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, SiteNode>> {
        let scope = self.0.get().await?;
        let rows = scope.sites().by_ids(keys).await.map_err(errors::store)?;
        Ok(rows
            .into_iter()
            .map(|s| (s.id, SiteNode::from(s)))
            .collect())
    }
}

impl Loader<Uuid> for TeamLoader {
    type Value = TeamNode;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, TeamNode>> {
        let scope = self.0.get().await?;
        let rows = scope.teams().by_ids(keys).await.map_err(errors::store)?;
        Ok(rows
            .into_iter()
            .map(|t| (t.id, TeamNode::from(t)))
            .collect())
    }
}
