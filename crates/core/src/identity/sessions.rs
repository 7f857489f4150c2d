//! Refresh tokens: opaque, stored hashed, rotated on every use. All tokens
//! descending from one login share a family; presenting a token that was
//! already rotated means it was copied, so the whole family is revoked.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QuerySelect, Set,
    prelude::Uuid, sea_query::Expr,
};

use crate::crypto::secrets::{self, REFRESH_TOKEN_PREFIX};
use crate::db::Backend;
use crate::db::StoreResult;
use crate::db::TenantScope;
use crate::db::entities::refresh_token;

pub type RefreshToken = refresh_token::Model;

/// How long a refresh token lives without being used.
pub const REFRESH_TOKEN_DAYS: i64 = 30;

pub struct RefreshTokens<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn refresh_tokens(&self) -> RefreshTokens<'_> {
        RefreshTokens::new(self)
    }
}

impl<'s> RefreshTokens<'s> {
    pub(crate) fn new(scope: &'s TenantScope) -> Self {
        RefreshTokens { scope }
    }

    /// Issues a new token for `user_id` in `family_id` (a new family for a
    /// fresh login). Returns the secret, which is never stored.
    pub async fn issue(
        &self,
        user_id: Uuid,
        family_id: Uuid,
    ) -> StoreResult<(String, RefreshToken)> {
        let secret = secrets::generate(REFRESH_TOKEN_PREFIX);
        let now = chrono::Utc::now();
        let row = refresh_token::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            user_id: Set(user_id),
            family_id: Set(family_id),
            token_hash: Set(secrets::sha256(&secret).to_vec()),
            expires_at: Set(now + chrono::Duration::days(REFRESH_TOKEN_DAYS)),
            rotated_at: Set(None),
            revoked_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await?;
        Ok((secret, row))
    }

    /// Finds a token by hash, locking its row to the end of the transaction
    /// so two concurrent refreshes with one token cannot both rotate it.
    pub async fn find_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<RefreshToken>> {
        let mut query = refresh_token::Entity::find()
            .filter(refresh_token::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(refresh_token::Column::TokenHash.eq(hash.to_vec()));
        if self.scope.backend() == Backend::Postgres {
            query = query.lock_exclusive();
        }
        let row = query.one(self.scope.connection()).await?;
        Ok(row.filter(|r| secrets::hashes_match(&r.token_hash, hash)))
    }

    pub async fn mark_rotated(&self, token: RefreshToken) -> StoreResult<()> {
        let mut row = token.into_active_model();
        let now = chrono::Utc::now();
        row.rotated_at = Set(Some(now));
        row.updated_at = Set(now);
        row.update(self.scope.connection()).await?;
        Ok(())
    }

    /// Revokes every live token of the family; returns how many.
    pub async fn revoke_family(&self, family_id: Uuid) -> StoreResult<u64> {
        let now = chrono::Utc::now();
        let result = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RevokedAt, Expr::value(now))
            .col_expr(refresh_token::Column::UpdatedAt, Expr::value(now))
            .filter(refresh_token::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(refresh_token::Column::FamilyId.eq(family_id))
            .filter(refresh_token::Column::RevokedAt.is_null())
            .exec(self.scope.connection())
            .await?;
        Ok(result.rows_affected)
    }

    /// Revokes every session of a user (removal, role change to nothing).
    pub async fn revoke_user(&self, user_id: Uuid) -> StoreResult<u64> {
        let now = chrono::Utc::now();
        let result = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RevokedAt, Expr::value(now))
            .filter(refresh_token::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(refresh_token::Column::UserId.eq(user_id))
            .filter(refresh_token::Column::RevokedAt.is_null())
            .exec(self.scope.connection())
            .await?;
        Ok(result.rows_affected)
    }
}
