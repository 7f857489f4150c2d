//! Devices: machines enrolled into one of the tenant's sites.

use sea_orm::sea_query::{Expr, ExprTrait, Func, NullOrdering};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, Order, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, prelude::Uuid,
};

mod identity;
pub mod presence;

pub use identity::DeviceIdentity;

use mobius_api::device::HostFacts;
use sea_orm::{ConnectionTrait, DbBackend, IntoActiveModel, Statement};

use crate::audit::{Actor, AuditRecord};
use crate::db::entities::{device, revoked_device};
use crate::db::{
    Backend, StoreError, StoreResult, TenantScope, conflict_on, no_nul, no_nul_in_json, valid_name,
};
use crate::pki::IssuedCertificate;

pub type Device = device::Model;

/// How often agents are asked to heartbeat unless configured otherwise.
pub const HEARTBEAT_INTERVAL_SECS: u64 = 30;
/// A device is offline after missing this many heartbeats.
pub const MISSED_HEARTBEATS_OFFLINE: i64 = 3;

/// Where a device stands, derived from `last_seen_at` and `revoked_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceStatus {
    Online,
    Offline,
    NeverSeen,
    Revoked,
}

impl DeviceStatus {
    /// The status at `now` for agents told to heartbeat every `interval_secs`.
    pub fn of(
        device: &Device,
        now: chrono::DateTime<chrono::Utc>,
        interval_secs: u64,
    ) -> DeviceStatus {
        if device.revoked_at.is_some() {
            return DeviceStatus::Revoked;
        }
        match device.last_seen_at {
            None => DeviceStatus::NeverSeen,
            Some(seen) if seen > offline_threshold(now, interval_secs) => DeviceStatus::Online,
            Some(_) => DeviceStatus::Offline,
        }
    }
}

/// Devices last seen at or before this are offline at `now`.
pub fn offline_threshold(
    now: chrono::DateTime<chrono::Utc>,
    interval_secs: u64,
) -> chrono::DateTime<chrono::Utc> {
    let interval = i64::try_from(interval_secs).unwrap_or(i64::MAX / 4);
    now - chrono::Duration::seconds(interval.saturating_mul(MISSED_HEARTBEATS_OFFLINE))
}

/// A host's fingerprint as its agent reports it: what makes a second
/// enrollment of the same machine find its device. Validated once, here
/// (1 to 200 characters after trimming, like every name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFingerprint(String);

impl HostFingerprint {
    pub fn parse(value: &str) -> StoreResult<HostFingerprint> {
        valid_name("host_fingerprint", value).map(HostFingerprint)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The device an enrollment writes: found by its fingerprint, or new.
pub(crate) struct EnrolledDevice<'a> {
    pub id: Uuid,
    pub site_id: Uuid,
    /// The name kept when the facts carry no hostname: the existing
    /// device's, or the fingerprint for a new one.
    pub hostname: &'a str,
    pub fingerprint: &'a HostFingerprint,
    /// False when the host enrolled before and keeps its device.
    pub created: bool,
}

/// Sets the fact columns (the common facts) and the JSON of all of them.
fn set_facts(
    row: &mut device::ActiveModel,
    checked: CheckedFacts<'_>,
    now: chrono::DateTime<chrono::Utc>,
) {
    let CheckedFacts { facts, json } = checked;
    let text = |s: &str| (!s.trim().is_empty()).then(|| s.chars().take(200).collect::<String>());
    if let Some(hostname) = text(&facts.hostname) {
        row.hostname = Set(hostname);
    }
    row.os_name = Set(text(&facts.os_name));
    row.os_version = Set(text(&facts.os_version));
    row.kernel_version = Set(text(&facts.kernel_version));
    row.architecture = Set(text(&facts.architecture));
    row.cpu_model = Set(text(&facts.cpu_model));
    row.cpu_cores = Set(i32::try_from(facts.cpu_cores).ok());
    row.memory_bytes = Set(i64::try_from(facts.memory_bytes).ok());
    row.agent_version = Set(text(&facts.agent_version));
    row.hardware_uuid = Set(facts.hardware_uuid.as_deref().and_then(text));
    row.facts = Set(Some(json));
    row.facts_updated_at = Set(Some(now));
}

/// Filters for a device listing; `None` means "any".
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    pub site_id: Option<Uuid>,
    pub team_id: Option<Uuid>,
    pub status: Option<DeviceStatus>,
    /// Case-insensitive substring of the hostname.
    pub hostname_search: Option<String>,
    /// Exact OS name as reported by the agent (e.g. `Debian GNU/Linux`).
    pub os_name: Option<String>,
    /// The heartbeat interval agents are told, for the online/offline
    /// split; `None` means [`HEARTBEAT_INTERVAL_SECS`].
    pub heartbeat_interval_secs: Option<u64>,
    /// Devices this server saw within the online window although the
    /// database's `last_seen_at` may not show it yet
    /// ([`presence::Presence::online_here`]): the status filter counts them
    /// online, as their shown status does.
    pub seen_here: Vec<Uuid>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceOrder {
    #[default]
    Hostname,
    /// Most recently seen first; never-seen devices last.
    LastSeen,
}

pub struct Devices<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn devices(&self) -> Devices<'_> {
        Devices::new(self)
    }
}

