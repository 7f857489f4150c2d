//! The merged agent options per (tenant, team), cached in memory, and
//! their push to held work streams.
//!
//! A write commits, then publishes `<tenant_id>` on the cluster bus topic
//! [`topics::AGENT_OPTIONS`]; every replica (this one included, in
//! process) drops that tenant's cached views and tells the work streams it
//! holds for the tenant, which recompute their device's view (a cache hit
//! after the first) and send a `WorkFrame::Options` when its version
//! differs from what they sent. A replica that misses a message keeps a
//! stale view until the tenant's next write; the bus's message log makes
//! that rare (see `cluster::bus`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mobius_core::osquery::MergedOptions;
use mobius_core::{StoreResult, TenantScope, Uuid};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::cluster::{Bus, bus, topics};

#[derive(Default)]
struct Cache {
    views: HashMap<(Uuid, Option<Uuid>), Arc<MergedOptions>>,
    /// Bumped per tenant on every invalidation: a view read before one
    /// is not cached after it.
    generations: HashMap<Uuid, u64>,
}

/// See the module comment.
pub struct OptionsHub {
    bus: Bus,
    cache: Mutex<Cache>,
    /// Tenants whose options changed, for the work streams held here.
    changes: broadcast::Sender<Uuid>,
}

impl OptionsHub {
    /// A hub listening on the bus (spawns the listener: call inside the
    /// runtime).
    pub fn start(bus: Bus) -> Arc<OptionsHub> {
        let hub = Arc::new(OptionsHub {
            bus: bus.clone(),
            cache: Mutex::new(Cache::default()),
            changes: broadcast::channel(1024).0,
        });
        let mut messages = bus.subscribe(topics::AGENT_OPTIONS);
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                let tenants = match messages.recv().await {
                    Ok(message) => bus::ids(&message.payload),
                    // Lost some: forget everything rather than serve stale.
                    Err(RecvError::Lagged(_)) => Vec::new(),
                    Err(RecvError::Closed) => return,
                };
                let Some(hub) = weak.upgrade() else { return };
                if tenants.is_empty() {
                    hub.forget_all();
                } else {
                    for tenant in tenants {
                        hub.forget(tenant);
                    }
                }
            }
        });
        hub
    }

    fn forget(&self, tenant: Uuid) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.views.retain(|(t, _), _| *t != tenant);
            *cache.generations.entry(tenant).or_default() += 1;
        }
        // No stream held here is fine.
        let _ = self.changes.send(tenant);
    }

    fn forget_all(&self) {
        let tenants: Vec<Uuid> = match self.cache.lock() {
            Ok(mut cache) => {
                cache.views.clear();
                let tenants: Vec<Uuid> = cache.generations.keys().copied().collect();
                for generation in cache.generations.values_mut() {
                    *generation += 1;
                }
                tenants
            }
            Err(_) => Vec::new(),
        };
        for tenant in tenants {
            let _ = self.changes.send(tenant);
        }
    }

    fn generation(&self, tenant: Uuid) -> u64 {
        self.cache
            .lock()
            .ok()
            .and_then(|cache| cache.generations.get(&tenant).copied())
            .unwrap_or(0)
    }

    /// The merged view for `team` in the scope's tenant: from the cache,
    /// or read in `scope` and cached.
    pub async fn merged(
        &self,
        scope: &TenantScope,
        team: Option<Uuid>,
    ) -> StoreResult<Arc<MergedOptions>> {
        let tenant = scope.tenant_id();
        if let Some(view) = self
            .cache
            .lock()
            .ok()
            .and_then(|cache| cache.views.get(&(tenant, team)).cloned())
        {
            return Ok(view);
        }
        let generation = self.generation(tenant);
        let view = Arc::new(scope.agent_options().merged(team).await?);
        if let Ok(mut cache) = self.cache.lock()
            && cache.generations.get(&tenant).copied().unwrap_or(0) == generation
        {
            cache.views.insert((tenant, team), view.clone());
        }
        Ok(view)
    }

    /// After a committed write: every replica forgets the tenant's views
    /// and pushes the new ones. Falls back to this replica alone when the
    /// bus cannot publish (logged).
    pub async fn changed(&self, tenant: Uuid) {
        if let Err(err) = self
            .bus
            .publish(topics::AGENT_OPTIONS, &tenant.to_string())
            .await
        {
            tracing::warn!(error = %err, %tenant, "cluster bus: cannot announce an agent options change; other replicas see it at their next write");
            self.forget(tenant);
        }
    }

    /// Tenants whose options changed from now on (for work streams).
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.changes.subscribe()
    }

    /// Views cached (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache.lock().map_or(0, |cache| cache.views.len())
    }
}

/// What a work stream last sent: the view's version and team.
pub type SentOptions = Option<(i64, Option<Uuid>)>;

impl OptionsHub {
    /// The options frame for a device's work stream, or `None` when the
    /// stream already sent this view (`sent` is updated).
    pub async fn frame_for_device(
        &self,
        store: &mobius_core::Store,
        identity: &mobius_core::devices::DeviceIdentity,
        sent: &mut SentOptions,
    ) -> StoreResult<Option<mobius_api::plans::WorkFrame>> {
        let scope = store.begin(identity).await?;
        let device = scope.devices().get(identity.device_id()).await?;
        let view = self.merged(&scope, device.team_id).await?;
        scope.commit().await?;
        let current = Some((view.version, device.team_id));
        if *sent == current {
            return Ok(None);
        }
        *sent = current;
        Ok(Some(mobius_api::plans::WorkFrame::Options(
            mobius_api::queries::AgentOptions {
                options_version: view.version,
                options: view.document.clone(),
            },
        )))
    }
}
