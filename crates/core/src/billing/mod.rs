//! Billing (cloud edition): each tenant's plan as its Stripe subscription
//! last set it, the Stripe events already applied, and daily device usage.
//!
//! The Stripe-specific parts (signature, JSON shapes) live in the cloud
//! edition; this area knows only what an event changes ([`BillingChange`])
//! and applies it in one tenant transaction, exactly once and never
//! backwards in time.

mod catalog;
mod entities;
mod usage;

use sea_orm::prelude::Uuid;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set};

pub use catalog::{
    ALL_FEATURES, BillingSettings, CatalogError, FreePlan, PlanCatalog, PlanTerms, PriceError,
    PricePlan, feature_by_key, feature_key,
};
pub use usage::UsageDay;

use crate::audit::{Actor, AuditRecord};
use crate::authz::Feature;
use crate::db::{FoundTenant, Store, StoreError, StoreResult, TenantScope};
use entities::{plan, stripe_event};

/// A subscription's status, as Stripe names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    /// No subscription yet.
    None,
    Active,
    Trialing,
    /// A payment failed: the plan holds until the grace period ends.
    PastDue,
    Canceled,
    Unpaid,
    Incomplete,
    IncompleteExpired,
    Paused,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::None => "none",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Canceled => "canceled",
            SubscriptionStatus::Unpaid => "unpaid",
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::IncompleteExpired => "incomplete_expired",
            SubscriptionStatus::Paused => "paused",
        }
    }

    /// Stripe's name; `None` for a status this version does not know.
    pub fn parse(text: &str) -> Option<SubscriptionStatus> {
        Some(match text {
            "none" => SubscriptionStatus::None,
            "active" => SubscriptionStatus::Active,
            "trialing" => SubscriptionStatus::Trialing,
            "past_due" => SubscriptionStatus::PastDue,
            "canceled" => SubscriptionStatus::Canceled,
            "unpaid" => SubscriptionStatus::Unpaid,
            "incomplete" => SubscriptionStatus::Incomplete,
            "incomplete_expired" => SubscriptionStatus::IncompleteExpired,
            "paused" => SubscriptionStatus::Paused,
            _ => return None,
        })
    }

    /// Whether the paid plan's terms apply (past due: until grace ends).
    fn keeps_paid_terms(self) -> bool {
        match self {
            SubscriptionStatus::Active
            | SubscriptionStatus::Trialing
            | SubscriptionStatus::PastDue => true,
            SubscriptionStatus::None
            | SubscriptionStatus::Canceled
            | SubscriptionStatus::Unpaid
            | SubscriptionStatus::Incomplete
            | SubscriptionStatus::IncompleteExpired
            | SubscriptionStatus::Paused => false,
        }
    }
}

/// A tenant's plan as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantPlan {
    pub tenant_id: Uuid,
    pub terms: PlanTerms,
    pub status: SubscriptionStatus,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub current_period_end: Option<chrono::DateTime<chrono::Utc>>,
    pub grace_until: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl TenantPlan {
    /// The terms in force at `now`: the paid terms while active, trialing
    /// or past due within the grace period; the free plan's otherwise.
    /// Nothing is deleted when they shrink: a tenant over its limit keeps
    /// its devices and cannot enroll more.
    pub fn effective<'a>(
        &'a self,
        now: chrono::DateTime<chrono::Utc>,
        free: &'a PlanTerms,
    ) -> &'a PlanTerms {
        let in_grace = self.grace_until.is_none_or(|until| now < until);
        match self.status {
            SubscriptionStatus::PastDue if !in_grace => free,
            status if status.keeps_paid_terms() => &self.terms,
            _ => free,
        }
    }
}

