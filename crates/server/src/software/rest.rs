//! `/api/v1/mobius/software/*`, the admin REST surface of software
//! distribution, authenticated like the other admin REST routes (a bearer
//! access or API token):
//!
//! | method and path | permission | |
//! |---|---|---|
//! | `POST /api/v1/mobius/software` | ManageDevices | multipart: `metadata` (JSON [`UploadMetadata`]) then `installer` (the file, streamed) |
//! | `GET /api/v1/mobius/software` | ViewDevices | the catalog |
//! | `GET /api/v1/mobius/software/{id}` | ViewDevices | one version and its installs per device |
//! | `DELETE /api/v1/mobius/software/{id}` | ManageDevices | the version, its installs and its stored installer |
//! | `POST /api/v1/mobius/software/{id}/install`, `/uninstall` | ManageDevices | [`InstallRequest`] |
//! | `GET /api/v1/mobius/software/requests/{requestId}` | ViewDevices | the installs of one request |
//!
//! These routes sit outside the admin router's body limit and request
//! timeout (an installer is large and slow to arrive); the upload has its
//! own limit, `software_max_installer_bytes`.

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware;
use axum::routing::{get, post};
use futures_util::StreamExt;
use mobius_api::software::{InstallRequest, SoftwareInstall, SoftwareVersion, UploadMetadata};
use mobius_core::authz::Operation;
use mobius_core::plans::PlanTargets;
use mobius_core::software::{
    Install, InstallSpec, NewVersion, SoftwareError, Title, Version, site_ids_of, status_of,
    team_ids_of, validate_metadata,
};
use mobius_core::{StoreError, Uuid};
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use super::SoftwareServices;
use super::storage::StorageError;
use crate::admin::graphql::{GraphqlState, Peer};
use crate::admin::rest::authorize;
use crate::device::PlanServices;
use crate::http::errors::{ApiError, ErrorCode};
use crate::http::router;

#[derive(Clone)]
pub struct SoftwareRestState {
    pub graphql: GraphqlState,
    pub software: SoftwareServices,
    pub plans: PlanServices,
}

/// Metadata is a few scripts: this is plenty and keeps a mistaken upload
/// (the installer sent as metadata) from being read into memory.
const MAX_METADATA_BYTES: usize = 512 * 1024;

pub fn router(state: SoftwareRestState) -> Router {
    let request_id = HeaderName::from_static(router::REQUEST_ID_HEADER);
    // Room for the multipart framing and the metadata beside the installer.
    let upload_limit = usize::try_from(state.software.max_installer_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(2 * 1024 * 1024);
    Router::new()
        .route(
            "/api/v1/mobius/software",
            get(list)
                .post(upload)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/api/v1/mobius/software/{id}", get(show).delete(remove))
        .route("/api/v1/mobius/software/{id}/install", post(install))
        .route("/api/v1/mobius/software/{id}/uninstall", post(uninstall))
        .route(
            "/api/v1/mobius/software/requests/{id}",
            get(request_installs),
        )
        .route("/api/v1/mobius/software/inventory", get(inventory))
        .route(
            "/api/v1/mobius/software/devices/{device}/retry-failed",
            post(retry_failed),
        )
        .route(
            "/api/v1/mobius/software/devices/{device}/install-self-service",
            post(install_self_service),
        )
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(router::request_span))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(middleware::from_fn(crate::http::request_id::scope)),
        )
        .with_state(state)
}

fn bad(field: Option<&str>, message: impl Into<String>) -> ApiError {
    ApiError {
        field: field.map(str::to_owned),
        ..ApiError::new(ErrorCode::BadUserInput, message)
    }
}

