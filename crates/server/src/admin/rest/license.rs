//! `GET /api/v1/mobius/license/status` and `PUT /api/v1/mobius/license`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{SecondsFormat, Utc};
use mobius_api::license::{FeatureStatus, LicenseStatus};
use mobius_core::authz::{
    EntitlementSource, EntitlementStatus, Feature, LicenseRequired, Operation,
};

use super::authorize;
use crate::admin::graphql::{GraphqlState, Peer};
use crate::http::errors::{ApiError, ErrorCode};

/// The tenant's tier, limits and expiry, for admins (those who may manage
/// the tenant).
pub async fn status(
    State(state): State<GraphqlState>,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Json<LicenseStatus>, ApiError> {
    let authenticated = authorize(&state, &headers, &peer, Operation::ManageTenant).await?;
    let tenant_id = authenticated.principal.tenant_id;
    let count = authenticated.scope.devices().count().await?;
    Ok(Json(status_body(
        &state.entitlements.status(tenant_id),
        count,
    )))
}

/// Licenses are not changed at run time: the answer says where they come
/// from instead (409, so a client that expected a change notices).
pub async fn update(
    State(state): State<GraphqlState>,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Json<LicenseStatus>, ApiError> {
    let authenticated = authorize(&state, &headers, &peer, Operation::ManageTenant).await?;
    let message = match state
        .entitlements
        .status(authenticated.principal.tenant_id)
        .source
    {
        EntitlementSource::License => {
            "this server reads its license at start-up: set the setting `license_key` \
             (environment MOBIUS_LICENSE_KEY) or put the license in the file `license.key` \
             in the server's data directory, then restart mobius-server"
        }
        EntitlementSource::Plan => {
            "in the cloud edition a tenant's entitlements come from its billing plan: \
             change the plan instead of uploading a license"
        }
    };
    Err(ApiError::new(ErrorCode::Conflict, message))
}

/// The wire form of a status, shared by REST and GraphQL.
pub fn status_body(status: &EntitlementStatus, device_count: u64) -> LicenseStatus {
    let now = Utc::now();
    let time = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let effective = status.effective_tier();
    LicenseStatus {
        source: match status.source {
            EntitlementSource::License => "license",
            EntitlementSource::Plan => "plan",
        }
        .to_owned(),
        tier: status.tier.name().to_owned(),
        state: status.state.name().to_owned(),
        effective_tier: effective.name().to_owned(),
        organization: status.organization.clone(),
        device_limit: status.device_limit,
        device_count,
        expires_at: status.expires_at.map(time),
        grace_ends_at: status.grace_ends_at.map(time),
        days_left: status.days_left(now),
        license_id: status.license_id.clone(),
        signed_by_test_key: status.signed_by_test_key,
        features: Feature::ALL
            .iter()
            .map(|f| FeatureStatus {
                name: f.name().to_owned(),
                tier: f.tier().to_owned(),
                available: effective.includes(*f),
            })
            .collect(),
        warning: status.warning(now),
    }
}

/// `LICENSE_REQUIRED` (402), naming the feature and the tier that has it.
impl From<LicenseRequired> for ApiError {
    fn from(err: LicenseRequired) -> ApiError {
        ApiError::new(ErrorCode::LicenseRequired, err.to_string())
    }
}
