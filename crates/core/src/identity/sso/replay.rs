//! The replay cache: a consumed assertion (an ID token, a SAML assertion
//! id) is remembered by its hash until it expires, and a second
//! presentation is refused. Entries past their expiry are pruned as new
//! ones arrive.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use super::entities::sso_replay;
use super::{Sso, SsoError, SsoResult};
use crate::db::StoreError;

impl Sso<'_> {
    /// Remembers `key_hash` until `expires_at`; [`SsoError::Replayed`] if
    /// it is already remembered. The unique key `(tenant_id, key_hash)`
    /// makes two concurrent presentations fail one of them.
    pub async fn remember_once(
        &self,
        key_hash: [u8; 32],
        expires_at: DateTime<Utc>,
    ) -> SsoResult<()> {
        let now = Utc::now();
        let db = self.scope.connection();
        sso_replay::Entity::delete_many()
            .filter(sso_replay::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(sso_replay::Column::ExpiresAt.lt(now))
            .exec(db)
            .await
            .map_err(StoreError::from)?;
        let seen = sso_replay::Entity::find()
            .filter(sso_replay::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(sso_replay::Column::KeyHash.eq(key_hash.to_vec()))
            .one(db)
            .await
            .map_err(StoreError::from)?;
        if seen.is_some() {
            return Err(SsoError::Replayed);
        }
        sso_replay::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            key_hash: Set(key_hash.to_vec()),
            expires_at: Set(expires_at.max(now)),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(db)
        .await
        .map_err(|e| match crate::db::conflict_on("assertion", "id")(e) {
            StoreError::Conflict { .. } => SsoError::Replayed,
            other => SsoError::Store(other),
        })?;
        Ok(())
    }
}