/// Exhaustive: a new software error needs a decision here.
pub(crate) fn software_error(err: SoftwareError) -> ApiError {
    match err {
        SoftwareError::Invalid { field, reason } => {
            let message = format!("invalid {field}: {reason}");
            bad(Some(&field), message)
        }
        SoftwareError::IdempotencyConflict => ApiError::new(ErrorCode::Conflict, err.to_string()),
        SoftwareError::Store(err) => err.into(),
    }
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn version_body(title: &Title, version: &Version) -> SoftwareVersion {
    SoftwareVersion {
        id: version.id,
        title_id: title.id,
        name: title.name.clone(),
        version: version.version.clone(),
        platform: title.platform.clone(),
        installer_kind: version.installer_kind.clone(),
        file_name: version.file_name.clone(),
        size_bytes: u64::try_from(version.size_bytes).unwrap_or(0),
        sha256: version.sha256.clone(),
        self_service: title.self_service,
        available_site_ids: site_ids_of(title),
        available_team_ids: team_ids_of(title),
        install_script: version.install_script.clone(),
        uninstall_script: version.uninstall_script.clone(),
        post_install_script: version.post_install_script.clone(),
        pre_install_condition: version.pre_install_condition.clone(),
        created_at: time(version.created_at),
    }
}

pub fn install_body(install: &Install) -> SoftwareInstall {
    SoftwareInstall {
        id: install.id,
        version_id: install.version_id,
        device_id: install.device_id,
        request_id: install.request_id,
        plan_id: install.plan_id,
        execution_id: install.execution_id,
        action: install.action.clone(),
        status: status_of(install),
        bytes_downloaded: u64::try_from(install.bytes_downloaded).unwrap_or(0),
        bytes_total: u64::try_from(install.bytes_total).unwrap_or(0),
        reason: install.reason.clone(),
        exit_code: install.exit_code,
        output_tail: install.output_tail.clone(),
        created_at: time(install.created_at),
        updated_at: time(install.updated_at),
    }
}

/// A row id given as a UUID or as a GraphQL global id of `type_name`.
fn parse_ref(text: &str, type_name: &str, field: &str) -> Result<Uuid, ApiError> {
    if let Ok(id) = Uuid::try_parse(text.trim()) {
        return Ok(id);
    }
    match crate::admin::graphql::ids::decode_global_id(&async_graphql::ID(text.trim().to_owned())) {
        Some((kind, id)) if kind == type_name => Ok(id),
        _ => Err(bad(
            Some(field),
            format!("{text:?} is not a {type_name} id (a UUID or a global id)"),
        )),
    }
}

fn parse_refs(texts: &[String], type_name: &str, field: &str) -> Result<Vec<Uuid>, ApiError> {
    texts
        .iter()
        .map(|t| parse_ref(t, type_name, field))
        .collect()
}

fn multipart_error(err: axum::extract::multipart::MultipartError, max: u64) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return bad(
            Some("installer"),
            format!(
                "the installer is larger than the limit of {max} bytes (setting software_max_installer_bytes)"
            ),
        );
    }
    bad(
        None,
        format!("unreadable multipart upload: {}", err.body_text()),
    )
}

