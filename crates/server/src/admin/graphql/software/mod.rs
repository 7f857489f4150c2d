//! Software: the catalog and each device's installs, and installing or
//! uninstalling a version (a plan with an `install_software` operation).
//! Uploads are REST only (`POST /api/v1/mobius/software`): an installer
//! is a stream of bytes, not a GraphQL value.

use mobius_core::plans::PlanTargets;
use mobius_core::software::{Install, InstallSpec, SoftwareError, Title, Version};

use async_graphql::Subscription;
use futures_util::StreamExt;

use crate::admin::graphql::gate::WriteStore;
use crate::admin::graphql::prelude::*;
use crate::device::{PlanEvent, PlanServices};

/// Maps a software error by exhaustive match.
fn software_error(err: SoftwareError) -> async_graphql::Error {
    match err {
        SoftwareError::Invalid { field, reason } => errors::bad_input(&field, reason),
        SoftwareError::IdempotencyConflict => {
            errors::coded(ErrorCode::Conflict, err.to_string(), Some("idempotencyKey"))
        }
        SoftwareError::Store(e) => errors::store(e),
    }
}

fn parse_ids(ids: &[ID], kind: &str) -> Result<Vec<Uuid>> {
    ids.iter().map(|id| parse_id(id, kind)).collect()
}

/// A version of a title in the catalog, with its stored installer.
#[derive(SimpleObject)]
pub struct SoftwareVersion {
    pub id: ID,
    pub name: String,
    pub version: String,
    pub platform: String,
    pub installer_kind: String,
    pub file_name: String,
    pub size_bytes: f64,
    pub sha256: String,
    pub self_service: bool,
    pub install_script: Option<String>,
    pub uninstall_script: Option<String>,
    pub post_install_script: Option<String>,
    pub pre_install_condition: Option<String>,
    pub created_at: DateTime<Utc>,
}

fn version_node(title: &Title, version: &Version) -> SoftwareVersion {
    SoftwareVersion {
        id: global_id("SoftwareVersion", version.id),
        name: title.name.clone(),
        version: version.version.clone(),
        platform: title.platform.clone(),
        installer_kind: version.installer_kind.clone(),
        file_name: version.file_name.clone(),
        size_bytes: version.size_bytes as f64,
        sha256: version.sha256.clone(),
        self_service: title.self_service,
        install_script: version.install_script.clone(),
        uninstall_script: version.uninstall_script.clone(),
        post_install_script: version.post_install_script.clone(),
        pre_install_condition: version.pre_install_condition.clone(),
        created_at: version.created_at,
    }
}

/// One device's install (or uninstall) of a version.
#[derive(SimpleObject)]
pub struct SoftwareInstall {
    pub id: ID,
    pub version_id: ID,
    pub device_id: ID,
    pub request_id: String,
    pub execution_id: ID,
    pub action: String,
    /// PENDING, DOWNLOADING, INSTALLING, INSTALLED, UNINSTALLING,
    /// UNINSTALLED or FAILED.
    pub status: String,
    pub bytes_downloaded: f64,
    pub bytes_total: f64,
    /// Why it failed, in words a person can act on.
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub output_tail: Option<String>,
    pub updated_at: DateTime<Utc>,
}

fn install_node(install: &Install) -> SoftwareInstall {
    SoftwareInstall {
        id: global_id("SoftwareInstall", install.id),
        version_id: global_id("SoftwareVersion", install.version_id),
        device_id: global_id("Device", install.device_id),
        request_id: install.request_id.to_string(),
        execution_id: global_id("PlanExecution", install.execution_id),
        action: install.action.clone(),
        status: mobius_core::software::status_of(install)
            .as_str()
            .to_owned(),
        bytes_downloaded: install.bytes_downloaded as f64,
        bytes_total: install.bytes_total as f64,
        reason: install.reason.clone(),
        exit_code: install.exit_code,
        output_tail: install.output_tail.clone(),
        updated_at: install.updated_at,
    }
}

/// A package a device reports installed (from its deb or rpm database).
#[derive(SimpleObject)]
pub struct InstalledPackage {
    pub device_id: ID,
    /// deb or rpm.
    pub source: String,
    pub name: String,
    pub version: String,
    pub reported_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct SoftwareQuery;

#[Object]
impl SoftwareQuery {
    /// The catalog's versions, newest first.
    async fn software_versions(&self, ctx: &Context<'_>) -> Result<Vec<SoftwareVersion>> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        let versions = scope.software().list().await.map_err(errors::store)?;
        Ok(versions.iter().map(|(t, v)| version_node(t, v)).collect())
    }

    /// Which devices report which version of the package `name` (every
    /// package without it).
    async fn software_inventory(
        &self,
        ctx: &Context<'_>,
        name: Option<String>,
    ) -> Result<Vec<InstalledPackage>> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        let rows = scope
            .software()
            .inventory(name.as_deref())
            .await
            .map_err(errors::store)?;
        Ok(rows
            .into_iter()
            .map(|row| InstalledPackage {
                device_id: global_id("Device", row.device_id),
                source: row.source,
                name: row.name,
                version: row.version,
                reported_at: row.reported_at,
            })
            .collect())
    }

