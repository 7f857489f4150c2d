//! Billing in the admin API: `tenant { plan { ... } }`, the tenant's plan
//! as its subscription last set it, with the device limit in force now
//! (from the entitlement gate, so it is exactly what enrollment enforces).

use mobius_core::authz::Entitlements;
use mobius_core::billing::SubscriptionStatus;

use crate::admin::graphql::prelude::*;

/// A subscription's status (Stripe's names).
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "PlanStatus")]
pub enum PlanStatusNode {
    /// No subscription: the free plan.
    None,
    Active,
    Trialing,
    /// A payment failed; the plan holds until the grace period ends.
    PastDue,
    /// Ended: the free plan's limits apply; nothing was deleted.
    Canceled,
    Unpaid,
    Incomplete,
    IncompleteExpired,
    Paused,
}

impl From<SubscriptionStatus> for PlanStatusNode {
    fn from(status: SubscriptionStatus) -> Self {
        match status {
            SubscriptionStatus::None => PlanStatusNode::None,
            SubscriptionStatus::Active => PlanStatusNode::Active,
            SubscriptionStatus::Trialing => PlanStatusNode::Trialing,
            SubscriptionStatus::PastDue => PlanStatusNode::PastDue,
            SubscriptionStatus::Canceled => PlanStatusNode::Canceled,
            SubscriptionStatus::Unpaid => PlanStatusNode::Unpaid,
            SubscriptionStatus::Incomplete => PlanStatusNode::Incomplete,
            SubscriptionStatus::IncompleteExpired => PlanStatusNode::IncompleteExpired,
            SubscriptionStatus::Paused => PlanStatusNode::Paused,
        }
    }
}

/// The tenant's plan.
#[derive(SimpleObject, Clone)]
#[graphql(name = "TenantPlan")]
pub struct PlanNode {
    /// The plan's tier (`free` without a subscription).
    pub tier: String,
    /// Most devices the tenant may have now; null: no limit.
    pub device_limit: Option<u64>,
    pub status: PlanStatusNode,
    /// When the paid period ends (renewal), if subscribed.
    pub current_period_end: Option<DateTime<Utc>>,
}

#[ComplexObject]
impl TenantNode {
    /// The tenant's plan and the limits in force.
    async fn plan(&self, ctx: &Context<'_>) -> Result<PlanNode> {
        let (_, scope) = gate::read(ctx, Operation::ViewTenant, None).await?;
        let tenant_id = scope.tenant_id();
        let stored = scope.billing().plan().await.map_err(errors::store)?;
        let device_limit = ctx
            .data_opt::<Arc<dyn Entitlements>>()
            .and_then(|e| e.device_limit(tenant_id));
        Ok(match stored {
            Some(plan) => PlanNode {
                tier: plan.terms.tier,
                device_limit,
                status: plan.status.into(),
                current_period_end: plan.current_period_end,
            },
            None => PlanNode {
                tier: "free".to_owned(),
                device_limit,
                status: PlanStatusNode::None,
                current_period_end: None,
            },
        })
    }
}
