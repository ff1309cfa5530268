//! Config distribution to the fleet: the replica's watch cache, node
//! streams, fleet membership and leader election. See ARCHITECTURE.md,
//! "Config distribution".

pub mod cache;
pub mod leader;
pub mod registry;
pub mod session;
mod stream;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aios_proto::v1 as pb;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

pub use self::{
    cache::ConfigCache,
    leader::{Elector, Leadership},
    registry::Registry,
};
use crate::{
    keys,
    store::{SharedStore, StoreError},
};

/// Tunables of config distribution; [`FleetSettings::new`] has the defaults.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    /// This replica's id.
    pub replica_id: String,
    /// How long the cache gathers a burst of writes before publishing.
    pub debounce: Duration,
    /// TTL of the leases under node records and the leader key.
    pub lease_ttl: Duration,
    /// Disconnected nodes are forgotten after this long.
    pub node_retention: Duration,
    /// How often the leader looks for nodes to forget.
    pub forget_interval: Duration,
}

impl FleetSettings {
    /// Defaults for replica `replica_id`.
    pub fn new(replica_id: impl Into<String>) -> Self {
        Self {
            replica_id: replica_id.into(),
            debounce: Duration::from_millis(2),
            lease_ttl: Duration::from_secs(10),
            node_retention: Duration::from_secs(24 * 3600),
            forget_interval: Duration::from_secs(60),
        }
    }
}

/// Config distribution in one replica; cheap to clone.
#[derive(Clone, Debug)]
pub struct Fleet {
    cache: ConfigCache,
    registry: Registry,
    leadership: tokio::sync::watch::Receiver<Leadership>,
    /// Open streams by node id; a newer stream of a node replaces the older.
    streams: Arc<Mutex<HashMap<String, (registry::StreamId, CancellationToken)>>>,
    shutdown: CancellationToken,
}

impl Fleet {
    /// Loads the cache from the store and starts the cache watch, the
    /// registry, the election and the leader's jobs. Everything stops when
    /// `shutdown` is cancelled; await the returned tasks to see it finish.
    pub async fn start(
        store: SharedStore,
        settings: FleetSettings,
        shutdown: CancellationToken,
    ) -> Result<(Self, Vec<JoinHandle<()>>), StoreError> {
        let (cache, cache_task) =
            ConfigCache::start(store.clone(), settings.debounce, shutdown.clone()).await?;
        let registry = Registry::new(store.clone(), &settings.replica_id, settings.lease_ttl);
        let elector = Elector::new(
            store,
            keys::LEADER,
            &settings.replica_id,
            settings.lease_ttl,
        );
        let leadership = elector.subscribe();
        let tasks = vec![
            cache_task,
            tokio::spawn(registry.clone().run(shutdown.clone())),
            tokio::spawn(elector.run(shutdown.clone())),
            tokio::spawn(forget_disconnected(
                registry.clone(),
                leadership.clone(),
                settings.clone(),
                shutdown.clone(),
            )),
        ];
        Ok((
            Self {
                cache,
                registry,
                leadership,
                streams: Arc::default(),
                shutdown,
            },
            tasks,
        ))
    }

    /// The replica's config cache.
    pub fn cache(&self) -> &ConfigCache {
        &self.cache
    }

    /// Fleet membership.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Whether this replica leads, as it changes.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// Number of node streams open on this replica.
    pub fn connected(&self) -> usize {
        self.lock_streams().len()
    }

    /// Reads the hello of an authorized node stream and starts serving it.
    pub async fn open_stream(
        &self,
        mut inbound: Streaming<pb::NodeMessage>,
    ) -> Result<mpsc::Receiver<Result<pb::ConfigMessage, Status>>, Status> {
        let hello = stream::read_hello(&mut inbound).await?;
        let node_id = hello.hello.node_id.clone();
        let id = self.registry.connect(&hello.hello);
        let cancel = self.shutdown.child_token();
        let replaced = self
            .lock_streams()
            .insert(node_id.clone(), (id, cancel.clone()));
        if let Some((_, older)) = replaced {
            tracing::info!(node = %node_id, "node opened a new stream; closing its older one");
            older.cancel();
        }
        tracing::info!(
            node = %node_id,
            region = %hello.hello.region,
            held = hello.hello.held.len(),
            "node stream opened"
        );
        metrics::gauge!("aios_fleet_connected_nodes").set(self.connected() as f64);
        // One push outstanding at a time, plus a closing status.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(stream::run(self.clone(), hello, inbound, tx, id, cancel));
        Ok(rx)
    }

    /// A stream ended: forget it unless a newer one replaced it.
    fn release(&self, node_id: &str, stream: registry::StreamId) {
        let mut streams = self.lock_streams();
        if streams.get(node_id).is_some_and(|(id, _)| *id == stream) {
            streams.remove(node_id);
        }
        metrics::gauge!("aios_fleet_connected_nodes").set(streams.len() as f64);
    }

    fn lock_streams(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (registry::StreamId, CancellationToken)>> {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Leader-only job: forget nodes disconnected beyond the retention.
async fn forget_disconnected(
    registry: Registry,
    leadership: tokio::sync::watch::Receiver<Leadership>,
    settings: FleetSettings,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.forget_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let fence = leadership.borrow().fence().cloned();
        let Some(fence) = fence else { continue };
        if let Err(error) = registry
            .forget_disconnected(&fence, settings.node_retention)
            .await
        {
            tracing::warn!(%error, "forgetting disconnected nodes failed; retrying later");
        }
    }
}