/// `POST /api/v1/mobius/software`: a new version from a multipart form,
/// `metadata` first, then `installer`, streamed into storage.
pub async fn upload(
    State(state): State<SoftwareRestState>,
    headers: HeaderMap,
    peer: Peer,
    mut multipart: Multipart,
) -> Result<(StatusCode, Json<SoftwareVersion>), ApiError> {
    let max = state.software.max_installer_bytes;
    let authenticated =
        authorize(&state.graphql, &headers, &peer, Operation::ManageDevices).await?;
    let field = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, max))?
        .ok_or_else(|| bad(None, "send a multipart form: a `metadata` field (JSON), then an `installer` field (the file)"))?;
    if field.name() != Some("metadata") {
        return Err(bad(
            Some("metadata"),
            "the first field must be `metadata` (JSON), before the `installer` file",
        ));
    }
    let mut text = Vec::new();
    let mut field = field;
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, max))? {
        text.extend_from_slice(&chunk);
        if text.len() > MAX_METADATA_BYTES {
            return Err(bad(
                Some("metadata"),
                format!("must be at most {MAX_METADATA_BYTES} bytes"),
            ));
        }
    }
    // The next field can be read only once this one is gone.
    drop(field);
    let meta: UploadMetadata = serde_json::from_slice(&text).map_err(|e| {
        bad(
            Some("metadata"),
            format!("is not valid upload metadata: {e}"),
        )
    })?;
    let expected = match meta.sha256.as_deref().map(str::trim) {
        Some(sha) if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(sha.to_ascii_lowercase())
        }
        Some(_) => return Err(bad(Some("sha256"), "must be 64 hex digits")),
        None => None,
    };
    let mut new = NewVersion {
        name: meta.name.trim().to_owned(),
        version: meta.version.trim().to_owned(),
        platform: meta.platform.clone(),
        installer_kind: meta.installer_kind.clone(),
        install_script: meta.install_script.clone(),
        uninstall_script: meta.uninstall_script.clone(),
        post_install_script: meta.post_install_script.clone(),
        pre_install_condition: meta.pre_install_condition.clone(),
        self_service: meta.self_service,
        available_site_ids: parse_refs(&meta.available_site_ids, "Site", "availableSiteIds")?,
        available_team_ids: parse_refs(&meta.available_team_ids, "Team", "availableTeamIds")?,
        ..NewVersion::default()
    };
    validate_metadata(&new).map_err(software_error)?;
    if authenticated
        .scope
        .software()
        .version_exists(&new.name, &new.platform, &new.version)
        .await?
    {
        return Err(ApiError {
            field: Some("version".into()),
            ..ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "{} {} ({}) is already in the catalog",
                    new.name, new.version, new.platform
                ),
            )
        });
    }
    let principal = authenticated.principal;
    // No transaction stays open while the installer arrives.
    drop(authenticated.scope);

    let field = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, max))?
        .ok_or_else(|| bad(Some("installer"), "the `installer` file field is missing"))?;
    if field.name() != Some("installer") {
        return Err(bad(
            Some("installer"),
            "the second field must be the `installer` file",
        ));
    }
    let file_name = field
        .file_name()
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .map(|n| {
            n.trim()
                .trim_start_matches('.')
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("installer.{}", new.installer_kind));
    let key = format!(
        "{}/{}",
        principal.tenant_id.simple(),
        Uuid::now_v7().simple()
    );
    let body = field.map(|chunk| {
        chunk.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                std::io::Error::new(std::io::ErrorKind::FileTooLarge, "too large")
            } else {
                std::io::Error::other(e.body_text())
            }
        })
    });
    let too_large = || {
        bad(
            Some("installer"),
            format!(
                "the installer is larger than the limit of {max} bytes (setting software_max_installer_bytes)"
            ),
        )
    };
    let stored = match state.software.storage.put(&key, Box::pin(body), max).await {
        Ok(stored) => stored,
        Err(StorageError::TooLarge { .. }) => return Err(too_large()),
        Err(StorageError::Body(err)) if err.kind() == std::io::ErrorKind::FileTooLarge => {
            return Err(too_large());
        }
        Err(StorageError::Body(err)) => {
            return Err(bad(
                Some("installer"),
                format!("the upload was interrupted: {err}"),
            ));
        }
        Err(err @ (StorageError::NotFound | StorageError::BadRange | StorageError::Backend(_))) => {
            return Err(ApiError::internal(&err, true));
        }
    };
    let discard = |reason: ApiError| {
        let storage = state.software.storage.clone();
        let key = key.clone();
        async move {
            if let Err(err) = storage.delete(&key).await {
                tracing::warn!(error = %err, %key, "could not delete a refused installer");
            }
            reason
        }
    };
    if stored.size == 0 {
        return Err(discard(bad(Some("installer"), "the installer is empty")).await);
    }
    if let Some(expected) = &expected
        && *expected != stored.sha256
    {
        return Err(discard(bad(
            Some("sha256"),
            format!(
                "checksum mismatch: the installer received has SHA-256 {}, not the expected {expected}",
                stored.sha256
            ),
        ))
        .await);
    }
    new.file_name = file_name;
    new.storage_key = key.clone();
    new.size_bytes = stored.size;
    new.sha256 = stored.sha256.clone();
    let result = async {
        let scope = state.graphql.store.begin(&principal).await?;
        let added = scope
            .software()
            .add_version(&principal.actor(), new)
            .await
            .map_err(software_error)?;
        scope.commit().await?;
        Ok::<_, ApiError>(added)
    }
    .await;
    match result {
        Ok((title, version)) => Ok((StatusCode::CREATED, Json(version_body(&title, &version)))),
        Err(err) => Err(discard(err).await),
    }
}

