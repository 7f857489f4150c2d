//! The scoped tenant's own row: name, setup code, token policy.

use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, QuerySelect, Set};

use crate::entities::tenant;
use crate::error::{StoreError, StoreResult};
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

    /// Stores (or clears) the SHA-256 of the one-time setup code.
    pub async fn set_setup_code_hash(&self, hash: Option<[u8; 32]>) -> StoreResult<()> {
        let mut row = self.get().await?.into_active_model();
        row.setup_code_hash = Set(hash.map(|h| h.to_vec()));
        row.updated_at = Set(chrono::Utc::now());
        row.update(self.scope.connection()).await?;
        Ok(())
    }
}
