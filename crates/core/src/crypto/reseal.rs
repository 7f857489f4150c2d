//! Re-wrapping every sealed secret under another sealer (`reseal`): the
//! JWT signing keys and, per tenant, its CA keys, plan-signing keys, SSO
//! client secret and backbone master secret. Each secret is opened,
//! sealed anew and written in its own short transaction, so an
//! interrupted run loses nothing and a rerun continues where it stopped;
//! secrets already in the target form are skipped, so running it twice
//! changes nothing the second time.

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set};

use super::sealing::{SealContext, SecretSealer};
use crate::db::entities::{certificate_authority, signing_key};
use crate::db::{Store, StoreError, StoreResult, SystemTask};

/// What a reseal run found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResealReport {
    /// Sealed secrets looked at.
    pub examined: usize,
    /// Already in the target form (left alone).
    pub already: usize,
    /// Re-wrapped now (or, in a dry run, that would be).
    pub resealed: usize,
}

/// Whether a sealed value is already in the target form.
pub type IsTarget<'a> = &'a (dyn Fn(&[u8]) -> bool + Send + Sync);

async fn rewrap(
    from: &dyn SecretSealer,
    to: &dyn SecretSealer,
    context: &SealContext,
    sealed: &[u8],
) -> StoreResult<Vec<u8>> {
    let plain = from
        .open(context, sealed)
        .await
        .map_err(|e| StoreError::Internal {
            context: "opening a secret to reseal it",
            source: format!("{}: {e}", context.associated_data()).into(),
        })?;
    to.seal(context, &plain)
        .await
        .map_err(StoreError::internal("sealing a secret anew"))
}

/// One reseal run's sealers and mode, handed to each area that keeps
/// sealed secrets, so each re-wraps its own rows in the caller's scope.
pub(crate) struct Rewrap<'a> {
    pub from: &'a dyn SecretSealer,
    pub to: &'a dyn SecretSealer,
    pub is_target: IsTarget<'a>,
    pub dry_run: bool,
}

impl Rewrap<'_> {
    /// Counts `sealed` in `report` and answers its new form when it must
    /// be written (not already in the target form, not a dry run).
    pub(crate) async fn value(
        &self,
        report: &mut ResealReport,
        context: &SealContext,
        sealed: &[u8],
    ) -> StoreResult<Option<Vec<u8>>> {
        report.examined += 1;
        if (self.is_target)(sealed) {
            report.already += 1;
            return Ok(None);
        }
        report.resealed += 1;
        if self.dry_run {
            return Ok(None);
        }
        rewrap(self.from, self.to, context, sealed).await.map(Some)
    }
}

impl Store {
    /// Re-wraps every sealed secret not yet in the target form: opened
    /// with `from` (which must open both forms), sealed with `to`. With
    /// `dry_run`, only counts.
    pub async fn reseal_secrets(
        &self,
        from: &dyn SecretSealer,
        to: &dyn SecretSealer,
        is_target: IsTarget<'_>,
        dry_run: bool,
    ) -> StoreResult<ResealReport> {
        let mut report = ResealReport::default();
        // Platform secrets: the JWT signing keys (no tenant).
        let keys = signing_key::Entity::find().all(self.connection()).await?;
        for key in keys {
            report.examined += 1;
            if is_target(&key.sealed_private_key) {
                report.already += 1;
                continue;
            }
            report.resealed += 1;
            if dry_run {
                continue;
            }
            let context = crate::identity::access_tokens::seal_context(key.id);
            let sealed = rewrap(from, to, &context, &key.sealed_private_key).await?;
            let id = key.id;
            let mut model = key.into_active_model();
            model.sealed_private_key = Set(sealed);
            model.updated_at = Set(chrono::Utc::now());
            model.update(self.connection()).await?;
            tracing::info!(kid = %id, "resealed a JWT signing key");
        }
        // Tenant secrets: each tenant's CA keys, in that tenant's scope.
        for tenant_id in self.billing_tenant_ids().await? {
            let scope = self.begin(&SystemTask::new("reseal", tenant_id)).await?;
            let cas = certificate_authority::Entity::find()
                .filter(certificate_authority::Column::TenantId.eq(tenant_id))
                .all(scope.connection())
                .await?;
            for ca in cas {
                report.examined += 1;
                if is_target(&ca.sealed_key) {
                    report.already += 1;
                    continue;
                }
                report.resealed += 1;
                if dry_run {
                    continue;
                }
                let context = crate::pki::seal_context(tenant_id, ca.id);
                let sealed = rewrap(from, to, &context, &ca.sealed_key).await?;
                let mut model = ca.into_active_model();
                model.sealed_key = Set(sealed);
                model.updated_at = Set(chrono::Utc::now());
                model.update(scope.connection()).await?;
            }
            let rewrap = Rewrap {
                from,
                to,
                is_target,
                dry_run,
            };
            crate::plans::reseal_signing_keys(&scope, &rewrap, &mut report).await?;
            crate::identity::sso::reseal_client_secret(&scope, &rewrap, &mut report).await?;
            crate::backbone::reseal_master_secret(&scope, &rewrap, &mut report).await?;
            crate::policies::webhooks::reseal_webhook_secret(&scope, &rewrap, &mut report).await?;
            // One commit per tenant: a tenant's secrets move together.
            scope.commit().await?;
        }
        Ok(report)
    }
}
