//! Live-query answers, written in batches.
//!
//! A campaign over thousands of devices brings thousands of answers within
//! a second or two. Written one transaction each, every answer would take
//! a pooled connection for BEGIN, the tenant setting, its UPDATE and
//! COMMIT, and the answers would queue for the pool ahead of everything
//! else (the admin's own subscription included). Instead each device
//! request queues its answer here and waits; [`WORKERS`] writers take
//! whatever is queued (up to [`MAX_BATCH`]), write it in one transaction
//! per tenant, and hand each request its own outcome. Nothing waits on a
//! timer: under load the queue fills while a batch commits, so batches grow
//! with the load and a lone answer is written at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use mobius_api::queries::QueryResult;
use mobius_core::db::SystemTask;
use mobius_core::queries::CampaignDevice;
use mobius_core::{Store, StoreError, Uuid};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Writers (each uses one pooled connection while it writes).
const WORKERS: usize = 4;
/// Answers per batch at most.
const MAX_BATCH: usize = 500;
/// Answers waiting for a writer at most; beyond it a device waits to queue.
const QUEUE: usize = 20_000;

type Outcome = Result<Option<CampaignDevice>, StoreError>;

struct Queued {
    tenant: Uuid,
    device: Uuid,
    result: QueryResult,
    done: oneshot::Sender<Outcome>,
}

/// The queue the device endpoints put answers on; cheap to clone.
#[derive(Clone)]
pub struct AnswerWriter {
    queue: mpsc::Sender<Queued>,
}

impl AnswerWriter {
    /// Starts the writers on `store`.
    pub fn start(store: Store) -> AnswerWriter {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WORKERS {
            tokio::spawn(write_batches(store.clone(), receiver.clone()));
        }
        AnswerWriter { queue }
    }

    /// Records `device`'s answer (its tenant proven by the caller) and
    /// answers the row it changed, or `None` when the campaign no longer
    /// waits on the device.
    pub async fn record(&self, tenant: Uuid, device: Uuid, result: QueryResult) -> Outcome {
        let (done, outcome) = oneshot::channel();
        let queued = Queued {
            tenant,
            device,
            result,
            done,
        };
        if self.queue.send(queued).await.is_err() {
            return Err(stopped());
        }
        outcome.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> StoreError {
    StoreError::internal("recording a live query answer")(std::io::Error::other(
        "the answer writer stopped",
    ))
}

async fn write_batches(store: Store, receiver: Arc<Mutex<mpsc::Receiver<Queued>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
        }
        let mut by_tenant: BTreeMap<Uuid, Vec<Queued>> = BTreeMap::new();
        for queued in batch {
            by_tenant.entry(queued.tenant).or_default().push(queued);
        }
        for (tenant, answers) in by_tenant {
            write_tenant(&store, tenant, answers).await;
        }
    }
}

/// One transaction for a tenant's answers. A row refused before it
/// reaches the database (NUL in a value) fails alone; a database error
/// fails the whole batch, and every request of it is told.
async fn write_tenant(store: &Store, tenant: Uuid, answers: Vec<Queued>) {
    let written = async {
        // The tenant came from each device's certificate (see the caller).
        let scope = store
            .begin(&SystemTask::new("live query answers", tenant))
            .await?;
        let mut outcomes = Vec::with_capacity(answers.len());
        for queued in &answers {
            match scope.queries().record(queued.device, &queued.result).await {
                Ok(row) => outcomes.push(Ok(row)),
                Err(err @ StoreError::Invalid { .. }) => outcomes.push(Err(err)),
                Err(err) => return Err(err),
            }
        }
        scope.commit().await?;
        Ok::<_, StoreError>(outcomes)
    }
    .await;
    match written {
        Ok(outcomes) => {
            for (queued, outcome) in answers.into_iter().zip(outcomes) {
                let _ = queued.done.send(outcome);
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, %tenant, answers = answers.len(), "could not record live query answers");
            let message = err.to_string();
            for queued in answers {
                let _ =
                    queued
                        .done
                        .send(Err(StoreError::internal("recording live query answers")(
                            std::io::Error::other(message.clone()),
                        )));
            }
        }
    }
}