/// What a verified Stripe event changes.
#[derive(Clone, Debug)]
pub enum BillingChange {
    /// `checkout.session.completed`: the tenant now has a Stripe customer
    /// (and, for a subscription checkout, its subscription id).
    CheckoutCompleted {
        customer_id: Option<String>,
        subscription_id: Option<String>,
    },
    /// `customer.subscription.created` / `.updated` / `.deleted`.
    Subscription {
        customer_id: String,
        subscription_id: String,
        status: SubscriptionStatus,
        /// The price's terms (`None` when the subscription has ended and
        /// the price no longer matters).
        terms: Option<PlanTerms>,
        current_period_end: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// `invoice.paid`: a past-due subscription is active again.
    InvoicePaid {
        customer_id: String,
        subscription_id: Option<String>,
        period_end: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// `invoice.payment_failed`: past due, with a grace period.
    PaymentFailed {
        customer_id: String,
        subscription_id: Option<String>,
    },
    /// `customer.deleted`: back to the free plan, nothing deleted.
    CustomerDeleted { customer_id: String },
}

/// A verified Stripe event, reduced to what Mobius needs.
#[derive(Clone, Debug)]
pub struct BillingEvent {
    /// Stripe's event id (`evt_...`): applied at most once.
    pub id: String,
    pub event_type: String,
    /// The event's `created`: what orders events about one subscription.
    pub created: chrono::DateTime<chrono::Utc>,
    pub change: BillingChange,
}

/// What applying an event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The plan changed (or was linked); the new state.
    Changed(Box<TenantPlan>),
    /// The event was seen before: nothing changed.
    Duplicate,
    /// Older than what the plan already reflects (out of order), or about
    /// a subscription the tenant no longer has: recorded, nothing changed.
    Stale,
}

impl Store {
    /// The tenant a Stripe event belongs to: the owner of `customer_id`
    /// (`mobius_billing_customer_tenant`), else `claimed` (a checkout's
    /// `client_reference_id`, a subscription's `mobius_tenant_id`
    /// metadata) if such a tenant exists (`mobius_billing_tenant_exists`).
    pub async fn billing_tenant(
        &self,
        customer_id: Option<&str>,
        claimed: Option<Uuid>,
    ) -> StoreResult<Option<FoundTenant>> {
        if let Some(customer) = customer_id
            && let Some(found) = self.tenant_by_stripe_customer(customer).await?
        {
            return Ok(Some(found));
        }
        match claimed {
            Some(id) => self.existing_tenant(id).await,
            None => Ok(None),
        }
    }

