//! Billing (feature `billing`): Stripe webhooks set each tenant's plan,
//! and the plan is the tenant's entitlements (device limit, premium
//! features). See docs/operations/billing.md.

pub mod sessions;
pub mod signature;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use mobius_core::Store;
use mobius_core::Uuid;
use mobius_core::authz::{Entitlements, Feature, LicenseRequired};
use mobius_core::billing::{
    BillingSettings, PlanCatalog, PlanSnapshot, PlanTerms, TenantPlan, feature_key,
};

/// How often every server re-reads plans changed by a webhook another
/// server answered. The server that answered updates its cache at once.
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Re-read a little before the last read, so a plan committed just as
/// the last read ran is not missed.
const REFRESH_OVERLAP: chrono::Duration = chrono::Duration::seconds(10);
/// How often today's device counts are recorded.
const USAGE_EVERY: Duration = Duration::from_secs(600);

/// Entitlements from the tenant's billing plan: an in-memory copy of
/// every tenant's plan (the trait is synchronous and asked inside the
/// enrollment transaction), updated at once by the webhook on this
/// server and within [`REFRESH_EVERY`] on the others. A tenant without a
/// plan gets the free plan.
#[derive(Debug)]
pub struct PlanEntitlements {
    free: PlanTerms,
    plans: RwLock<HashMap<Uuid, PlanSnapshot>>,
    read_until: std::sync::Mutex<chrono::DateTime<chrono::Utc>>,
}

impl PlanEntitlements {
    pub fn new(free: PlanTerms) -> PlanEntitlements {
        PlanEntitlements {
            free,
            plans: RwLock::new(HashMap::new()),
            read_until: std::sync::Mutex::new(chrono::DateTime::UNIX_EPOCH),
        }
    }

    fn put(&self, snapshot: PlanSnapshot) {
        if let Ok(mut plans) = self.plans.write() {
            let newer = plans
                .get(&snapshot.tenant_id)
                .is_none_or(|known| known.updated_at <= snapshot.updated_at);
            if newer {
                plans.insert(snapshot.tenant_id, snapshot);
            }
        }
    }

    /// A plan this server just committed.
    pub fn update(&self, plan: &TenantPlan) {
        self.put(PlanSnapshot {
            tenant_id: plan.tenant_id,
            terms: plan.terms.clone(),
            status: plan.status,
            grace_until: plan.grace_until,
            updated_at: plan.updated_at,
        });
    }

    /// Reads the plans written since the last read (all of them the first
    /// time).
    pub async fn refresh(&self, store: &Store) -> mobius_core::StoreResult<usize> {
        let started = chrono::Utc::now();
        let since = self
            .read_until
            .lock()
            .map(|t| *t)
            .unwrap_or(chrono::DateTime::UNIX_EPOCH);
        let since = if since == chrono::DateTime::UNIX_EPOCH {
            since
        } else {
            since - REFRESH_OVERLAP
        };
        let changed = store.billing_plans_since(since).await?;
        let count = changed.len();
        for snapshot in changed {
            self.put(snapshot);
        }
        if let Ok(mut until) = self.read_until.lock() {
            *until = started;
        }
        Ok(count)
    }

    fn effective(&self, tenant_id: Uuid) -> PlanTerms {
        let now = chrono::Utc::now();
        match self.plans.read() {
            Ok(plans) => plans
                .get(&tenant_id)
                .map(|plan| plan.effective(now, &self.free).clone())
                .unwrap_or_else(|| self.free.clone()),
            Err(_) => self.free.clone(),
        }
    }
}

impl Entitlements for PlanEntitlements {
    fn describe(&self) -> String {
        let free = match self.free.device_limit {
            Some(limit) => format!("{limit} devices"),
            None => "no device limit".to_owned(),
        };
        format!(
            "billing plans (Stripe; free plan `{}`: {free})",
            self.free.tier
        )
    }

    fn device_limit(&self, tenant_id: Uuid) -> Option<u64> {
        self.effective(tenant_id).device_limit
    }

    fn require(&self, tenant_id: Uuid, feature: Feature) -> Result<(), LicenseRequired> {
        if self.effective(tenant_id).features.contains(&feature) {
            Ok(())
        } else {
            tracing::debug!(%tenant_id, feature = feature_key(feature), "feature not in the tenant's plan");
            Err(LicenseRequired { feature })
        }
    }
}

/// The billing side of the cloud services, once the store is open.
pub struct Billing {
    pub entitlements: Arc<PlanEntitlements>,
    pub routes: axum::Router,
}

/// Validates the settings (a bad price mapping stops start-up), loads
/// every plan, starts the refresh and usage loops, and makes the webhook
/// route.
pub async fn start(settings: &BillingSettings, store: &Store) -> anyhow::Result<Billing> {
    let catalog = Arc::new(PlanCatalog::new(settings).context("invalid billing settings")?);
    if settings.webhook_secrets.is_empty() {
        anyhow::bail!(
            "billing.webhook_secrets is empty: add the endpoint's signing secret (whsec_...) from the Stripe dashboard"
        );
    }
    for secret in &settings.webhook_secrets {
        use secrecy::ExposeSecret;
        if !secret.expose_secret().starts_with("whsec_") {
            anyhow::bail!("billing.webhook_secrets: every secret starts with `whsec_`");
        }
    }
    let entitlements = Arc::new(PlanEntitlements::new(catalog.free().clone()));
    let loaded = entitlements
        .refresh(store)
        .await
        .context("loading the tenants' billing plans")?;
    tracing::info!(
        plans = loaded,
        prices = settings.prices.len(),
        "billing plans loaded"
    );
    tokio::spawn(refresh_periodically(store.clone(), entitlements.clone()));
    tokio::spawn(record_usage_periodically(store.clone()));
    let routes = webhook::router(webhook::WebhookState {
        store: store.clone(),
        catalog,
        secrets: Arc::new(settings.webhook_secrets.clone()),
        tolerance_secs: settings.signature_tolerance_secs,
        entitlements: entitlements.clone(),
    });
    Ok(Billing {
        entitlements,
        routes,
    })
}

async fn refresh_periodically(store: Store, entitlements: Arc<PlanEntitlements>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    loop {
        tick.tick().await;
        if let Err(err) = entitlements.refresh(&store).await {
            tracing::warn!(error = %err, "could not refresh billing plans; keeping the last ones");
        }
    }
}

async fn record_usage_periodically(store: Store) {
    let mut tick = tokio::time::interval(USAGE_EVERY);
    loop {
        tick.tick().await;
        match store.record_billing_usage(chrono::Utc::now()).await {
            Ok(tenants) => tracing::debug!(tenants, "recorded daily usage"),
            Err(err) => tracing::warn!(error = %err, "could not record daily usage"),
        }
    }
}
