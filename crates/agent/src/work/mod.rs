//! Running plans: the agent verifies each execution it is sent (the
//! tenant's Ed25519 signature, its own device id, a plan version newer
//! than any accepted before), journals it, runs its operations in order,
//! streams their output, and reports how each ended. One execution runs at
//! a time; one that failed, timed out or was cancelled never blocks the next.

mod install;
mod inventory;
mod journal;
mod stream;
pub mod workloads;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use mobius_api::plans::{
    ExecutionPayload, ExecutionReport, ExecutionStatus, LogLine, OperationReport, SignedWork,
    WorkFrame,
};
use reqwest::Url;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::identity::DeviceKey;
use crate::state::{KEY_FILE, StateDir};
use crate::transport::DeviceClient;
use journal::{ExecutionEntry, Journal, OperationEntry};

/// The tenant's plan-verification key (Ed25519, base64), from the enroll
/// and renew answers.
pub const PLAN_KEY_FILE: &str = "plan-key.pub";

/// Output is shipped at least this often while an operation runs.
const SHIP_INTERVAL: Duration = Duration::from_millis(250);
/// ...or as soon as this many lines are waiting.
const SHIP_LINES: usize = 500;

/// Saves the plan-verification key from an enroll or renew answer.
pub fn save_plan_key(dir: &StateDir, key: Option<&str>) -> Result<()> {
    match key {
        Some(key) => dir.write_atomic(PLAN_KEY_FILE, key.trim().as_bytes()),
        None => Ok(()),
    }
}

/// Feeds frames (from heartbeats) to the runner.
#[derive(Clone)]
pub struct WorkHandle {
    frames: mpsc::UnboundedSender<WorkFrame>,
}

impl WorkHandle {
    /// The `work` items of a ping answer.
    pub fn deliver(&self, items: &[serde_json::Value]) {
        for item in items {
            match serde_json::from_value::<WorkFrame>(item.clone()) {
                Ok(frame) => {
                    let _ = self.frames.send(frame);
                }
                Err(err) => tracing::warn!(error = %err, "unreadable work item skipped"),
            }
        }
    }
}

/// Starts the push stream and the runner.
pub fn start(dir: StateDir, tenant_id: Uuid, device_id: Uuid) -> Result<WorkHandle> {
    let journal = Journal::load(&dir).context("journal.json is unreadable")?;
    let (frames, rx) = mpsc::unbounded_channel();
    tokio::spawn(stream::hold(dir.clone(), frames.clone()));
    tokio::spawn(inventory::report_periodically(dir.clone()));
    let runner = Runner {
        queries: crate::queries::QueryRunner::new(dir.clone()),
        dir,
        tenant_id,
        device_id,
        journal: Arc::new(Mutex::new(journal)),
        queue: VecDeque::new(),
        current: None,
    };
    tokio::spawn(runner.run(rx));
    Ok(WorkHandle { frames })
}

/// A client from the files on disk (re-read each time, so a renewed
/// certificate is picked up).
pub(crate) fn client(dir: &StateDir) -> Result<DeviceClient> {
    let state = dir.load_state()?;
    let server = Url::parse(&state.server_url)?;
    let key = DeviceKey::from_pem(&dir.read_string(KEY_FILE)?)?;
    crate::heartbeat::connect(dir, &server, &key)
}

