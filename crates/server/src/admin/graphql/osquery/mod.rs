//! osquery in the admin API: enroll secrets (created, listed by prefix,
//! revoked) and the logs osquery hosts ship.

use mobius_core::osquery::{EnrollSecret, OsqueryError, ResultLogEntry, StatusLogEntry};

use crate::admin::graphql::prelude::*;

#[derive(SimpleObject, Clone)]
#[graphql(name = "OsqueryEnrollSecret")]
pub struct OsqueryEnrollSecretNode {
    pub id: ID,
    pub name: String,
    /// The secret's first characters (the secret itself is never shown
    /// again).
    pub prefix: String,
    pub site_id: ID,
    /// Hosts enrolled with it join this team; null: no team.
    pub team_id: Option<ID>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<EnrollSecret> for OsqueryEnrollSecretNode {
    fn from(s: EnrollSecret) -> Self {
        OsqueryEnrollSecretNode {
            id: global_id("OsqueryEnrollSecret", s.id),
            name: s.name,
            prefix: s.prefix,
            site_id: global_id("Site", s.site_id),
            team_id: s.team_id.map(|t| global_id("Team", t)),
            created_at: s.created_at,
            revoked_at: s.revoked_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct CreatedOsqueryEnrollSecret {
    /// Write this to the file `--enroll_secret_path` names. Shown once:
    /// only its SHA-256 is kept.
    pub secret: String,
    pub enroll_secret: OsqueryEnrollSecretNode,
}

#[derive(InputObject)]
pub struct CreateOsqueryEnrollSecretInput {
    #[graphql(default_with = "String::from(\"osquery enroll secret\")")]
    pub name: String,
    /// The site hosts join; default: the tenant's first site.
    pub site_id: Option<ID>,
    /// The team hosts join (whose agent options override the global
    /// ones); default: none.
    pub team_id: Option<ID>,
}

#[derive(SimpleObject)]
pub struct OsqueryResultLog {
    /// The scheduled query's name (`pack_<pack>_<query>` for packs).
    pub name: String,
    /// `added`, `removed` or `snapshot`.
    pub action: String,
    pub columns: Json<serde_json::Value>,
    pub logged_at: DateTime<Utc>,
}

impl From<ResultLogEntry> for OsqueryResultLog {
    fn from(e: ResultLogEntry) -> Self {
        OsqueryResultLog {
            name: e.name,
            action: e.action,
            columns: Json(e.columns),
            logged_at: e.logged_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct OsqueryStatusLog {
    /// glog severity: 0 info, 1 warning, 2 error, 3 fatal.
    pub severity: i32,
    pub filename: String,
    pub line: i32,
    pub message: String,
    pub version: String,
    pub logged_at: DateTime<Utc>,
}

impl From<StatusLogEntry> for OsqueryStatusLog {
    fn from(e: StatusLogEntry) -> Self {
        OsqueryStatusLog {
            severity: e.severity,
            filename: e.filename,
            line: e.line,
            message: e.message,
            version: e.version,
            logged_at: e.logged_at,
        }
    }
}

fn osquery_error(err: OsqueryError) -> async_graphql::Error {
    match err {
        OsqueryError::Invalid { field, reason } => errors::bad_input(&field, reason),
        OsqueryError::Store(err) => errors::store(err),
        OsqueryError::UnknownSecret
        | OsqueryError::NodeInvalid
        | OsqueryError::DeviceRevoked
        | OsqueryError::DeviceLimit { .. } => {
            errors::coded(ErrorCode::Internal, "unexpected", None)
        }
    }
}

#[derive(Default)]
pub struct OsqueryQuery;

#[Object]
impl OsqueryQuery {
    /// The tenant's osquery enroll secrets, newest first (prefixes only).
    async fn osquery_enroll_secrets(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<OsqueryEnrollSecretNode>> {
        let (_, scope) = gate::read(ctx, Operation::ManageEnrollmentTokens, None).await?;
        Ok(scope
            .osquery()
            .enroll_secrets()
            .await
            .map_err(errors::store)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Result rows an osquery host logged, newest first; `name` limits
    /// them to one scheduled query.
    async fn osquery_result_logs(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        name: Option<String>,
        #[graphql(default = 100)] first: i32,
    ) -> Result<Vec<OsqueryResultLog>> {
        let device_id = parse_id(&device_id, "Device")?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        scope
            .devices()
            .get(device_id)
            .await
            .map_err(errors::store)?;
        let limit = first.clamp(1, MAX_PAGE) as u64;
        Ok(scope
            .osquery()
            .result_logs(device_id, name.as_deref(), limit)
            .await
            .map_err(errors::store)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// osquery's own status lines from a host, newest first.
    async fn osquery_status_logs(
        &self,
        ctx: &Context<'_>,
        device_id: ID,
        #[graphql(default = 100)] first: i32,
    ) -> Result<Vec<OsqueryStatusLog>> {
        let device_id = parse_id(&device_id, "Device")?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        scope
            .devices()
            .get(device_id)
            .await
            .map_err(errors::store)?;
        let limit = first.clamp(1, MAX_PAGE) as u64;
        Ok(scope
            .osquery()
            .status_logs(device_id, limit)
            .await
            .map_err(errors::store)?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

#[derive(Default)]
pub struct OsqueryMutation;

#[Object]
impl OsqueryMutation {
    /// Creates an enroll secret for osquery hosts. The answer holds the
    /// secret once.
    async fn create_osquery_enroll_secret(
        &self,
        ctx: &Context<'_>,
        input: CreateOsqueryEnrollSecretInput,
    ) -> Result<CreatedOsqueryEnrollSecret> {
        let site = input.site_id.map(|id| parse_id(&id, "Site")).transpose()?;
        let team = input.team_id.map(|id| parse_id(&id, "Team")).transpose()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageEnrollmentTokens, None).await?;
        let created = scope
            .osquery()
            .create_enroll_secret(&principal.actor(), &input.name, site, team)
            .await
            .map_err(osquery_error)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(CreatedOsqueryEnrollSecret {
            secret: created.secret,
            enroll_secret: created.record.into(),
        })
    }

    /// Revokes an enroll secret: no host can enroll with it any more
    /// (hosts that did keep their node keys).
    async fn revoke_osquery_enroll_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<OsqueryEnrollSecretNode> {
        let id = parse_id(&id, "OsqueryEnrollSecret")?;
        let (principal, scope) = gate::write(ctx, Operation::ManageEnrollmentTokens, None).await?;
        let secret = scope
            .osquery()
            .revoke_enroll_secret(&principal.actor(), id)
            .await
            .map_err(errors::store)?;
        scope.commit().await.map_err(errors::store)?;
        Ok(secret.into())
    }
}
