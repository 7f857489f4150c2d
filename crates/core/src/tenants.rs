//! The scoped tenant's own row: name, setup code, token policy.

use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, QuerySelect, Set};

use crate::audit::{Actor, AuditRecord};
use crate::entities::tenant;
use crate::error::{StoreError, StoreResult, valid_name};
use crate::scope::TenantScope;
use crate::store::{Backend, Tenant};

pub struct TenantSettings<'s> {
    scope: &'s TenantScope,
}

impl<'s> TenantSettings<'s> {
    pub(crate) fn new(scope: &'s TenantScope) -> Self {
        TenantSettings { scope }
    }

    pub async fn get(&self) -> StoreResult<Tenant> {
        tenant::Entity::find_by_id(self.scope.tenant_id())
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound { entity: "tenant" })
    }

    /// Reads the row with a lock held to the end of the transaction, so
    /// two first-run setups cannot both succeed.
    pub async fn get_for_update(&self) -> StoreResult<Tenant> {
        let mut query = tenant::Entity::find_by_id(self.scope.tenant_id());
        if self.scope.backend() == Backend::Postgres {
            query = query.lock_exclusive();
        }
        query
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound { entity: "tenant" })
    }

    /// Renames the tenant and/or sets the longest lifetime an API token may
    /// be given (1 to 3650 days); audited.
    pub async fn update(
        &self,
        actor: &Actor,
        name: Option<&str>,
        api_token_max_days: Option<i32>,
    ) -> StoreResult<Tenant> {
        let current = self.get().await?;
        let before = serde_json::json!({ "name": current.name, "api_token_max_days": current.api_token_max_days });
        let mut row = current.into_active_model();
        if let Some(name) = name {
            row.name = Set(valid_name("name", name)?);
        }
        if let Some(days) = api_token_max_days {
            if !(1..=3650).contains(&days) {
                return Err(StoreError::Invalid {
                    field: "apiTokenMaxDays",
                    reason: "must be between 1 and 3650".into(),
                });
            }
            row.api_token_max_days = Set(days);
        }
        row.updated_at = Set(chrono::Utc::now());
        let tenant = row.update(self.scope.connection()).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("tenant.updated", "tenant", Some(tenant.id)).with_details(serde_json::json!({
                    "from": before,
                    "to": { "name": tenant.name, "api_token_max_days": tenant.api_token_max_days },
                })),
            )
            .await?;
        Ok(tenant)
    }

    /// Stores (or clears) the SHA-256 of the one-time setup code.
    pub async fn set_setup_code_hash(&self, hash: Option<[u8; 32]>) -> StoreResult<()> {
        let mut row = self.get().await?.into_active_model();
        row.setup_code_hash = Set(hash.map(|h| h.to_vec()));
        row.updated_at = Set(chrono::Utc::now());
        row.update(self.scope.connection()).await?;
        Ok(())
    }
}
