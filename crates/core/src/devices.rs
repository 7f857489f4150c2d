//! Devices: machines enrolled into one of the tenant's sites.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set, prelude::Uuid,
};

use crate::audit::{Actor, AuditRecord};
use crate::entities::device;
use crate::error::{StoreError, StoreResult, conflict_on, valid_name};
use crate::scope::TenantScope;

pub type Device = device::Model;

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

    pub async fn get(&self, id: Uuid) -> StoreResult<Device> {
        device::Entity::find_by_id(id)
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound { entity: "device" })
    }
}