struct Current {
    id: Uuid,
    cancel: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

struct Runner {
    /// Live queries and options: handled beside executions, not queued.
    queries: crate::queries::QueryRunner,
    dir: StateDir,
    tenant_id: Uuid,
    device_id: Uuid,
    journal: Arc<Mutex<Journal>>,
    queue: VecDeque<(SignedWork, ExecutionPayload)>,
    current: Option<Current>,
}

type Shared = Arc<Mutex<Journal>>;

fn with_journal<T>(journal: &Shared, dir: &StateDir, change: impl FnOnce(&mut Journal) -> T) -> T {
    let mut journal = match journal.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    let result = change(&mut journal);
    if let Err(err) = journal.save(dir) {
        tracing::error!(error = %format!("{err:#}"), "cannot save journal.json");
    }
    result
}

impl Runner {
    async fn run(mut self, mut frames: mpsc::UnboundedReceiver<WorkFrame>) {
        self.recover();
        loop {
            if self.current.is_none()
                && let Some((work, payload)) = self.queue.pop_front()
            {
                self.begin(work, payload);
            }
            let finished = async {
                match &mut self.current {
                    Some(current) => {
                        let _ = (&mut current.done).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                frame = frames.recv() => match frame {
                    Some(frame) => self.handle(frame),
                    None => return,
                },
                () = finished => self.current = None,
            }
        }
    }

    /// After a restart: what was running is INTERRUPTED (its leftover
    /// process group killed), what was queued runs, and final statuses
    /// the server never acknowledged are reported again.
    fn recover(&mut self) {
        let (resume, unreported) = with_journal(&self.journal, &self.dir, |journal| {
            let mut resume = Vec::new();
            let mut interrupted = Vec::new();
            for (id, entry) in journal.executions.iter_mut() {
                match (entry.status, entry.work.take()) {
                    (None, Some(work)) => resume.push(work),
                    (None, None) | (Some(ExecutionStatus::Running), _) => {
                        entry.status = Some(ExecutionStatus::Interrupted);
                        entry.error =
                            Some("the agent stopped while this execution was running".into());
                        entry.reported = false;
                        interrupted.push(*id);
                    }
                    _ => {}
                }
            }
            for op in journal.operations.values_mut() {
                if op.status == ExecutionStatus::Running {
                    if let Some(pgid) = op.process_group.take() {
                        workloads::kill_leftover_group(pgid);
                    }
                    op.status = ExecutionStatus::Interrupted;
                    op.error = Some("the agent stopped while this operation was running".into());
                }
            }
            let unreported: Vec<Uuid> = journal
                .executions
                .iter()
                .filter(|(_, e)| !e.reported && e.status.is_some())
                .map(|(id, _)| *id)
                .collect();
            (resume, unreported)
        });
        for work in resume {
            match serde_json::from_str::<ExecutionPayload>(&work.payload) {
                Ok(payload) => self.queue.push_back((work, payload)),
                Err(err) => tracing::warn!(error = %err, "a journaled execution is unreadable"),
            }
        }
        for id in unreported {
            self.report_final(id);
        }
    }

    fn handle(&mut self, frame: WorkFrame) {
        match frame {
            WorkFrame::Work(work) => self.accept(work),
            WorkFrame::Cancel { execution_id } => self.cancel(execution_id),
            WorkFrame::Query(request) => self.queries.answer(request),
            WorkFrame::Options(options) => self.queries.apply_options(options),
            WorkFrame::KeepAlive => {}
        }
    }

    fn accept(&mut self, work: SignedWork) {
        let id = work.execution_id;
        let known = self
            .journal
            .lock()
            .ok()
            .and_then(|j| j.executions.get(&id).map(|e| e.status));
        match known {
            // Finished: the server did not hear it; say it again.
            Some(Some(status)) if status.is_final() => return self.report_final(id),
            // Queued or running already.
            Some(_) => return,
            None => {}
        }
        let payload = match self.verify(&work) {
            Ok(payload) => payload,
            Err(reason) => {
                tracing::warn!(execution_id = %id, %reason, "refused an execution");
                with_journal(&self.journal, &self.dir, |journal| {
                    journal.executions.insert(
                        id,
                        ExecutionEntry {
                            plan_version: 0,
                            status: Some(ExecutionStatus::Rejected),
                            error: Some(reason),
                            reported: false,
                            work: None,
                        },
                    );
                });
                return self.report_final(id);
            }
        };
        with_journal(&self.journal, &self.dir, |journal| {
            journal.last_plan_version = payload.plan_version;
            journal.executions.insert(
                id,
                ExecutionEntry {
                    plan_version: payload.plan_version,
                    status: None,
                    error: None,
                    reported: false,
                    work: Some(work.clone()),
                },
            );
        });
        tracing::info!(execution_id = %id, plan_version = payload.plan_version, operations = payload.operations.len(), "accepted an execution");
        self.queue.push_back((work, payload));
    }

    /// The signature, then the payload's device, tenant and version.
    fn verify(&self, work: &SignedWork) -> Result<ExecutionPayload, String> {
        let key_text = self.dir.read_string(PLAN_KEY_FILE).map_err(|_| {
            "this agent has no plan-verification key yet (it arrives with enrollment and renewal)"
                .to_owned()
        })?;
        let key_bytes: [u8; 32] = STANDARD
            .decode(key_text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the stored plan-verification key is unreadable")?;
        let key = VerifyingKey::from_bytes(&key_bytes)
            .map_err(|_| "the stored plan-verification key is not an Ed25519 key")?;
        let signature: [u8; 64] = STANDARD
            .decode(work.signature.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the signature is not 64 bytes of base64")?;
        key.verify_strict(work.payload.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| "the payload's signature does not verify with the tenant's plan key")?;
        let payload: ExecutionPayload =
            serde_json::from_str(&work.payload).map_err(|e| format!("unreadable payload: {e}"))?;
        if payload.execution_id != work.execution_id
            || payload.device_id != self.device_id
            || payload.tenant_id != self.tenant_id
        {
            return Err("the payload is for another execution, device or tenant".into());
        }
        let last = self
            .journal
            .lock()
            .map(|j| j.last_plan_version)
            .unwrap_or(u64::MAX);
        if payload.plan_version <= last {
            return Err(format!(
                "plan version {} is not newer than {last}, the last accepted (a replay)",
                payload.plan_version
            ));
        }
        Ok(payload)
    }

    fn cancel(&mut self, id: Uuid) {
        if let Some(current) = &self.current
            && current.id == id
        {
            let _ = current.cancel.send(true);
            return;
        }
        let before = self.queue.len();
        self.queue.retain(|(work, _)| work.execution_id != id);
        if self.queue.len() != before {
            with_journal(&self.journal, &self.dir, |journal| {
                if let Some(entry) = journal.executions.get_mut(&id) {
                    entry.status = Some(ExecutionStatus::Cancelled);
                    entry.work = None;
                    entry.error = Some("cancelled before it started".into());
                }
            });
            self.report_final(id);
        }
    }

    fn begin(&mut self, work: SignedWork, payload: ExecutionPayload) {
        let (cancel, cancel_rx) = watch::channel(false);
        let id = work.execution_id;
        let done = tokio::spawn(execute(
            self.dir.clone(),
            self.journal.clone(),
            payload,
            cancel.clone(),
            cancel_rx,
        ));
        self.current = Some(Current { id, cancel, done });
    }

    /// Reports a journaled final status in the background, until the
    /// server acknowledges it (or a few attempts failed: the next
    /// redelivery or restart tries again).
    fn report_final(&self, id: Uuid) {
        let dir = self.dir.clone();
        let journal = self.journal.clone();
        tokio::spawn(async move { send_final(&dir, &journal, id).await });
    }
}

async fn send_final(dir: &StateDir, journal: &Shared, id: Uuid) {
    let report = {
        let Ok(journal) = journal.lock() else { return };
        let Some(entry) = journal.executions.get(&id) else {
            return;
        };
        ExecutionReport {
            execution_id: id,
            status: entry.status,
            operations: journal
                .operations
                .iter()
                .filter(|(_, op)| op.execution_id == id)
                .map(|(op_id, op)| OperationReport {
                    operation_id: op_id.clone(),
                    status: op.status,
                    exit_code: op.exit_code,
                    duration_ms: op.duration_ms,
                    error: op.error.clone(),
                })
                .collect(),
            logs: Vec::new(),
            error: entry.error.clone(),
        }
    };
    for attempt in 0..5u32 {
        let sent = match client(dir) {
            Ok(client) => client.report(&report).await.map_err(|e| e.to_string()),
            Err(err) => Err(format!("{err:#}")),
        };
        match sent {
            Ok(_) => {
                with_journal(journal, dir, |journal| {
                    if let Some(entry) = journal.executions.get_mut(&id) {
                        entry.reported = true;
                    }
                });
                return;
            }
            Err(err) if err.contains("NOT_FOUND") => {
                // Not an execution the server knows (a forged frame).
                tracing::warn!(execution_id = %id, "the server does not know this execution");
                with_journal(journal, dir, |journal| {
                    if let Some(entry) = journal.executions.get_mut(&id) {
                        entry.reported = true;
                    }
                });
                return;
            }
            Err(err) => {
                tracing::warn!(execution_id = %id, error = %err, attempt, "could not report an execution");
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
        }
    }
}

/// Runs one execution's operations in order.
async fn execute(
    dir: StateDir,
    journal: Shared,
    payload: ExecutionPayload,
    cancel: watch::Sender<bool>,
    cancel_rx: watch::Receiver<bool>,
) {
    let id = payload.execution_id;
    with_journal(&journal, &dir, |journal| {
        if let Some(entry) = journal.executions.get_mut(&id) {
            entry.status = Some(ExecutionStatus::Running);
            entry.work = None;
        }
    });
    let client = match client(&dir) {
        Ok(client) => Some(client),
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "no client for reports; running anyway");
            None
        }
    };
    if let Some(client) = &client {
        let started = ExecutionReport {
            execution_id: id,
            status: Some(ExecutionStatus::Running),
            operations: Vec::new(),
            logs: Vec::new(),
            error: None,
        };
        if let Ok(answer) = client.report(&started).await
            && answer.cancel
        {
            let _ = cancel.send(true);
        }
    }

    let (output, lines) = mpsc::unbounded_channel::<LogLine>();
    let shipper = tokio::spawn(ship(client.clone(), id, lines, cancel.clone()));

    let mut status = ExecutionStatus::Succeeded;
    let mut error = None;
    for op in &payload.operations {
        if *cancel_rx.borrow() {
            status = ExecutionStatus::Cancelled;
            error = Some("cancelled".into());
            break;
        }
        let done_before = journal.lock().ok().and_then(|j| {
            j.operations
                .get(&op.operation_id)
                .map(|o| (o.status, o.error.clone()))
        });
        let (op_status, op_error) = match done_before {
            // Never run an operation twice: its recorded outcome stands.
            Some((recorded, recorded_error)) if recorded != ExecutionStatus::Running => {
                let _ = output.send(LogLine {
                    stream: "stderr".into(),
                    time: chrono::Utc::now().to_rfc3339(),
                    line: format!(
                        "operation {} already ran ({}); not running it again",
                        op.operation_id,
                        recorded.as_str()
                    ),
                });
                (recorded, recorded_error)
            }
            _ => {
                with_journal(&journal, &dir, |journal| {
                    journal.operations.insert(
                        op.operation_id.clone(),
                        OperationEntry {
                            execution_id: id,
                            status: ExecutionStatus::Running,
                            exit_code: None,
                            duration_ms: None,
                            error: None,
                            process_group: None,
                        },
                    );
                });
                let started = Instant::now();
                let group_journal = journal.clone();
                let group_dir = dir.clone();
                let op_id = op.operation_id.clone();
                let ctx = workloads::Context {
                    output: output.clone(),
                    cancel: cancel_rx.clone(),
                    dir: dir.clone(),
                    started_group: Arc::new(move |pgid| {
                        with_journal(&group_journal, &group_dir, |journal| {
                            if let Some(entry) = journal.operations.get_mut(&op_id) {
                                entry.process_group = Some(pgid);
                            }
                        });
                    }),
                };
                let outcome = workloads::run(op, &ctx).await;
                let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let result = OperationReport {
                    operation_id: op.operation_id.clone(),
                    status: outcome.status,
                    exit_code: outcome.exit_code,
                    duration_ms: Some(duration_ms),
                    error: outcome.error.clone(),
                };
                with_journal(&journal, &dir, |journal| {
                    journal.operations.insert(
                        op.operation_id.clone(),
                        OperationEntry {
                            execution_id: id,
                            status: outcome.status,
                            exit_code: outcome.exit_code,
                            duration_ms: Some(duration_ms),
                            error: outcome.error.clone(),
                            process_group: None,
                        },
                    );
                });
                if let Some(client) = &client {
                    let _ = client
                        .report(&ExecutionReport {
                            execution_id: id,
                            status: None,
                            operations: vec![result],
                            logs: Vec::new(),
                            error: None,
                        })
                        .await;
                }
                (outcome.status, outcome.error)
            }
        };
        if op_status != ExecutionStatus::Succeeded {
            status = op_status;
            error = Some(format!(
                "operation {}: {}",
                op.operation_id,
                op_error.unwrap_or_else(|| op_status.as_str().to_owned())
            ));
            break;
        }
    }
    drop(output);
    let _ = shipper.await;
    with_journal(&journal, &dir, |journal| {
        if let Some(entry) = journal.executions.get_mut(&id) {
            entry.status = Some(status);
            entry.error = error;
            entry.reported = false;
        }
    });
    tracing::info!(execution_id = %id, status = status.as_str(), "execution finished");
    send_final(&dir, &journal, id).await;
}

/// Ships output lines in batches while the execution runs; a report
/// answered with `cancel` stops it.
async fn ship(
    client: Option<DeviceClient>,
    id: Uuid,
    mut lines: mpsc::UnboundedReceiver<LogLine>,
    cancel: watch::Sender<bool>,
) {
    let mut batch: Vec<LogLine> = Vec::new();
    let mut open = true;
    while open || !batch.is_empty() {
        if open {
            let deadline = tokio::time::sleep(SHIP_INTERVAL);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    line = lines.recv() => match line {
                        Some(line) => {
                            batch.push(line);
                            if batch.len() >= SHIP_LINES {
                                break;
                            }
                        }
                        None => {
                            open = false;
                            break;
                        }
                    },
                    () = &mut deadline => break,
                }
            }
        }
        let Some(client) = &client else {
            batch.clear();
            continue;
        };
        // Also a heartbeat of the execution: asks whether to stop.
        let report = ExecutionReport {
            execution_id: id,
            status: None,
            operations: Vec::new(),
            logs: std::mem::take(&mut batch),
            error: None,
        };
        match client.report(&report).await {
            Ok(answer) if answer.cancel => {
                let _ = cancel.send(true);
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "could not ship output; dropped this batch"),
        }
    }
}