/// Facts checked once and serialized once: refused if any text in them
/// holds a NUL (which Postgres cannot store), then written from the same
/// JSON value.
pub struct CheckedFacts<'a> {
    facts: &'a HostFacts,
    json: serde_json::Value,
}

impl<'a> CheckedFacts<'a> {
    pub fn new(facts: &'a HostFacts) -> StoreResult<CheckedFacts<'a>> {
        let json = serde_json::to_value(facts).map_err(|e| StoreError::Invalid {
            field: "facts",
            reason: e.to_string(),
        })?;
        no_nul_in_json("facts", &json)?;
        Ok(CheckedFacts { facts, json })
    }
}

impl<'s> Devices<'s> {
    pub(crate) fn new(scope: &'s TenantScope) -> Self {
        Devices { scope }
    }

    /// Adds a device to `site_id`. The site must belong to the tenant; a
    /// second device with the same host fingerprint is a conflict.
    pub async fn register(
        &self,
        actor: &Actor,
        site_id: Uuid,
        hostname: &str,
        host_fingerprint: &str,
    ) -> StoreResult<Device> {
        let hostname = valid_name("hostname", hostname)?;
        let host_fingerprint = valid_name("host_fingerprint", host_fingerprint)?;
        self.scope.sites().get(site_id).await?;
        let now = chrono::Utc::now();
        let row = device::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            site_id: Set(site_id),
            team_id: Set(None),
            hostname: Set(hostname),
            host_fingerprint: Set(host_fingerprint),
            last_seen_at: Set(None),
            revoked_at: Set(None),
            os_name: Set(None),
            os_version: Set(None),
            kernel_version: Set(None),
            architecture: Set(None),
            cpu_model: Set(None),
            cpu_cores: Set(None),
            memory_bytes: Set(None),
            agent_version: Set(None),
            hardware_uuid: Set(None),
            facts: Set(None),
            facts_updated_at: Set(None),
            ca_id: Set(None),
            cert_serial: Set(None),
            cert_not_after: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await
        .map_err(conflict_on("device", "host_fingerprint"))?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("device.registered", "device", Some(row.id)).with_details(
                    serde_json::json!({ "hostname": row.hostname, "site_id": site_id }),
                ),
            )
            .await?;
        Ok(row)
    }

    /// The rows this caller may read: the tenant's devices, or one team's
    /// for a caller limited to a team (the scope carries the limit, so no
    /// caller can forget it).
    fn visible(&self) -> Condition {
        let condition = Condition::all().add(device::Column::TenantId.eq(self.scope.tenant_id()));
        match self.scope.team_restriction() {
            Some(team) => condition.add(device::Column::TeamId.eq(team)),
            None => condition,
        }
    }

    pub async fn list(&self) -> StoreResult<Vec<Device>> {
        Ok(device::Entity::find()
            .filter(self.visible())
            .order_by_asc(device::Column::Hostname)
            .all(self.scope.connection())
            .await?)
    }

