//! The cluster bus: small messages (a topic and ids) from one replica to
//! all, including itself.
//!
//! On Postgres, [`Bus::publish`] appends the message to `cluster_messages`
//! and notifies in the same statement; every replica's [`Bus::run`] holds a
//! `LISTEN` connection and hands each notification to the topic's
//! subscribers. Notifications are lost while a listener reconnects, and a
//! replica that was down misses them entirely, so the same loop also reads
//! the log (every [`POLL_CONNECTED`] while listening, every
//! [`POLL_DISCONNECTED`] while not, and at once after each reconnect),
//! overlapping by [`POLL_OVERLAP`]; messages are delivered once per replica
//! whichever path brings them first. The log is pruned by the
//! `prune-cluster` job.
//!
//! On the embedded store there is one server, so publishing delivers in
//! process and nothing is written.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mobius_core::db::Backend;
use mobius_core::{Store, Uuid};
use tokio::sync::{Notify, broadcast};

/// How often the log is read while the listener is connected (a safety
/// net: notifications normally arrive first).
pub const POLL_CONNECTED: Duration = Duration::from_secs(5);
/// How often the log is read while the listener is down, so messages
/// still arrive within about a second.
pub const POLL_DISCONNECTED: Duration = Duration::from_secs(1);
/// How far back each poll reads before the previous one, for rows
/// committed late and clocks a little apart between replicas.
pub const POLL_OVERLAP: chrono::Duration = chrono::Duration::seconds(15);
/// How many delivered ids are remembered to drop duplicates (a poll
/// window's worth at thousands of messages a second).
const REMEMBERED_IDS: usize = 100_000;

/// One message as subscribers see it.
#[derive(Clone, Debug)]
pub struct BusMessage {
    pub id: Uuid,
    pub topic: String,
    pub payload: String,
    /// Published by this process (subscribers that already acted locally
    /// skip these).
    pub local: bool,
}

/// The bus; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    topics: Mutex<HashMap<String, broadcast::Sender<BusMessage>>>,
    delivered: Mutex<Delivered>,
}

/// Ids already handed to subscribers, oldest first.
#[derive(Default)]
struct Delivered {
    ids: HashSet<Uuid>,
    order: VecDeque<Uuid>,
}

impl Delivered {
    /// Notes `id`; false when it was delivered before.
    fn first_time(&mut self, id: Uuid) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > REMEMBERED_IDS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

impl Bus {
    pub fn new(store: Store) -> Bus {
        Bus {
            inner: Arc::new(Inner {
                store,
                topics: Mutex::new(HashMap::new()),
                delivered: Mutex::new(Delivered::default()),
            }),
        }
    }

    /// Whether messages cross processes (Postgres) or stay in this one.
    pub fn is_shared(&self) -> bool {
        self.inner.store.backend() == Backend::Postgres
    }

    /// Sends `payload` on `topic` to every replica's subscribers, this
    /// one's at once. Keep payloads to ids.
    pub async fn publish(&self, topic: &str, payload: &str) -> anyhow::Result<()> {
        let id = if self.is_shared() {
            self.inner.store.bus_append(topic, payload).await?.id
        } else {
            Uuid::now_v7()
        };
        self.deliver(BusMessage {
            id,
            topic: topic.to_owned(),
            payload: payload.to_owned(),
            local: true,
        });
        Ok(())
    }

    /// Messages on `topic` from now on. A subscriber that falls more than
    /// 1,024 messages behind loses the oldest (it sees `Lagged`).
    pub fn subscribe(&self, topic: &str) -> broadcast::Receiver<BusMessage> {
        let mut topics = match self.inner.topics.lock() {
            Ok(topics) => topics,
            Err(poisoned) => poisoned.into_inner(),
        };
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }

    fn deliver(&self, message: BusMessage) {
        let first = match self.inner.delivered.lock() {
            Ok(mut delivered) => delivered.first_time(message.id),
            Err(poisoned) => poisoned.into_inner().first_time(message.id),
        };
        if !first {
            return;
        }
        let sender = self
            .inner
            .topics
            .lock()
            .ok()
            .and_then(|t| t.get(&message.topic).cloned());
        if let Some(sender) = sender {
            // No subscriber is fine.
            let _ = sender.send(message);
        }
    }

    /// Listens and polls until the process stops (Postgres only; returns
    /// at once on the embedded store). The poll runs as its own task so
    /// that receiving is never cancelled half-way by a timer.
    pub async fn run(self) {
        if !self.is_shared() {
            return;
        }
        let connected = Arc::new(AtomicBool::new(false));
        let catch_up = Arc::new(Notify::new());
        let poller = tokio::spawn(
            self.clone()
                .poll_periodically(connected.clone(), catch_up.clone()),
        );
        loop {
            match self.inner.store.bus_listener().await {
                Ok(Some(mut listener)) => {
                    connected.store(true, Ordering::Relaxed);
                    // Whatever was sent while nobody listened.
                    catch_up.notify_one();
                    tracing::info!("cluster bus listening");
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(notification)) => self.on_notification(notification.payload()),
                            Ok(None) => {
                                // Lost and re-established: read what was missed.
                                tracing::warn!(
                                    "cluster bus listener reconnected; reading the message log"
                                );
                                catch_up.notify_one();
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "cluster bus listener failed; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "cluster bus: cannot listen; polling the message log");
                }
            }
            connected.store(false, Ordering::Relaxed);
            tokio::time::sleep(POLL_DISCONNECTED).await;
        }
        poller.abort();
    }

    /// Reads the log every [`POLL_CONNECTED`] (or [`POLL_DISCONNECTED`]
    /// while not listening), and at once when `catch_up` is notified.
    async fn poll_periodically(self, connected: Arc<AtomicBool>, catch_up: Arc<Notify>) {
        let mut from = Utc::now();
        loop {
            let wait = if connected.load(Ordering::Relaxed) {
                POLL_CONNECTED
            } else {
                POLL_DISCONNECTED
            };
            let _ = tokio::time::timeout(wait, catch_up.notified()).await;
            from = self.poll(from).await;
        }
    }

    /// `<id> <topic> <payload>`, as `bus_append` notifies.
    fn on_notification(&self, text: &str) {
        let mut parts = text.splitn(3, ' ');
        let (Some(id), Some(topic)) = (parts.next(), parts.next()) else {
            return;
        };
        let Ok(id) = id.parse::<Uuid>() else {
            return;
        };
        self.deliver(BusMessage {
            id,
            topic: topic.to_owned(),
            payload: parts.next().unwrap_or_default().to_owned(),
            local: false,
        });
    }

    /// Delivers logged messages newer than `from - POLL_OVERLAP`; returns
    /// where the next poll starts.
    async fn poll(&self, from: DateTime<Utc>) -> DateTime<Utc> {
        let started = Utc::now();
        match self.inner.store.bus_since(from - POLL_OVERLAP).await {
            Ok(messages) => {
                for message in messages {
                    self.deliver(BusMessage {
                        id: message.id,
                        topic: message.topic,
                        payload: message.payload,
                        local: false,
                    });
                }
                started
            }
            Err(err) => {
                tracing::warn!(error = %err, "cluster bus: cannot read the message log");
                from
            }
        }
    }
}

/// Splits a payload of space-separated ids.
pub fn ids(payload: &str) -> Vec<Uuid> {
    payload
        .split(' ')
        .filter_map(|part| part.parse().ok())
        .collect()
}
