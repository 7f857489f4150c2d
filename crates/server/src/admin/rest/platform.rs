//! The platform operator's REST surface (cloud edition), under
//! `/api/v1/mobius/platform/`: the tenant list with usage, suspend and
//! resume, offboarding (dry-run report, then deletion) and the operator
//! log. The operator authenticates with its own API token, whose SHA-256
//! is the `platform_operator_token_sha256` setting; it is no tenant's user
//! and its token opens nothing else.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::routing::{get, post};
use axum::{Json, Router};
use mobius_core::db::PlatformTenant;
use mobius_core::platform::{OffboardingReport, OperatorRequest};
use mobius_core::{Store, Uuid};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::admin::graphql::Peer;
use crate::http::errors::{ApiError, ErrorCode};

#[derive(Clone)]
pub struct PlatformState {
    store: Store,
    token_sha256: Arc<[u8; 32]>,
    /// Where the tenants' installers are, deleted with the tenant.
    installers: Arc<dyn crate::software::storage::InstallerStorage>,
}

/// The operator routes, or `None` when the hash setting is not a valid
/// SHA-256 (validated with the settings, so this does not happen).
pub fn router<S: Clone + Send + Sync + 'static>(
    store: Store,
    token_sha256_hex: &str,
    installers: Arc<dyn crate::software::storage::InstallerStorage>,
) -> Option<Router<S>> {
    let bytes: [u8; 32] = hex::decode(token_sha256_hex).ok()?.try_into().ok()?;
    let state = PlatformState {
        store,
        token_sha256: Arc::new(bytes),
        installers,
    };
    Some(
        Router::new()
            .route("/api/v1/mobius/platform/tenants", get(list_tenants))
            .route(
                "/api/v1/mobius/platform/tenants/{id}/suspend",
                post(suspend),
            )
            .route("/api/v1/mobius/platform/tenants/{id}/resume", post(resume))
            .route(
                "/api/v1/mobius/platform/tenants/{id}",
                axum::routing::delete(delete_tenant),
            )
            .route("/api/v1/mobius/platform/log", get(log))
            .route("/api/v1/mobius/platform/usage", get(usage))
            .with_state(state),
    )
}

/// The operator's token, checked against the configured hash in constant
/// time (SHA-256 first, so the comparison never depends on the token's
/// length either).
fn authorize(
    state: &PlatformState,
    headers: &HeaderMap,
    peer: &Peer,
) -> Result<OperatorRequest, ApiError> {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "send the platform operator token: `Authorization: Bearer <token>`",
            )
        })?;
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    if bool::from(digest.ct_eq(state.token_sha256.as_ref())) {
        Ok(OperatorRequest {
            ip: peer.0.map(|p| p.ip().to_string()),
        })
    } else {
        tracing::warn!(ip = ?peer.0.map(|p| p.ip()), "platform operator token refused");
        Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "invalid platform operator token",
        ))
    }
}

fn tenant_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError {
        field: Some("id".into()),
        ..ApiError::new(ErrorCode::BadUserInput, "the tenant id must be a UUID")
    })
}

/// A tenant as the operator sees it.
#[derive(Debug, Serialize)]
pub struct TenantUsage {
    id: Uuid,
    name: String,
    slug: String,
    created_at: String,
    /// `active`, `suspended` or `awaiting_verification`.
    state: &'static str,
    suspended_at: Option<String>,
    devices: i64,
    users: i64,
}

impl From<PlatformTenant> for TenantUsage {
    fn from(t: PlatformTenant) -> TenantUsage {
        let state = if t.suspended_at.is_some() {
            "suspended"
        } else if t.awaiting_verification {
            "awaiting_verification"
        } else {
            "active"
        };
        TenantUsage {
            id: t.id,
            name: t.name,
            slug: t.slug,
            created_at: t.created_at.to_rfc3339(),
            state,
            suspended_at: t.suspended_at.map(|s| s.to_rfc3339()),
            devices: t.devices,
            users: t.users,
        }
    }
}