    /// A filtered, ordered page of devices and the total matching.
    pub async fn page(
        &self,
        filter: &DeviceFilter,
        order: DeviceOrder,
        offset: u64,
        limit: u64,
    ) -> StoreResult<(Vec<Device>, u64)> {
        if let Some(os) = &filter.os_name {
            no_nul("os_name", os)?;
        }
        if let Some(search) = &filter.hostname_search {
            no_nul("hostname_search", search)?;
        }
        let mut condition = self.visible();
        if let Some(site) = filter.site_id {
            condition = condition.add(device::Column::SiteId.eq(site));
        }
        if let Some(team) = filter.team_id {
            condition = condition.add(device::Column::TeamId.eq(team));
        }
        if let Some(os) = &filter.os_name {
            condition = condition.add(device::Column::OsName.eq(os.as_str()));
        }
        if let Some(search) = filter
            .hostname_search
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            // LIKE wildcards in the search are matched literally.
            let escaped = search
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            condition = condition.add(
                Expr::expr(Func::lower(Expr::col(device::Column::Hostname)))
                    .like(sea_orm::sea_query::LikeExpr::new(format!("%{escaped}%")).escape('\\')),
            );
        }
        let interval = filter
            .heartbeat_interval_secs
            .unwrap_or(HEARTBEAT_INTERVAL_SECS);
        let threshold = offline_threshold(chrono::Utc::now(), interval);
        condition = match filter.status {
            None => condition,
            Some(DeviceStatus::Revoked) => condition.add(device::Column::RevokedAt.is_not_null()),
            Some(DeviceStatus::NeverSeen) => condition
                .add(device::Column::RevokedAt.is_null())
                .add(device::Column::LastSeenAt.is_null())
                .add(device::Column::Id.is_not_in(filter.seen_here.iter().copied())),
            Some(DeviceStatus::Online) => condition.add(device::Column::RevokedAt.is_null()).add(
                Condition::any()
                    .add(device::Column::LastSeenAt.gt(threshold))
                    .add(device::Column::Id.is_in(filter.seen_here.iter().copied())),
            ),
            Some(DeviceStatus::Offline) => condition
                .add(device::Column::RevokedAt.is_null())
                .add(device::Column::LastSeenAt.lte(threshold))
                .add(device::Column::Id.is_not_in(filter.seen_here.iter().copied())),
        };
        let query = device::Entity::find().filter(condition);
        let total = query.clone().count(self.scope.connection()).await?;
        let query = match order {
            DeviceOrder::Hostname => query.order_by_asc(device::Column::Hostname),
            DeviceOrder::LastSeen => query.order_by_with_nulls(
                device::Column::LastSeenAt,
                Order::Desc,
                NullOrdering::Last,
            ),
        };
        let rows = query
            .order_by_asc(device::Column::Id)
            .offset(offset)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        Ok((rows, total))
    }

    pub async fn count(&self) -> StoreResult<u64> {
        Ok(device::Entity::find()
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
            .count(self.scope.connection())
            .await?)
    }

    pub async fn find_by_fingerprint(
        &self,
        fingerprint: &HostFingerprint,
    ) -> StoreResult<Option<Device>> {
        Ok(device::Entity::find()
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(device::Column::HostFingerprint.eq(fingerprint.as_str()))
            .one(self.scope.connection())
            .await?)
    }

    /// Writes an enrolled device in one statement: a new row (with the id
    /// its certificate names) or, for a host enrolling again, its existing
    /// row, with the certificate and the facts either way. Audited by the
    /// caller, with the token and certificate in the event. Returns the
    /// hostname the device now has.
    pub(crate) async fn write_enrolled(
        &self,
        enrolled: EnrolledDevice<'_>,
        certificate: &IssuedCertificate,
        facts: CheckedFacts<'_>,
    ) -> StoreResult<String> {
        let now = chrono::Utc::now();
        let mut row = <device::ActiveModel as Default>::default();
        set_facts(&mut row, facts, now);
        row.ca_id = Set(Some(certificate.ca_id));
        row.cert_serial = Set(Some(certificate.serial.clone()));
        row.cert_not_after = Set(Some(certificate.not_after));
        row.updated_at = Set(now);
        // A host that reports no hostname is named by its fingerprint.
        let hostname = match &row.hostname {
            sea_orm::ActiveValue::Set(name) => name.clone(),
            _ => enrolled.hostname.to_owned(),
        };
        if !enrolled.created {
            self.update_columns(enrolled.id, row).await?;
            return Ok(hostname);
        }
        row.id = Set(enrolled.id);
        row.tenant_id = Set(self.scope.tenant_id());
        row.site_id = Set(enrolled.site_id);
        row.team_id = Set(None);
        row.hostname = Set(hostname.clone());
        row.host_fingerprint = Set(enrolled.fingerprint.as_str().to_owned());
        row.last_seen_at = Set(None);
        row.revoked_at = Set(None);
        row.created_at = Set(now);
        device::Entity::insert(row)
            .exec_without_returning(self.scope.connection())
            .await
            .map_err(conflict_on("device", "host_fingerprint"))?;
        Ok(hostname)
    }

    pub async fn set_certificate(
        &self,
        id: Uuid,
        certificate: &IssuedCertificate,
    ) -> StoreResult<()> {
        self.update_columns(
            id,
            device::ActiveModel {
                ca_id: Set(Some(certificate.ca_id)),
                cert_serial: Set(Some(certificate.serial.clone())),
                cert_not_after: Set(Some(certificate.not_after)),
                updated_at: Set(chrono::Utc::now()),
                ..Default::default()
            },
        )
        .await
    }

    /// One UPDATE of just the columns set in `changes` (no read first);
    /// NotFound when the device is not in this tenant.
    async fn update_columns(&self, id: Uuid, changes: device::ActiveModel) -> StoreResult<()> {
        let result = device::Entity::update_many()
            .set(changes)
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(device::Column::Id.eq(id))
            .exec(self.scope.connection())
            .await?;
        if result.rows_affected == 0 {
            return Err(StoreError::NotFound { entity: "device" });
        }
        Ok(())
    }

    /// Keeps the latest facts: the common ones as columns, all as JSON.
    pub async fn record_facts(&self, id: Uuid, facts: &HostFacts) -> StoreResult<()> {
        let mut row = <device::ActiveModel as Default>::default();
        let now = chrono::Utc::now();
        set_facts(&mut row, CheckedFacts::new(facts)?, now);
        row.updated_at = Set(now);
        self.update_columns(id, row).await
    }

    /// Writes coalesced heartbeat times in one statement per 500 devices.
    pub async fn record_last_seen(
        &self,
        seen: &[(Uuid, chrono::DateTime<chrono::Utc>)],
    ) -> StoreResult<()> {
        let db = self.scope.connection();
        match self.scope.backend() {
            Backend::Postgres => {
                for chunk in seen.chunks(500) {
                    let mut sql =
                        String::from("UPDATE devices AS d SET last_seen_at = v.t FROM (VALUES ");
                    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 2 + 1);
                    for (i, (id, at)) in chunk.iter().enumerate() {
                        if i > 0 {
                            sql.push_str(", ");
                        }
                        sql.push_str(&format!(
                            "(${}::uuid, ${}::timestamptz)",
                            i * 2 + 1,
                            i * 2 + 2
                        ));
                        values.push((*id).into());
                        values.push((*at).into());
                    }
                    sql.push_str(&format!(
                        ") AS v(id, t) WHERE d.id = v.id AND d.tenant_id = ${} \
                         AND (d.last_seen_at IS NULL OR d.last_seen_at < v.t)",
                        chunk.len() * 2 + 1
                    ));
                    values.push(self.scope.tenant_id().into());
                    db.execute_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        &sql,
                        values,
                    ))
                    .await?;
                }
            }
            Backend::Sqlite => {
                for (id, at) in seen {
                    device::Entity::update_many()
                        .col_expr(device::Column::LastSeenAt, Expr::value(*at))
                        .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
                        .filter(device::Column::Id.eq(*id))
                        .exec(db)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Revokes a device: its certificate stops working everywhere within
    /// seconds (listeners poll the revocation list).
    pub async fn revoke(&self, actor: &Actor, id: Uuid) -> StoreResult<Device> {
        let device = self.get(id).await?;
        if device.revoked_at.is_some() {
            return Ok(device);
        }
        let now = chrono::Utc::now();
        let mut row = device.into_active_model();
        row.revoked_at = Set(Some(now));
        row.updated_at = Set(now);
        let device = row.update(self.scope.connection()).await?;
        self.add_to_revocation_list(id, now).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("device.revoked", "device", Some(id))
                    .with_details(serde_json::json!({ "hostname": device.hostname })),
            )
            .await?;
        Ok(device)
    }

    /// Deletes a device; its certificate is refused from then on.
    pub async fn delete(&self, actor: &Actor, id: Uuid) -> StoreResult<()> {
        let device = self.get(id).await?;
        device::Entity::delete_by_id(id)
            .exec(self.scope.connection())
            .await?;
        self.add_to_revocation_list(id, chrono::Utc::now()).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("device.deleted", "device", Some(id))
                    .with_details(serde_json::json!({ "hostname": device.hostname })),
            )
            .await?;
        Ok(())
    }

    async fn add_to_revocation_list(
        &self,
        device_id: Uuid,
        at: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        revoked_device::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            device_id: Set(device_id),
            revoked_at: Set(at),
            created_at: Set(at),
            updated_at: Set(at),
        }
        .insert(self.scope.connection())
        .await?;
        Ok(())
    }

    pub async fn get(&self, id: Uuid) -> StoreResult<Device> {
        device::Entity::find_by_id(id)
            .filter(self.visible())
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound { entity: "device" })
    }
}
