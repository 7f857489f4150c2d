//! Live queries and policies on the server side: who is online, pushing
//! [`WorkFrame::Query`] to held work streams from memory (across replicas
//! through the cluster bus), recording answers (agents' and osquery
//! hosts'), fanning them out to GraphQL subscribers, and the scheduler's
//! jobs (policy runs, campaign timeouts and retention, webhook delivery).
//!
//! # The API other device surfaces use
//!
//! - [`pending_queries_for`]: what a device should run now (live
//!   campaigns still waiting on it and its due policy checks), for a
//!   stream that just opened or an osquery `distributed/read`.
//! - [`record_query_result`]: stores one answer and announces it, for the
//!   agent's `POST` [`QUERY_RESULTS_PATH`] and osquery's
//!   `distributed/write`.
//!
//! # Bus topics (payloads are ids)
//!
//! | topic | payload | receivers |
//! |---|---|---|
//! | [`topics::LIVE_PUSH`] | `<tenant> <campaign>` | push to pending devices whose stream they hold |
//! | [`topics::POLICY_PUSH`] | `<tenant> <policy>` | push to applicable devices whose stream they hold |
//! | [`topics::LIVE_RESULT`] | `<tenant> <campaign> <device>` | hand the stored answer to their subscribers |
//! | [`topics::LIVE_ENDED`] | `<tenant> <campaign>` | end their subscribers' streams |
//!
//! [`QUERY_RESULTS_PATH`]: mobius_api::queries::QUERY_RESULTS_PATH

pub mod answers;
pub mod device;
pub mod jobs;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use mobius_api::plans::WorkFrame;
use mobius_api::queries::{QueryKind, QueryRequest, QueryResult};
use mobius_core::audit::{Actor, ActorKind};
use mobius_core::crypto::sealing::SecretSealer;
use mobius_core::db::TenantProof;
use mobius_core::devices::Device;
use mobius_core::devices::presence::Presence;
use mobius_core::queries::{Campaign, CampaignDevice, QueryError, Started, Watched};
use mobius_core::{Store, StoreError, Uuid};
use tokio::sync::broadcast;

use crate::cluster::Bus;
use crate::device::WorkNotifier;

/// How often a running campaign's watcher counts its pending devices:
/// the campaign ends at most this long after its last answer.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

pub mod topics {
    pub const LIVE_PUSH: &str = "query.live_push";
    pub const POLICY_PUSH: &str = "query.policy_push";
    pub const LIVE_RESULT: &str = "query.live_result";
    pub const LIVE_ENDED: &str = "query.live_ended";
}

/// Answers and ends of campaigns, committed on this replica or relayed
/// from another, for the GraphQL subscriptions.
#[derive(Clone, Debug)]
pub enum QueryEvent {
    /// A device's row changed (answered, error).
    Device(Box<CampaignDevice>),
    /// The campaign ended; `changed` are the rows that changed with it
    /// (pending ones that became ERROR).
    Ended {
        campaign: Box<Campaign>,
        changed: Vec<CampaignDevice>,
    },
}

#[derive(Clone, Debug)]
pub struct QueryEvents(broadcast::Sender<QueryEvent>);

impl Default for QueryEvents {
    fn default() -> Self {
        // Room for a 10,000-device campaign's answers arriving together.
        QueryEvents(broadcast::channel(16_384).0)
    }
}