async fn list_tenants(
    State(state): State<PlatformState>,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Json<Vec<TenantUsage>>, ApiError> {
    let request = authorize(&state, &headers, &peer)?;
    let tenants = state.store.operator_list_tenants(&request).await?;
    Ok(Json(tenants.into_iter().map(TenantUsage::from).collect()))
}

async fn suspend(
    State(state): State<PlatformState>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
) -> Result<Json<TenantUsage>, ApiError> {
    set_suspended(state, headers, peer, id, true).await
}

async fn resume(
    State(state): State<PlatformState>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
) -> Result<Json<TenantUsage>, ApiError> {
    set_suspended(state, headers, peer, id, false).await
}

async fn set_suspended(
    state: PlatformState,
    headers: HeaderMap,
    peer: Peer,
    id: String,
    suspended: bool,
) -> Result<Json<TenantUsage>, ApiError> {
    let request = authorize(&state, &headers, &peer)?;
    let id = tenant_id(&id)?;
    let tenant = state
        .store
        .operator_set_suspended(&request, id, suspended)
        .await?;
    Ok(Json(tenant.into()))
}

#[derive(Debug, Deserialize)]
struct DeleteParams {
    /// `true`: report what would be removed, remove nothing.
    #[serde(default)]
    dry_run: bool,
    /// The tenant's slug, required to delete for real, so a mistyped id
    /// cannot remove the wrong tenant.
    confirm: Option<String>,
}

/// What offboarding removes (or removed).
#[derive(Debug, Serialize)]
struct OffboardingAnswer {
    dry_run: bool,
    deleted: bool,
    /// Installer files deleted from storage with the tenant; none on a
    /// dry run or when storage failed (then logged, and the files are
    /// under `<tenant id>/` for the operator to remove).
    #[serde(skip_serializing_if = "Option::is_none")]
    installers_deleted: Option<u64>,
    #[serde(flatten)]
    report: OffboardingBody,
}

#[derive(Debug, Serialize)]
struct OffboardingBody {
    tenant_id: Uuid,
    name: String,
    slug: String,
    /// Rows per table.
    rows: serde_json::Map<String, serde_json::Value>,
    total_rows: u64,
    sealed_keys: u64,
}

impl From<OffboardingReport> for OffboardingBody {
    fn from(r: OffboardingReport) -> OffboardingBody {
        OffboardingBody {
            tenant_id: r.tenant_id,
            name: r.name,
            slug: r.slug,
            total_rows: r.tables.iter().map(|(_, n)| n).sum::<u64>() + 1,
            rows: r
                .tables
                .into_iter()
                .map(|(t, n)| (t, serde_json::Value::from(n)))
                .collect(),
            sealed_keys: r.sealed_keys,
        }
    }
}

async fn delete_tenant(
    State(state): State<PlatformState>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
    params: Result<Query<DeleteParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<OffboardingAnswer>, ApiError> {
    let request = authorize(&state, &headers, &peer)?;
    let id = tenant_id(&id)?;
    let Query(params) = params.map_err(|_| {
        ApiError::new(
            ErrorCode::BadUserInput,
            "query parameters: dry_run=true|false, confirm=<tenant slug>",
        )
    })?;
    if params.dry_run {
        let report = state
            .store
            .operator_offboarding_report(&request, id)
            .await?;
        return Ok(Json(OffboardingAnswer {
            dry_run: true,
            deleted: false,
            installers_deleted: None,
            report: report.into(),
        }));
    }
    // The slug must be confirmed: read it through the dry-run path first.
    let preview = state
        .store
        .operator_offboarding_report(&request, id)
        .await?;
    if params.confirm.as_deref() != Some(preview.slug.as_str()) {
        return Err(ApiError {
            field: Some("confirm".into()),
            ..ApiError::new(
                ErrorCode::BadUserInput,
                "to delete the tenant and all its data, pass confirm=<its slug> (see the report with dry_run=true first)",
            )
        });
    }
    let report = state.store.operator_delete_tenant(&request, id).await?;
    tracing::warn!(tenant_id = %id, slug = %report.slug, "platform operator deleted a tenant");
    // After the rows: a failure here leaves files nothing refers to, never
    // a catalog pointing at missing files.
    let installers_deleted = match state.installers.delete_tenant(id).await {
        Ok(count) => Some(count),
        Err(err) => {
            tracing::error!(tenant_id = %id, error = %err, backend = state.installers.backend(),
                "could not delete a deleted tenant's installers; remove the <tenant id>/ prefix by hand");
            None
        }
    };
    Ok(Json(OffboardingAnswer {
        dry_run: false,
        deleted: true,
        installers_deleted,
        report: report.into(),
    }))
}

#[derive(Debug, Deserialize)]
struct LogParams {
    limit: Option<u64>,
}

async fn log(
    State(state): State<PlatformState>,
    headers: HeaderMap,
    peer: Peer,
    Query(params): Query<LogParams>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    authorize(&state, &headers, &peer)?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(state.store.operator_log_entries(limit).await?))
}

/// `?from=YYYY-MM-DD&to=YYYY-MM-DD` (UTC days, inclusive; default the 31
/// days up to today).
#[derive(Debug, Deserialize)]
struct UsageRange {
    from: Option<String>,
    to: Option<String>,
}

fn usage_day(
    field: &'static str,
    raw: Option<&str>,
) -> Result<Option<chrono::NaiveDate>, ApiError> {
    raw.map(|raw| {
        chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| ApiError {
            field: Some(field.into()),
            ..ApiError::new(
                ErrorCode::BadUserInput,
                format!("`{field}` must be a day like 2026-12-01"),
            )
        })
    })
    .transpose()
}

/// Every tenant's daily device and active-device counts (metered billing,
/// the operator's list), as JSON rows.
async fn usage(
    State(state): State<PlatformState>,
    headers: HeaderMap,
    peer: Peer,
    Query(range): Query<UsageRange>,
) -> Result<Json<Vec<mobius_core::billing::UsageDay>>, ApiError> {
    let request = authorize(&state, &headers, &peer)?;
    let to =
        usage_day("to", range.to.as_deref())?.unwrap_or_else(|| chrono::Utc::now().date_naive());
    let from = usage_day("from", range.from.as_deref())?.unwrap_or(to - chrono::Duration::days(31));
    if from > to {
        return Err(ApiError {
            field: Some("from".into()),
            ..ApiError::new(ErrorCode::BadUserInput, "`from` must not be after `to`")
        });
    }
    Ok(Json(state.store.operator_usage(&request, from, to).await?))
}
