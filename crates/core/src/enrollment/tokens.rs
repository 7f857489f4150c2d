//! Enrollment tokens: site-scoped, expiring, use-limited secrets an agent
//! presents once to get its certificate. Only the SHA-256 of the secret is
//! stored: the secret is high-entropy, so a fast hash suffices (argon2 is
//! for low-entropy passwords) and keeps the enroll path cheap.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, prelude::Uuid,
};

use crate::crypto::secrets;
use sea_orm::sea_query::{Expr, ExprTrait};

use crate::audit::{Actor, AuditRecord};
use crate::db::TenantScope;
use crate::db::entities::enrollment_token;
use crate::db::{StoreError, StoreResult, conflict_on, valid_name};

pub type EnrollmentToken = enrollment_token::Model;

pub struct NewEnrollmentToken<'a> {
    pub site_id: Uuid,
    pub name: &'a str,
    pub token_hash: [u8; 32],
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub max_uses: i32,
    /// Addresses or CIDR networks allowed to redeem it; empty: any.
    pub allowed_ips: Vec<String>,
}

pub struct EnrollmentTokens<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn enrollment_tokens(&self) -> EnrollmentTokens<'_> {
        EnrollmentTokens::new(self)
    }
}

impl<'s> EnrollmentTokens<'s> {
    pub(crate) fn new(scope: &'s TenantScope) -> Self {
        EnrollmentTokens { scope }
    }

    pub async fn create(
        &self,
        actor: &Actor,
        new: NewEnrollmentToken<'_>,
    ) -> StoreResult<EnrollmentToken> {
        let name = valid_name("name", new.name)?;
        if new.max_uses < 1 {
            return Err(StoreError::Invalid {
                field: "max_uses",
                reason: "must be at least 1".into(),
            });
        }
        for entry in &new.allowed_ips {
            if super::parse_network(entry).is_none() {
                return Err(StoreError::Invalid {
                    field: "allowedIps",
                    reason: format!("`{entry}` is not an IP address or CIDR network"),
                });
            }
        }
        let allowed_ips = new.allowed_ips.clone();
        self.scope.sites().get(new.site_id).await?;
        let now = chrono::Utc::now();
        let row = enrollment_token::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            site_id: Set(new.site_id),
            name: Set(name),
            token_hash: Set(new.token_hash.to_vec()),
            expires_at: Set(new.expires_at),
            max_uses: Set(new.max_uses),
            uses: Set(0),
            allowed_ips: Set(if allowed_ips.is_empty() {
                None
            } else {
                Some(serde_json::json!(allowed_ips))
            }),
            revoked_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await
        .map_err(conflict_on("enrollment token", "token"))?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("enrollment_token.created", "enrollment_token", Some(row.id))
                    .with_details(serde_json::json!({ "name": row.name, "site_id": row.site_id })),
            )
            .await?;
        Ok(row)
    }

    pub async fn get(&self, id: Uuid) -> StoreResult<EnrollmentToken> {
        enrollment_token::Entity::find_by_id(id)
            .filter(enrollment_token::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound {
                entity: "enrollment token",
            })
    }

    /// A page of tokens, newest first, and the total count.
    pub async fn page(&self, offset: u64, limit: u64) -> StoreResult<(Vec<EnrollmentToken>, u64)> {
        let query = enrollment_token::Entity::find()
            .filter(enrollment_token::Column::TenantId.eq(self.scope.tenant_id()));
        let total = query.clone().count(self.scope.connection()).await?;
        let rows = query
            .order_by_desc(enrollment_token::Column::Id)
            .offset(offset)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        Ok((rows, total))
    }

    /// Finds a token by the SHA-256 of its secret (compared again in
    /// constant time).
    pub async fn find_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<EnrollmentToken>> {
        let row = enrollment_token::Entity::find()
            .filter(enrollment_token::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(enrollment_token::Column::TokenHash.eq(hash.to_vec()))
            .one(self.scope.connection())
            .await?;
        Ok(row.filter(|r| secrets::hashes_match(&r.token_hash, hash)))
    }

    /// Takes one use of a still-valid token; false when none is left (or
    /// it was revoked or expired meanwhile). The row stays locked until the
    /// transaction ends, which is what makes "N uses" exact.
    pub async fn claim_use(&self, id: Uuid) -> StoreResult<bool> {
        let now = chrono::Utc::now();
        let result = enrollment_token::Entity::update_many()
            .col_expr(
                enrollment_token::Column::Uses,
                Expr::col(enrollment_token::Column::Uses).add(1),
            )
            .col_expr(enrollment_token::Column::UpdatedAt, Expr::value(now))
            .filter(enrollment_token::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(enrollment_token::Column::Id.eq(id))
            .filter(
                Expr::col(enrollment_token::Column::Uses)
                    .lt(Expr::col(enrollment_token::Column::MaxUses)),
            )
            .filter(enrollment_token::Column::RevokedAt.is_null())
            .filter(enrollment_token::Column::ExpiresAt.gt(now))
            .exec(self.scope.connection())
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Gives back a use claimed by an enrollment that then failed.
    pub(crate) async fn release_use(&self, id: Uuid) -> StoreResult<()> {
        enrollment_token::Entity::update_many()
            .col_expr(
                enrollment_token::Column::Uses,
                Expr::col(enrollment_token::Column::Uses).sub(1),
            )
            .filter(enrollment_token::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(enrollment_token::Column::Id.eq(id))
            .filter(enrollment_token::Column::Uses.gt(0))
            .exec(self.scope.connection())
            .await?;
        Ok(())
    }

    pub async fn revoke(&self, actor: &Actor, id: Uuid) -> StoreResult<EnrollmentToken> {
        let token = self.get(id).await?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        let now = chrono::Utc::now();
        let mut row = token.into_active_model();
        row.revoked_at = Set(Some(now));
        row.updated_at = Set(now);
        let row = row.update(self.scope.connection()).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("enrollment_token.revoked", "enrollment_token", Some(id))
                    .with_details(serde_json::json!({ "name": row.name })),
            )
            .await?;
        Ok(row)
    }

    pub async fn list(&self) -> StoreResult<Vec<EnrollmentToken>> {
        Ok(enrollment_token::Entity::find()
            .filter(enrollment_token::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(enrollment_token::Column::Id)
            .all(self.scope.connection())
            .await?)
    }
}