impl QueryEvents {
    pub fn publish(&self, event: QueryEvent) {
        // No subscribers is fine: everything is in the database.
        let _ = self.0.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<QueryEvent> {
        self.0.subscribe()
    }
}

/// What live queries and policies need on both listeners and in jobs.
#[derive(Clone)]
pub struct QueryServices {
    pub store: Store,
    pub bus: Bus,
    pub notifier: Arc<WorkNotifier>,
    pub presence: Arc<Presence>,
    pub events: QueryEvents,
    pub sealer: Arc<dyn SecretSealer>,
    pub heartbeat_interval_secs: u64,
    pub last_seen_write_after_secs: u64,
    /// How long campaigns and their answers are kept (`live_query_retention_hours`).
    pub retention_hours: u32,
    /// `host:port` forms the server answers on, which a webhook URL may
    /// not name (the server would call itself).
    pub own_addresses: Arc<Vec<String>>,
    /// Live-query answers are written in batches through this.
    pub answers: answers::AnswerWriter,
}

impl QueryServices {
    /// Whether `device` counts as online for a campaign starting now:
    /// it holds a work stream here; or, when its last stream here closed
    /// after its last heartbeat here, it is offline; or it heartbeated here
    /// within two intervals; or (another replica's device) its stored
    /// last-seen time is within two intervals plus the time by which
    /// stored times may lag (`last_seen_write_after_secs`).
    pub fn is_online(&self, device: &Device) -> bool {
        if device.revoked_at.is_some() {
            return false;
        }
        if self.notifier.holds(device.id) {
            return true;
        }
        let now = chrono::Utc::now();
        let interval = chrono::Duration::seconds(self.heartbeat_interval_secs as i64);
        let local = self.presence.last_seen(device.id);
        if let Some(closed) = self.notifier.stream_closed_at(device.id)
            && local.is_none_or(|seen| seen <= closed)
        {
            return false;
        }
        if let Some(seen) = local {
            return seen > now - interval * 2;
        }
        let lag = chrono::Duration::seconds(self.last_seen_write_after_secs as i64);
        device
            .last_seen_at
            .is_some_and(|seen| seen > now - interval * 2 - lag)
    }

    /// Delivers a started campaign: at once to the pending devices whose
    /// stream this replica holds, through the bus to the others', and
    /// ends it at its timeout.
    pub async fn dispatch_live(&self, started: &Started) {
        let campaign = &started.campaign;
        let frame = WorkFrame::Query(mobius_core::queries::request_of(campaign));
        for device in started.pending() {
            self.notifier.push(device, &frame);
        }
        if mobius_core::queries::CampaignStatus::of(campaign)
            != mobius_core::queries::CampaignStatus::Running
        {
            return;
        }
        let payload = format!("{} {}", campaign.tenant_id, campaign.id);
        if let Err(err) = self.bus.publish(topics::LIVE_PUSH, &payload).await {
            tracing::warn!(error = %err, "cluster bus: cannot publish a live query");
        }
        let services = self.clone();
        let (tenant, id, ends_at) = (campaign.tenant_id, campaign.id, campaign.ends_at);
        tokio::spawn(async move { services.watch(tenant, id, ends_at).await });
    }

    /// The campaign's watcher, on the replica that started it: ends it
    /// when no device is pending any more (answers arrive on any replica;
    /// counting here keeps them from contending on the campaign's row) or
    /// at its timeout. If this replica goes away the maintenance job ends
    /// it at its timeout.
    async fn watch(&self, tenant: Uuid, id: Uuid, ends_at: chrono::DateTime<chrono::Utc>) {
        let task = mobius_core::db::SystemTask::new("live query watcher", tenant);
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            if chrono::Utc::now() >= ends_at {
                self.finish_if_due(tenant, id).await;
                return;
            }
            let finished = async {
                let scope = self.store.begin(&task).await?;
                let finished = scope.queries().finish_if_answered(id).await?;
                scope.commit().await?;
                Ok::<_, StoreError>(finished)
            }
            .await;
            match finished {
                Ok(Watched::Finished(campaign, changed)) => {
                    self.announce_ended(*campaign, changed).await;
                    return;
                }
                Ok(Watched::Waiting) => {}
                // Stopped or deleted: nothing left to watch.
                Ok(Watched::AlreadyEnded) | Err(StoreError::NotFound { .. }) => return,
                Err(err) => {
                    tracing::warn!(error = %err, campaign_id = %id, "could not check a live query");
                }
            }
        }
    }

    /// Ends the campaign if it is still running and due, and announces it.
    pub async fn finish_if_due(&self, tenant: Uuid, id: Uuid) {
        let ended = async {
            let scope = self
                .store
                .begin(&mobius_core::db::SystemTask::new(
                    "live query timeout",
                    tenant,
                ))
                .await?;
            let ended = scope.queries().finish_if_due(id).await?;
            scope.commit().await?;
            Ok::<_, StoreError>(ended)
        }
        .await;
        match ended {
            Ok(Some((campaign, changed))) => self.announce_ended(campaign, changed).await,
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(error = %err, campaign_id = %id, "could not end a live query")
            }
        }
    }

    /// Hands an ended campaign to this replica's subscribers and the others'.
    pub async fn announce_ended(&self, campaign: Campaign, changed: Vec<CampaignDevice>) {
        let payload = format!("{} {}", campaign.tenant_id, campaign.id);
        self.events.publish(QueryEvent::Ended {
            campaign: Box::new(campaign),
            changed,
        });
        if let Err(err) = self.bus.publish(topics::LIVE_ENDED, &payload).await {
            tracing::warn!(error = %err, "cluster bus: cannot publish a live query's end");
        }
    }

    /// Runs a policy now on every applicable device whose stream any
    /// replica holds (each replica pushes to its own).
    pub async fn dispatch_policy(&self, tenant: Uuid, policy: Uuid) {
        if let Err(err) = self
            .bus
            .publish(topics::POLICY_PUSH, &format!("{tenant} {policy}"))
            .await
        {
            tracing::warn!(error = %err, "cluster bus: cannot publish a policy run");
        }
    }
}