    /// Applies `event` to the tenant's plan in one transaction: the event
    /// id is recorded first (a redelivery stops there), then the change,
    /// then its audit event. Any failure rolls all of it back.
    pub async fn apply_billing_event(
        &self,
        tenant: &FoundTenant,
        event: &BillingEvent,
        catalog: &PlanCatalog,
    ) -> StoreResult<Applied> {
        let scope = self.begin(tenant).await?;
        let now = chrono::Utc::now();
        let inserted = stripe_event::Entity::insert(stripe_event::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(scope.tenant_id()),
            event_id: Set(event.id.clone()),
            event_type: Set(event.event_type.clone()),
            event_created_at: Set(event.created),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(stripe_event::Column::EventId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(scope.connection())
        .await?;
        if inserted == 0 {
            return Ok(Applied::Duplicate);
        }
        let existing = scope.billing().row().await?;
        let before = existing.as_ref().map(to_plan).transpose()?;
        let mut next = before.clone().unwrap_or_else(|| TenantPlan {
            tenant_id: scope.tenant_id(),
            terms: catalog.free().clone(),
            status: SubscriptionStatus::None,
            stripe_customer_id: None,
            stripe_subscription_id: None,
            current_period_end: None,
            grace_until: None,
            updated_at: now,
        });
        let state_at = existing.as_ref().and_then(|row| row.state_event_at);
        let stale = state_at.is_some_and(|at| event.created < at);
        let mut moves_state = true;
        match &event.change {
            BillingChange::CheckoutCompleted {
                customer_id,
                subscription_id,
            } => {
                moves_state = false;
                if customer_id.is_some() {
                    next.stripe_customer_id = customer_id.clone();
                }
                if (next.stripe_subscription_id.is_none() || !next.status.keeps_paid_terms())
                    && let Some(sub) = subscription_id
                {
                    next.stripe_subscription_id = Some(sub.clone());
                }
            }
            BillingChange::Subscription {
                customer_id,
                subscription_id,
                status,
                terms,
                current_period_end,
            } => {
                let other_live = next
                    .stripe_subscription_id
                    .as_deref()
                    .is_some_and(|s| s != subscription_id && next.status.keeps_paid_terms());
                // The end of a subscription the tenant has since replaced
                // must not cancel the new one.
                if stale || (other_live && !status.keeps_paid_terms()) {
                    return stale_but_recorded(scope).await;
                }
                next.stripe_customer_id = Some(customer_id.clone());
                next.stripe_subscription_id = Some(subscription_id.clone());
                next.status = *status;
                next.terms = match (status.keeps_paid_terms(), terms) {
                    (true, Some(terms)) => terms.clone(),
                    (true, None) => next.terms.clone(),
                    (false, _) => catalog.free().clone(),
                };
                if current_period_end.is_some() {
                    next.current_period_end = *current_period_end;
                }
                next.grace_until = match status {
                    SubscriptionStatus::PastDue => {
                        next.grace_until.or(Some(event.created + catalog.grace()))
                    }
                    _ => None,
                };
            }
            BillingChange::InvoicePaid {
                customer_id,
                subscription_id,
                period_end,
            } => {
                if stale || !same_subscription(&next, subscription_id.as_deref()) {
                    return stale_but_recorded(scope).await;
                }
                next.stripe_customer_id = Some(customer_id.clone());
                if matches!(
                    next.status,
                    SubscriptionStatus::PastDue | SubscriptionStatus::Unpaid
                ) {
                    next.status = SubscriptionStatus::Active;
                }
                next.grace_until = None;
                if let Some(end) = period_end
                    && next.current_period_end.is_none_or(|cur| cur < *end)
                {
                    next.current_period_end = Some(*end);
                }
            }
            BillingChange::PaymentFailed {
                customer_id,
                subscription_id,
            } => {
                if stale || !same_subscription(&next, subscription_id.as_deref()) {
                    return stale_but_recorded(scope).await;
                }
                next.stripe_customer_id = Some(customer_id.clone());
                if next.status.keeps_paid_terms() {
                    next.status = SubscriptionStatus::PastDue;
                    next.grace_until = next.grace_until.or(Some(event.created + catalog.grace()));
                }
            }
            BillingChange::CustomerDeleted { .. } => {
                next.stripe_customer_id = None;
                next.stripe_subscription_id = None;
                next.status = SubscriptionStatus::Canceled;
                next.terms = catalog.free().clone();
                next.grace_until = None;
            }
        }
        next.updated_at = now;
        let state_event_at = if moves_state {
            Some(state_at.map_or(event.created, |at| at.max(event.created)))
        } else {
            state_at
        };
        scope
            .billing()
            .save(existing, &next, state_event_at)
            .await?;
        scope
            .audit()
            .record(
                &Actor::system(),
                AuditRecord::new("billing.plan_changed", "tenant", Some(scope.tenant_id()))
                    .with_details(serde_json::json!({
                        "stripe_event": event.id,
                        "event_type": event.event_type,
                        "tier": next.terms.tier,
                        "device_limit": next.terms.device_limit,
                        "status": next.status.as_str(),
                        "previous_tier": before.as_ref().map(|p| p.terms.tier.clone()),
                        "previous_status": before.as_ref().map(|p| p.status.as_str()),
                    })),
            )
            .await?;
        scope.commit().await?;
        Ok(Applied::Changed(Box::new(next)))
    }
}

/// Whether an invoice's subscription is the tenant's current one (an
/// invoice without one, or a tenant without one, counts as a match).
fn same_subscription(plan: &TenantPlan, subscription_id: Option<&str>) -> bool {
    match (plan.stripe_subscription_id.as_deref(), subscription_id) {
        (Some(current), Some(invoiced)) => current == invoiced,
        _ => true,
    }
}

/// Commits the event id alone, so a redelivery of a stale event is a
/// duplicate too.
async fn stale_but_recorded(scope: TenantScope) -> StoreResult<Applied> {
    scope.commit().await?;
    Ok(Applied::Stale)
}

fn to_plan(row: &plan::Model) -> StoreResult<TenantPlan> {
    let names: Vec<String> = serde_json::from_str(&row.features)
        .map_err(StoreError::internal("reading a plan's features"))?;
    Ok(TenantPlan {
        tenant_id: row.tenant_id,
        terms: PlanTerms {
            tier: row.tier.clone(),
            device_limit: row.device_limit.map(|l| l.max(0) as u64),
            // A feature name this build no longer knows grants nothing.
            features: names.iter().filter_map(|n| feature_by_key(n)).collect(),
        },
        status: SubscriptionStatus::parse(&row.status).unwrap_or(SubscriptionStatus::None),
        stripe_customer_id: row.stripe_customer_id.clone(),
        stripe_subscription_id: row.stripe_subscription_id.clone(),
        current_period_end: row.current_period_end,
        grace_until: row.grace_until,
        updated_at: row.updated_at,
    })
}

fn features_json(features: &[Feature]) -> String {
    serde_json::Value::from(features.iter().map(|f| feature_key(*f)).collect::<Vec<_>>())
        .to_string()
}

impl TenantScope {
    /// The scoped tenant's billing plan and usage.
    pub fn billing(&self) -> Billing<'_> {
        Billing { scope: self }
    }
}

/// The tenant's billing rows.
pub struct Billing<'a> {
    scope: &'a TenantScope,
}

impl Billing<'_> {
    async fn row(&self) -> StoreResult<Option<plan::Model>> {
        Ok(plan::Entity::find()
            .filter(plan::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?)
    }

    /// The tenant's plan, or `None` when no Stripe event has touched it
    /// (it is then on the free plan).
    pub async fn plan(&self) -> StoreResult<Option<TenantPlan>> {
        self.row().await?.as_ref().map(to_plan).transpose()
    }

    async fn save(
        &self,
        existing: Option<plan::Model>,
        plan: &TenantPlan,
        state_event_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> StoreResult<()> {
        let limit = plan
            .terms
            .device_limit
            .map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        let is_new = existing.is_none();
        let mut model = match existing {
            Some(row) => row.into_active_model(),
            None => plan::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(self.scope.tenant_id()),
                created_at: Set(plan.updated_at),
                ..Default::default()
            },
        };
        model.tier = Set(plan.terms.tier.clone());
        model.device_limit = Set(limit);
        model.features = Set(features_json(&plan.terms.features));
        model.status = Set(plan.status.as_str().to_owned());
        model.stripe_customer_id = Set(plan.stripe_customer_id.clone());
        model.stripe_subscription_id = Set(plan.stripe_subscription_id.clone());
        model.current_period_end = Set(plan.current_period_end);
        model.grace_until = Set(plan.grace_until);
        model.state_event_at = Set(state_event_at);
        model.updated_at = Set(plan.updated_at);
        if is_new {
            model.insert(self.scope.connection()).await?;
        } else {
            model.update(self.scope.connection()).await?;
        }
        Ok(())
    }
}

/// A plan as the entitlement caches see it (read across tenants).
#[derive(Clone, Debug)]
pub struct PlanSnapshot {
    pub tenant_id: Uuid,
    pub terms: PlanTerms,
    pub status: SubscriptionStatus,
    pub grace_until: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl PlanSnapshot {
    /// The terms in force at `now` (see [`TenantPlan::effective`]).
    pub fn effective<'a>(
        &'a self,
        now: chrono::DateTime<chrono::Utc>,
        free: &'a PlanTerms,
    ) -> &'a PlanTerms {
        let in_grace = self.grace_until.is_none_or(|until| now < until);
        match self.status {
            SubscriptionStatus::PastDue if !in_grace => free,
            status if status.keeps_paid_terms() => &self.terms,
            _ => free,
        }
    }
}

pub(crate) fn snapshot_from_parts(
    tenant_id: Uuid,
    tier: String,
    device_limit: Option<i64>,
    features: &str,
    status: &str,
    grace_until: Option<chrono::DateTime<chrono::Utc>>,
    updated_at: chrono::DateTime<chrono::Utc>,
) -> PlanSnapshot {
    let names: Vec<String> = serde_json::from_str(features).unwrap_or_default();
    PlanSnapshot {
        tenant_id,
        terms: PlanTerms {
            tier,
            device_limit: device_limit.map(|l| l.max(0) as u64),
            features: names.iter().filter_map(|n| feature_by_key(n)).collect(),
        },
        status: SubscriptionStatus::parse(status).unwrap_or(SubscriptionStatus::None),
        grace_until,
        updated_at,
    }
}
