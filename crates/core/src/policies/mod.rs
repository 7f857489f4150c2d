//! Policies: a named SQL check that a device passes when it answers at
//! least one row (as in Fleet), global or for one team, optionally for some
//! platforms only, run on every applicable online device every interval
//! (default 1 h, plus up to a tenth of it at random so a tenant's policies
//! do not all fire together) and on demand.
//!
//! Each device's latest result is kept with its time. The pass/fail counts
//! live on the policy row and are changed in the same transaction as each
//! result, so they are exactly as fresh as the newest result; `unknown` is
//! the applicable devices with neither. A change from "not failing" to
//! failing (a first result that fails included) is a `newly_failing`
//! transition, from failing to passing a `newly_passing` one: both are
//! audited and, when the tenant has a webhook, queued for delivery in the
//! same transaction (see [`webhooks`]).

mod entities;
pub mod webhooks;

use std::collections::HashSet;

use mobius_api::queries::{QueryKind, QueryOutcome, QueryRequest, QueryResult};
use rand::Rng;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;

pub use entities::delivery::Model as WebhookDelivery;
pub use entities::policy::Model as Policy;
pub use entities::result::Model as PolicyResult;

use crate::Uuid;
use crate::audit::{Actor, AuditRecord};
use crate::db::entities::device;
use crate::db::{Store, StoreError, StoreResult, SystemTask, TenantScope};
use crate::queries::{QueryError, validate_sql};
use entities::{policy, result};

/// How often a policy runs unless set.
pub const DEFAULT_INTERVAL_SECS: u64 = 3600;
/// Shortest interval: a policy is a compliance check, not a monitor.
pub const MIN_INTERVAL_SECS: u64 = 60;
pub const MAX_INTERVAL_SECS: u64 = 7 * 24 * 3600;
/// How long an agent may take to answer a policy check.
pub const CHECK_TIMEOUT_MS: u64 = 30_000;
/// Platforms a policy may be limited to.
pub const PLATFORMS: [&str; 3] = ["linux", "darwin", "windows"];
const MAX_TEXT: usize = 10_000;

/// A policy as an admin writes it.
#[derive(Clone, Debug, Default)]
pub struct PolicySpec {
    pub name: String,
    pub sql: String,
    pub description: String,
    pub resolution: String,
    /// Comma-separated [`PLATFORMS`]; empty or `None`: every platform.
    pub platform: Option<String>,
    pub interval_secs: Option<u64>,
    /// `None`: a global policy.
    pub team_id: Option<Uuid>,
}

/// A partial change; `None` leaves the field as it is.
#[derive(Clone, Debug, Default)]
pub struct PolicyPatch {
    pub name: Option<String>,
    pub sql: Option<String>,
    pub description: Option<String>,
    pub resolution: Option<String>,
    /// `Some("")` clears the filter.
    pub platform: Option<String>,
    pub interval_secs: Option<u64>,
}

/// Pass/fail/unknown over a policy's applicable devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    pub passing: u64,
    pub failing: u64,
    pub unknown: u64,
}

/// A change of a device's standing on a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    NewlyFailing,
    NewlyPassing,
}

impl Transition {
    pub fn event(self) -> &'static str {
        match self {
            Transition::NewlyFailing => "policy.newly_failing",
            Transition::NewlyPassing => "policy.newly_passing",
        }
    }
}

/// What recording a result changed.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub policy: Policy,
    pub result: PolicyResult,
    pub transition: Option<Transition>,
    /// The webhook delivery queued for the transition, if any.
    pub delivery: Option<Uuid>,
}

fn invalid(field: &str, reason: impl Into<String>) -> QueryError {
    QueryError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn text(field: &str, value: &str, max: usize) -> Result<String, QueryError> {
    if value.len() > max {
        return Err(invalid(field, format!("must be at most {max} bytes")));
    }
    if value.contains('\0') {
        return Err(invalid(field, "must not contain NUL characters"));
    }
    Ok(value.trim().to_owned())
}

fn name(value: &str) -> Result<String, QueryError> {
    let value = text("name", value, 200)?;
    if value.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    Ok(value)
}

fn platform(value: Option<&str>) -> Result<Option<String>, QueryError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let mut wanted: Vec<String> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let part = part.to_ascii_lowercase();
        if !PLATFORMS.contains(&part.as_str()) {
            return Err(invalid(
                "platform",
                format!("`{part}` is not one of {}", PLATFORMS.join(", ")),
            ));
        }
        if !wanted.contains(&part) {
            wanted.push(part);
        }
    }
    Ok((!wanted.is_empty()).then(|| wanted.join(",")))
}