fn device_actor(device_id: Uuid) -> Actor {
    Actor {
        kind: ActorKind::Device,
        id: Some(device_id),
        ip: None,
        user_agent: None,
    }
}

/// What `device_id` should run now: the running live campaigns still
/// waiting on it, then its due policy checks. For a Mobius agent's new
/// work stream and an osquery host's `distributed/read` alike.
pub async fn pending_queries_for(
    store: &Store,
    proof: &impl TenantProof,
    device_id: Uuid,
) -> Result<Vec<QueryRequest>, StoreError> {
    let scope = store.begin(proof).await?;
    let mut requests = scope.queries().pending_for(device_id).await?;
    requests.extend(scope.policies().due_for_device(device_id).await?);
    scope.commit().await?;
    Ok(requests)
}

/// For a work stream that just opened: its pending queries, or none (with
/// a warning) when they cannot be read.
pub(crate) async fn pending_for_stream(
    services: &QueryServices,
    identity: &mobius_core::devices::DeviceIdentity,
) -> Vec<QueryRequest> {
    match pending_queries_for(&services.store, identity, identity.device_id()).await {
        Ok(requests) => requests,
        Err(err) => {
            tracing::warn!(error = %err, device_id = %identity.device_id(), "could not read a device's pending queries");
            Vec::new()
        }
    }
}

/// Stores one answer of `device_id` (a live query's rows or a policy
/// check) and announces it: to this replica's subscribers at once, to the
/// other replicas' through the bus. Answers to campaigns that no longer
/// wait on the device, and to deleted policies, are dropped quietly (Ok).
pub async fn record_query_result(
    services: &QueryServices,
    proof: &impl TenantProof,
    device_id: Uuid,
    result: &QueryResult,
) -> Result<(), QueryError> {
    match result.kind {
        QueryKind::Live => {
            // Batched with other devices' answers; the tenant is the one
            // `proof` established, refused while blocked as `begin` would.
            if !proof.enters_blocked_tenants()
                && let Some(block) = services.store.tenant_block(proof.tenant_id())
            {
                return Err(StoreError::TenantBlocked(block).into());
            }
            let answered = services
                .answers
                .record(proof.tenant_id(), device_id, result.clone())
                .await?;
            let Some(row) = answered else {
                return Ok(());
            };
            let payload = format!("{} {} {}", row.tenant_id, row.campaign_id, row.device_id);
            services.events.publish(QueryEvent::Device(Box::new(row)));
            if services.bus.is_shared()
                && let Err(err) = services.bus.publish(topics::LIVE_RESULT, &payload).await
            {
                tracing::warn!(error = %err, "cluster bus: cannot publish a live query answer");
            }
        }
        QueryKind::Policy => {
            let scope = services.store.begin(proof).await?;
            scope
                .policies()
                .record(&device_actor(device_id), device_id, result)
                .await?;
            scope.commit().await?;
        }
    }
    Ok(())
}

/// Whether `url` names this server itself (one of `own`, a `host:port`
/// list, with loopback and unspecified hosts treated alike).
pub fn names_this_server(url: &url::Url, own: &[String]) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let port = url.port_or_known_default().unwrap_or(0);
    let local = |h: &str| {
        matches!(
            h.trim_matches(|c| c == '[' || c == ']'),
            "localhost" | "127.0.0.1" | "::1" | "0.0.0.0" | "::"
        )
    };
    own.iter().any(|address| {
        let Some((own_host, own_port)) = address.rsplit_once(':') else {
            return false;
        };
        if own_port.parse::<u16>().ok() != Some(port) {
            return false;
        }
        own_host.eq_ignore_ascii_case(host) || (local(host) && local(own_host))
    })
}
