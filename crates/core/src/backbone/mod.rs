//! The backbone: a reverse tunnel that makes services on devices (or any
//! backend) reachable at `<service>.<domain>`. This area keeps its tenant
//! data: services and their tokens (`mosb_<service>_...`, stored as
//! SHA-256), principals (`mosb_pr_...`, stored as SHA-256, keys derived
//! from the tenant's sealed master secret, see [`keys`]), and grants of a
//! principal to a service. The tunnel and its listener are in the server.

mod entities;
pub mod keys;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, Set,
    prelude::Uuid,
};
use serde::Serialize;

use crate::audit::{Actor, AuditRecord};
use crate::crypto::sealing::{SealContext, SecretSealer};
use crate::crypto::secrets;
use crate::db::{StoreError, StoreResult, TenantScope, conflict_on, valid_name};
use entities::{backbone_tenant, grant, principal, service, service_token};

/// A service: the host label `<name>.<domain>`.
#[derive(Clone, Debug, Serialize)]
pub struct Service {
    pub id: Uuid,
    pub name: String,
    /// Requests without a principal are refused (401) instead of being
    /// forwarded without identity headers.
    pub require_identity: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A service token, without its secret.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceToken {
    pub id: Uuid,
    pub service: String,
    pub service_id: Uuid,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A principal: a client identity that grants let into services.
#[derive(Clone, Debug, Serialize)]
pub struct Principal {
    pub principal_id: Uuid,
    pub name: String,
    pub email: String,
    pub note: Option<String>,
    pub key_version: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<principal::Model> for Principal {
    fn from(row: principal::Model) -> Self {
        Principal {
            principal_id: row.id,
            name: row.name,
            email: row.email,
            note: row.note,
            key_version: row.key_version,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        }
    }
}

fn service_from(row: service::Model) -> Service {
    Service {
        id: row.id,
        name: row.name,
        require_identity: row.require_identity,
        created_at: row.created_at,
    }
}

/// Refusals of the backbone's credential checks. Every variant is a
/// client-visible outcome; the server maps them with an exhaustive match.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// No usable credential: unknown, revoked, malformed, expired, or a
    /// bad signature (one answer for all, so nothing is learned).
    #[error("invalid or expired backbone credential")]
    Unauthenticated,
    /// A valid principal without a grant to this service.
    #[error("this principal has no grant to the service")]
    Forbidden,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Service names are DNS labels: 1 to 63 of `a-z`, `0-9` and `-`, not
/// starting or ending with `-`, and not `pr` (which would make a service
/// token look like a principal credential).
pub fn valid_service_name(name: &str) -> StoreResult<String> {
    let name = name.trim().to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name != "pr";
    if !ok {
        return Err(StoreError::Invalid {
            field: "service_name",
            reason: "must be a DNS label: 1-63 of a-z, 0-9 and '-' (not at either end), not `pr`"
                .into(),
        });
    }
    Ok(name)
}

/// Checks an email loosely (one `@`, something on each side, no spaces):
/// it is displayed and forwarded, never used to send mail.
fn valid_email(email: &str) -> StoreResult<String> {
    let email = email.trim();
    let ok = email.len() <= 254
        && !email.contains(char::is_whitespace)
        && email.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && host.contains('.') && !host.contains('@')
        });
    if !ok {
        return Err(StoreError::Invalid {
            field: "email",
            reason: "must be an email address like you@example.com".into(),
        });
    }
    Ok(email.to_owned())
}

/// The backbone's repository in one tenant.
pub struct Backbone<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn backbone(&self) -> Backbone<'_> {
        Backbone { scope: self }
    }
}

fn sealing_context(tenant: Uuid) -> SealContext {
    SealContext::tenant(tenant, "backbone-master-secret", "current")
}

impl<'s> Backbone<'s> {
    fn tenant(&self) -> Uuid {
        self.scope.tenant_id()
    }

