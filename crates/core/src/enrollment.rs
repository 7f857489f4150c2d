//! Enrollment tokens: site-scoped, expiring, use-limited secrets an agent
//! presents once to get its certificate. Only the SHA-256 of the secret is
//! stored: the secret is high-entropy, so a fast hash suffices (argon2 is
//! for low-entropy passwords) and keeps the enroll path cheap.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set, prelude::Uuid,
};

use crate::audit::{Actor, AuditRecord};
use crate::entities::enrollment_token;
use crate::error::{StoreError, StoreResult, conflict_on, valid_name};
use crate::scope::TenantScope;

pub type EnrollmentToken = enrollment_token::Model;

pub struct NewEnrollmentToken<'a> {
    pub site_id: Uuid,
    pub name: &'a str,
    pub token_hash: [u8; 32],
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub max_uses: i32,
}

pub struct EnrollmentTokens<'s> {
    scope: &'s TenantScope,
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
            allowed_ips: Set(None),
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

    pub async fn list(&self) -> StoreResult<Vec<EnrollmentToken>> {
        Ok(enrollment_token::Entity::find()
            .filter(enrollment_token::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(enrollment_token::Column::Id)
            .all(self.scope.connection())
            .await?)
    }
}
