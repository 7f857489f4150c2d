//! The `license` query: the tenant's tier, device limit and expiry, the
//! same facts as `GET /api/v1/mobius/license/status`.

use mobius_core::authz::Entitlements;

use crate::admin::graphql::prelude::*;
use crate::admin::rest::license::status_body;

#[derive(Default)]
pub struct LicenseQuery;

#[Object]
impl LicenseQuery {
    /// What this tenant is entitled to now, and for how long. For those
    /// who may manage the tenant.
    async fn license(&self, ctx: &Context<'_>) -> Result<LicenseNode> {
        let (principal, scope) = gate::read(ctx, Operation::ManageTenant, None).await?;
        let count = scope.devices().count().await.map_err(errors::store)?;
        let entitlements = ctx.data::<Arc<dyn Entitlements>>()?;
        let body = status_body(&entitlements.status(principal.tenant_id), count);
        Ok(LicenseNode {
            source: body.source,
            tier: body.tier,
            state: body.state,
            effective_tier: body.effective_tier,
            organization: body.organization,
            device_limit: body.device_limit.map(clamp),
            device_count: clamp(body.device_count),
            expires_at: body.expires_at,
            grace_ends_at: body.grace_ends_at,
            days_left: body
                .days_left
                .map(|d| d.clamp(i32::MIN.into(), i32::MAX.into()) as i32),
            license_id: body.license_id,
            signed_by_test_key: body.signed_by_test_key,
            features: body
                .features
                .into_iter()
                .map(|f| PremiumFeature {
                    name: f.name,
                    tier: f.tier,
                    available: f.available,
                })
                .collect(),
            warning: body.warning,
        })
    }
}

/// GraphQL's `Int` is 32 bits; limits and counts beyond it read as its
/// maximum.
fn clamp(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The license (OSS) or plan (cloud) behind this tenant's entitlements.
#[derive(SimpleObject)]
pub struct LicenseNode {
    /// `license` (OSS) or `plan` (cloud).
    source: String,
    /// `free`, `basic`, `premium` or `enterprise`.
    tier: String,
    /// `valid`, `expiring`, `grace`, `expired` or `free`.
    state: String,
    /// The tier in force now (`free` once the grace period has ended).
    effective_tier: String,
    organization: Option<String>,
    /// Enforced on new enrollments; null: no limit.
    device_limit: Option<i32>,
    device_count: i32,
    /// RFC 3339.
    expires_at: Option<String>,
    /// RFC 3339: premium features stop after this.
    grace_ends_at: Option<String>,
    /// Whole days until expiry, negative once past.
    days_left: Option<i32>,
    license_id: Option<String>,
    /// Signed by the test key only debug builds can be told to trust.
    signed_by_test_key: bool,
    features: Vec<PremiumFeature>,
    /// What to do, when something needs doing.
    warning: Option<String>,
}

/// A premium feature and whether this tenant has it now.
#[derive(SimpleObject)]
pub struct PremiumFeature {
    name: String,
    /// The lowest tier that includes it.
    tier: String,
    available: bool,
}
