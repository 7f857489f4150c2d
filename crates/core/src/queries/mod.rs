//! Live query campaigns: one SQL statement pushed to the online devices
//! among its targets, one row per target device with its status
//! (`PENDING`, `ANSWERED`, `ERROR` with the agent's message, `OFFLINE`)
//! and the rows it answered.
//!
//! A campaign is RUNNING until every device that was online when it
//! started answered, its timeout passed (devices still PENDING then become
//! ERROR "no answer before the campaign ended"), or an admin stopped it.
//! Whether a device is online is decided by the caller (the server knows
//! which streams it holds and which heartbeats it saw); offline devices
//! are marked OFFLINE at once and never waited on.
//!
//! Answers are not audited one by one (a campaign over 10,000 devices
//! would write 10,000 events that say nothing an admin would act on);
//! starting and stopping a campaign is.

mod entities;

use std::collections::HashMap;

use mobius_api::queries::{QueryKind, QueryOutcome, QueryRequest, QueryResult};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use serde_json::json;

pub use entities::campaign::Model as Campaign;
pub use entities::campaign_device::Model as CampaignDevice;

use crate::Uuid;
use crate::audit::{Actor, AuditRecord};
use crate::db::entities::device;
use crate::db::{Store, StoreError, StoreResult, SystemTask, TenantScope};
use crate::plans::{PlanError, PlanTargets};
use entities::{campaign, campaign_device};

/// Campaign timeout unless the admin asks for another.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// Longest campaign: live queries are for answers now, not for monitoring.
pub const MAX_TIMEOUT_MS: u64 = 10 * 60_000;
/// Largest SQL text accepted (as osquery's own distributed queries).
pub const MAX_SQL_BYTES: usize = 64 * 1024;
/// Rows kept per device answer; the rest is dropped and the answer marked
/// truncated (agents cap their own answers well below this).
pub const MAX_STORED_ROWS: usize = 10_000;
/// Bytes of an error message kept.
const MAX_ERROR_BYTES: usize = 2048;
/// Rows per multi-row insert (Postgres allows 65535 bound values).
const INSERT_CHUNK: usize = 2000;

/// The message stored for devices still pending when a campaign ends.
pub const NO_ANSWER: &str = "no answer before the campaign ended";
/// The message stored for devices still pending when a campaign is stopped.
pub const STOPPED: &str = "the campaign was stopped before this device answered";

/// What can go wrong with a live query request.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A field of the request is refused; `field` is its path.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The campaign is no longer running.
    #[error("the live query has already ended")]
    AlreadyEnded,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for QueryError {
    fn from(err: sea_orm::DbErr) -> Self {
        QueryError::Store(err.into())
    }
}

impl From<PlanError> for QueryError {
    fn from(err: PlanError) -> Self {
        match err {
            PlanError::Invalid { field, reason } => QueryError::Invalid { field, reason },
            PlanError::Store(err) => QueryError::Store(err),
            other => QueryError::Store(StoreError::internal("resolving query targets")(other)),
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> QueryError {
    QueryError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a query's SQL text (shared with policies). Whether it is
/// read-only is the agent's call: its SQLite authorizer refuses writes.
pub fn validate_sql(field: &str, sql: &str) -> Result<String, QueryError> {
    let sql = sql.trim();
    if sql.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if sql.len() > MAX_SQL_BYTES {
        return Err(invalid(
            field,
            format!("must be at most {MAX_SQL_BYTES} bytes"),
        ));
    }
    if sql.contains('\0') {
        return Err(invalid(field, "must not contain NUL characters"));
    }
    Ok(sql.to_owned())
}

/// A campaign's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CampaignStatus {
    Running,
    Finished,
    Stopped,
}

impl CampaignStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Running => "RUNNING",
            CampaignStatus::Finished => "FINISHED",
            CampaignStatus::Stopped => "STOPPED",
        }
    }

    /// A stored value; anything unknown reads as FINISHED.
    pub fn of(campaign: &Campaign) -> CampaignStatus {
        match campaign.status.as_str() {
            "RUNNING" => CampaignStatus::Running,
            "STOPPED" => CampaignStatus::Stopped,
            _ => CampaignStatus::Finished,
        }
    }
}

