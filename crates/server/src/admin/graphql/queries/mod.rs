//! Live queries: run, stop, read, and follow a campaign's answers.

use std::collections::HashSet;

use async_graphql::Subscription;
use futures_util::{Stream, StreamExt};
use mobius_core::plans::PlanTargets;
use mobius_core::queries::{
    Campaign, CampaignDevice, CampaignStatus, DeviceQueryStatus as CoreDeviceStatus, LiveQuerySpec,
    QueryError,
};
use tokio_stream::wrappers::BroadcastStream;

use crate::admin::graphql::gate::WriteStore;
use crate::admin::graphql::prelude::*;
use crate::queries::{QueryEvent, QueryServices};

/// Maps a query error by exhaustive match.
pub(crate) fn query_error(err: QueryError) -> async_graphql::Error {
    match err {
        QueryError::Invalid { field, reason } => errors::bad_input(&field, reason),
        QueryError::AlreadyEnded => errors::coded(ErrorCode::Conflict, err.to_string(), None),
        QueryError::Store(e) => errors::store(e),
    }
}

fn parse_ids(ids: &[ID], kind: &str) -> Result<Vec<Uuid>> {
    ids.iter().map(|id| parse_id(id, kind)).collect()
}

#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum LiveQueryStatus {
    Running,
    Finished,
    Stopped,
}

/// A target device's state in a campaign.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum LiveQueryDeviceStatus {
    /// Pushed; no answer yet.
    Pending,
    Answered,
    /// The query failed on the device (`error` says why), or the campaign
    /// ended before it answered.
    Error,
    /// Not online when the campaign started: never sent.
    Offline,
}

impl From<CoreDeviceStatus> for LiveQueryDeviceStatus {
    fn from(status: CoreDeviceStatus) -> Self {
        match status {
            CoreDeviceStatus::Pending => LiveQueryDeviceStatus::Pending,
            CoreDeviceStatus::Answered => LiveQueryDeviceStatus::Answered,
            CoreDeviceStatus::Error => LiveQueryDeviceStatus::Error,
            CoreDeviceStatus::Offline => LiveQueryDeviceStatus::Offline,
        }
    }
}

/// A live query campaign.
pub struct LiveQueryNode(pub Campaign);

#[derive(SimpleObject, Default)]
pub struct LiveQueryCounts {
    pub pending: i64,
    pub answered: i64,
    pub error: i64,
    pub offline: i64,
}

#[Object(name = "LiveQuery")]
impl LiveQueryNode {
    async fn id(&self) -> ID {
        global_id("LiveQuery", self.0.id)
    }

    async fn sql(&self) -> &str {
        &self.0.sql
    }

    async fn status(&self) -> LiveQueryStatus {
        match CampaignStatus::of(&self.0) {
            CampaignStatus::Running => LiveQueryStatus::Running,
            CampaignStatus::Finished => LiveQueryStatus::Finished,
            CampaignStatus::Stopped => LiveQueryStatus::Stopped,
        }
    }

    async fn timeout_secs(&self) -> i64 {
        self.0.timeout_ms / 1000
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// When the campaign ends at the latest.
    async fn ends_at(&self) -> DateTime<Utc> {
        self.0.ends_at
    }

    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }

    /// Target devices per status.
    async fn counts(&self, ctx: &Context<'_>) -> Result<LiveQueryCounts> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        let counts = scope
            .queries()
            .status_counts(self.0.id)
            .await
            .map_err(errors::store)?;
        let get = |s| counts.get(&s).copied().unwrap_or(0) as i64;
        Ok(LiveQueryCounts {
            pending: get(CoreDeviceStatus::Pending),
            answered: get(CoreDeviceStatus::Answered),
            error: get(CoreDeviceStatus::Error),
            offline: get(CoreDeviceStatus::Offline),
        })
    }

    /// Every target device with its status and rows.
    async fn results(&self, ctx: &Context<'_>) -> Result<Vec<LiveQueryResultNode>> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        let rows = scope
            .queries()
            .devices_of(self.0.id)
            .await
            .map_err(errors::store)?;
        Ok(rows.into_iter().map(LiveQueryResultNode).collect())
    }
}

