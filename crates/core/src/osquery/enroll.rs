//! Enroll secrets, enrolling osquery hosts, and node keys.
//!
//! An enroll secret belongs to a site and optionally a team; osquery
//! presents it once (`--enroll_secret_path`) and gets a node key it sends
//! with every later request. Both are 256-bit random strings stored only
//! as SHA-256 (a fast hash suffices for secrets that cannot be guessed,
//! and keeps every osquery poll cheap); both are found before a tenant is
//! known through the named lookups in `db/lookups.rs`, then used inside a
//! scope of that tenant, where RLS holds.
//!
//! A host is a device of the secret's tenant, site and team, marked
//! `managed_by = 'osquery'`, with the fingerprint `osquery:<host_identifier>`
//! so a host enrolling again (its node key lost, or refused after its
//! device was deleted) finds its device. Each device keeps one node key:
//! enrolling again replaces it. A revoked device's key stops working at
//! once and the host cannot enroll again until an admin deletes the
//! device, as for agents. The device limit is the agents' one, checked
//! under the same per-tenant lock.

use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};
use serde_json::{Value, json};

use super::entities::{enroll_secret, node};
use super::{OsqueryError, invalid};
use crate::audit::{Actor, ActorKind, AuditRecord};
use crate::authz::Entitlements;
use crate::crypto::secrets;
use crate::db::entities::device;
use crate::db::locks::TenantLock;
use crate::db::{FoundTenant, SecretKind, Store, no_nul};
use crate::devices::HostFingerprint;
use crate::{StoreError, StoreResult, TenantScope, Uuid};

/// Prefixes tell a leaked secret's kind at a glance.
pub const ENROLL_SECRET_PREFIX: &str = "mob_oqes_";
pub const NODE_KEY_PREFIX: &str = "mob_node_";
/// Characters of a secret kept to tell secrets apart in listings.
const SHOWN_PREFIX_CHARS: usize = 14;
/// The value of `devices.managed_by` for osquery hosts.
pub const MANAGED_BY_OSQUERY: &str = "osquery";

/// An enroll secret as listed (never the secret itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollSecret {
    pub id: Uuid,
    pub name: String,
    /// The secret's first characters.
    pub prefix: String,
    pub site_id: Uuid,
    pub team_id: Option<Uuid>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<enroll_secret::Model> for EnrollSecret {
    fn from(row: enroll_secret::Model) -> Self {
        EnrollSecret {
            id: row.id,
            name: row.name,
            prefix: row.prefix,
            site_id: row.site_id,
            team_id: row.team_id,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// A created secret: shown once.
#[derive(Debug)]
pub struct NewEnrollSecret {
    pub secret: String,
    pub record: EnrollSecret,
}

/// An authenticated osquery node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsqueryNode {
    pub id: Uuid,
    pub device_id: Uuid,
    /// The device's team (whose option layer applies).
    pub team_id: Option<Uuid>,
    pub host_identifier: String,
}

impl OsqueryNode {
    pub fn actor(&self, ip: Option<String>) -> Actor {
        Actor {
            kind: ActorKind::Device,
            id: Some(self.device_id),
            ip,
            user_agent: None,
        }
    }
}

/// `POST /api/osquery/enroll`, parsed.
pub struct OsqueryEnrollRequest<'a> {
    pub enroll_secret: &'a str,
    pub host_identifier: &'a str,
    pub host_details: &'a Value,
    pub client_ip: Option<String>,
}

/// An enrolled host: the node key is sent once.
#[derive(Debug)]
pub struct NodeEnrolled {
    pub tenant_id: Uuid,
    pub device_id: Uuid,
    pub node_key: String,
    pub created: bool,
}

pub struct Osquery<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn osquery(&self) -> Osquery<'_> {
        Osquery { scope: self }
    }
}