/// One target device's state in a campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceQueryStatus {
    Pending,
    Answered,
    Error,
    Offline,
}

impl DeviceQueryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceQueryStatus::Pending => "PENDING",
            DeviceQueryStatus::Answered => "ANSWERED",
            DeviceQueryStatus::Error => "ERROR",
            DeviceQueryStatus::Offline => "OFFLINE",
        }
    }

    /// A stored value; anything unknown reads as ERROR.
    pub fn of(row: &CampaignDevice) -> DeviceQueryStatus {
        DeviceQueryStatus::parse(&row.status)
    }

    /// A stored value; anything unknown reads as ERROR.
    pub fn parse(status: &str) -> DeviceQueryStatus {
        match status {
            "PENDING" => DeviceQueryStatus::Pending,
            "ANSWERED" => DeviceQueryStatus::Answered,
            "OFFLINE" => DeviceQueryStatus::Offline,
            _ => DeviceQueryStatus::Error,
        }
    }
}

/// A live query as an admin submits it.
#[derive(Clone, Debug, Default)]
pub struct LiveQuerySpec {
    pub sql: String,
    pub targets: PlanTargets,
    /// Defaults to [`DEFAULT_TIMEOUT_MS`].
    pub timeout_ms: Option<u64>,
}

/// A started campaign and its per-device rows.
#[derive(Clone, Debug)]
pub struct Started {
    pub campaign: Campaign,
    pub devices: Vec<CampaignDevice>,
}

impl Started {
    /// The devices the campaign waits on.
    pub fn pending(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.devices
            .iter()
            .filter(|d| DeviceQueryStatus::of(d) == DeviceQueryStatus::Pending)
            .map(|d| d.device_id)
    }
}

/// What a campaign watcher's look found.
#[derive(Clone, Debug)]
pub enum Watched {
    /// Devices are still pending.
    Waiting,
    /// Ended before (stopped, or timed out).
    AlreadyEnded,
    /// This look ended it: every online target had answered.
    Finished(Box<Campaign>, Vec<CampaignDevice>),
}

/// The request a device gets for a campaign.
pub fn request_of(campaign: &Campaign) -> QueryRequest {
    let left = (campaign.ends_at - chrono::Utc::now())
        .num_milliseconds()
        .max(1000);
    QueryRequest {
        query_id: campaign.id,
        kind: QueryKind::Live,
        sql: campaign.sql.clone(),
        timeout_ms: u64::try_from(left).unwrap_or(DEFAULT_TIMEOUT_MS),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

pub struct Queries<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn queries(&self) -> Queries<'_> {
        Queries { scope: self }
    }
}

