//! The device endpoints of an install, on the mTLS device listener:
//! a signed download URL for the device, the download itself (HTTP
//! `Range` honoured, so a cut download resumes where it stopped), and the
//! install's progress.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use mobius_api::software::{DOWNLOAD_PATH, DownloadUrl, DownloadUrlRequest, InstallProgress};
use mobius_core::audit::{Actor, ActorKind};
use mobius_core::devices::DeviceIdentity;

use super::storage::StorageError;
use super::token::{self, DownloadClaims};
use crate::device::{DeviceScope, DeviceState};
use crate::http::errors::{ApiError, ErrorCode};

fn device_actor(identity: &DeviceIdentity) -> Actor {
    Actor {
        kind: ActorKind::Device,
        id: Some(identity.device_id()),
        ip: None,
        user_agent: None,
    }
}

fn bad_body(rejection: JsonRejection) -> ApiError {
    ApiError::new(ErrorCode::BadUserInput, rejection.body_text())
}

/// `POST /api/v1/mobius/device/software/download-url`: a URL for this
/// device's install's installer, valid for `software_download_url_ttl_secs`.
pub async fn download_url(
    State(state): State<DeviceState>,
    device: DeviceScope,
    body: Result<Json<DownloadUrlRequest>, JsonRejection>,
) -> Result<Json<DownloadUrl>, ApiError> {
    let Json(request) = body.map_err(bad_body)?;
    let identity = &device.identity;
    let scope = state.store.begin(identity).await?;
    let install = scope
        .software()
        .install_of_device(request.request_id, identity.device_id())
        .await?;
    if mobius_core::software::status_of(&install).is_final() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "this install has already finished",
        ));
    }
    let secret = state
        .plans
        .signer
        .derived_secret(&scope, &device_actor(identity), token::PURPOSE)
        .await?;
    scope.commit().await?;
    let expires = chrono::Utc::now() + state.software.download_url_ttl;
    let token = token::sign(
        &secret,
        &DownloadClaims {
            device_id: identity.device_id(),
            version_id: install.version_id,
            request_id: install.request_id,
            expires: expires.timestamp(),
        },
    );
    Ok(Json(DownloadUrl {
        path: format!("{DOWNLOAD_PATH}{token}"),
        expires_at: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
}

/// `bytes=N-` or `bytes=N-M` (one range; anything else: the whole file).
fn parse_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        end => Some(end.parse().ok()?),
    };
    if end.is_some_and(|e| e < start) {
        return None;
    }
    Some((start, end))
}

/// `GET /api/v1/mobius/device/software/download/{token}`.
pub async fn download(
    State(state): State<DeviceState>,
    device: DeviceScope,
    Path(token_text): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let identity = &device.identity;
    let refused = |message: &str| ApiError::new(ErrorCode::Forbidden, message);
    let claims =
        token::peek(&token_text).ok_or_else(|| refused("the download URL is malformed"))?;
    if claims.device_id != identity.device_id() {
        return Err(refused("this download URL was signed for another device"));
    }
    let scope = state.store.begin(identity).await?;
    let secret = state
        .plans
        .signer
        .derived_secret(&scope, &device_actor(identity), token::PURPOSE)
        .await?;
    let claims =
        token::verify(&secret, &token_text, chrono::Utc::now().timestamp()).map_err(refused)?;
    let (_, version) = scope.software().get(claims.version_id).await?;
    // The transaction ends before the (possibly long) transfer.
    scope.commit().await?;

    let range = parse_range(&headers);
    let start = range.map_or(0, |(s, _)| s);
    let opened = match state
        .software
        .storage
        .open(&version.storage_key, start)
        .await
    {
        Ok(opened) => opened,
        Err(StorageError::BadRange) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(
                    header::CONTENT_RANGE,
                    format!("bytes */{}", version.size_bytes),
                )],
            )
                .into_response());
        }
        Err(StorageError::NotFound) => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "the installer is missing from storage: upload the version again",
            ));
        }
        Err(err) => {
            return Err(ApiError::internal(&err, true));
        }
    };
    let total = opened.total;
    let end = range
        .and_then(|(_, e)| e)
        .map_or(total.saturating_sub(1), |e| e.min(total.saturating_sub(1)));
    let length = if total == 0 { 0 } else { end + 1 - start };
    // Stop after `length` bytes (a bounded range).
    let mut remaining = length;
    let body = opened.body.map(move |chunk| {
        chunk.map(|bytes: Bytes| {
            let keep = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            remaining -= keep as u64;
            bytes.slice(..keep)
        })
    });
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-mobius-sha256", &version.sha256);
    response = if range.is_some() {
        response.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{total}"),
        )
    } else {
        response.status(StatusCode::OK)
    };
    response
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::internal(&e, false))
}

/// `POST /api/v1/mobius/device/software/progress`.
pub async fn progress(
    State(state): State<DeviceState>,
    device: DeviceScope,
    body: Result<Json<InstallProgress>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(progress) = body.map_err(bad_body)?;
    let identity = &device.identity;
    let scope = state.store.begin(identity).await?;
    let install = scope
        .software()
        .record_progress(&device_actor(identity), identity.device_id(), &progress)
        .await?;
    scope.commit().await?;
    state.plans.events.installs([&install]);
    Ok(Json(serde_json::json!({})))
}

/// Inventory reports list every package of a host: far above the device
/// listener's 64 KiB, well below what a report can reach.
pub const MAX_INVENTORY_BODY_BYTES: usize = 16 * 1024 * 1024;

/// `POST /api/v1/mobius/device/software/inventory`.
pub async fn inventory(
    State(state): State<DeviceState>,
    device: DeviceScope,
    body: Result<Json<mobius_api::software::InventoryReport>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(report) = body.map_err(bad_body)?;
    let identity = &device.identity;
    let scope = state.store.begin(identity).await?;
    let changed = scope
        .software()
        .replace_inventory(
            &device_actor(identity),
            identity.device_id(),
            &report.packages,
        )
        .await?;
    scope.commit().await?;
    Ok(Json(serde_json::json!({ "changed": changed })))
}
