//! Daily usage: how many devices each tenant has and how many checked in
//! that day, recorded by a background job for metered billing and the
//! operator's export.

use sea_orm::prelude::Uuid;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};

use super::entities::usage_day;
use crate::db::entities::device;
use crate::db::{Store, StoreResult, SystemTask};

/// One tenant's usage on one day (UTC).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsageDay {
    pub tenant_id: Uuid,
    pub tenant_slug: String,
    pub day: chrono::NaiveDate,
    /// Devices enrolled and not revoked (the highest count seen that day).
    pub devices: i64,
    /// Devices that checked in that day.
    pub active_devices: i64,
}

impl Store {
    /// Records today's counts for every tenant (keeping the day's highest
    /// device count). Returns how many tenants were recorded.
    pub async fn record_billing_usage(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<usize> {
        let day = now.date_naive();
        let day_start = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or(now);
        let tenants = self.billing_tenant_ids().await?;
        for tenant_id in &tenants {
            let scope = self
                .begin(&SystemTask::new("billing-usage", *tenant_id))
                .await?;
            let devices = device::Entity::find()
                .filter(device::Column::TenantId.eq(*tenant_id))
                .filter(device::Column::RevokedAt.is_null())
                .count(scope.connection())
                .await? as i64;
            let active = device::Entity::find()
                .filter(device::Column::TenantId.eq(*tenant_id))
                .filter(device::Column::RevokedAt.is_null())
                .filter(device::Column::LastSeenAt.gte(day_start))
                .count(scope.connection())
                .await? as i64;
            let existing = usage_day::Entity::find()
                .filter(usage_day::Column::TenantId.eq(*tenant_id))
                .filter(usage_day::Column::Day.eq(day))
                .one(scope.connection())
                .await?;
            match existing {
                Some(row) => {
                    let mut model: usage_day::ActiveModel = row.clone().into();
                    model.devices = Set(row.devices.max(devices));
                    model.active_devices = Set(row.active_devices.max(active));
                    model.updated_at = Set(now);
                    sea_orm::ActiveModelTrait::update(model, scope.connection()).await?;
                }
                None => {
                    usage_day::Entity::insert(usage_day::ActiveModel {
                        id: Set(Uuid::now_v7()),
                        tenant_id: Set(*tenant_id),
                        day: Set(day),
                        devices: Set(devices),
                        active_devices: Set(active),
                        created_at: Set(now),
                        updated_at: Set(now),
                    })
                    .exec_without_returning(scope.connection())
                    .await?;
                }
            }
            scope.commit().await?;
        }
        Ok(tenants.len())
    }
}