    /// The tenant's master secret, created (random, sealed) on first use.
    ///
    /// Why sealed and not derived from the server's master key: the cloud
    /// edition's master key lives in KMS and never leaves it, so nothing
    /// could be derived from it; a random per-tenant secret sealed by the
    /// edition's [`SecretSealer`] (context = tenant id) works under both
    /// editions, and a leaked secret exposes one tenant's principals only.
    pub async fn master_secret(&self, sealer: &dyn SecretSealer) -> StoreResult<Vec<u8>> {
        let context = sealing_context(self.tenant());
        if let Some(row) = backbone_tenant::Entity::find()
            .filter(backbone_tenant::Column::TenantId.eq(self.tenant()))
            .one(self.scope.connection())
            .await?
        {
            return sealer
                .open(&context, &row.sealed_master_secret)
                .await
                .map_err(StoreError::internal("opening the backbone master secret"));
        }
        let secret: [u8; 32] = rand::random();
        let sealed = sealer
            .seal(&context, &secret)
            .await
            .map_err(StoreError::internal("sealing the backbone master secret"))?;
        let now = chrono::Utc::now();
        backbone_tenant::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.tenant()),
            sealed_master_secret: Set(sealed),
            open_registration: Set(true),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await
        .map_err(conflict_on("backbone master secret", "tenant"))?;
        Ok(secret.to_vec())
    }

    /// Switches self-registration of principals (`POST /principals`) on or
    /// off for this tenant.
    pub async fn set_open_registration(
        &self,
        actor: &Actor,
        sealer: &dyn SecretSealer,
        open: bool,
    ) -> StoreResult<()> {
        self.master_secret(sealer).await?;
        backbone_tenant::Entity::update_many()
            .col_expr(
                backbone_tenant::Column::OpenRegistration,
                sea_orm::sea_query::Expr::value(open),
            )
            .filter(backbone_tenant::Column::TenantId.eq(self.tenant()))
            .exec(self.scope.connection())
            .await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    "backbone.registration_changed",
                    "tenant",
                    Some(self.tenant()),
                )
                .with_details(serde_json::json!({ "open_registration": open })),
            )
            .await?;
        Ok(())
    }

    // ---- services ------------------------------------------------------

    pub async fn service_by_name(&self, name: &str) -> StoreResult<Option<Service>> {
        Ok(service::Entity::find()
            .filter(service::Column::TenantId.eq(self.tenant()))
            .filter(service::Column::Name.eq(name))
            .one(self.scope.connection())
            .await?
            .map(service_from))
    }

    pub async fn services(&self) -> StoreResult<Vec<Service>> {
        Ok(service::Entity::find()
            .filter(service::Column::TenantId.eq(self.tenant()))
            .order_by_asc(service::Column::Name)
            .all(self.scope.connection())
            .await?
            .into_iter()
            .map(service_from)
            .collect())
    }

    /// Makes the backbone refuse requests to `name` that carry no
    /// principal (401), instead of forwarding them anonymously.
    pub async fn set_require_identity(
        &self,
        actor: &Actor,
        name: &str,
        require: bool,
    ) -> StoreResult<Service> {
        let found = self
            .service_by_name(name)
            .await?
            .ok_or(StoreError::NotFound { entity: "service" })?;
        let now = chrono::Utc::now();
        let row = service::ActiveModel {
            id: Set(found.id),
            require_identity: Set(require),
            updated_at: Set(now),
            ..Default::default()
        }
        .update(self.scope.connection())
        .await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("backbone.service_updated", "backbone_service", Some(row.id))
                    .with_details(
                        serde_json::json!({ "name": row.name, "require_identity": require }),
                    ),
            )
            .await?;
        Ok(service_from(row))
    }

    async fn ensure_service(&self, actor: &Actor, name: &str) -> StoreResult<Service> {
        if let Some(found) = self.service_by_name(name).await? {
            return Ok(found);
        }
        let now = chrono::Utc::now();
        let row = service::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.tenant()),
            name: Set(name.to_owned()),
            require_identity: Set(false),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await
        // Names are global (host names): another tenant may hold it.
        .map_err(conflict_on("service", "service_name"))?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("backbone.service_created", "backbone_service", Some(row.id))
                    .with_details(serde_json::json!({ "name": row.name })),
            )
            .await?;
        Ok(service_from(row))
    }

    // ---- service tokens -----------------------------------------------

    /// Creates a token for `service_name` (creating the service on first
    /// use); returns the secret (shown once) and the token.
    pub async fn create_service_token(
        &self,
        actor: &Actor,
        service_name: &str,
        created_by: Option<Uuid>,
    ) -> StoreResult<(String, ServiceToken)> {
        let name = valid_service_name(service_name)?;
        let service = self.ensure_service(actor, &name).await?;
        let secret = keys::new_service_token(&service.name);
        let now = chrono::Utc::now();
        let row = service_token::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.tenant()),
            service_id: Set(service.id),
            token_hash: Set(secrets::sha256(&secret).to_vec()),
            created_by: Set(created_by),
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
                AuditRecord::new(
                    "backbone.token_created",
                    "backbone_service_token",
                    Some(row.id),
                )
                .with_details(serde_json::json!({ "service": service.name })),
            )
            .await?;
        Ok((secret, token_from(row, service.name)))
    }

    pub async fn service_tokens(&self) -> StoreResult<Vec<ServiceToken>> {
        let services: std::collections::HashMap<Uuid, String> = self
            .services()
            .await?
            .into_iter()
            .map(|s| (s.id, s.name))
            .collect();
        Ok(service_token::Entity::find()
            .filter(service_token::Column::TenantId.eq(self.tenant()))
            .order_by_desc(service_token::Column::Id)
            .all(self.scope.connection())
            .await?
            .into_iter()
            .map(|row| {
                let name = services.get(&row.service_id).cloned().unwrap_or_default();
                token_from(row, name)
            })
            .collect())
    }

    pub async fn revoke_service_token(&self, actor: &Actor, id: Uuid) -> StoreResult<ServiceToken> {
        let row = service_token::Entity::find_by_id(id)
            .filter(service_token::Column::TenantId.eq(self.tenant()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound {
                entity: "service token",
            })?;
        let service = service::Entity::find_by_id(row.service_id)
            .filter(service::Column::TenantId.eq(self.tenant()))
            .one(self.scope.connection())
            .await?
            .map(|s| s.name)
            .unwrap_or_default();
        if row.revoked_at.is_some() {
            return Ok(token_from(row, service));
        }
        let now = chrono::Utc::now();
        let mut active = row.into_active_model();
        active.revoked_at = Set(Some(now));
        active.updated_at = Set(now);
        let row = active.update(self.scope.connection()).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("backbone.token_revoked", "backbone_service_token", Some(id))
                    .with_details(serde_json::json!({ "service": service })),
            )
            .await?;
        Ok(token_from(row, service))
    }

    /// The live token whose secret is `secret`, with its service.
    pub async fn authenticate_service_token(
        &self,
        secret: &str,
    ) -> Result<(ServiceToken, Service), BackboneError> {
        let hash = secrets::sha256(secret);
        let row = service_token::Entity::find()
            .filter(service_token::Column::TenantId.eq(self.tenant()))
            .filter(service_token::Column::TokenHash.eq(hash.to_vec()))
            .one(self.scope.connection())
            .await
            .map_err(StoreError::from)?
            .filter(|r| secrets::hashes_match(&r.token_hash, &hash))
            .ok_or(BackboneError::Unauthenticated)?;
        if row.revoked_at.is_some() {
            return Err(BackboneError::Unauthenticated);
        }
        let service = service::Entity::find_by_id(row.service_id)
            .filter(service::Column::TenantId.eq(self.tenant()))
            .one(self.scope.connection())
            .await
            .map_err(StoreError::from)?
            .map(service_from)
            .ok_or(BackboneError::Unauthenticated)?;
        // The name in the token must be the service's: a token cannot be
        // presented as another service's.
        if keys::token_service(secret) != Some(service.name.as_str()) {
            return Err(BackboneError::Unauthenticated);
        }
        service_token::Entity::update_many()
            .col_expr(
                service_token::Column::LastUsedAt,
                sea_orm::sea_query::Expr::value(chrono::Utc::now()),
            )
            .filter(service_token::Column::TenantId.eq(self.tenant()))
            .filter(service_token::Column::Id.eq(row.id))
            .exec(self.scope.connection())
            .await
            .map_err(StoreError::from)?;
        Ok((token_from(row, service.name.clone()), service))
    }

    /// Whether a token is still live (not revoked, not deleted).
    pub async fn service_token_live(&self, id: Uuid) -> StoreResult<bool> {
        Ok(service_token::Entity::find_by_id(id)
            .filter(service_token::Column::TenantId.eq(self.tenant()))
            .one(self.scope.connection())
            .await?
            .is_some_and(|t| t.revoked_at.is_none()))
    }

    // ---- principals ---------------------------------------------------

    /// Registers a principal; returns its credential (shown once).
    pub async fn create_principal(
        &self,
        actor: &Actor,
        sealer: &dyn SecretSealer,
        name: &str,
        email: &str,
        note: Option<&str>,
    ) -> StoreResult<(String, Principal)> {
        let name = valid_name("name", name)?;
        let email = valid_email(email)?;
        let note = match note.map(str::trim).filter(|n| !n.is_empty()) {
            Some(note) => Some(valid_name("note", note)?),
            None => None,
        };
        let master = self.master_secret(sealer).await?;
        let id = Uuid::now_v7();
        let key = keys::derived_key(&master, id, 1);
        let credential = keys::credential(id, &key);
        let now = chrono::Utc::now();
        let row = principal::ActiveModel {
            id: Set(id),
            tenant_id: Set(self.tenant()),
            name: Set(name),
            email: Set(email),
            note: Set(note),
            key_version: Set(1),
            credential_hash: Set(secrets::sha256(&credential).to_vec()),
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
                AuditRecord::new("backbone.principal_created", "backbone_principal", Some(id))
                    .with_details(serde_json::json!({ "name": row.name, "email": row.email })),
            )
            .await?;
        Ok((credential, row.into()))
    }

    pub async fn principals(&self) -> StoreResult<Vec<Principal>> {
        Ok(principal::Entity::find()
            .filter(principal::Column::TenantId.eq(self.tenant()))
            .order_by_desc(principal::Column::Id)
            .all(self.scope.connection())
            .await?
            .into_iter()
            .map(Principal::from)
            .collect())
    }

    async fn principal_row(&self, id: Uuid) -> StoreResult<principal::Model> {
        principal::Entity::find_by_id(id)
            .filter(principal::Column::TenantId.eq(self.tenant()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound {
                entity: "principal",
            })
    }

    pub async fn principal(&self, id: Uuid) -> StoreResult<Principal> {
        Ok(self.principal_row(id).await?.into())
    }

    pub async fn revoke_principal(&self, actor: &Actor, id: Uuid) -> StoreResult<Principal> {
        let row = self.principal_row(id).await?;
        if row.revoked_at.is_some() {
            return Ok(row.into());
        }
        let now = chrono::Utc::now();
        let mut active = row.into_active_model();
        active.revoked_at = Set(Some(now));
        active.updated_at = Set(now);
        let row = active.update(self.scope.connection()).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("backbone.principal_revoked", "backbone_principal", Some(id))
                    .with_details(serde_json::json!({ "name": row.name })),
            )
            .await?;
        Ok(row.into())
    }

    /// Bumps the principal's `key_version`: the old credential, its
    /// assertions and URL tokens stop working at once. Returns the new
    /// credential (shown once).
    pub async fn rotate_principal_key(
        &self,
        actor: &Actor,
        sealer: &dyn SecretSealer,
        id: Uuid,
    ) -> StoreResult<(String, Principal)> {
        let row = self.principal_row(id).await?;
        if row.revoked_at.is_some() {
            return Err(StoreError::NotFound {
                entity: "principal",
            });
        }
        let master = self.master_secret(sealer).await?;
        let version = row.key_version + 1;
        let key = keys::derived_key(&master, id, version);
        let credential = keys::credential(id, &key);
        let now = chrono::Utc::now();
        let mut active = row.into_active_model();
        active.key_version = Set(version);
        active.credential_hash = Set(secrets::sha256(&credential).to_vec());
        active.updated_at = Set(now);
        let row = active.update(self.scope.connection()).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    "backbone.principal_key_rotated",
                    "backbone_principal",
                    Some(id),
                )
                .with_details(serde_json::json!({ "key_version": version })),
            )
            .await?;
        Ok((credential, row.into()))
    }

    /// Verifies a presented credential (constant time) and returns the
    /// principal with its current derived key.
    pub async fn authenticate_principal(
        &self,
        sealer: &dyn SecretSealer,
        credential: &str,
    ) -> Result<(Principal, [u8; 32]), BackboneError> {
        let id = keys::credential_principal(credential).ok_or(BackboneError::Unauthenticated)?;
        let row = match self.principal_row(id).await {
            Ok(row) => row,
            Err(StoreError::NotFound { .. }) => return Err(BackboneError::Unauthenticated),
            Err(e) => return Err(e.into()),
        };
        let presented = secrets::sha256(credential);
        if row.revoked_at.is_some() || !secrets::hashes_match(&row.credential_hash, &presented) {
            return Err(BackboneError::Unauthenticated);
        }
        let master = self.master_secret(sealer).await?;
        let key = keys::derived_key(&master, id, row.key_version);
        Ok((row.into(), key))
    }

    /// The live principal `id` and its current derived key (for URL
    /// tokens, which name the principal instead of carrying a credential).
    pub async fn principal_key(
        &self,
        sealer: &dyn SecretSealer,
        id: Uuid,
    ) -> Result<(Principal, [u8; 32]), BackboneError> {
        let row = match self.principal_row(id).await {
            Ok(row) if row.revoked_at.is_none() => row,
            Ok(_) | Err(StoreError::NotFound { .. }) => return Err(BackboneError::Unauthenticated),
            Err(e) => return Err(e.into()),
        };
        let master = self.master_secret(sealer).await?;
        let key = keys::derived_key(&master, id, row.key_version);
        Ok((row.into(), key))
    }

    // ---- grants -------------------------------------------------------

    pub async fn grant(
        &self,
        actor: &Actor,
        principal_id: Uuid,
        service_name: &str,
    ) -> StoreResult<()> {
        let principal = self.principal_row(principal_id).await?;
        let service = self
            .service_by_name(&service_name.trim().to_ascii_lowercase())
            .await?
            .ok_or(StoreError::NotFound { entity: "service" })?;
        let now = chrono::Utc::now();
        grant::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.tenant()),
            principal_id: Set(principal.id),
            service_id: Set(service.id),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await
        .map_err(conflict_on("grant", "service"))?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    "backbone.grant_created",
                    "backbone_principal",
                    Some(principal.id),
                )
                .with_details(serde_json::json!({ "service": service.name })),
            )
            .await?;
        Ok(())
    }

    pub async fn revoke_grant(
        &self,
        actor: &Actor,
        principal_id: Uuid,
        service_name: &str,
    ) -> StoreResult<()> {
        let service = self
            .service_by_name(&service_name.trim().to_ascii_lowercase())
            .await?
            .ok_or(StoreError::NotFound { entity: "grant" })?;
        let deleted = grant::Entity::delete_many()
            .filter(grant::Column::TenantId.eq(self.tenant()))
            .filter(grant::Column::PrincipalId.eq(principal_id))
            .filter(grant::Column::ServiceId.eq(service.id))
            .exec(self.scope.connection())
            .await?;
        if deleted.rows_affected == 0 {
            return Err(StoreError::NotFound { entity: "grant" });
        }
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    "backbone.grant_revoked",
                    "backbone_principal",
                    Some(principal_id),
                )
                .with_details(serde_json::json!({ "service": service.name })),
            )
            .await?;
        Ok(())
    }

    /// The names of the services `principal_id` is granted.
    pub async fn grants_of(&self, principal_id: Uuid) -> StoreResult<Vec<String>> {
        self.principal_row(principal_id).await?;
        let services: std::collections::HashMap<Uuid, String> = self
            .services()
            .await?
            .into_iter()
            .map(|s| (s.id, s.name))
            .collect();
        let mut names: Vec<String> = grant::Entity::find()
            .filter(grant::Column::TenantId.eq(self.tenant()))
            .filter(grant::Column::PrincipalId.eq(principal_id))
            .all(self.scope.connection())
            .await?
            .into_iter()
            .filter_map(|g| services.get(&g.service_id).cloned())
            .collect();
        names.sort();
        Ok(names)
    }

    pub async fn has_grant(&self, principal_id: Uuid, service_id: Uuid) -> StoreResult<bool> {
        Ok(grant::Entity::find()
            .filter(grant::Column::TenantId.eq(self.tenant()))
            .filter(grant::Column::PrincipalId.eq(principal_id))
            .filter(grant::Column::ServiceId.eq(service_id))
            .one(self.scope.connection())
            .await?
            .is_some())
    }
}

fn token_from(row: service_token::Model, service: String) -> ServiceToken {
    ServiceToken {
        id: row.id,
        service,
        service_id: row.service_id,
        created_at: row.created_at,
        last_used_at: row.last_used_at,
        revoked_at: row.revoked_at,
    }
}

/// Re-wraps this tenant's sealed backbone master secret (`reseal`).
pub(crate) async fn reseal_master_secret(
    scope: &crate::db::TenantScope,
    rewrap: &crate::crypto::reseal::Rewrap<'_>,
    report: &mut crate::crypto::reseal::ResealReport,
) -> crate::db::StoreResult<()> {
    use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
    let rows = entities::backbone_tenant::Entity::find()
        .filter(entities::backbone_tenant::Column::TenantId.eq(scope.tenant_id()))
        .all(scope.connection())
        .await?;
    for row in rows {
        let context = sealing_context(row.tenant_id);
        if let Some(sealed) = rewrap
            .value(report, &context, &row.sealed_master_secret)
            .await?
        {
            let mut model: entities::backbone_tenant::ActiveModel = row.into();
            model.sealed_master_secret = Set(sealed);
            model.updated_at = Set(chrono::Utc::now());
            model.update(scope.connection()).await?;
        }
    }
    Ok(())
}
