//! Users of a tenant. Passwords arrive here already hashed (argon2id, in
//! the identity service); this repository never sees a plaintext secret.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, prelude::Uuid,
};

use crate::audit::{Actor, AuditRecord};
use crate::authz::Role;
use crate::db::TenantScope;
use crate::db::entities::user;
use crate::db::{StoreError, StoreResult, conflict_on, valid_name};

pub type User = user::Model;

pub struct NewUser<'a> {
    pub email: &'a str,
    pub display_name: &'a str,
    pub role: Role,
    pub password_hash: Option<String>,
}

pub struct Users<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn users(&self) -> Users<'_> {
        Users::new(self)
    }
}

impl<'s> Users<'s> {
    pub(crate) fn new(scope: &'s TenantScope) -> Self {
        Users { scope }
    }

    pub async fn create(&self, actor: &Actor, new: NewUser<'_>) -> StoreResult<User> {
        let email = valid_email(new.email)?;
        let display_name = valid_name("display_name", new.display_name)?;
        let now = chrono::Utc::now();
        let row = user::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            email: Set(email),
            display_name: Set(display_name),
            role: Set(new.role),
            password_hash: Set(new.password_hash),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await
        .map_err(conflict_on("user", "email"))?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("user.created", "user", Some(row.id)).with_details(
                    serde_json::json!({ "email": row.email, "role": row.role.as_str() }),
                ),
            )
            .await?;
        Ok(row)
    }

    pub async fn list(&self) -> StoreResult<Vec<User>> {
        Ok(user::Entity::find()
            .filter(user::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_asc(user::Column::Email)
            .all(self.scope.connection())
            .await?)
    }

    /// A page of users by email, and the total count.
    pub async fn page(&self, offset: u64, limit: u64) -> StoreResult<(Vec<User>, u64)> {
        let query = user::Entity::find().filter(user::Column::TenantId.eq(self.scope.tenant_id()));
        let total = query.clone().count(self.scope.connection()).await?;
        let rows = query
            .order_by_asc(user::Column::Email)
            .offset(offset)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        Ok((rows, total))
    }

    pub async fn count(&self) -> StoreResult<u64> {
        Ok(user::Entity::find()
            .filter(user::Column::TenantId.eq(self.scope.tenant_id()))
            .count(self.scope.connection())
            .await?)
    }

    pub async fn count_with_role(&self, role: Role) -> StoreResult<u64> {
        Ok(user::Entity::find()
            .filter(user::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(user::Column::Role.eq(role))
            .count(self.scope.connection())
            .await?)
    }

    pub async fn find_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        Ok(user::Entity::find()
            .filter(user::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(user::Column::Email.eq(email.trim().to_lowercase()))
            .one(self.scope.connection())
            .await?)
    }

    pub async fn set_role(&self, actor: &Actor, id: Uuid, role: Role) -> StoreResult<User> {
        let user = self.get(id).await?;
        let from = user.role;
        let mut row = user.into_active_model();
        row.role = Set(role);
        row.updated_at = Set(chrono::Utc::now());
        let row = row.update(self.scope.connection()).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("user.role_changed", "user", Some(id)).with_details(
                    serde_json::json!({ "email": row.email, "from": from.as_str(), "to": role.as_str() }),
                ),
            )
            .await?;
        Ok(row)
    }

    /// Removes a user; their sessions and API tokens go with them.
    pub async fn delete(&self, actor: &Actor, id: Uuid) -> StoreResult<()> {
        let user = self.get(id).await?;
        user::Entity::delete_by_id(id)
            .exec(self.scope.connection())
            .await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("user.removed", "user", Some(id)).with_details(
                    serde_json::json!({ "email": user.email, "role": user.role.as_str() }),
                ),
            )
            .await?;
        Ok(())
    }

    pub async fn get(&self, id: Uuid) -> StoreResult<User> {
        user::Entity::find_by_id(id)
            .filter(user::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound { entity: "user" })
    }
}

/// Emails are stored lower-cased (the unique key is on the stored value)
/// and must look like `local@domain`.
pub(crate) fn valid_email(email: &str) -> StoreResult<String> {
    let email = email.trim().to_lowercase();
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !email.chars().any(char::is_whitespace);
    if ok {
        Ok(email)
    } else {
        Err(StoreError::Invalid {
            field: "email",
            reason: "must be an address like name@example.com".into(),
        })
    }
}
