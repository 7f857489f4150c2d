//! Devices: machines enrolled into one of the tenant's sites.

use sea_orm::sea_query::{Expr, ExprTrait, Func, NullOrdering};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, Order, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, prelude::Uuid,
};

use crate::audit::{Actor, AuditRecord};
use crate::entities::device;
use crate::error::{StoreError, StoreResult, conflict_on, valid_name};
use crate::scope::TenantScope;

pub type Device = device::Model;

/// How often agents are asked to heartbeat, in seconds.
pub const HEARTBEAT_INTERVAL_SECS: i64 = 30;
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
    pub fn of(device: &Device, now: chrono::DateTime<chrono::Utc>) -> DeviceStatus {
        if device.revoked_at.is_some() {
            return DeviceStatus::Revoked;
        }
        match device.last_seen_at {
            None => DeviceStatus::NeverSeen,
            Some(seen) if seen > offline_threshold(now) => DeviceStatus::Online,
            Some(_) => DeviceStatus::Offline,
        }
    }
}

fn offline_threshold(now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    now - chrono::Duration::seconds(HEARTBEAT_INTERVAL_SECS * MISSED_HEARTBEATS_OFFLINE)
}

/// Filters for a device listing; `None` means "any".
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    pub site_id: Option<Uuid>,
    pub team_id: Option<Uuid>,
    pub status: Option<DeviceStatus>,
    /// Case-insensitive substring of the hostname.
    pub hostname_search: Option<String>,
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

    pub async fn list(&self) -> StoreResult<Vec<Device>> {
        Ok(device::Entity::find()
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
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
        let mut condition =
            Condition::all().add(device::Column::TenantId.eq(self.scope.tenant_id()));
        if let Some(site) = filter.site_id {
            condition = condition.add(device::Column::SiteId.eq(site));
        }
        if let Some(team) = filter.team_id {
            condition = condition.add(device::Column::TeamId.eq(team));
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
        let threshold = offline_threshold(chrono::Utc::now());
        condition = match filter.status {
            None => condition,
            Some(DeviceStatus::Revoked) => condition.add(device::Column::RevokedAt.is_not_null()),
            Some(DeviceStatus::NeverSeen) => condition
                .add(device::Column::RevokedAt.is_null())
                .add(device::Column::LastSeenAt.is_null()),
            Some(DeviceStatus::Online) => condition
                .add(device::Column::RevokedAt.is_null())
                .add(device::Column::LastSeenAt.gt(threshold)),
            Some(DeviceStatus::Offline) => condition
                .add(device::Column::RevokedAt.is_null())
                .add(device::Column::LastSeenAt.lte(threshold)),
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

    pub async fn get(&self, id: Uuid) -> StoreResult<Device> {
        device::Entity::find_by_id(id)
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound { entity: "device" })
    }
}