/// One target device's answer (or why there is none).
pub struct LiveQueryResultNode(pub CampaignDevice);

#[Object(name = "LiveQueryResult")]
impl LiveQueryResultNode {
    async fn live_query_id(&self) -> ID {
        global_id("LiveQuery", self.0.campaign_id)
    }

    async fn device_id(&self) -> ID {
        global_id("Device", self.0.device_id)
    }

    /// The device's hostname (empty when the device is gone).
    async fn hostname(&self, ctx: &Context<'_>) -> Result<String> {
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        match scope.devices().get(self.0.device_id).await {
            Ok(device) => Ok(device.hostname),
            Err(StoreError::NotFound { .. }) => Ok(String::new()),
            Err(err) => Err(errors::store(err)),
        }
    }

    async fn status(&self) -> LiveQueryDeviceStatus {
        CoreDeviceStatus::of(&self.0).into()
    }

    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }

    /// The rows answered: a list of objects, column name to string value.
    async fn rows(&self) -> Json<serde_json::Value> {
        Json(
            self.0
                .rows
                .clone()
                .unwrap_or_else(|| serde_json::Value::Array(Vec::new())),
        )
    }

    async fn row_count(&self) -> i32 {
        self.0.row_count
    }

    /// The device's row or byte cap cut the answer short.
    async fn truncated(&self) -> bool {
        self.0.truncated
    }

    async fn duration_ms(&self) -> Option<i64> {
        self.0.duration_ms
    }

    async fn answered_at(&self) -> Option<DateTime<Utc>> {
        self.0.answered_at
    }
}

#[derive(InputObject)]
pub struct QueryTargetsInput {
    #[graphql(default)]
    pub device_ids: Vec<ID>,
    #[graphql(default)]
    pub site_ids: Vec<ID>,
    #[graphql(default)]
    pub team_ids: Vec<ID>,
}

#[derive(InputObject)]
pub struct RunLiveQueryInput {
    /// Read-only SQL over the host tables (osquery's table names).
    pub sql: String,
    pub targets: QueryTargetsInput,
    /// Seconds before the campaign ends by itself (default 60, at most 600).
    pub timeout_secs: Option<i32>,
}

#[derive(Default)]
pub struct LiveQueryQuery;

#[Object]
impl LiveQueryQuery {
    async fn live_query(&self, ctx: &Context<'_>, id: ID) -> Result<LiveQueryNode> {
        let id = parse_id(&id, "LiveQuery")?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        Ok(LiveQueryNode(
            scope.queries().get(id).await.map_err(errors::store)?,
        ))
    }

    /// Campaigns of the last `live_query_retention_hours`, newest first.
    async fn live_queries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Page<LiveQueryNode>> {
        let window = Window::new(first, after, last, before)?;
        let (_, scope) = gate::read(ctx, Operation::ViewDevices, None).await?;
        paged(
            window,
            |offset, limit| async move { scope.queries().page(offset, limit).await },
            LiveQueryNode,
        )
        .await
    }
}

#[derive(Default)]
pub struct LiveQueryMutation;

