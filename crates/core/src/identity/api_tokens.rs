//! API tokens (`mob_pat_...`): for scripts and CI. Shown once, stored as
//! SHA-256, never above the creator's role, optionally limited to a team,
//! always expiring (default 90 days, capped by the tenant's maximum).

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, prelude::Uuid, sea_query::Expr,
};

use crate::audit::{Actor, AuditRecord};
use crate::authz::Role;
use crate::crypto::secrets::{self, API_TOKEN_PREFIX};
use crate::db::TenantScope;
use crate::db::entities::api_token;
use crate::db::{StoreError, StoreResult, valid_name};

pub type ApiToken = api_token::Model;

pub const DEFAULT_API_TOKEN_DAYS: i64 = 90;

pub struct NewApiToken<'a> {
    /// The user creating it (it acts on their behalf and dies with them).
    pub user_id: Uuid,
    pub name: &'a str,
    pub role: Role,
    pub team_id: Option<Uuid>,
    pub expires_in_days: Option<i64>,
}

pub struct ApiTokens<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn api_tokens(&self) -> ApiTokens<'_> {
        ApiTokens::new(self)
    }
}

impl<'s> ApiTokens<'s> {
    pub(crate) fn new(scope: &'s TenantScope) -> Self {
        ApiTokens { scope }
    }

    /// Creates a token; returns the secret (shown once) and the row. The
    /// caller has checked the creator may grant `role`.
    pub async fn create(
        &self,
        actor: &Actor,
        new: NewApiToken<'_>,
    ) -> StoreResult<(String, ApiToken)> {
        let name = valid_name("name", new.name)?;
        let max_days = i64::from(self.scope.tenant().get().await?.api_token_max_days);
        let days = new
            .expires_in_days
            .unwrap_or(DEFAULT_API_TOKEN_DAYS.min(max_days));
        if days < 1 || days > max_days {
            return Err(StoreError::Invalid {
                field: "expiresInDays",
                reason: format!("must be between 1 and {max_days} (this tenant's maximum)"),
            });
        }
        if let Some(team) = new.team_id {
            self.scope.teams().get(team).await?;
        }
        let secret = secrets::generate(API_TOKEN_PREFIX);
        let now = chrono::Utc::now();
        let row = api_token::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            user_id: Set(new.user_id),
            name: Set(name),
            token_hash: Set(secrets::sha256(&secret).to_vec()),
            role: Set(new.role),
            team_id: Set(new.team_id),
            expires_at: Set(now + chrono::Duration::days(days)),
            last_used_at: Set(None),
            revoked_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("api_token.created", "api_token", Some(row.id)).with_details(serde_json::json!({
                    "name": row.name, "role": row.role.as_str(), "team_id": row.team_id, "expires_at": row.expires_at,
                })),
            )
            .await?;
        Ok((secret, row))
    }

    /// A page of tokens (only `user_id`'s when given), newest first.
    pub async fn page(
        &self,
        user_id: Option<Uuid>,
        offset: u64,
        limit: u64,
    ) -> StoreResult<(Vec<ApiToken>, u64)> {
        let mut query = api_token::Entity::find()
            .filter(api_token::Column::TenantId.eq(self.scope.tenant_id()));
        if let Some(user) = user_id {
            query = query.filter(api_token::Column::UserId.eq(user));
        }
        let total = query.clone().count(self.scope.connection()).await?;
        let rows = query
            .order_by_desc(api_token::Column::Id)
            .offset(offset)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        Ok((rows, total))
    }

    pub async fn get(&self, id: Uuid) -> StoreResult<ApiToken> {
        api_token::Entity::find_by_id(id)
            .filter(api_token::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound {
                entity: "API token",
            })
    }

    pub async fn find_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<ApiToken>> {
        let row = api_token::Entity::find()
            .filter(api_token::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(api_token::Column::TokenHash.eq(hash.to_vec()))
            .one(self.scope.connection())
            .await?;
        Ok(row.filter(|r| secrets::hashes_match(&r.token_hash, hash)))
    }

    pub async fn revoke(&self, actor: &Actor, id: Uuid) -> StoreResult<ApiToken> {
        let token = self.get(id).await?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        let mut row = token.into_active_model();
        let now = chrono::Utc::now();
        row.revoked_at = Set(Some(now));
        row.updated_at = Set(now);
        let row = row.update(self.scope.connection()).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("api_token.revoked", "api_token", Some(id))
                    .with_details(serde_json::json!({ "name": row.name })),
            )
            .await?;
        Ok(row)
    }

    /// Writes coalesced `last_used_at` values (see `crate::usage`).
    pub async fn record_last_used(
        &self,
        used: &[(Uuid, chrono::DateTime<chrono::Utc>)],
    ) -> StoreResult<()> {
        for (id, at) in used {
            api_token::Entity::update_many()
                .col_expr(api_token::Column::LastUsedAt, Expr::value(*at))
                .filter(api_token::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(api_token::Column::Id.eq(*id))
                .exec(self.scope.connection())
                .await?;
        }
        Ok(())
    }
}
