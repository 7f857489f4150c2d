//! Per-tenant plan-signing keys (Ed25519). The private half is sealed at
//! rest with the edition's [`SecretSealer`], exactly like a tenant CA key,
//! and opened once per process; agents get the public half at enrollment
//! and renewal, over mTLS, and run only payloads it verifies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::entities::signing_key;
use crate::Uuid;
use crate::audit::{Actor, AuditRecord};
use crate::crypto::sealing::{SealContext, SecretSealer};
use crate::db::{StoreError, StoreResult, TenantScope};

/// Opens, caches and creates tenants' plan-signing keys.
pub struct PlanSigner {
    sealer: Arc<dyn SecretSealer>,
    keys: Mutex<HashMap<Uuid, Arc<SigningKey>>>,
}

impl std::fmt::Debug for PlanSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlanSigner(..)")
    }
}

impl PlanSigner {
    pub fn new(sealer: Arc<dyn SecretSealer>) -> PlanSigner {
        PlanSigner {
            sealer,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant's signing key: from memory, else opened from its row,
    /// else created (on the tenant's first enrollment or plan).
    pub(crate) async fn key(
        &self,
        scope: &TenantScope,
        actor: &Actor,
    ) -> StoreResult<Arc<SigningKey>> {
        let tenant = scope.tenant_id();
        if let Some(key) = self.keys.lock().ok().and_then(|k| k.get(&tenant).cloned()) {
            return Ok(key);
        }
        let row = signing_key::Entity::find()
            .filter(signing_key::Column::TenantId.eq(tenant))
            .order_by_desc(signing_key::Column::Id)
            .one(scope.connection())
            .await?;
        let key = match row {
            Some(row) => {
                let opened = self
                    .sealer
                    .open(&seal_context(tenant, row.id), &row.sealed_key)
                    .await
                    .map_err(StoreError::internal("opening a plan-signing key"))?;
                let bytes: [u8; 32] =
                    opened
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Internal {
                            context: "opening a plan-signing key",
                            source: "the opened key is not 32 bytes".into(),
                        })?;
                SigningKey::from_bytes(&bytes)
            }
            None => self.create(scope, actor).await?,
        };
        let key = Arc::new(key);
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(tenant, key.clone());
        }
        Ok(key)
    }

    async fn create(&self, scope: &TenantScope, actor: &Actor) -> StoreResult<SigningKey> {
        let id = Uuid::now_v7();
        let secret: [u8; 32] = rand::random();
        let key = SigningKey::from_bytes(&secret);
        let sealed = self
            .sealer
            .seal(&seal_context(scope.tenant_id(), id), &secret)
            .await
            .map_err(StoreError::internal("sealing a plan-signing key"))?;
        let now = chrono::Utc::now();
        signing_key::ActiveModel {
            id: Set(id),
            tenant_id: Set(scope.tenant_id()),
            public_key: Set(key.verifying_key().to_bytes().to_vec()),
            sealed_key: Set(sealed),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(scope.connection())
        .await?;
        scope
            .audit()
            .record(
                actor,
                AuditRecord::new("tenant.plan_key_created", "plan_signing_key", Some(id)),
            )
            .await?;
        Ok(key)
    }

    /// The tenant's verification key, standard base64, for agents.
    pub async fn verification_key(
        &self,
        scope: &TenantScope,
        actor: &Actor,
    ) -> StoreResult<String> {
        let key = self.key(scope, actor).await?;
        Ok(STANDARD.encode(key.verifying_key().to_bytes()))
    }

    /// The verification key when this process has the tenant's key open
    /// already: enrollment and renewal then cost no extra statement.
    pub fn cached_verification_key(&self, tenant_id: Uuid) -> Option<String> {
        let keys = self.keys.lock().ok()?;
        let key = keys.get(&tenant_id)?;
        Some(STANDARD.encode(key.verifying_key().to_bytes()))
    }

    /// A 32-byte secret for `purpose`, the same on every replica and
    /// known only to holders of the tenant's signing key: SHA-256 of the
    /// key's (deterministic) Ed25519 signature over a purpose label. Used
    /// to key HMACs (signed download URLs) without another stored secret.
    /// The label starts with a line no plan payload (JSON) can start with,
    /// so such a signature is never a valid plan signature.
    pub async fn derived_secret(
        &self,
        scope: &TenantScope,
        actor: &Actor,
        purpose: &str,
    ) -> StoreResult<[u8; 32]> {
        use sha2::Digest;
        let key = self.key(scope, actor).await?;
        let label = format!("mobius derived secret\n{purpose}");
        let signature = key.sign(label.as_bytes()).to_bytes();
        Ok(sha2::Sha256::digest(signature).into())
    }

    /// Signs `payload`; standard base64.
    pub(crate) fn sign(key: &SigningKey, payload: &[u8]) -> String {
        STANDARD.encode(key.sign(payload).to_bytes())
    }
}

fn seal_context(tenant_id: Uuid, key_id: Uuid) -> SealContext {
    SealContext::tenant(tenant_id, "tenant-plan-key", key_id)
}

/// Re-wraps this tenant's plan-signing keys (`reseal`).
pub(crate) async fn reseal_signing_keys(
    scope: &TenantScope,
    rewrap: &crate::crypto::reseal::Rewrap<'_>,
    report: &mut crate::crypto::reseal::ResealReport,
) -> StoreResult<()> {
    let keys = signing_key::Entity::find()
        .filter(signing_key::Column::TenantId.eq(scope.tenant_id()))
        .all(scope.connection())
        .await?;
    for key in keys {
        let context = seal_context(key.tenant_id, key.id);
        if let Some(sealed) = rewrap.value(report, &context, &key.sealed_key).await? {
            let mut model: signing_key::ActiveModel = key.into();
            model.sealed_key = Set(sealed);
            model.updated_at = Set(chrono::Utc::now());
            model.update(scope.connection()).await?;
        }
    }
    Ok(())
}