fn interval(value: Option<u64>) -> Result<i64, QueryError> {
    let secs = value.unwrap_or(DEFAULT_INTERVAL_SECS);
    if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&secs) {
        return Err(invalid(
            "intervalSecs",
            format!("must be between {MIN_INTERVAL_SECS} and {MAX_INTERVAL_SECS} seconds"),
        ));
    }
    Ok(secs as i64)
}

/// The platform of a device, from its reported OS name.
pub fn device_platform(device: &device::Model) -> &'static str {
    let os = device.os_name.as_deref().unwrap_or("").to_ascii_lowercase();
    if os.contains("mac") || os.contains("darwin") {
        "darwin"
    } else if os.contains("windows") {
        "windows"
    } else {
        "linux"
    }
}

/// Whether `policy` applies to `device`: its team (global policies apply
/// to all), its platform filter, and not revoked.
pub fn applies_to(policy: &Policy, device: &device::Model) -> bool {
    device.revoked_at.is_none()
        && policy
            .team_id
            .is_none_or(|team| device.team_id == Some(team))
        && policy
            .platform
            .as_deref()
            .is_none_or(|p| p.split(',').any(|p| p == device_platform(device)))
}

/// The request a device gets for a policy check.
pub fn request_of(policy: &Policy) -> QueryRequest {
    QueryRequest {
        query_id: policy.id,
        kind: QueryKind::Policy,
        sql: policy.sql.clone(),
        timeout_ms: CHECK_TIMEOUT_MS,
    }
}

fn jittered_next(
    now: chrono::DateTime<chrono::Utc>,
    interval_secs: i64,
) -> chrono::DateTime<chrono::Utc> {
    let jitter = rand::rng().random_range(0..=(interval_secs / 10).max(0));
    now + chrono::Duration::seconds(interval_secs + jitter)
}

pub struct Policies<'s> {
    scope: &'s TenantScope,
}

impl TenantScope {
    pub fn policies(&self) -> Policies<'_> {
        Policies { scope: self }
    }
}

impl<'s> Policies<'s> {
    pub async fn create(&self, actor: &Actor, spec: PolicySpec) -> Result<Policy, QueryError> {
        let name = name(&spec.name)?;
        let sql = validate_sql("sql", &spec.sql)?;
        let description = text("description", &spec.description, MAX_TEXT)?;
        let resolution = text("resolution", &spec.resolution, MAX_TEXT)?;
        let platform = platform(spec.platform.as_deref())?;
        let interval_secs = interval(spec.interval_secs)?;
        if let Some(team) = spec.team_id {
            self.scope.teams().get(team).await?;
        }
        let now = chrono::Utc::now();
        let id = Uuid::now_v7();
        let row = policy::ActiveModel {
            id: Set(id),
            tenant_id: Set(self.scope.tenant_id()),
            team_id: Set(spec.team_id),
            name: Set(name),
            sql: Set(sql),
            description: Set(description),
            resolution: Set(resolution),
            platform: Set(platform),
            interval_secs: Set(interval_secs),
            // The first run is the scheduler's next pass.
            next_run_at: Set(now),
            passing_count: Set(0),
            failing_count: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await
        .map_err(crate::db::conflict_on("policy", "name"))?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("policy.created", "policy", Some(id)).with_details(json!({
                    "name": row.name,
                    "team_id": row.team_id,
                    "sql": row.sql,
                })),
            )
            .await?;
        Ok(row)
    }