impl<'s> Queries<'s> {
    /// Validates and stores a campaign: one row per target device, PENDING
    /// for those `online` says are reachable and OFFLINE for the rest.
    pub async fn start(
        &self,
        actor: &Actor,
        spec: LiveQuerySpec,
        online: impl Fn(&device::Model) -> bool,
    ) -> Result<Started, QueryError> {
        let sql = validate_sql("sql", &spec.sql)?;
        let timeout_ms = spec.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1000..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid(
                "timeout",
                format!("must be between 1 s and {} s", MAX_TIMEOUT_MS / 1000),
            ));
        }
        let targets = &spec.targets;
        if targets.device_ids.is_empty()
            && targets.site_ids.is_empty()
            && targets.team_ids.is_empty()
        {
            return Err(invalid("targets", "name at least one device, site or team"));
        }
        let devices = self.resolve_targets(targets).await?;
        if devices.is_empty() {
            return Err(invalid("targets", "match no enrolled device"));
        }
        let db = self.scope.connection();
        let now = chrono::Utc::now();
        let id = Uuid::now_v7();
        let ends_at = now + chrono::Duration::milliseconds(timeout_ms as i64);
        let rows: Vec<CampaignDevice> = devices
            .iter()
            .map(|d| {
                let status = if online(d) {
                    DeviceQueryStatus::Pending
                } else {
                    DeviceQueryStatus::Offline
                };
                CampaignDevice {
                    id: Uuid::now_v7(),
                    tenant_id: self.scope.tenant_id(),
                    campaign_id: id,
                    device_id: d.id,
                    status: status.as_str().to_owned(),
                    error: None,
                    rows: None,
                    row_count: 0,
                    truncated: false,
                    duration_ms: None,
                    answered_at: None,
                    created_at: now,
                    updated_at: now,
                }
            })
            .collect();
        let all_offline = rows
            .iter()
            .all(|r| DeviceQueryStatus::of(r) == DeviceQueryStatus::Offline);
        let status = if all_offline {
            CampaignStatus::Finished
        } else {
            CampaignStatus::Running
        };
        let target_json = json!({
            "device_ids": targets.device_ids,
            "site_ids": targets.site_ids,
            "team_ids": targets.team_ids,
        });
        let campaign = campaign::ActiveModel {
            id: Set(id),
            tenant_id: Set(self.scope.tenant_id()),
            sql: Set(sql),
            status: Set(status.as_str().to_owned()),
            timeout_ms: Set(timeout_ms as i64),
            ends_at: Set(ends_at),
            finished_at: Set(all_offline.then_some(now)),
            targets: Set(target_json),
            actor_kind: Set(actor.kind.as_str().to_owned()),
            actor_id: Set(actor.id),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(db)
        .await?;
        for chunk in rows.chunks(INSERT_CHUNK) {
            campaign_device::Entity::insert_many(
                chunk
                    .iter()
                    .cloned()
                    .map(IntoActiveModel::into_active_model),
            )
            .exec_without_returning(db)
            .await?;
        }
        let offline = rows.len() - rows.iter().filter(|r| r.status == "PENDING").count();
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("query.live_started", "live_query", Some(id)).with_details(
                    json!({
                        "sql": campaign.sql,
                        "targets": rows.len(),
                        "offline": offline,
                        "timeout_ms": timeout_ms,
                    }),
                ),
            )
            .await?;
        Ok(Started {
            campaign,
            devices: rows,
        })
    }

    /// The target devices: the named ones (NOT_FOUND when one is not the
    /// tenant's or not visible to the caller; refused when revoked), read
    /// a few thousand per statement, and the unrevoked devices of the named
    /// sites and teams (as plans resolve them).
    async fn resolve_targets(
        &self,
        targets: &PlanTargets,
    ) -> Result<Vec<device::Model>, QueryError> {
        let db = self.scope.connection();
        let mut found: HashMap<Uuid, device::Model> = HashMap::new();
        let mut wanted: Vec<Uuid> = targets.device_ids.clone();
        wanted.sort();
        wanted.dedup();
        for chunk in wanted.chunks(5000) {
            let mut query = device::Entity::find()
                .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(device::Column::Id.is_in(chunk.to_vec()));
            if let Some(team) = self.scope.team_restriction() {
                query = query.filter(device::Column::TeamId.eq(team));
            }
            for row in query.all(db).await? {
                found.insert(row.id, row);
            }
        }
        if found.len() != wanted.len() {
            return Err(QueryError::Store(StoreError::NotFound { entity: "device" }));
        }
        if let Some(revoked) = found.values().find(|d| d.revoked_at.is_some()) {
            return Err(invalid(
                "targets.deviceIds",
                format!("device {} is revoked", revoked.id),
            ));
        }
        if !targets.site_ids.is_empty() || !targets.team_ids.is_empty() {
            let groups = PlanTargets {
                device_ids: Vec::new(),
                site_ids: targets.site_ids.clone(),
                team_ids: targets.team_ids.clone(),
            };
            let ids: Vec<Uuid> = self
                .scope
                .plans()
                .resolve_targets(&groups)
                .await?
                .into_iter()
                .filter(|id| !found.contains_key(id))
                .collect();
            for chunk in ids.chunks(5000) {
                for row in device::Entity::find()
                    .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
                    .filter(device::Column::Id.is_in(chunk.to_vec()))
                    .all(db)
                    .await?
                {
                    found.insert(row.id, row);
                }
            }
        }
        let mut devices: Vec<device::Model> = found.into_values().collect();
        devices.sort_by_key(|d| d.id);
        Ok(devices)
    }

    pub async fn get(&self, id: Uuid) -> StoreResult<Campaign> {
        campaign::Entity::find_by_id(id)
            .filter(campaign::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound {
                entity: "live query",
            })
    }

    /// Campaigns, newest first.
    pub async fn page(&self, offset: u64, limit: u64) -> StoreResult<(Vec<Campaign>, u64)> {
        let query = campaign::Entity::find()
            .filter(campaign::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_desc(campaign::Column::Id);
        let total = query.clone().count(self.scope.connection()).await?;
        let rows = query
            .offset(offset)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        Ok((rows, total))
    }

    /// Every target device's row of a campaign, in device order.
    pub async fn devices_of(&self, campaign_id: Uuid) -> StoreResult<Vec<CampaignDevice>> {
        Ok(campaign_device::Entity::find()
            .filter(campaign_device::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(campaign_device::Column::CampaignId.eq(campaign_id))
            .order_by_asc(campaign_device::Column::DeviceId)
            .all(self.scope.connection())
            .await?)
    }

    pub async fn device_row(
        &self,
        campaign_id: Uuid,
        device_id: Uuid,
    ) -> StoreResult<Option<CampaignDevice>> {
        Ok(campaign_device::Entity::find()
            .filter(campaign_device::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(campaign_device::Column::CampaignId.eq(campaign_id))
            .filter(campaign_device::Column::DeviceId.eq(device_id))
            .one(self.scope.connection())
            .await?)
    }

    /// Per-status counts of a campaign's devices.
    pub async fn status_counts(
        &self,
        campaign_id: Uuid,
    ) -> StoreResult<HashMap<DeviceQueryStatus, u64>> {
        let rows: Vec<(String, i64)> = campaign_device::Entity::find()
            .select_only()
            .column(campaign_device::Column::Status)
            .column_as(campaign_device::Column::Id.count(), "n")
            .filter(campaign_device::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(campaign_device::Column::CampaignId.eq(campaign_id))
            .group_by(campaign_device::Column::Status)
            .into_tuple()
            .all(self.scope.connection())
            .await?;
        let mut counts = HashMap::new();
        for (status, n) in rows {
            let status = DeviceQueryStatus::parse(&status);
            *counts.entry(status).or_insert(0) += n.max(0) as u64;
        }
        Ok(counts)
    }

    /// The running campaigns still waiting on `device_id`, as requests.
    pub async fn pending_for(&self, device_id: Uuid) -> StoreResult<Vec<QueryRequest>> {
        let db = self.scope.connection();
        let waiting: Vec<Uuid> = campaign_device::Entity::find()
            .select_only()
            .column(campaign_device::Column::CampaignId)
            .filter(campaign_device::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(campaign_device::Column::DeviceId.eq(device_id))
            .filter(campaign_device::Column::Status.eq(DeviceQueryStatus::Pending.as_str()))
            .into_tuple()
            .all(db)
            .await?;
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let now = chrono::Utc::now();
        let campaigns = campaign::Entity::find()
            .filter(campaign::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(campaign::Column::Id.is_in(waiting))
            .filter(campaign::Column::Status.eq(CampaignStatus::Running.as_str()))
            .filter(campaign::Column::EndsAt.gt(now))
            .order_by_asc(campaign::Column::Id)
            .all(db)
            .await?;
        Ok(campaigns.iter().map(request_of).collect())
    }

    /// Stores a device's answer to a campaign: one conditional UPDATE of
    /// the device's row while it is PENDING (ending a campaign turns every
    /// PENDING row into ERROR, so an answer to an ended campaign changes
    /// nothing). `None` when the campaign does not wait on this device any
    /// more (ended, already answered, or not a target): late and repeated
    /// answers are dropped quietly. Whether that was the last answer is
    /// the campaign watcher's question ([`Queries::pending_count`]), so
    /// answers never contend on the campaign's row.
    pub async fn record(
        &self,
        device_id: Uuid,
        result: &QueryResult,
    ) -> StoreResult<Option<CampaignDevice>> {
        use sea_orm::sea_query::Expr;
        let now = chrono::Utc::now();
        let mut truncated = result.truncated;
        let mut update = campaign_device::Entity::update_many();
        match result.outcome {
            QueryOutcome::Ok => {
                let mut rows = result.rows.clone();
                if rows.len() > MAX_STORED_ROWS {
                    rows.truncate(MAX_STORED_ROWS);
                    truncated = true;
                }
                for row in &rows {
                    for (column, value) in row {
                        crate::db::no_nul("rows", column)?;
                        crate::db::no_nul("rows", value)?;
                    }
                }
                let rows_json = serde_json::to_value(&rows)
                    .map_err(StoreError::internal("serializing query rows"))?;
                update = update
                    .col_expr(
                        campaign_device::Column::Status,
                        Expr::value(DeviceQueryStatus::Answered.as_str()),
                    )
                    .col_expr(
                        campaign_device::Column::RowCount,
                        Expr::value(i32::try_from(rows.len()).unwrap_or(i32::MAX)),
                    )
                    .col_expr(campaign_device::Column::Rows, Expr::value(rows_json));
            }
            QueryOutcome::Error => {
                let message = result
                    .error
                    .as_deref()
                    .unwrap_or("the query failed")
                    .replace('\0', "");
                update = update
                    .col_expr(
                        campaign_device::Column::Status,
                        Expr::value(DeviceQueryStatus::Error.as_str()),
                    )
                    .col_expr(
                        campaign_device::Column::Error,
                        Expr::value(truncate(&message, MAX_ERROR_BYTES)),
                    );
            }
        }
        let updated = update
            .col_expr(campaign_device::Column::Truncated, Expr::value(truncated))
            .col_expr(
                campaign_device::Column::DurationMs,
                Expr::value(i64::try_from(result.duration_ms).unwrap_or(i64::MAX)),
            )
            .col_expr(campaign_device::Column::AnsweredAt, Expr::value(now))
            .col_expr(campaign_device::Column::UpdatedAt, Expr::value(now))
            .filter(campaign_device::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(campaign_device::Column::CampaignId.eq(result.query_id))
            .filter(campaign_device::Column::DeviceId.eq(device_id))
            .filter(campaign_device::Column::Status.eq(DeviceQueryStatus::Pending.as_str()))
            .exec_with_returning(self.scope.connection())
            .await?;
        Ok(updated.into_iter().next())
    }

    /// Devices a campaign still waits on.
    pub async fn pending_count(&self, campaign_id: Uuid) -> StoreResult<u64> {
        Ok(campaign_device::Entity::find()
            .filter(campaign_device::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(campaign_device::Column::CampaignId.eq(campaign_id))
            .filter(campaign_device::Column::Status.eq(DeviceQueryStatus::Pending.as_str()))
            .count(self.scope.connection())
            .await?)
    }

    /// Ends the campaign when it is running and waits on no device any
    /// more (every online target answered).
    pub async fn finish_if_answered(&self, id: Uuid) -> StoreResult<Watched> {
        let campaign = self.get(id).await?;
        if CampaignStatus::of(&campaign) != CampaignStatus::Running {
            return Ok(Watched::AlreadyEnded);
        }
        if self.pending_count(id).await? > 0 {
            return Ok(Watched::Waiting);
        }
        let (campaign, changed) = self
            .end(campaign, CampaignStatus::Finished, NO_ANSWER)
            .await?;
        Ok(Watched::Finished(Box::new(campaign), changed))
    }

    /// Ends a running campaign: devices still pending become ERROR with
    /// `message`. Answers the campaign and the rows that changed.
    async fn end(
        &self,
        campaign: Campaign,
        status: CampaignStatus,
        message: &str,
    ) -> StoreResult<(Campaign, Vec<CampaignDevice>)> {
        let db = self.scope.connection();
        let now = chrono::Utc::now();
        let pending = campaign_device::Entity::find()
            .filter(campaign_device::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(campaign_device::Column::CampaignId.eq(campaign.id))
            .filter(campaign_device::Column::Status.eq(DeviceQueryStatus::Pending.as_str()))
            .all(db)
            .await?;
        let mut changed = Vec::with_capacity(pending.len());
        if !pending.is_empty() {
            campaign_device::Entity::update_many()
                .col_expr(
                    campaign_device::Column::Status,
                    sea_orm::sea_query::Expr::value(DeviceQueryStatus::Error.as_str()),
                )
                .col_expr(
                    campaign_device::Column::Error,
                    sea_orm::sea_query::Expr::value(message),
                )
                .col_expr(
                    campaign_device::Column::UpdatedAt,
                    sea_orm::sea_query::Expr::value(now),
                )
                .filter(campaign_device::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(campaign_device::Column::CampaignId.eq(campaign.id))
                .filter(campaign_device::Column::Status.eq(DeviceQueryStatus::Pending.as_str()))
                .exec(db)
                .await?;
            for mut row in pending {
                row.status = DeviceQueryStatus::Error.as_str().to_owned();
                row.error = Some(message.to_owned());
                row.updated_at = now;
                changed.push(row);
            }
        }
        let mut update = campaign.into_active_model();
        update.status = Set(status.as_str().to_owned());
        update.finished_at = Set(Some(now));
        update.updated_at = Set(now);
        let campaign = update.update(db).await?;
        Ok((campaign, changed))
    }

    /// Stops a running campaign (an admin's request).
    pub async fn stop(
        &self,
        actor: &Actor,
        id: Uuid,
    ) -> Result<(Campaign, Vec<CampaignDevice>), QueryError> {
        let campaign = self.get(id).await?;
        if CampaignStatus::of(&campaign) != CampaignStatus::Running {
            return Err(QueryError::AlreadyEnded);
        }
        let ended = self.end(campaign, CampaignStatus::Stopped, STOPPED).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("query.live_stopped", "live_query", Some(id))
                    .with_details(json!({ "unanswered": ended.1.len() })),
            )
            .await?;
        Ok(ended)
    }

    /// Ends the campaign if it is still running and its time is up (the
    /// timer of the server that started it, or the maintenance job after
    /// that server went away).
    pub async fn finish_if_due(
        &self,
        id: Uuid,
    ) -> StoreResult<Option<(Campaign, Vec<CampaignDevice>)>> {
        let campaign = self.get(id).await?;
        if CampaignStatus::of(&campaign) != CampaignStatus::Running
            || campaign.ends_at > chrono::Utc::now()
        {
            return Ok(None);
        }
        Ok(Some(
            self.end(campaign, CampaignStatus::Finished, NO_ANSWER)
                .await?,
        ))
    }

    /// Running campaigns whose time is up.
    pub async fn overdue(&self) -> StoreResult<Vec<Uuid>> {
        Ok(campaign::Entity::find()
            .select_only()
            .column(campaign::Column::Id)
            .filter(campaign::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(campaign::Column::Status.eq(CampaignStatus::Running.as_str()))
            .filter(campaign::Column::EndsAt.lte(chrono::Utc::now()))
            .into_tuple()
            .all(self.scope.connection())
            .await?)
    }
}

/// Live-query maintenance across tenants, for the scheduler's job.
impl Store {
    /// Ends every overdue campaign and deletes campaigns created before
    /// `cutoff` (with their answers). Answers (ended, deleted).
    pub async fn maintain_live_queries(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<(Vec<(Campaign, Vec<CampaignDevice>)>, u64)> {
        let mut ended = Vec::new();
        let mut deleted = 0;
        for tenant in self.billing_tenant_ids().await? {
            let scope = self
                .begin(&SystemTask::new("live query retention", tenant))
                .await?;
            for id in scope.queries().overdue().await? {
                if let Some(done) = scope.queries().finish_if_due(id).await? {
                    ended.push(done);
                }
            }
            deleted += campaign::Entity::delete_many()
                .filter(campaign::Column::TenantId.eq(tenant))
                .filter(campaign::Column::CreatedAt.lt(cutoff))
                .exec(scope.connection())
                .await?
                .rows_affected;
            scope.commit().await?;
        }
        Ok((ended, deleted))
    }
}
