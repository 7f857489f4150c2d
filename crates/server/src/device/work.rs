//! The push channel and work reports.
//!
//! `GET /api/v1/mobius/device/work/stream` is one long-lived HTTP response
//! per agent on the mTLS device listener: newline-delimited JSON
//! [`WorkFrame`]s, written as work appears, with a keep-alive frame every
//! 15 s. A plain chunked response (not HTTP/2, not WebSocket) because it
//! needs no upgrade, passes any TCP load balancer that passes the device
//! port (mTLS ends at the server, so the balancer cannot be HTTP-aware
//! anyway), works with the agent's existing HTTP client, and its
//! keep-alives hold NAT and balancer idle timers open. The server only
//! ever speaks on it; the agent reports over ordinary POSTs.
//!
//! Fan-out goes through [`WorkNotifier`]: `notify(tenant, device)` wakes the
//! streams this process holds for that device. It is in-process only; with
//! several replicas the lead routes `notify` across them (the heartbeat
//! still carries pending work, so nothing is lost meanwhile).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mobius_api::plans::{ExecutionReport, KEEPALIVE_SECS, ReportResponse, WorkFrame};
use mobius_core::audit::{Actor, ActorKind};
use mobius_core::devices::DeviceIdentity;
use mobius_core::plans::{Execution, LogRow, PlanError, PlanSigner, Work};
use mobius_core::{StoreError, Uuid};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::DeviceState;
use super::errors::{body_error, error, revoked};
use super::peer::DeviceScope;
use crate::http::errors::{ApiError, ErrorCode};

/// What plans need on both listeners.
#[derive(Clone)]
pub struct PlanServices {
    pub signer: Arc<PlanSigner>,
    pub notifier: Arc<WorkNotifier>,
    pub events: PlanEvents,
    /// Output kept per execution (the tail, beyond it).
    pub log_cap_bytes: u64,
}

impl PlanServices {
    /// After an install request commits: its installs go to subscribers,
    /// its plan executions to their devices' streams and to subscribers.
    pub fn announce_installs(&self, requested: &mobius_core::software::Requested) {
        self.events.installs(&requested.installs);
        for execution in &requested.executions {
            self.notifier
                .notify(execution.tenant_id, execution.device_id);
            self.events
                .publish(PlanEvent::Status(Box::new(execution.clone())));
        }
    }
}

/// Wakes the work streams of a device. Each stream registers a `Notify`;
/// `notify` stores a permit in each, so a stream busy sending when the
/// call comes still sees it.
#[derive(Debug, Default)]
pub struct WorkNotifier {
    next: AtomicU64,
    streams: Mutex<HashMap<Uuid, Vec<StreamWake>>>,
    /// Set at shutdown: streams end so the listener can drain.
    closing: tokio::sync::watch::Sender<bool>,
    /// Devices known to have no outstanding work since this process
    /// started, so their heartbeats skip the database (a heartbeat is the
    /// hot path; almost always there is nothing to send). `notify` takes a
    /// device out; a heartbeat that found nothing puts it back.
    idle: Mutex<HashSet<Uuid>>,
    /// Bumped by every `notify`: a heartbeat marks a device idle only if
    /// no notification came while it looked.
    generation: AtomicU64,
    /// When each device's last stream here closed (removed when it opens
    /// one again): a live query counts such a device offline at once
    /// unless it heartbeated here since.
    closed: Mutex<HashMap<Uuid, chrono::DateTime<chrono::Utc>>>,
}

/// One held stream's id, its wake-up, and its queue of frames pushed from
/// memory (queries: they are not in the plans tables).
type StreamWake = (u64, Arc<Notify>, mpsc::Sender<WorkFrame>);

/// Frames pushed from memory that a stream has not written yet; beyond
/// this a push to it is dropped (the device gets pending live queries
/// again when it reconnects, and a campaign ends at its timeout anyway).
const PUSHED_FRAMES_QUEUE: usize = 64;

/// A stream's registration; dropping it unregisters.
pub struct Registration {
    notifier: Arc<WorkNotifier>,
    device: Uuid,
    id: u64,
    pub wake: Arc<Notify>,
    /// Frames pushed with [`WorkNotifier::push`].
    pub pushed: mpsc::Receiver<WorkFrame>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.notifier.streams.lock()
            && let Some(list) = streams.get_mut(&self.device)
        {
            list.retain(|(id, _, _)| *id != self.id);
            if list.is_empty() {
                streams.remove(&self.device);
                if let Ok(mut closed) = self.notifier.closed.lock() {
                    closed.insert(self.device, chrono::Utc::now());
                }
            }
        }
    }
}