    /// Changes a policy. A new SQL text or platform filter forgets every
    /// stored result (they answered another question) and runs it again
    /// at the next scheduler pass.
    pub async fn update(
        &self,
        actor: &Actor,
        id: Uuid,
        patch: PolicyPatch,
    ) -> Result<Policy, QueryError> {
        let current = self.get(id).await?;
        let mut row = current.clone().into_active_model();
        let now = chrono::Utc::now();
        let mut reset = false;
        if let Some(value) = &patch.name {
            row.name = Set(name(value)?);
        }
        if let Some(value) = &patch.sql {
            let sql = validate_sql("sql", value)?;
            reset |= sql != current.sql;
            row.sql = Set(sql);
        }
        if let Some(value) = &patch.description {
            row.description = Set(text("description", value, MAX_TEXT)?);
        }
        if let Some(value) = &patch.resolution {
            row.resolution = Set(text("resolution", value, MAX_TEXT)?);
        }
        if let Some(value) = &patch.platform {
            let value = platform(Some(value))?;
            reset |= value != current.platform;
            row.platform = Set(value);
        }
        if patch.interval_secs.is_some() {
            row.interval_secs = Set(interval(patch.interval_secs)?);
        }
        if reset {
            result::Entity::delete_many()
                .filter(result::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(result::Column::PolicyId.eq(id))
                .exec(self.scope.connection())
                .await?;
            row.passing_count = Set(0);
            row.failing_count = Set(0);
            row.next_run_at = Set(now);
        }
        row.updated_at = Set(now);
        let updated = row
            .update(self.scope.connection())
            .await
            .map_err(crate::db::conflict_on("policy", "name"))?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("policy.updated", "policy", Some(id)).with_details(json!({
                    "name": updated.name,
                    "results_reset": reset,
                })),
            )
            .await?;
        Ok(updated)
    }

    pub async fn delete(&self, actor: &Actor, id: Uuid) -> Result<Policy, QueryError> {
        let found = self.get(id).await?;
        policy::Entity::delete_many()
            .filter(policy::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(policy::Column::Id.eq(id))
            .exec(self.scope.connection())
            .await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("policy.deleted", "policy", Some(id))
                    .with_details(json!({ "name": found.name })),
            )
            .await?;
        Ok(found)
    }