impl<'s> Osquery<'s> {
    pub(crate) fn scope(&self) -> &'s TenantScope {
        self.scope
    }

    /// Creates an enroll secret for `site` (the tenant's first site when
    /// none is named) and, when given, `team`.
    pub async fn create_enroll_secret(
        &self,
        actor: &Actor,
        name: &str,
        site: Option<Uuid>,
        team: Option<Uuid>,
    ) -> Result<NewEnrollSecret, OsqueryError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 || name.contains('\0') {
            return Err(invalid("name", "must be 1 to 200 characters"));
        }
        let site_id = match site {
            Some(site) => self.scope.sites().get(site).await?.id,
            None => {
                self.scope
                    .sites()
                    .list()
                    .await?
                    .into_iter()
                    .min_by_key(|site| (site.created_at, site.id))
                    .ok_or(StoreError::NotFound { entity: "site" })?
                    .id
            }
        };
        if let Some(team) = team {
            self.scope.teams().get(team).await?;
        }
        let secret = secrets::generate(ENROLL_SECRET_PREFIX);
        let now = chrono::Utc::now();
        let row = enroll_secret::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            name: Set(name.to_owned()),
            token_hash: Set(secrets::sha256(&secret).to_vec()),
            prefix: Set(secret.chars().take(SHOWN_PREFIX_CHARS).collect()),
            site_id: Set(site_id),
            team_id: Set(team),
            created_by: Set(actor.id),
            revoked_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    "osquery.enroll_secret_created",
                    "osquery_enroll_secret",
                    Some(row.id),
                )
                .with_details(json!({
                    "name": row.name,
                    "prefix": row.prefix,
                    "site_id": site_id,
                    "team_id": team,
                })),
            )
            .await?;
        Ok(NewEnrollSecret {
            secret,
            record: row.into(),
        })
    }

    /// Revokes a secret: hosts can no longer enroll with it (hosts that
    /// did keep their node keys).
    pub async fn revoke_enroll_secret(&self, actor: &Actor, id: Uuid) -> StoreResult<EnrollSecret> {
        let row = enroll_secret::Entity::find_by_id(id)
            .filter(enroll_secret::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound {
                entity: "osquery enroll secret",
            })?;
        if row.revoked_at.is_some() {
            return Ok(row.into());
        }
        let mut active: enroll_secret::ActiveModel = row.into();
        let now = chrono::Utc::now();
        active.revoked_at = Set(Some(now));
        active.updated_at = Set(now);
        let row = active.update(self.scope.connection()).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    "osquery.enroll_secret_revoked",
                    "osquery_enroll_secret",
                    Some(row.id),
                )
                .with_details(json!({ "name": row.name, "prefix": row.prefix })),
            )
            .await?;
        Ok(row.into())
    }

    /// The tenant's enroll secrets, newest first (prefixes only).
    pub async fn enroll_secrets(&self) -> StoreResult<Vec<EnrollSecret>> {
        Ok(enroll_secret::Entity::find()
            .filter(enroll_secret::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(enroll_secret::Column::CreatedAt)
            .all(self.scope.connection())
            .await?
            .into_iter()
            .map(EnrollSecret::from)
            .collect())
    }

    /// The node a key hash names, if its device exists and is not revoked.
    pub async fn node(&self, key_hash: &[u8; 32]) -> StoreResult<Option<OsqueryNode>> {
        let db = self.scope.connection();
        let Some(row) = node::Entity::find()
            .filter(node::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(node::Column::TokenHash.eq(key_hash.to_vec()))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        // The unique index found it; compare anyway, in constant time.
        if !secrets::hashes_match(&row.token_hash, key_hash) {
            return Ok(None);
        }
        let device = device::Entity::find_by_id(row.device_id)
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
            .one(db)
            .await?;
        Ok(match device {
            Some(device) if device.revoked_at.is_none() => Some(OsqueryNode {
                id: row.id,
                device_id: row.device_id,
                team_id: device.team_id,
                host_identifier: row.host_identifier,
            }),
            _ => None,
        })
    }

    /// Notes that the node fetched its configuration (and was seen).
    pub async fn touch(&self, node: &OsqueryNode) -> StoreResult<()> {
        let now = chrono::Utc::now();
        node::Entity::update_many()
            .col_expr(node::Column::LastConfigAt, Expr::value(now))
            .filter(node::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(node::Column::Id.eq(node.id))
            .exec(self.scope.connection())
            .await?;
        Ok(())
    }
}

/// Opens a scope for the node a presented key names (and answers the
/// tenant proof, for work in further transactions); unknown keys, keys of
/// revoked or deleted devices: [`OsqueryError::NodeInvalid`].
pub async fn open_node(
    store: &Store,
    node_key: &str,
) -> Result<(TenantScope, OsqueryNode, FoundTenant), OsqueryError> {
    if node_key.is_empty() || node_key.len() > 256 {
        return Err(OsqueryError::NodeInvalid);
    }
    let hash = secrets::sha256(node_key);
    let owner = store
        .tenant_by_secret_hash(SecretKind::OsqueryNodeKey, &hash)
        .await?
        .ok_or(OsqueryError::NodeInvalid)?;
    let scope = store.begin(&owner).await?;
    let node = scope
        .osquery()
        .node(&hash)
        .await?
        .ok_or(OsqueryError::NodeInvalid)?;
    Ok((scope, node, owner))
}

fn detail<'v>(details: &'v Value, table: &str, column: &str) -> Option<&'v str> {
    details
        .get(table)
        .and_then(|t| t.get(column))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn clip(value: Option<&str>) -> Option<String> {
    value.map(|v| v.chars().take(200).collect())
}

/// Enrolls an osquery host with an enroll secret (see the module comment).
pub async fn enroll_host(
    store: &Store,
    entitlements: &dyn Entitlements,
    request: OsqueryEnrollRequest<'_>,
) -> Result<NodeEnrolled, OsqueryError> {
    let host_identifier = request.host_identifier.trim();
    if host_identifier.is_empty() || host_identifier.chars().count() > 190 {
        return Err(invalid("host_identifier", "must be 1 to 190 characters"));
    }
    no_nul("host_identifier", host_identifier)?;
    if !request.host_details.is_object() && !request.host_details.is_null() {
        return Err(invalid("host_details", "must be an object"));
    }
    crate::db::no_nul_in_json("host_details", request.host_details)?;
    if request.enroll_secret.is_empty() || request.enroll_secret.len() > 256 {
        return Err(OsqueryError::UnknownSecret);
    }
    let hash = secrets::sha256(request.enroll_secret.trim());
    let owner = store
        .tenant_by_secret_hash(SecretKind::OsqueryEnrollSecret, &hash)
        .await?
        .ok_or(OsqueryError::UnknownSecret)?;
    let tenant_id = owner.id();
    let scope = store.begin(&owner).await?;
    let db = scope.connection();
    let secret = enroll_secret::Entity::find()
        .filter(enroll_secret::Column::TenantId.eq(tenant_id))
        .filter(enroll_secret::Column::TokenHash.eq(hash.to_vec()))
        .one(db)
        .await?
        .filter(|s| s.revoked_at.is_none() && secrets::hashes_match(&s.token_hash, &hash))
        .ok_or(OsqueryError::UnknownSecret)?;

    let fingerprint = HostFingerprint::parse(&format!("osquery:{host_identifier}"))?;
    let details = request.host_details;
    let hostname = detail(details, "system_info", "hostname").unwrap_or(host_identifier);
    let existing = scope.devices().find_by_fingerprint(&fingerprint).await?;
    let system = Actor::system();
    let (device_id, created) = match existing {
        Some(device) if device.revoked_at.is_some() => return Err(OsqueryError::DeviceRevoked),
        Some(device) => (device.id, false),
        None => {
            if let Some(limit) = entitlements.device_limit(tenant_id) {
                // Serializes enrollments of this tenant for the count.
                scope.lock(TenantLock::DeviceLimit).await?;
                if scope.devices().count().await? >= limit {
                    return Err(OsqueryError::DeviceLimit { limit });
                }
            }
            let device = scope
                .devices()
                .register(&system, secret.site_id, hostname, fingerprint.as_str())
                .await?;
            (device.id, true)
        }
    };
    // Facts from host_details (osquery sends every column as a string).
    if let Some(row) = device::Entity::find_by_id(device_id)
        .filter(device::Column::TenantId.eq(tenant_id))
        .one(db)
        .await?
    {
        let now = chrono::Utc::now();
        let mut active: device::ActiveModel = row.into();
        if let Some(hostname) = clip(detail(details, "system_info", "hostname")) {
            active.hostname = Set(hostname);
        }
        active.os_name = Set(clip(detail(details, "os_version", "name")));
        active.os_version = Set(clip(detail(details, "os_version", "version")));
        active.architecture = Set(clip(detail(details, "os_version", "arch").or(detail(
            details,
            "system_info",
            "cpu_type",
        ))));
        active.cpu_model = Set(clip(detail(details, "system_info", "cpu_brand")));
        active.cpu_cores =
            Set(detail(details, "system_info", "cpu_logical_cores")
                .and_then(|v| v.parse::<i32>().ok()));
        active.memory_bytes =
            Set(detail(details, "system_info", "physical_memory")
                .and_then(|v| v.parse::<i64>().ok()));
        active.hardware_uuid = Set(clip(detail(details, "system_info", "uuid")));
        active.agent_version = Set(detail(details, "osquery_info", "version")
            .map(|v| format!("osquery {}", v.chars().take(60).collect::<String>())));
        active.facts = Set(Some(details.clone()));
        active.facts_updated_at = Set(Some(now));
        active.last_seen_at = Set(Some(now));
        if created {
            active.team_id = Set(secret.team_id);
        }
        active.updated_at = Set(now);
        active.update(db).await?;
    }
    db.execute(
        Query::update()
            .table(Alias::new("devices"))
            .value(Alias::new("managed_by"), MANAGED_BY_OSQUERY)
            .and_where(device::Column::TenantId.eq(tenant_id))
            .and_where(device::Column::Id.eq(device_id)),
    )
    .await?;

    // One node key per device: enrolling again replaces it.
    node::Entity::delete_many()
        .filter(node::Column::TenantId.eq(tenant_id))
        .filter(node::Column::DeviceId.eq(device_id))
        .exec(db)
        .await?;
    let node_key = secrets::generate(NODE_KEY_PREFIX);
    let now = chrono::Utc::now();
    node::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        device_id: Set(device_id),
        token_hash: Set(secrets::sha256(&node_key).to_vec()),
        host_identifier: Set(host_identifier.to_owned()),
        enroll_secret_id: Set(Some(secret.id)),
        osquery_version: Set(clip(detail(details, "osquery_info", "version"))),
        last_config_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await?;
    let actor = Actor {
        kind: ActorKind::Device,
        id: Some(device_id),
        ip: request.client_ip.clone(),
        user_agent: None,
    };
    scope
        .audit()
        .record(
            &actor,
            AuditRecord::new(
                if created {
                    "osquery.host_enrolled"
                } else {
                    "osquery.host_re_enrolled"
                },
                "device",
                Some(device_id),
            )
            .with_details(json!({
                "host_identifier": host_identifier,
                "enroll_secret_id": secret.id,
                "site_id": secret.site_id,
                "team_id": secret.team_id,
            })),
        )
        .await?;
    scope.commit().await?;
    Ok(NodeEnrolled {
        tenant_id,
        device_id,
        node_key,
        created,
    })
}