#[Object]
impl LiveQueryMutation {
    /// Starts a campaign: pushed at once to the online targets; offline
    /// ones are OFFLINE at once. Follow it with `liveQueryResults`.
    async fn run_live_query(
        &self,
        ctx: &Context<'_>,
        input: RunLiveQueryInput,
    ) -> Result<LiveQueryNode> {
        let timeout_ms = match input.timeout_secs {
            Some(secs) if secs < 1 => {
                return Err(errors::bad_input("timeoutSecs", "must be at least 1"));
            }
            Some(secs) => Some(u64::try_from(secs).unwrap_or(0) * 1000),
            None => None,
        };
        let spec = LiveQuerySpec {
            sql: input.sql,
            targets: PlanTargets {
                device_ids: parse_ids(&input.targets.device_ids, "Device")?,
                site_ids: parse_ids(&input.targets.site_ids, "Site")?,
                team_ids: parse_ids(&input.targets.team_ids, "Team")?,
            },
            timeout_ms,
        };
        let services = ctx.data::<QueryServices>()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageDevices, None).await?;
        let started = scope
            .queries()
            .start(&principal.actor(), spec, |d| services.is_online(d))
            .await
            .map_err(|err| match err {
                QueryError::Invalid { field, reason } if field == "timeout" => {
                    errors::bad_input("timeoutSecs", reason)
                }
                other => query_error(other),
            })?;
        scope.commit().await.map_err(errors::store)?;
        services.dispatch_live(&started).await;
        Ok(LiveQueryNode(started.campaign))
    }

    /// Ends a running campaign; devices that have not answered become
    /// ERROR. CONFLICT when it has already ended.
    async fn stop_live_query(&self, ctx: &Context<'_>, id: ID) -> Result<LiveQueryNode> {
        let id = parse_id(&id, "LiveQuery")?;
        let services = ctx.data::<QueryServices>()?;
        let (principal, scope) = gate::write(ctx, Operation::ManageDevices, None).await?;
        let (campaign, changed) = scope
            .queries()
            .stop(&principal.actor(), id)
            .await
            .map_err(query_error)?;
        scope.commit().await.map_err(errors::store)?;
        services.announce_ended(campaign.clone(), changed).await;
        Ok(LiveQueryNode(campaign))
    }
}

#[derive(Default)]
pub struct LiveQuerySubscription;

#[Subscription]
impl LiveQuerySubscription {
    /// A campaign's per-device results: first every target's current
    /// state (answers so far, PENDING, OFFLINE), then each change as it
    /// arrives. The stream completes when the campaign ends.
    async fn live_query_results(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<impl Stream<Item = LiveQueryResultNode>> {
        let principal = gate::principal(ctx)?;
        principal
            .authorize(Operation::ViewDevices, None)
            .map_err(errors::denied)?;
        let id = parse_id(&id, "LiveQuery")?;
        let tenant = principal.tenant_id;
        // Subscribe before reading the backlog, so no answer falls between.
        let feed = ctx.data::<QueryServices>()?.events.subscribe();
        let store = &ctx.data::<WriteStore>()?.0;
        let scope = store.begin(principal).await.map_err(errors::store)?;
        let campaign = scope.queries().get(id).await.map_err(errors::store)?;
        let backlog = scope
            .queries()
            .devices_of(id)
            .await
            .map_err(errors::store)?;
        drop(scope);
        let ended = CampaignStatus::of(&campaign) != CampaignStatus::Running;
        // What the backlog already said, so a relayed duplicate is dropped.
        let mut seen: HashSet<(Uuid, String)> = backlog
            .iter()
            .map(|row| (row.device_id, row.status.clone()))
            .collect();
        let first = futures_util::stream::iter(backlog.into_iter().map(LiveQueryResultNode));
        if ended {
            return Ok(first.boxed());
        }
        let live = BroadcastStream::new(feed)
            .filter_map(move |event| {
                let out = match event {
                    Ok(QueryEvent::Device(row))
                        if row.tenant_id == tenant && row.campaign_id == id =>
                    {
                        Some(vec![Some(*row)])
                    }
                    Ok(QueryEvent::Ended { campaign, changed })
                        if campaign.tenant_id == tenant && campaign.id == id =>
                    {
                        let mut rows: Vec<Option<CampaignDevice>> =
                            changed.into_iter().map(Some).collect();
                        // The end marker.
                        rows.push(None);
                        Some(rows)
                    }
                    _ => None,
                };
                futures_util::future::ready(out)
            })
            .flat_map(futures_util::stream::iter)
            .take_while(|row| futures_util::future::ready(row.is_some()))
            .filter_map(move |row| {
                let row = row.filter(|r| seen.insert((r.device_id, r.status.clone())));
                futures_util::future::ready(row.map(LiveQueryResultNode))
            });
        Ok(first.chain(live).boxed())
    }
}