/// `GET /api/v1/mobius/software`.
pub async fn list(
    State(state): State<SoftwareRestState>,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let authenticated = authorize(&state.graphql, &headers, &peer, Operation::ViewDevices).await?;
    let versions = authenticated.scope.software().list().await?;
    Ok(Json(json!({
        "versions": versions.iter().map(|(t, v)| version_body(t, v)).collect::<Vec<_>>(),
    })))
}

fn version_id(text: &str) -> Result<Uuid, ApiError> {
    parse_ref(text, "SoftwareVersion", "id")
}

/// `GET /api/v1/mobius/software/{id}`: the version and, per device, its
/// latest install.
pub async fn show(
    State(state): State<SoftwareRestState>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = version_id(&id)?;
    let authenticated = authorize(&state.graphql, &headers, &peer, Operation::ViewDevices).await?;
    let software = authenticated.scope.software();
    let (title, version) = software.get(id).await?;
    let installs = software.installs_of_version(id).await?;
    // What devices report having under this title's name, any version.
    let installed = software.inventory(Some(&title.name)).await?;
    Ok(Json(json!({
        "version": version_body(&title, &version),
        "installs": installs.iter().map(install_body).collect::<Vec<_>>(),
        "installed_on": installed.iter().map(inventory_body).collect::<Vec<_>>(),
    })))
}

fn inventory_body(row: &mobius_core::software::InventoryRow) -> Value {
    json!({
        "device_id": row.device_id,
        "source": row.source,
        "name": row.name,
        "version": row.version,
        "reported_at": time(row.reported_at),
    })
}

#[derive(serde::Deserialize)]
pub struct InventoryQuery {
    name: Option<String>,
}

/// `GET /api/v1/mobius/software/inventory?name=...`: which devices report
/// which version of a package (of every package without `name`).
pub async fn inventory(
    State(state): State<SoftwareRestState>,
    headers: HeaderMap,
    peer: Peer,
    query: axum::extract::Query<InventoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let authenticated = authorize(&state.graphql, &headers, &peer, Operation::ViewDevices).await?;
    let rows = authenticated
        .scope
        .software()
        .inventory(query.name.as_deref())
        .await?;
    Ok(Json(json!({
        "packages": rows.iter().map(inventory_body).collect::<Vec<_>>(),
    })))
}

/// `DELETE /api/v1/mobius/software/{id}`.
pub async fn remove(
    State(state): State<SoftwareRestState>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = version_id(&id)?;
    let authenticated =
        authorize(&state.graphql, &headers, &peer, Operation::ManageDevices).await?;
    let scope = authenticated.scope;
    let deleted = scope
        .software()
        .delete(&authenticated.principal.actor(), id)
        .await?;
    scope.commit().await?;
    if let Err(err) = state.software.storage.delete(&deleted.storage_key).await {
        // The catalog no longer names it; an operator can remove it later.
        tracing::warn!(error = %err, key = %deleted.storage_key, "could not delete a deleted version's installer");
    }
    Ok(Json(json!({ "deleted": deleted.id })))
}

