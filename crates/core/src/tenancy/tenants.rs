//! The scoped tenant's own row: name, setup code, token policy.

use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, QuerySelect, Set, prelude::Uuid};

use crate::audit::{Actor, AuditRecord};
use crate::db::entities::tenant;
use crate::db::{
    Backend, FoundTenant, Store, StoreError, StoreResult, TenantScope, conflict_on, valid_name,
};

pub type Tenant = tenant::Model;

/// The name of the site created with every new tenant.
pub const DEFAULT_SITE: &str = "default";
/// The slug of the tenant created on an empty store.
pub const DEFAULT_TENANT_SLUG: &str = "default";

impl TenantScope {
    /// The scoped tenant's own row.
    pub fn tenant(&self) -> TenantSettings<'_> {
        TenantSettings::new(self)
    }
}

impl Store {
    /// Creates a tenant with its default site, in one transaction scoped to
    /// the new tenant's id (so the RLS `WITH CHECK` accepts the insert
    /// without any bypass). The embedded store refuses a second tenant.
    pub async fn create_tenant(
        &self,
        actor: &Actor,
        name: &str,
        slug: &str,
    ) -> StoreResult<Tenant> {
        let name = valid_name("name", name)?;
        let slug = valid_slug(slug)?;
        if self.backend() == Backend::Sqlite && self.default_tenant().await?.is_some() {
            return Err(StoreError::MultiTenantRequiresPostgres);
        }
        let id = Uuid::now_v7();
        let scope = self.begin_tenant(id, None).await?;
        let now = chrono::Utc::now();
        let tenant = tenant::ActiveModel {
            id: Set(id),
            name: Set(name),
            slug: Set(slug),
            setup_code_hash: Set(None),
            api_token_max_days: Set(365),
            created_at: Set(now),
            updated_at: Set(now),
            suspended_at: Set(None),
            signup_email: Set(None),
            verification_hash: Set(None),
            verification_expires_at: Set(None),
        }
        .insert(scope.connection())
        .await
        .map_err(conflict_on("tenant", "slug"))?;
        scope
            .audit()
            .record(
                actor,
                AuditRecord::new("tenant.created", "tenant", Some(id))
                    .with_details(serde_json::json!({ "name": tenant.name, "slug": tenant.slug })),
            )
            .await?;
        scope.sites().create(actor, DEFAULT_SITE).await?;
        scope.commit().await?;
        Ok(tenant)
    }

    /// Creates the default tenant (and its default site) on an empty store.
    /// Returns the tenant's id and whether it was created now. Safe when
    /// several servers start at once: the loser of the slug race re-reads.
    pub async fn ensure_default_tenant(&self) -> StoreResult<(FoundTenant, bool)> {
        if let Some(found) = self.default_tenant().await? {
            return Ok((found, false));
        }
        match self
            .create_tenant(&Actor::system(), "Default", DEFAULT_TENANT_SLUG)
            .await
        {
            Ok(tenant) => Ok((FoundTenant::new(tenant.id), true)),
            Err(StoreError::Conflict { .. }) | Err(StoreError::MultiTenantRequiresPostgres) => {
                let id = self
                    .default_tenant()
                    .await?
                    .ok_or(StoreError::NotFound { entity: "tenant" })?;
                Ok((id, false))
            }
            Err(other) => Err(other),
        }
    }
}

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

/// Tenant slugs: 1 to 63 characters of `a-z`, `0-9` and `-`, starting with a
/// letter or digit (they appear in URLs and certificate names).
pub(crate) fn valid_slug(slug: &str) -> StoreResult<String> {
    let ok = !slug.is_empty()
        && slug.len() <= 63
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-');
    if ok {
        Ok(slug.to_owned())
    } else {
        Err(StoreError::Invalid {
            field: "slug",
            reason: "use 1 to 63 characters of a-z, 0-9 and '-', not starting with '-'".into(),
        })
    }
}