    /// Asks for a run now (audited); the caller pushes it.
    pub async fn run_now(&self, actor: &Actor, id: Uuid) -> Result<Policy, QueryError> {
        let found = self.get(id).await?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("policy.run_requested", "policy", Some(id))
                    .with_details(json!({ "name": found.name })),
            )
            .await?;
        Ok(found)
    }

    pub async fn get(&self, id: Uuid) -> StoreResult<Policy> {
        policy::Entity::find_by_id(id)
            .filter(policy::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .ok_or(StoreError::NotFound { entity: "policy" })
    }

    /// Policies by name; `team`: that team's and the global ones.
    pub async fn page(
        &self,
        team: Option<Uuid>,
        offset: u64,
        limit: u64,
    ) -> StoreResult<(Vec<Policy>, u64)> {
        let mut query = policy::Entity::find()
            .filter(policy::Column::TenantId.eq(self.scope.tenant_id()))
            .order_by_asc(policy::Column::Name);
        if let Some(team) = team {
            query = query.filter(
                Condition::any()
                    .add(policy::Column::TeamId.is_null())
                    .add(policy::Column::TeamId.eq(team)),
            );
        }
        let total = query.clone().count(self.scope.connection()).await?;
        let rows = query
            .offset(offset)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        Ok((rows, total))
    }

    /// The devices a policy applies to now.
    pub async fn applicable_devices(&self, policy: &Policy) -> StoreResult<Vec<device::Model>> {
        let mut query = device::Entity::find()
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(device::Column::RevokedAt.is_null());
        if let Some(team) = policy.team_id {
            query = query.filter(device::Column::TeamId.eq(team));
        }
        if let Some(team) = self.scope.team_restriction() {
            query = query.filter(device::Column::TeamId.eq(team));
        }
        let devices = query.all(self.scope.connection()).await?;
        Ok(devices
            .into_iter()
            .filter(|d| applies_to(policy, d))
            .collect())
    }

    /// Passing and failing from the incrementally kept counts; unknown is
    /// what remains of the applicable devices.
    pub async fn counts(&self, policy: &Policy) -> StoreResult<PolicyCounts> {
        let applicable = self.applicable_devices(policy).await?.len() as u64;
        let passing = policy.passing_count.max(0) as u64;
        let failing = policy.failing_count.max(0) as u64;
        Ok(PolicyCounts {
            passing,
            failing,
            unknown: applicable.saturating_sub(passing + failing),
        })
    }

    /// Results of one standing (`Some(false)`: failing), newest first.
    pub async fn results_page(
        &self,
        policy_id: Uuid,
        passes: Option<bool>,
        offset: u64,
        limit: u64,
    ) -> StoreResult<(Vec<PolicyResult>, u64)> {
        let mut query = result::Entity::find()
            .filter(result::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(result::Column::PolicyId.eq(policy_id))
            .order_by_desc(result::Column::CheckedAt)
            .order_by_asc(result::Column::DeviceId);
        query = match passes {
            Some(value) => query.filter(result::Column::Passes.eq(value)),
            None => query.filter(result::Column::Passes.is_null()),
        };
        let total = query.clone().count(self.scope.connection()).await?;
        let rows = query
            .offset(offset)
            .limit(limit)
            .all(self.scope.connection())
            .await?;
        Ok((rows, total))
    }

    /// A device's latest result on every policy that has one.
    pub async fn results_of_device(&self, device_id: Uuid) -> StoreResult<Vec<PolicyResult>> {
        Ok(result::Entity::find()
            .filter(result::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(result::Column::DeviceId.eq(device_id))
            .order_by_asc(result::Column::PolicyId)
            .all(self.scope.connection())
            .await?)
    }

    /// The checks `device_id` is due for: applicable policies it has no
    /// result for, or none newer than the policy's interval.
    pub async fn due_for_device(&self, device_id: Uuid) -> StoreResult<Vec<QueryRequest>> {
        let db = self.scope.connection();
        let Some(device) = device::Entity::find_by_id(device_id)
            .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
            .one(db)
            .await?
        else {
            return Ok(Vec::new());
        };
        let policies = policy::Entity::find()
            .filter(policy::Column::TenantId.eq(self.scope.tenant_id()))
            .all(db)
            .await?;
        let checked: Vec<(Uuid, chrono::DateTime<chrono::Utc>)> = result::Entity::find()
            .select_only()
            .column(result::Column::PolicyId)
            .column(result::Column::CheckedAt)
            .filter(result::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(result::Column::DeviceId.eq(device_id))
            .into_tuple()
            .all(db)
            .await?;
        let now = chrono::Utc::now();
        Ok(policies
            .iter()
            .filter(|p| applies_to(p, &device))
            .filter(|p| {
                checked
                    .iter()
                    .find(|(id, _)| *id == p.id)
                    .is_none_or(|(_, at)| *at + chrono::Duration::seconds(p.interval_secs) <= now)
            })
            .map(request_of)
            .collect())
    }

    /// Policies whose run is due; each gets its next time (interval plus
    /// jitter) in this transaction.
    pub async fn take_due(&self) -> StoreResult<Vec<Policy>> {
        let db = self.scope.connection();
        let now = chrono::Utc::now();
        let due = policy::Entity::find()
            .filter(policy::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(policy::Column::NextRunAt.lte(now))
            .all(db)
            .await?;
        for found in &due {
            let mut row = found.clone().into_active_model();
            row.next_run_at = Set(jittered_next(now, found.interval_secs));
            row.update(db).await?;
        }
        Ok(due)
    }

    /// Stores a device's answer to a policy check: its latest result, the
    /// counts (same transaction), and a transition with its audit event and
    /// webhook delivery. `None` when the policy no longer exists.
    pub async fn record(
        &self,
        actor: &Actor,
        device_id: Uuid,
        answer: &QueryResult,
    ) -> StoreResult<Option<Recorded>> {
        let db = self.scope.connection();
        let Some(found) = policy::Entity::find_by_id(answer.query_id)
            .filter(policy::Column::TenantId.eq(self.scope.tenant_id()))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        let passes = match answer.outcome {
            QueryOutcome::Ok => Some(!answer.rows.is_empty()),
            QueryOutcome::Error => None,
        };
        let error = match answer.outcome {
            QueryOutcome::Ok => None,
            QueryOutcome::Error => Some(
                answer
                    .error
                    .as_deref()
                    .unwrap_or("the check failed")
                    .replace('\0', "")
                    .chars()
                    .take(2000)
                    .collect::<String>(),
            ),
        };
        let now = chrono::Utc::now();
        let existing = result::Entity::find()
            .filter(result::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(result::Column::PolicyId.eq(found.id))
            .filter(result::Column::DeviceId.eq(device_id))
            .one(db)
            .await?;
        let before = existing.as_ref().and_then(|r| r.passes);
        let stored = match existing {
            Some(row) => {
                let mut row = row.into_active_model();
                row.passes = Set(passes);
                row.error = Set(error);
                row.checked_at = Set(now);
                row.updated_at = Set(now);
                row.update(db).await?
            }
            None => result::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(self.scope.tenant_id()),
                policy_id: Set(found.id),
                device_id: Set(device_id),
                passes: Set(passes),
                error: Set(error),
                checked_at: Set(now),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(db)
            .await
            .map_err(crate::db::conflict_on("policy result", "device"))?,
        };
        let count = |v: Option<bool>, want: bool| i64::from(v == Some(want));
        let passing_delta = count(passes, true) - count(before, true);
        let failing_delta = count(passes, false) - count(before, false);
        let mut found = found;
        if passing_delta != 0 || failing_delta != 0 {
            use sea_orm::sea_query::{Expr, ExprTrait};
            policy::Entity::update_many()
                .col_expr(
                    policy::Column::PassingCount,
                    Expr::col(policy::Column::PassingCount).add(passing_delta),
                )
                .col_expr(
                    policy::Column::FailingCount,
                    Expr::col(policy::Column::FailingCount).add(failing_delta),
                )
                .filter(policy::Column::TenantId.eq(self.scope.tenant_id()))
                .filter(policy::Column::Id.eq(found.id))
                .exec(db)
                .await?;
            found.passing_count += passing_delta;
            found.failing_count += failing_delta;
        }
        let transition = match (before, passes) {
            (Some(false), Some(false)) => None,
            (_, Some(false)) => Some(Transition::NewlyFailing),
            (Some(false), Some(true)) => Some(Transition::NewlyPassing),
            _ => None,
        };
        let mut delivery = None;
        if let Some(transition) = transition {
            let hostname: Option<String> = device::Entity::find_by_id(device_id)
                .select_only()
                .column(device::Column::Hostname)
                .filter(device::Column::TenantId.eq(self.scope.tenant_id()))
                .into_tuple()
                .one(db)
                .await?;
            self.scope
                .audit()
                .record(
                    actor,
                    AuditRecord::new(transition.event(), "policy", Some(found.id)).with_details(
                        json!({
                            "policy": found.name,
                            "device_id": device_id,
                            "hostname": hostname,
                        }),
                    ),
                )
                .await?;
            delivery = self
                .scope
                .webhooks()
                .enqueue(
                    transition.event(),
                    json!({
                        "policy": {
                            "id": found.id,
                            "name": found.name,
                            "team_id": found.team_id,
                            "resolution": found.resolution,
                        },
                        "device": { "id": device_id, "hostname": hostname },
                        "checked_at": now,
                    }),
                )
                .await?;
        }
        Ok(Some(Recorded {
            policy: found,
            result: stored,
            transition,
            delivery,
        }))
    }
}

/// Policy scheduling across tenants, for the scheduler's job.
impl Store {
    /// Every tenant's due policies, each moved to its next run time.
    pub async fn take_due_policies(&self) -> StoreResult<Vec<Policy>> {
        let mut due = Vec::new();
        for tenant in self.billing_tenant_ids().await? {
            let scope = self
                .begin(&SystemTask::new("policy schedule", tenant))
                .await?;
            due.extend(scope.policies().take_due().await?);
            scope.commit().await?;
        }
        Ok(due)
    }
}

/// The ids of `devices`.
pub fn ids_of(devices: &[device::Model]) -> HashSet<Uuid> {
    devices.iter().map(|d| d.id).collect()
}