async fn request(
    state: SoftwareRestState,
    headers: HeaderMap,
    peer: Peer,
    id: String,
    body: Result<Json<InstallRequest>, JsonRejection>,
    uninstall: bool,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = version_id(&id)?;
    let Json(body) = body.map_err(|e| bad(None, e.body_text()))?;
    let targets = PlanTargets {
        device_ids: parse_refs(&body.device_ids, "Device", "deviceIds")?,
        site_ids: parse_refs(&body.site_ids, "Site", "siteIds")?,
        team_ids: parse_refs(&body.team_ids, "Team", "teamIds")?,
    };
    let authenticated =
        authorize(&state.graphql, &headers, &peer, Operation::ManageDevices).await?;
    let scope = authenticated.scope;
    let requested = scope
        .software()
        .install(
            &authenticated.principal.actor(),
            &state.plans.signer,
            InstallSpec {
                version_id: id,
                uninstall,
                targets,
                idempotency_key: body.idempotency_key,
                timeout_secs: body.timeout_secs,
            },
        )
        .await
        .map_err(software_error)?;
    scope.commit().await?;
    if requested.created {
        state.plans.announce_installs(&requested);
    }
    let status = if requested.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "request_id": requested.request_id,
            "plan_id": requested.plan_id,
            "created": requested.created,
            "installs": requested.installs.iter().map(install_body).collect::<Vec<_>>(),
        })),
    ))
}

/// `POST /api/v1/mobius/software/{id}/install`.
pub async fn install(
    State(state): State<SoftwareRestState>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
    body: Result<Json<InstallRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    request(state, headers, peer, id, body, false).await
}

/// `POST /api/v1/mobius/software/{id}/uninstall`.
pub async fn uninstall(
    State(state): State<SoftwareRestState>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
    body: Result<Json<InstallRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    request(state, headers, peer, id, body, true).await
}

/// `POST /api/v1/mobius/software/devices/{device}/retry-failed`: every
/// install whose latest attempt on the device failed, requested again.
pub async fn retry_failed(
    State(state): State<SoftwareRestState>,
    headers: HeaderMap,
    peer: Peer,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    device_action(state, headers, peer, device, false).await
}

/// `POST /api/v1/mobius/software/devices/{device}/install-self-service`:
/// the newest version of every self-service title offered to the device
/// and not on it yet.
pub async fn install_self_service(
    State(state): State<SoftwareRestState>,
    headers: HeaderMap,
    peer: Peer,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    device_action(state, headers, peer, device, true).await
}

async fn device_action(
    state: SoftwareRestState,
    headers: HeaderMap,
    peer: Peer,
    device: String,
    self_service: bool,
) -> Result<Json<Value>, ApiError> {
    let device = parse_ref(&device, "Device", "device")?;
    let authenticated =
        authorize(&state.graphql, &headers, &peer, Operation::ManageDevices).await?;
    let scope = authenticated.scope;
    let actor = authenticated.principal.actor();
    let software = scope.software();
    let requested = if self_service {
        software
            .install_self_service(&actor, &state.plans.signer, device)
            .await
    } else {
        software
            .retry_failed(&actor, &state.plans.signer, device)
            .await
    }
    .map_err(software_error)?;
    scope.commit().await?;
    let mut installs = Vec::new();
    for request in &requested {
        state.plans.announce_installs(request);
        installs.extend(request.installs.iter().map(install_body));
    }
    Ok(Json(json!({ "installs": installs })))
}

/// `GET /api/v1/mobius/software/requests/{id}`.
pub async fn request_installs(
    State(state): State<SoftwareRestState>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id =
        Uuid::try_parse(id.trim()).map_err(|_| bad(Some("id"), "must be a request id (UUID)"))?;
    let authenticated = authorize(&state.graphql, &headers, &peer, Operation::ViewDevices).await?;
    let installs = authenticated
        .scope
        .software()
        .installs_of_request(id)
        .await?;
    if installs.is_empty() {
        return Err(StoreError::NotFound {
            entity: "install request",
        }
        .into());
    }
    Ok(Json(json!({
        "installs": installs.iter().map(install_body).collect::<Vec<_>>(),
    })))
}