impl WorkNotifier {
    /// Wakes every stream this process holds for `device` (whose tenant is
    /// `tenant`; the argument is kept so a cross-replica router can shard on it).
    pub fn notify(&self, _tenant: Uuid, device: Uuid) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut idle) = self.idle.lock() {
            idle.remove(&device);
        }
        if let Ok(streams) = self.streams.lock()
            && let Some(list) = streams.get(&device)
        {
            for (_, wake, _) in list {
                wake.notify_one();
            }
        }
    }

    pub fn register(self: &Arc<Self>, device: Uuid) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let (push, pushed) = mpsc::channel(PUSHED_FRAMES_QUEUE);
        if let Ok(mut closed) = self.closed.lock() {
            closed.remove(&device);
        }
        if let Ok(mut streams) = self.streams.lock() {
            streams
                .entry(device)
                .or_default()
                .push((id, wake.clone(), push));
        }
        Registration {
            notifier: self.clone(),
            device,
            id,
            wake,
            pushed,
        }
    }

    /// Writes `frame` on the streams this process holds for `device`,
    /// straight from memory (no database read). Answers whether any
    /// stream took it.
    pub fn push(&self, device: Uuid, frame: &WorkFrame) -> bool {
        let Ok(streams) = self.streams.lock() else {
            return false;
        };
        let Some(list) = streams.get(&device) else {
            return false;
        };
        let mut taken = false;
        for (_, _, push) in list {
            taken |= push.try_send(frame.clone()).is_ok();
        }
        taken
    }

    /// When the last stream this process held for `device` closed, if it
    /// holds none now and held one since it started.
    pub fn stream_closed_at(&self, device: Uuid) -> Option<chrono::DateTime<chrono::Utc>> {
        self.closed.lock().ok()?.get(&device).copied()
    }

    /// Whether this process holds a stream for `device`.
    pub fn holds(&self, device: Uuid) -> bool {
        self.streams
            .lock()
            .map(|s| s.contains_key(&device))
            .unwrap_or(false)
    }

    /// Of `devices`, those this process holds a stream for.
    pub fn held_among(&self, devices: impl IntoIterator<Item = Uuid>) -> Vec<Uuid> {
        let Ok(streams) = self.streams.lock() else {
            return Vec::new();
        };
        devices
            .into_iter()
            .filter(|d| streams.contains_key(d))
            .collect()
    }

    /// Whether a heartbeat of `device` must look for work.
    pub(super) fn may_have_work(&self, device: Uuid) -> bool {
        self.idle
            .lock()
            .map_or(true, |idle| !idle.contains(&device))
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Records that `device` had nothing outstanding when looked at in
    /// `generation` (ignored when a notification came since).
    pub(super) fn mark_idle(&self, device: Uuid, generation: u64) {
        if let Ok(mut idle) = self.idle.lock()
            && self.generation.load(Ordering::SeqCst) == generation
        {
            idle.insert(device);
        }
    }

    /// Ends every stream (at shutdown: agents reconnect to another replica
    /// or to this server when it is back).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Streams held open right now (for metrics and tests).
    pub fn connected(&self) -> usize {
        self.streams
            .lock()
            .map(|s| s.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

/// Execution changes and output lines committed on this server, for the
/// GraphQL subscriptions.
#[derive(Clone, Debug)]
pub enum PlanEvent {
    Status(Box<Execution>),
    Logs {
        tenant_id: Uuid,
        execution_id: Uuid,
        lines: Vec<LogRow>,
    },
    /// A software install (a plan with an `install_software` operation)
    /// was requested or changed status or progress.
    Install(Box<mobius_core::software::Install>),
}

#[derive(Clone, Debug)]
pub struct PlanEvents(broadcast::Sender<PlanEvent>);

impl Default for PlanEvents {
    fn default() -> Self {
        PlanEvents(broadcast::channel(4096).0)
    }
}

impl PlanEvents {
    pub fn publish(&self, event: PlanEvent) {
        // No subscribers is fine: everything is in the database.
        let _ = self.0.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PlanEvent> {
        self.0.subscribe()
    }

    /// Publishes committed installs (new requests, progress, outcomes).
    pub fn installs<'i>(
        &self,
        installs: impl IntoIterator<Item = &'i mobius_core::software::Install>,
    ) {
        for install in installs {
            self.publish(PlanEvent::Install(Box::new(install.clone())));
        }
    }
}

fn device_actor(identity: &DeviceIdentity) -> Actor {
    Actor {
        kind: ActorKind::Device,
        id: Some(identity.device_id()),
        ip: None,
        user_agent: None,
    }
}

/// The device's outstanding work (marking PENDING executions DELIVERED),
/// announced to subscribers after commit.
pub(super) async fn take_work(
    state: &DeviceState,
    identity: &DeviceIdentity,
) -> Result<Vec<WorkFrame>, StoreError> {
    let scope = state.store.begin(identity).await?;
    let Work { frames, delivered } = scope
        .plans()
        .take_work(&device_actor(identity), identity.device_id())
        .await?;
    scope.commit().await?;
    for execution in delivered {
        state
            .plans
            .events
            .publish(PlanEvent::Status(Box::new(execution)));
    }
    Ok(frames)
}

/// The work a heartbeat answer carries: nothing, without touching the
/// database, for a device known to be idle since this process started.
pub(super) async fn heartbeat_work(
    state: &DeviceState,
    identity: &DeviceIdentity,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let notifier = &state.plans.notifier;
    let device = identity.device_id();
    if !notifier.may_have_work(device) {
        return Ok(Vec::new());
    }
    let generation = notifier.generation();
    let frames = take_work(state, identity).await?;
    if frames.is_empty() {
        notifier.mark_idle(device, generation);
    }
    Ok(frames
        .iter()
        .filter_map(|frame| serde_json::to_value(frame).ok())
        .collect())
}

fn frame_line(frame: &WorkFrame) -> Bytes {
    let mut line = serde_json::to_vec(frame).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// `GET /api/v1/mobius/device/work/stream`.
pub(super) async fn stream(State(state): State<DeviceState>, device: DeviceScope) -> Response {
    let identity = device.identity;
    // Small: frames are produced on demand, and a slow reader should
    // push back rather than have the server buffer for it.
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(8);
    let mut registration = state.plans.notifier.register(identity.device_id());
    let mut closing = state.plans.notifier.closing();
    let mut option_changes = state.options.subscribe();
    tokio::spawn(async move {
        // Live queries still waiting on this device and its due policy
        // checks (it was offline or between streams when they went out).
        for request in crate::queries::pending_for_stream(&state.queries, &identity).await {
            if tx
                .send(Ok(frame_line(&WorkFrame::Query(request))))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut sent: HashSet<(Uuid, bool)> = HashSet::new();
        // The merged agent options are the first frame of every stream,
        // and sent again whenever the device's view changes.
        let mut options_sent = None;
        if !send_options(&state, &identity, &mut options_sent, &tx).await {
            return;
        }
        let mut keepalive = tokio::time::interval(Duration::from_secs(KEEPALIVE_SECS));
        keepalive.tick().await;
        // The certificate's end ends the stream: the agent reconnects
        // with its renewed one.
        let expires = (identity.not_after() - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        let expiry = tokio::time::sleep(expires);
        tokio::pin!(expiry);
        let mut fetch = true;
        loop {
            if fetch {
                match take_work(&state, &identity).await {
                    Ok(frames) => {
                        // Forget what is no longer outstanding, so a
                        // cancel after a delivery is still sent.
                        let current: HashSet<(Uuid, bool)> =
                            frames.iter().filter_map(key).collect();
                        sent.retain(|k| current.contains(k));
                        for frame in frames {
                            let Some(k) = key(&frame) else { continue };
                            if sent.insert(k) && tx.send(Ok(frame_line(&frame))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(StoreError::NotFound { .. }) => return,
                    Err(err) => {
                        tracing::warn!(error = %err, device_id = %identity.device_id(), "could not read a device's work");
                    }
                }
            }
            tokio::select! {
                () = registration.wake.notified() => fetch = true,
                Some(frame) = registration.pushed.recv() => {
                    if tx.send(Ok(frame_line(&frame))).await.is_err() {
                        return;
                    }
                    fetch = false;
                }
                change = option_changes.recv() => {
                    let ours = match change {
                        Ok(tenant) => tenant == identity.tenant_id(),
                        // Missed some: look anyway (a cache hit if unchanged).
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if ours && !send_options(&state, &identity, &mut options_sent, &tx).await {
                        return;
                    }
                    fetch = false;
                }
                _ = keepalive.tick() => {
                    if state.revocations.is_revoked(identity.device_id()) {
                        return;
                    }
                    if tx.send(Ok(frame_line(&WorkFrame::KeepAlive))).await.is_err() {
                        return;
                    }
                    fetch = false;
                }
                () = tx.closed() => return,
                () = &mut expiry => return,
                // The flag only ever turns true.
                _ = closing.changed() => return,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        // Tell buffering proxies (nginx) to pass each line at once.
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Sends the device's options frame if its view changed since `sent`;
/// false when the stream is gone (or the device is).
async fn send_options(
    state: &DeviceState,
    identity: &DeviceIdentity,
    sent: &mut crate::osquery::options::SentOptions,
    tx: &mpsc::Sender<Result<Bytes, Infallible>>,
) -> bool {
    match state
        .options
        .frame_for_device(&state.store, identity, sent)
        .await
    {
        Ok(Some(frame)) => tx.send(Ok(frame_line(&frame))).await.is_ok(),
        Ok(None) => true,
        Err(StoreError::NotFound { .. }) => false,
        Err(err) => {
            tracing::warn!(error = %err, device_id = %identity.device_id(), "could not read a device's agent options");
            true
        }
    }
}

fn key(frame: &WorkFrame) -> Option<(Uuid, bool)> {
    match frame {
        WorkFrame::Work(work) => Some((work.execution_id, false)),
        WorkFrame::Cancel { execution_id } => Some((*execution_id, true)),
        WorkFrame::Query(_) | WorkFrame::Options(_) | WorkFrame::KeepAlive => None,
    }
}

/// `POST /api/v1/mobius/device/work/report`.
pub(super) async fn report(
    State(state): State<DeviceState>,
    device: DeviceScope,
    body: Result<Json<ExecutionReport>, JsonRejection>,
) -> Response {
    let Json(report) = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(rejection),
    };
    let identity = &device.identity;
    let result = async {
        let scope = state.store.begin(identity).await?;
        let reported = scope
            .plans()
            .report(
                &device_actor(identity),
                identity.device_id(),
                &report,
                state.plans.log_cap_bytes,
            )
            .await?;
        // An install whose execution ended without the agent saying how
        // (killed mid-install, cancelled, refused) ends with it.
        let ended_install = if reported.status_changed {
            scope
                .software()
                .execution_finished(&device_actor(identity), &reported.execution)
                .await?
        } else {
            None
        };
        scope.commit().await?;
        Ok::<_, PlanError>((reported, ended_install))
    }
    .await;
    match result {
        Ok((reported, ended_install)) => {
            state.plans.events.installs(&ended_install);
            let tenant_id = identity.tenant_id();
            if !reported.lines.is_empty() {
                state.plans.events.publish(PlanEvent::Logs {
                    tenant_id,
                    execution_id: reported.execution.id,
                    lines: reported.lines,
                });
            }
            if reported.status_changed {
                state
                    .plans
                    .events
                    .publish(PlanEvent::Status(Box::new(reported.execution)));
            }
            Json(ReportResponse {
                cancel: reported.cancel,
            })
            .into_response()
        }
        Err(PlanError::Invalid { field, reason }) => error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            &reason,
            Some(&field),
        ),
        Err(PlanError::IdempotencyConflict | PlanError::AlreadyFinished(_)) => error(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            "the execution cannot take this report",
            None,
        ),
        Err(PlanError::Store(StoreError::NotFound { entity: "device" })) => revoked(),
        Err(PlanError::Store(err)) => ApiError::from(err).into_response(),
    }
}

/// The tenant's plan-verification key for an enroll or renew answer
/// (created on the tenant's first enrollment). A failure is logged and
/// answered with none: the agent keeps the key it has, and a new agent
/// gets it at its first renewal.
pub(super) async fn verification_key(
    state: &DeviceState,
    tenant_id: Uuid,
    device_id: Uuid,
) -> Option<String> {
    if let Some(key) = state.plans.signer.cached_verification_key(tenant_id) {
        return Some(key);
    }
    let result = async {
        let scope = state
            .store
            .begin(&mobius_core::db::SystemTask::new(
                "plan-verification key",
                tenant_id,
            ))
            .await?;
        let actor = Actor {
            kind: ActorKind::Device,
            id: Some(device_id),
            ip: None,
            user_agent: None,
        };
        let key = state.plans.signer.verification_key(&scope, &actor).await?;
        scope.commit().await?;
        Ok::<_, StoreError>(key)
    }
    .await;
    match result {
        Ok(key) => Some(key),
        Err(err) => {
            tracing::error!(error = %err, %tenant_id, "could not read the plan-verification key");
            None
        }
    }
}