    /// A version's installs, one per device and request, newest first.
    async fn software_installs(
        &self,
        ctx: &Context<'_>,
        version_id: ID,
    ) -> Result<Vec<SoftwareInstall>> {
        let id = parse_id(&version_id, "SoftwareVersion")?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        scope.software().get(id).await.map_err(errors::store)?;
        let installs = scope
            .software()
            .installs_of_version(id)
            .await
            .map_err(errors::store)?;
        Ok(installs.iter().map(install_node).collect())
    }
}

#[derive(InputObject)]
pub struct InstallSoftwareInput {
    pub version_id: ID,
    #[graphql(default)]
    pub device_ids: Vec<ID>,
    #[graphql(default)]
    pub site_ids: Vec<ID>,
    #[graphql(default)]
    pub team_ids: Vec<ID>,
    /// Uninstall instead (the version needs an uninstall script).
    #[graphql(default)]
    pub uninstall: bool,
    pub idempotency_key: Option<String>,
}

#[derive(Default)]
pub struct SoftwareMutation;

#[Object]
impl SoftwareMutation {
    /// Installs (or uninstalls) a version on devices, sites and teams: a
    /// plan per request, a PENDING install per device.
    async fn install_software(
        &self,
        ctx: &Context<'_>,
        input: InstallSoftwareInput,
    ) -> Result<Vec<SoftwareInstall>> {
        let spec = InstallSpec {
            version_id: parse_id(&input.version_id, "SoftwareVersion")?,
            uninstall: input.uninstall,
            targets: PlanTargets {
                device_ids: parse_ids(&input.device_ids, "Device")?,
                site_ids: parse_ids(&input.site_ids, "Site")?,
                team_ids: parse_ids(&input.team_ids, "Team")?,
            },
            idempotency_key: input.idempotency_key,
            timeout_secs: None,
        };
        let plans = ctx.data::<PlanServices>()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageDevices, None).await?;
        let requested = scope
            .software()
            .install(&principal.actor(), &plans.signer, spec)
            .await
            .map_err(software_error)?;
        scope.commit().await.map_err(errors::store)?;
        if requested.created {
            plans.announce_installs(&requested);
        }
        Ok(requested.installs.iter().map(install_node).collect())
    }
}

#[derive(Default)]
pub struct SoftwareSubscription;

#[Subscription]
impl SoftwareSubscription {
    /// Installs of one request (`requestId`) or of one version
    /// (`versionId`, a global id or the REST surface's UUID) as they change: first each as it stands, then every
    /// new request, status, byte count and outcome committed on the server
    /// this subscription is connected to (as `executionUpdates`).
    async fn software_install_updates(
        &self,
        ctx: &Context<'_>,
        request_id: Option<ID>,
        version_id: Option<ID>,
    ) -> Result<impl futures_util::Stream<Item = SoftwareInstall>> {
        let principal = gate::principal(ctx)?;
        principal
            .authorize(Operation::ViewDevices, None)
            .map_err(errors::denied)?;
        let request = request_id
            .map(|id| {
                Uuid::try_parse(id.as_str())
                    .map_err(|_| errors::bad_input("requestId", "must be a request id (UUID)"))
            })
            .transpose()?;
        // A global id, or the UUID the REST surface shows.
        let version = version_id
            .map(|id| match Uuid::try_parse(id.as_str()) {
                Ok(uuid) => Ok(uuid),
                Err(_) => parse_id(&id, "SoftwareVersion"),
            })
            .transpose()?;
        if request.is_none() && version.is_none() {
            return Err(errors::bad_input(
                "requestId",
                "give requestId or versionId (or both)",
            ));
        }
        let tenant = principal.tenant_id;
        // Subscribe before reading the backlog, so no change falls between.
        let feed = ctx.data::<PlanServices>()?.events.subscribe();
        let store = &ctx.data::<WriteStore>()?.0;
        let scope = store.begin(principal).await.map_err(errors::store)?;
        let backlog = match (request, version) {
            (Some(request), _) => scope.software().installs_of_request(request).await,
            (None, Some(version)) => {
                scope.software().get(version).await.map_err(errors::store)?;
                scope.software().installs_of_version(version).await
            }
            (None, None) => Ok(Vec::new()),
        }
        .map_err(errors::store)?;
        drop(scope);
        let wanted = move |install: &Install| {
            install.tenant_id == tenant
                && request.is_none_or(|r| r == install.request_id)
                && version.is_none_or(|v| v == install.version_id)
        };
        let live = tokio_stream::wrappers::BroadcastStream::new(feed).filter_map(move |event| {
            let found = match event {
                Ok(PlanEvent::Install(install)) if wanted(&install) => Some(install_node(&install)),
                _ => None,
            };
            async move { found }
        });
        Ok(
            futures_util::stream::iter(backlog.iter().map(install_node).collect::<Vec<_>>())
                .chain(live),
        )
    }
}
