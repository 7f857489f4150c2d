//! Software distribution: a per-tenant catalog of titles and versions
//! (each version one stored installer), and installs, which are plans
//! with one `install_software` operation whose per-device progress the
//! agent reports (PENDING, DOWNLOADING with bytes, INSTALLING, INSTALLED
//! or FAILED with a reason a person can act on).
//!
//! The installer bytes live in object storage (the server's concern);
//! this module stores where (`storage_key`), how big and their SHA-256.

mod entities;

use std::collections::{BTreeSet, HashMap};

use mobius_api::plans::ExecutionStatus;
use mobius_api::software::{
    INSTALLER_KINDS, InstallProgress, InstallSoftwareParams, InstallStatus, PLATFORMS,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use serde_json::json;

pub use entities::install::Model as Install;
pub use entities::inventory::Model as InventoryRow;
pub use entities::title::Model as Title;
pub use entities::version::Model as Version;

use crate::Uuid;
use crate::audit::{Actor, AuditRecord};
use crate::db::entities::device;
use crate::db::{Store, StoreError, StoreResult, SystemTask, TenantScope};
use crate::plans::{Execution, OperationSpec, PlanError, PlanSigner, PlanSpec, PlanTargets};
use entities::{install, inventory, title, version};

/// Lines of installer output kept with an install.
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// What can go wrong with a software request, mapped to stable codes by
/// the server.
#[derive(Debug, thiserror::Error)]
pub enum SoftwareError {
    /// A field of the request is refused; `field` is its name.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The idempotency key names an install request with other content.
    #[error("idempotencyKey is already used by a request with different content")]
    IdempotencyConflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for SoftwareError {
    fn from(err: sea_orm::DbErr) -> Self {
        SoftwareError::Store(err.into())
    }
}

impl From<PlanError> for SoftwareError {
    fn from(err: PlanError) -> Self {
        match err {
            PlanError::Invalid { field, reason } => SoftwareError::Invalid { field, reason },
            PlanError::IdempotencyConflict => SoftwareError::IdempotencyConflict,
            PlanError::AlreadyFinished(status) => SoftwareError::Invalid {
                field: "execution".into(),
                reason: format!("has already finished ({status})"),
            },
            PlanError::Store(err) => SoftwareError::Store(err),
        }
    }
}

pub type SoftwareResult<T> = Result<T, SoftwareError>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SoftwareError {
    SoftwareError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A version's catalog entry as an upload describes it (the installer is
/// already stored under `storage_key`).
#[derive(Clone, Debug, Default)]
pub struct NewVersion {
    pub name: String,
    pub version: String,
    pub platform: String,
    pub installer_kind: String,
    pub file_name: String,
    pub storage_key: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub install_script: Option<String>,
    pub uninstall_script: Option<String>,
    pub post_install_script: Option<String>,
    pub pre_install_condition: Option<String>,
    pub self_service: bool,
    pub available_site_ids: Vec<Uuid>,
    pub available_team_ids: Vec<Uuid>,
}

/// Checks an upload's metadata before any byte is stored, naming the
/// refused field.
pub fn validate_metadata(meta: &NewVersion) -> SoftwareResult<()> {
    let text_ok = |s: &str, max: usize| !s.trim().is_empty() && s.len() <= max && !s.contains('\0');
    if !text_ok(&meta.name, 200) {
        return Err(invalid("name", "must be 1 to 200 characters"));
    }
    if !text_ok(&meta.version, 100) {
        return Err(invalid("version", "must be 1 to 100 characters"));
    }
    if !PLATFORMS.contains(&meta.platform.as_str()) {
        return Err(invalid(
            "platform",
            format!("must be one of {}", PLATFORMS.join(", ")),
        ));
    }
    if !INSTALLER_KINDS.contains(&meta.installer_kind.as_str()) {
        return Err(invalid(
            "installerKind",
            format!("must be one of {}", INSTALLER_KINDS.join(", ")),
        ));
    }
    if !matches!(meta.installer_kind.as_str(), "deb" | "rpm")
        && meta
            .install_script
            .as_deref()
            .is_none_or(|s| s.trim().is_empty())
    {
        return Err(invalid(
            "installScript",
            format!(
                "is required for {} installers (it runs with $INSTALLER_PATH set)",
                meta.installer_kind
            ),
        ));
    }
    for (field, script) in [
        ("installScript", &meta.install_script),
        ("uninstallScript", &meta.uninstall_script),
        ("postInstallScript", &meta.post_install_script),
        ("preInstallCondition", &meta.pre_install_condition),
    ] {
        if let Some(script) = script
            && (script.contains('\0') || script.len() > 64 * 1024)
        {
            return Err(invalid(
                field,
                "must be at most 64 KiB without NUL characters",
            ));
        }
    }
    if let Some(sql) = &meta.pre_install_condition {
        let lowered = sql.trim_start().to_ascii_lowercase();
        if !(lowered.starts_with("select") || lowered.starts_with("with")) {
            return Err(invalid(
                "preInstallCondition",
                "must be a SELECT over the host tables (the install goes ahead when it answers a row)",
            ));
        }
    }
    Ok(())
}

/// An install request: a version to install (or uninstall) on targets.
#[derive(Clone, Debug, Default)]
pub struct InstallSpec {
    pub version_id: Uuid,
    pub uninstall: bool,
    pub targets: PlanTargets,
    pub idempotency_key: Option<String>,
    pub timeout_secs: Option<u64>,
}

/// What [`Software::install`] made.
#[derive(Clone, Debug)]
pub struct Requested {
    pub request_id: Uuid,
    pub plan_id: Uuid,
    pub executions: Vec<Execution>,
    pub installs: Vec<Install>,
    /// False when the idempotency key answered an earlier request.
    pub created: bool,
}

pub struct Software<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn software(&self) -> Software<'_> {
        Software { scope: self }
    }
}

/// The install's status; a stored value we did not write reads as FAILED.
pub fn status_of(install: &Install) -> InstallStatus {
    InstallStatus::parse(&install.status).unwrap_or(InstallStatus::Failed)
}

/// Whether a title is offered where the device is: its site or its team,
/// or everywhere when the title names neither.
pub fn offered_to(title: &Title, device: &device::Model) -> bool {
    let sites = site_ids_of(title);
    let teams = team_ids_of(title);
    (sites.is_empty() && teams.is_empty())
        || sites.contains(&device.site_id)
        || device.team_id.is_some_and(|t| teams.contains(&t))
}

pub fn site_ids_of(title: &Title) -> Vec<Uuid> {
    serde_json::from_value(title.available_site_ids.clone()).unwrap_or_default()
}

pub fn team_ids_of(title: &Title) -> Vec<Uuid> {
    serde_json::from_value(title.available_team_ids.clone()).unwrap_or_default()
}

/// Text from an agent, made storable: no NUL, at most `max` bytes, the
/// end kept (the tail of an output says what went wrong).
fn tail_text(text: &str, max: usize) -> String {
    let text = text.replace('\0', "\u{fffd}");
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

fn head_text(text: &str, max: usize) -> String {
    let mut text = text.replace('\0', "\u{fffd}");
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl<'s> Software<'s> {
    /// Whether `name` on `platform` already has `version` (checked before
    /// an upload stores anything; the insert checks again).
    pub async fn version_exists(
        &self,
        name: &str,
        platform: &str,
        version: &str,
    ) -> StoreResult<bool> {
        let Some(title) = self.title_by_name(name, platform).await? else {
            return Ok(false);
        };
        Ok(version::Entity::find()
            .filter(version::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(version::Column::TitleId.eq(title.id))
            .filter(version::Column::Version.eq(version))
            .one(self.scope.connection())
            .await?
            .is_some())
    }

    async fn title_by_name(&self, name: &str, platform: &str) -> StoreResult<Option<Title>> {
        Ok(title::Entity::find()
            .filter(title::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(title::Column::Name.eq(name))
            .filter(title::Column::Platform.eq(platform))
            .one(self.scope.connection())
            .await?)
    }

    /// Adds a version (creating its title, or updating the title's
    /// availability and self-service flag from this upload).
    pub async fn add_version(
        &self,
        actor: &Actor,
        new: NewVersion,
    ) -> SoftwareResult<(Title, Version)> {
        validate_metadata(&new)?;
        for id in &new.available_site_ids {
            self.scope
                .sites()
                .get(*id)
                .await
                .map_err(|_| invalid("availableSiteIds", format!("no site {id} in this tenant")))?;
        }
        for id in &new.available_team_ids {
            self.scope
                .teams()
                .get(*id)
                .await
                .map_err(|_| invalid("availableTeamIds", format!("no team {id} in this tenant")))?;
        }
        let db = self.scope.connection();
        let now = chrono::Utc::now();
        let sites = json!(new.available_site_ids);
        let teams = json!(new.available_team_ids);
        let title = match self.title_by_name(new.name.trim(), &new.platform).await? {
            Some(existing) => {
                let mut row = existing.into_active_model();
                row.self_service = Set(new.self_service);
                row.available_site_ids = Set(sites);
                row.available_team_ids = Set(teams);
                row.updated_at = Set(now);
                row.update(db).await?
            }
            None => title::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(self.scope.tenant_id()),
                name: Set(new.name.trim().to_owned()),
                platform: Set(new.platform.clone()),
                self_service: Set(new.self_service),
                available_site_ids: Set(sites),
                available_team_ids: Set(teams),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(db)
            .await
            .map_err(crate::db::conflict_on("software title", "name"))?,
        };
        let version = version::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            title_id: Set(title.id),
            version: Set(new.version.trim().to_owned()),
            installer_kind: Set(new.installer_kind.clone()),
            file_name: Set(new.file_name.clone()),
            storage_key: Set(new.storage_key.clone()),
            size_bytes: Set(i64::try_from(new.size_bytes).unwrap_or(i64::MAX)),
            sha256: Set(new.sha256.clone()),
            install_script: Set(new.install_script.clone()),
            uninstall_script: Set(new.uninstall_script.clone()),
            post_install_script: Set(new.post_install_script.clone()),
            pre_install_condition: Set(new.pre_install_condition.clone()),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(db)
        .await
        .map_err(crate::db::conflict_on("software version", "version"))?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    "software.version_uploaded",
                    "software_version",
                    Some(version.id),
                )
                .with_details(json!({
                    "name": title.name,
                    "version": version.version,
                    "platform": title.platform,
                    "installer_kind": version.installer_kind,
                    "size_bytes": version.size_bytes,
                    "sha256": version.sha256,
                    "self_service": title.self_service,
                })),
            )
            .await?;
        Ok((title, version))
    }

    /// Every version with its title, newest first.
    pub async fn list(&self) -> StoreResult<Vec<(Title, Version)>> {
        let db = self.scope.connection();
        let titles: HashMap<Uuid, Title> = title::Entity::find()
            .filter(title::Column::TenantId.eq(self.scope.tenant_id()))
            .all(db)
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        let versions = version::Entity::find()
            .filter(version::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(version::Column::Id)
            .all(db)
            .await?;
        Ok(versions
            .into_iter()
            .filter_map(|v| Some((titles.get(&v.title_id)?.clone(), v)))
            .collect())
    }

    pub async fn get(&self, version_id: Uuid) -> StoreResult<(Title, Version)> {
        let db = self.scope.connection();
        let version = version::Entity::find_by_id(version_id)
            .filter(version::Column::TenantId.eq(self.scope.tenant_id()))
            .one(db)
            .await?
            .ok_or(StoreError::NotFound {
                entity: "software version",
            })?;
        let title = title::Entity::find_by_id(version.title_id)
            .filter(title::Column::TenantId.eq(self.scope.tenant_id()))
            .one(db)
            .await?
            .ok_or(StoreError::NotFound {
                entity: "software version",
            })?;
        Ok((title, version))
    }

    /// Deletes a version (its installs go with it; a title left without
    /// versions goes too). The caller deletes the stored installer after
    /// commit.
    pub async fn delete(&self, actor: &Actor, version_id: Uuid) -> StoreResult<Version> {
        let (title, version) = self.get(version_id).await?;
        let db = self.scope.connection();
        version::Entity::delete_many()
            .filter(version::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(version::Column::Id.eq(version_id))
            .exec(db)
            .await?;
        let left = version::Entity::find()
            .filter(version::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(version::Column::TitleId.eq(title.id))
            .one(db)
            .await?;
        if left.is_none() {
            title::Entity::delete_many()
                .filter(title::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(title::Column::Id.eq(title.id))
                .exec(db)
                .await?;
        }
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    "software.version_deleted",
                    "software_version",
                    Some(version.id),
                )
                .with_details(json!({ "name": title.name, "version": version.version })),
            )
            .await?;
        Ok(version)
    }

    /// Applies a plan with one `install_software` operation to the targets
    /// and records a PENDING install per device. Devices outside the
    /// title's sites and teams (when it names any) are refused, and the
    /// whole request with them (the caller does not commit).
    pub async fn install(
        &self,
        actor: &Actor,
        signer: &PlanSigner,
        spec: InstallSpec,
    ) -> SoftwareResult<Requested> {
        let (title, version) = self.get(spec.version_id).await?;
        if spec.uninstall
            && version
                .uninstall_script
                .as_deref()
                .is_none_or(|s| s.trim().is_empty())
        {
            return Err(invalid(
                "uninstallScript",
                "this version has no uninstall script: upload the version with one to uninstall it",
            ));
        }
        let request_id = Uuid::now_v7();
        let idempotency_key = spec
            .idempotency_key
            .clone()
            .unwrap_or_else(|| format!("software:{request_id}"));
        let params = InstallSoftwareParams {
            request_id,
            action: if spec.uninstall {
                "uninstall"
            } else {
                "install"
            }
            .into(),
            name: title.name.clone(),
            version: version.version.clone(),
            installer_kind: version.installer_kind.clone(),
            file_name: version.file_name.clone(),
            size_bytes: u64::try_from(version.size_bytes).unwrap_or(0),
            sha256: version.sha256.clone(),
            install_script: version.install_script.clone(),
            uninstall_script: version.uninstall_script.clone(),
            post_install_script: version.post_install_script.clone(),
            pre_install_condition: version.pre_install_condition.clone(),
            timeout_secs: spec.timeout_secs,
        };
        let params = serde_json::to_value(&params)
            .map_err(StoreError::internal("serializing install parameters"))?;
        let applied = self
            .scope
            .plans()
            .apply(
                actor,
                signer,
                PlanSpec {
                    idempotency_key,
                    targets: spec.targets.clone(),
                    operations: vec![OperationSpec {
                        operation_id: None,
                        kind: "install_software".into(),
                        params,
                    }],
                },
            )
            .await?;
        if !applied.created {
            // An earlier request with this key: answer its installs.
            let installs = install::Entity::find()
                .filter(install::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(install::Column::PlanId.eq(applied.plan.id))
                .all(self.scope.connection())
                .await?;
            return Ok(Requested {
                request_id: installs.first().map_or(request_id, |i| i.request_id),
                plan_id: applied.plan.id,
                executions: applied.executions,
                installs,
                created: false,
            });
        }
        self.check_available(&title, &applied.executions).await?;
        let now = chrono::Utc::now();
        let action = if spec.uninstall {
            "uninstall"
        } else {
            "install"
        };
        let rows: Vec<Install> = applied
            .executions
            .iter()
            .map(|execution| Install {
                id: Uuid::now_v7(),
                tenant_id: self.scope.tenant_id(),
                version_id: version.id,
                device_id: execution.device_id,
                request_id,
                plan_id: applied.plan.id,
                execution_id: execution.id,
                action: action.into(),
                status: InstallStatus::Pending.as_str().into(),
                bytes_downloaded: 0,
                bytes_total: if spec.uninstall {
                    0
                } else {
                    version.size_bytes
                },
                reason: None,
                exit_code: None,
                output_tail: None,
                finished_at: None,
                created_at: now,
                updated_at: now,
            })
            .collect();
        for chunk in rows.chunks(1000) {
            install::Entity::insert_many(
                chunk
                    .iter()
                    .cloned()
                    .map(IntoActiveModel::into_active_model),
            )
            .exec_without_returning(self.scope.connection())
            .await?;
        }
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    if spec.uninstall {
                        "software.uninstall_requested"
                    } else {
                        "software.install_requested"
                    },
                    "software_version",
                    Some(version.id),
                )
                .with_details(json!({
                    "request_id": request_id,
                    "plan_id": applied.plan.id,
                    "devices": rows.len(),
                    "name": title.name,
                    "version": version.version,
                })),
            )
            .await?;
        Ok(Requested {
            request_id,
            plan_id: applied.plan.id,
            executions: applied.executions,
            installs: rows,
            created: true,
        })
    }

    /// Refuses devices outside the title's sites and teams, when it names any.
    async fn check_available(&self, title: &Title, executions: &[Execution]) -> SoftwareResult<()> {
        let sites: BTreeSet<Uuid> = site_ids_of(title).into_iter().collect();
        let teams: BTreeSet<Uuid> = team_ids_of(title).into_iter().collect();
        if sites.is_empty() && teams.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = executions.iter().map(|e| e.device_id).collect();
        for chunk in ids.chunks(5000) {
            let devices = device::Entity::find()
                .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(device::Column::Id.is_in(chunk.to_vec()))
                .all(self.scope.connection())
                .await?;
            for d in devices {
                let in_site = sites.contains(&d.site_id);
                let in_team = d.team_id.is_some_and(|t| teams.contains(&t));
                if !in_site && !in_team {
                    return Err(invalid(
                        "targets",
                        format!(
                            "device {} ({}) is not in a site or team where {} is available",
                            d.id, d.hostname, title.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Installs of a version, newest first.
    pub async fn installs_of_version(&self, version_id: Uuid) -> StoreResult<Vec<Install>> {
        Ok(install::Entity::find()
            .filter(install::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(install::Column::VersionId.eq(version_id))
            .order_by_desc(install::Column::Id)
            .all(self.scope.connection())
            .await?)
    }

    /// A device's installs, newest first (at most the latest 200).
    pub async fn installs_of_device(&self, device_id: Uuid) -> StoreResult<Vec<Install>> {
        Ok(install::Entity::find()
            .filter(install::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(install::Column::DeviceId.eq(device_id))
            .order_by_desc(install::Column::Id)
            .limit(200)
            .all(self.scope.connection())
            .await?)
    }

    /// Installs of a request.
    pub async fn installs_of_request(&self, request_id: Uuid) -> StoreResult<Vec<Install>> {
        Ok(install::Entity::find()
            .filter(install::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(install::Column::RequestId.eq(request_id))
            .order_by_asc(install::Column::Id)
            .all(self.scope.connection())
            .await?)
    }

    /// The install a device names by its request id.
    pub async fn install_of_device(
        &self,
        request_id: Uuid,
        device_id: Uuid,
    ) -> StoreResult<Install> {
        install::Entity::find()
            .filter(install::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(install::Column::RequestId.eq(request_id))
            .filter(install::Column::DeviceId.eq(device_id))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound { entity: "install" })
    }

    /// Records what a device reports about one of its installs. A final
    /// status stands: later reports change nothing. Status changes are
    /// audited; byte counts alone are not (they come several a second).
    pub async fn record_progress(
        &self,
        actor: &Actor,
        device_id: Uuid,
        progress: &InstallProgress,
    ) -> StoreResult<Install> {
        let found = self
            .install_of_device(progress.request_id, device_id)
            .await?;
        let current = status_of(&found);
        if current.is_final() {
            return Ok(found);
        }
        if progress.status == InstallStatus::Pending {
            return Err(StoreError::Invalid {
                field: "status",
                reason: "an agent reports DOWNLOADING, INSTALLING, UNINSTALLING or a final status"
                    .into(),
            });
        }
        let now = chrono::Utc::now();
        let changed = current != progress.status;
        let mut row = found.clone().into_active_model();
        row.status = Set(progress.status.as_str().into());
        // Later steps report no byte count: the download's last one stands.
        if progress.status == InstallStatus::Downloading || progress.bytes_downloaded > 0 {
            row.bytes_downloaded =
                Set(i64::try_from(progress.bytes_downloaded).unwrap_or(i64::MAX));
        }
        if progress.bytes_total > 0 {
            row.bytes_total = Set(i64::try_from(progress.bytes_total).unwrap_or(i64::MAX));
        }
        if let Some(reason) = &progress.reason {
            row.reason = Set(Some(head_text(reason, 2048)));
        }
        if progress.exit_code.is_some() {
            row.exit_code = Set(progress.exit_code);
        }
        if let Some(tail) = &progress.output_tail {
            row.output_tail = Set(Some(tail_text(tail, OUTPUT_TAIL_BYTES)));
        }
        if progress.status.is_final() {
            row.finished_at = Set(Some(now));
        }
        row.updated_at = Set(now);
        let updated = row.update(self.scope.connection()).await?;
        if changed {
            self.audit_status(actor, &updated).await?;
        }
        Ok(updated)
    }

    async fn audit_status(&self, actor: &Actor, install: &Install) -> StoreResult<()> {
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new(
                    "software.install_status",
                    "software_install",
                    Some(install.id),
                )
                .with_details(json!({
                    "device_id": install.device_id,
                    "version_id": install.version_id,
                    "action": install.action,
                    "status": install.status,
                    "reason": install.reason,
                    "exit_code": install.exit_code,
                })),
            )
            .await?;
        Ok(())
    }

    /// An install's plan execution ended: an install that did not reach a
    /// final status itself takes one from the execution (an agent killed
    /// mid-install, a cancelled or refused plan), so none stays open.
    pub async fn execution_finished(
        &self,
        actor: &Actor,
        execution: &Execution,
    ) -> StoreResult<Option<Install>> {
        let status = crate::plans::status_of(execution);
        if !status.is_final() {
            return Ok(None);
        }
        let Some(found) = install::Entity::find()
            .filter(install::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(install::Column::ExecutionId.eq(execution.id))
            .one(self.scope.connection())
            .await?
        else {
            return Ok(None);
        };
        if status_of(&found).is_final() {
            return Ok(None);
        }
        let detail = execution.error.clone().unwrap_or_default();
        let (new, reason) = match status {
            ExecutionStatus::Succeeded if found.action == "uninstall" => {
                (InstallStatus::Uninstalled, None)
            }
            ExecutionStatus::Succeeded => (InstallStatus::Installed, None),
            ExecutionStatus::Interrupted => (
                InstallStatus::Failed,
                Some("interrupted: the agent stopped during the install; retry it".to_owned()),
            ),
            ExecutionStatus::Cancelled => (InstallStatus::Failed, Some("cancelled".to_owned())),
            ExecutionStatus::Rejected => (
                InstallStatus::Failed,
                Some(format!("the agent refused the install plan: {detail}")),
            ),
            ExecutionStatus::TimedOut => (InstallStatus::Failed, Some("timeout".to_owned())),
            _ => (
                InstallStatus::Failed,
                Some(if detail.is_empty() {
                    "failed".to_owned()
                } else {
                    detail
                }),
            ),
        };
        let now = chrono::Utc::now();
        let mut row = found.into_active_model();
        row.status = Set(new.as_str().into());
        row.reason = Set(reason.map(|r| head_text(&r, 2048)));
        row.finished_at = Set(Some(now));
        row.updated_at = Set(now);
        let updated = row.update(self.scope.connection()).await?;
        self.audit_status(actor, &updated).await?;
        Ok(Some(updated))
    }

    /// Fails installs still PENDING since before `cutoff` (their device
    /// did not come back) and cancels their executions, so a device that
    /// returns much later does not install what nobody is waiting for.
    pub async fn fail_stale(
        &self,
        actor: &Actor,
        cutoff: chrono::DateTime<chrono::Utc>,
        days: u32,
    ) -> StoreResult<Vec<Install>> {
        let stale = install::Entity::find()
            .filter(install::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(install::Column::Status.eq(InstallStatus::Pending.as_str()))
            .filter(install::Column::CreatedAt.lt(cutoff))
            .limit(10_000)
            .all(self.scope.connection())
            .await?;
        let mut failed = Vec::with_capacity(stale.len());
        for found in stale {
            let execution_id = found.execution_id;
            let now = chrono::Utc::now();
            let mut row = found.into_active_model();
            row.status = Set(InstallStatus::Failed.as_str().into());
            row.reason = Set(Some(format!(
                "device offline too long: it did not pick the install up within {days} days"
            )));
            row.finished_at = Set(Some(now));
            row.updated_at = Set(now);
            let updated = row.update(self.scope.connection()).await?;
            self.audit_status(actor, &updated).await?;
            match self
                .scope
                .plans()
                .cancel_execution(actor, execution_id)
                .await
            {
                Ok(_) | Err(PlanError::AlreadyFinished(_)) => {}
                Err(PlanError::Store(err)) => return Err(err),
                Err(other) => {
                    tracing::warn!(error = %other, %execution_id, "could not cancel a stale install's execution");
                }
            }
            failed.push(updated);
        }
        Ok(failed)
    }
}

impl<'s> Software<'s> {
    /// Each version's newest install on the device (by request).
    pub(crate) async fn latest_on_device(
        &self,
        device_id: Uuid,
    ) -> StoreResult<HashMap<Uuid, Install>> {
        let rows = install::Entity::find()
            .filter(install::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(install::Column::DeviceId.eq(device_id))
            .order_by_asc(install::Column::Id)
            .all(self.scope.connection())
            .await?;
        let mut latest = HashMap::new();
        for row in rows {
            latest.insert(row.version_id, row);
        }
        Ok(latest)
    }

    /// A device the caller may see (NOT_FOUND otherwise), not revoked.
    async fn visible_device(&self, device_id: Uuid) -> SoftwareResult<device::Model> {
        let mut query = device::Entity::find_by_id(device_id)
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()));
        if let Some(team) = self.scope.team_restriction() {
            query = query.filter(device::Column::TeamId.eq(team));
        }
        let found = query
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound { entity: "device" })?;
        if found.revoked_at.is_some() {
            return Err(invalid(
                "deviceId",
                format!("device {device_id} is revoked"),
            ));
        }
        Ok(found)
    }

    /// Requests again every install (or uninstall) whose latest attempt on
    /// the device FAILED.
    pub async fn retry_failed(
        &self,
        actor: &Actor,
        signer: &PlanSigner,
        device_id: Uuid,
    ) -> SoftwareResult<Vec<Requested>> {
        self.visible_device(device_id).await?;
        let mut failed: Vec<Install> = self
            .latest_on_device(device_id)
            .await?
            .into_values()
            .filter(|i| status_of(i) == InstallStatus::Failed)
            .collect();
        failed.sort_by_key(|i| i.id);
        let mut requested = Vec::with_capacity(failed.len());
        for install in failed {
            requested.push(
                self.install(
                    actor,
                    signer,
                    InstallSpec {
                        version_id: install.version_id,
                        uninstall: install.action == "uninstall",
                        targets: PlanTargets {
                            device_ids: vec![device_id],
                            ..PlanTargets::default()
                        },
                        ..InstallSpec::default()
                    },
                )
                .await?,
            );
        }
        Ok(requested)
    }

    /// Installs the newest version of every self-service title offered
    /// where the device is (its site or team) and not installed on it yet
    /// (nor on its way).
    pub async fn install_self_service(
        &self,
        actor: &Actor,
        signer: &PlanSigner,
        device_id: Uuid,
    ) -> SoftwareResult<Vec<Requested>> {
        let found = self.visible_device(device_id).await?;
        let latest = self.latest_on_device(device_id).await?;
        let mut newest: HashMap<Uuid, (Title, Version)> = HashMap::new();
        for (title, version) in self.list().await? {
            if !title.self_service {
                continue;
            }
            if !offered_to(&title, &found) {
                continue;
            }
            // `list` is newest first: the first version seen of a title is its newest.
            newest.entry(title.id).or_insert((title, version));
        }
        let mut wanted: Vec<Version> = newest
            .into_values()
            // Missing: never installed, uninstalled, or its install failed.
            .filter(|(_, version)| match latest.get(&version.id) {
                None => true,
                Some(i) => matches!(
                    (i.action.as_str(), status_of(i)),
                    ("install", InstallStatus::Failed) | ("uninstall", InstallStatus::Uninstalled)
                ),
            })
            .map(|(_, version)| version)
            .collect();
        wanted.sort_by_key(|v| v.id);
        let mut requested = Vec::with_capacity(wanted.len());
        for version in wanted {
            requested.push(
                self.install(
                    actor,
                    signer,
                    InstallSpec {
                        version_id: version.id,
                        targets: PlanTargets {
                            device_ids: vec![device_id],
                            ..PlanTargets::default()
                        },
                        ..InstallSpec::default()
                    },
                )
                .await?,
            );
        }
        Ok(requested)
    }

    /// Replaces a device's reported packages when they differ from what is
    /// stored; answers whether anything changed (then audited with the
    /// counts added and removed).
    pub async fn replace_inventory(
        &self,
        actor: &Actor,
        device_id: Uuid,
        packages: &[mobius_api::software::InstalledPackage],
    ) -> StoreResult<bool> {
        if packages.len() > mobius_api::software::MAX_INVENTORY_PACKAGES {
            return Err(StoreError::Invalid {
                field: "packages",
                reason: format!(
                    "at most {} packages per report",
                    mobius_api::software::MAX_INVENTORY_PACKAGES
                ),
            });
        }
        let db = self.scope.connection();
        let clean = |s: &str| head_text(s, 255);
        let reported: BTreeSet<(String, String, String)> = packages
            .iter()
            .filter(|p| !p.name.trim().is_empty() && matches!(p.source.as_str(), "deb" | "rpm"))
            .map(|p| (p.source.clone(), clean(&p.name), clean(&p.version)))
            .collect();
        let stored: BTreeSet<(String, String, String)> = inventory::Entity::find()
            .filter(inventory::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(inventory::Column::DeviceId.eq(device_id))
            .all(db)
            .await?
            .into_iter()
            .map(|r| (r.source, r.name, r.version))
            .collect();
        if stored == reported {
            return Ok(false);
        }
        let added = reported.difference(&stored).count();
        let removed = stored.difference(&reported).count();
        inventory::Entity::delete_many()
            .filter(inventory::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(inventory::Column::DeviceId.eq(device_id))
            .exec(db)
            .await?;
        let now = chrono::Utc::now();
        let rows: Vec<inventory::ActiveModel> = reported
            .into_iter()
            .map(|(source, name, version)| inventory::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(self.scope.tenant_id()),
                device_id: Set(device_id),
                source: Set(source),
                name: Set(name),
                version: Set(version),
                reported_at: Set(now),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .collect();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(1000).collect();
            inventory::Entity::insert_many(chunk)
                .exec_without_returning(db)
                .await?;
        }
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("software.inventory_changed", "device", Some(device_id))
                    .with_details(json!({ "added": added, "removed": removed })),
            )
            .await?;
        Ok(true)
    }

    /// Which devices have a package named `name` (every package when
    /// `None`), by name, then device.
    pub async fn inventory(&self, name: Option<&str>) -> StoreResult<Vec<InventoryRow>> {
        let mut query = inventory::Entity::find()
            .filter(inventory::Column::TenantId.eq(self.scope.tenant_id()));
        if let Some(name) = name {
            query = query.filter(inventory::Column::Name.eq(name));
        }
        Ok(query
            .order_by_asc(inventory::Column::Name)
            .order_by_asc(inventory::Column::DeviceId)
            .limit(100_000)
            .all(self.scope.connection())
            .await?)
    }
}

impl Store {
    /// Fails every tenant's installs left PENDING since before `cutoff`;
    /// answers them (for their devices' work streams to be woken).
    pub async fn fail_stale_software_installs(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        days: u32,
    ) -> StoreResult<Vec<Install>> {
        let mut failed = Vec::new();
        for tenant in self.stale_install_tenants(cutoff).await? {
            let scope = self
                .begin(&SystemTask::new("software install expiry", tenant.id()))
                .await?;
            failed.extend(
                scope
                    .software()
                    .fail_stale(&Actor::system(), cutoff, days)
                    .await?,
            );
            scope.commit().await?;
        }
        Ok(failed)
    }
}
