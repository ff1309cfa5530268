//! Fleet membership: one store record per node, `/aios/v1/nodes/{node_id}`
//! (an encoded `pb::Node`), written by the replica serving the node's stream.
//!
//! - While a node is connected its record hangs on this replica's lease, so
//!   if the replica dies the record goes with it, and the node re-registers
//!   wherever it reconnects.
//! - Records are written by one flusher task, batched into transactions, and
//!   at most once per [`MIN_WRITE_INTERVAL`] per node: state changes (ACKs,
//!   NACKs, sync) are written promptly, heartbeats alone every
//!   [`HEARTBEAT_WRITE_INTERVAL`]. Nothing is written per request.
//! - When a stream ends, the record is rewritten without the lease and with
//!   `connected = false`, unless another stream (here or on another replica)
//!   wrote it since: that write is guarded by the record's `mod_revision`.
//! - Disconnected records are forgotten by the leader after a retention
//!   period ([`Registry::forget_disconnected`], fenced on the election key).
//!
//! Reads (`ListNodes`, `GetNode`) come from the store, overlaid with the
//! fresher in-memory state of nodes connected to this replica.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use aios_model::labels::LabelSelector;
use aios_proto::v1 as pb;
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{cache::ConfigCache, leader::Fence, session::Session};
use crate::{
    keys,
    store::{Compare, LeaseId, Op, RangeRequest, Revision, SharedStore, StoreError, TxnOutcome},
};

/// A node's record is written at most this often.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// A heartbeat alone refreshes the stored record this often.
pub const HEARTBEAT_WRITE_INTERVAL: Duration = Duration::from_secs(10);
/// How often the flusher looks for records to write.
const FLUSH_TICK: Duration = Duration::from_millis(100);
/// Puts per transaction (the store takes at most 128 ops).
const BATCH: usize = 64;

/// Identifies one stream of a node on this replica; a newer stream of the
/// same node replaces the older, whose updates are then ignored.
pub type StreamId = u64;

/// Handle to this replica's registry; cheap to clone.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: SharedStore,
    replica: String,
    lease_ttl: Duration,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    lease: Option<LeaseId>,
    next_stream: StreamId,
    nodes: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    stream: StreamId,
    node: pb::Node,
    connected: bool,
    /// Something other than the heartbeat changed since the last write.
    dirty: bool,
    /// The heartbeat changed since the last write.
    heartbeat_dirty: bool,
    /// When and at which revision the record was last written by us.
    written: Option<(Instant, Revision)>,
}

impl Entry {
    fn due(&self, now: Instant) -> bool {
        let since = self.written.map(|(at, _)| now.duration_since(at));
        match since {
            None => true,
            Some(since) if since < MIN_WRITE_INTERVAL => false,
            Some(since) => {
                self.dirty
                    || !self.connected
                    || (self.heartbeat_dirty && since >= HEARTBEAT_WRITE_INTERVAL)
            }
        }
    }
}

impl Registry {
    /// A registry for replica `replica`, whose records hang on a lease of
    /// `lease_ttl`. Nothing is written until [`Registry::run`].
    pub fn new(store: SharedStore, replica: impl Into<String>, lease_ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                replica: replica.into(),
                lease_ttl,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
            }),
        }
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated
        // in a way that matters more than losing the registry: recover.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a node that just said hello; returns its stream id.
    pub fn connect(&self, hello: &pb::NodeHello) -> StreamId {
        let now = timestamp(SystemTime::now());
        let node = pb::Node {
            node_id: hello.node_id.clone(),
            region: hello.region.clone(),
            zone: hello.zone.clone(),
            labels: hello.labels.clone(),
            capabilities: hello.capabilities.clone(),
            connected_replica: self.inner.replica.clone(),
            connected: true,
            agent_version: hello.agent_version.clone(),
            connect_time: Some(now),
            last_heartbeat_time: Some(now),
            ..Default::default()
        };
        let mut state = self.state();
        state.next_stream += 1;
        let stream = state.next_stream;
        let written = state.nodes.get(&hello.node_id).and_then(|e| e.written);
        state.nodes.insert(
            hello.node_id.clone(),
            Entry {
                stream,
                node,
                connected: true,
                dirty: true,
                heartbeat_dirty: false,
                written,
            },
        );
        drop(state);
        self.inner.wake.notify_one();
        stream
    }

    /// Records what the node's session now says it holds.
    pub fn record_session(&self, node_id: &str, stream: StreamId, session: &Session) {
        let mut state = self.state();
        let Some(entry) = current(&mut state, node_id, stream) else {
            return;
        };
        let applied = held_resources(session);
        let parked = parked_nacks(session, &entry.node.parked);
        let synced = session.synced_revision();
        if entry.node.applied != applied
            || entry.node.parked != parked
            || entry.node.applied_revision != synced
        {
            entry.node.applied = applied;
            entry.node.parked = parked;
            entry.node.applied_revision = synced;
            entry.dirty = true;
        }
        entry.node.last_heartbeat_time = Some(timestamp(SystemTime::now()));
        entry.heartbeat_dirty = true;
    }

    /// Records a heartbeat (any message from the node counts as one), and
    /// the node's capabilities when it says they changed.
    pub fn heartbeat(
        &self,
        node_id: &str,
        stream: StreamId,
        in_flight: Option<u32>,
        capabilities: Option<&pb::NodeCapabilities>,
    ) {
        let mut state = self.state();
        let Some(entry) = current(&mut state, node_id, stream) else {
            return;
        };
        entry.node.last_heartbeat_time = Some(timestamp(SystemTime::now()));
        if let Some(in_flight) = in_flight {
            entry.node.in_flight_requests = in_flight;
        }
        entry.heartbeat_dirty = true;
        if let Some(capabilities) = capabilities
            && entry.node.capabilities.as_ref() != Some(capabilities)
        {
            entry.node.capabilities = Some(capabilities.clone());
            entry.dirty = true;
            drop(state);
            self.inner.wake.notify_one();
        }
    }

    /// The stream ended: the record is kept, marked disconnected.
    pub fn disconnect(&self, node_id: &str, stream: StreamId) {
        let mut state = self.state();
        let Some(entry) = current(&mut state, node_id, stream) else {
            return;
        };
        entry.connected = false;
        entry.node.connected = false;
        entry.node.connected_replica.clear();
        drop(state);
        self.inner.wake.notify_one();
    }

    /// Holds the lease and writes records until `shutdown`, then revokes the
    /// lease (records of still-connected nodes vanish; they re-register
    /// wherever they reconnect).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut keep_alive = tokio::time::interval(self.inner.lease_ttl / 3);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = keep_alive.tick() => self.keep_alive().await,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(FLUSH_TICK) => {}
            }
            if let Err(error) = self.flush().await {
                tracing::warn!(%error, "fleet registry write failed; retrying");
            }
        }
        // Last words of disconnected nodes, then let go of the rest.
        let _ = self.flush().await;
        let lease = self.state().lease.take();
        if let Some(lease) = lease {
            let _ = self.inner.store.revoke_lease(lease).await;
        }
    }

    async fn keep_alive(&self) {
        let lease = self.state().lease;
        let Some(lease) = lease else {
            return; // granted by the next flush
        };
        match self.inner.store.keep_alive(lease).await {
            Ok(_) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                tracing::warn!("fleet registry lease expired; registering connected nodes again");
                let mut state = self.state();
                state.lease = None;
                for entry in state.nodes.values_mut() {
                    entry.written = None;
                }
            }
            Err(error) => tracing::warn!(%error, "fleet registry keep-alive failed"),
        }
    }

    async fn lease(&self) -> Result<LeaseId, StoreError> {
        if let Some(lease) = self.state().lease {
            return Ok(lease);
        }
        let lease = self.inner.store.grant_lease(self.inner.lease_ttl).await?;
        self.state().lease = Some(lease);
        Ok(lease)
    }

    /// Writes every record that is due.
    async fn flush(&self) -> Result<(), StoreError> {
        let now = Instant::now();
        let (live, gone) = {
            let state = self.state();
            let mut live = Vec::new();
            let mut gone = Vec::new();
            for (id, entry) in &state.nodes {
                if !entry.due(now) {
                    continue;
                }
                let item = (
                    id.clone(),
                    entry.stream,
                    entry.node.encode_to_vec(),
                    entry.written,
                );
                if entry.connected {
                    live.push(item);
                } else {
                    gone.push(item);
                }
            }
            (live, gone)
        };
        if !live.is_empty() {
            let lease = self.lease().await?;
            for chunk in live.chunks(BATCH) {
                let ops = chunk
                    .iter()
                    .map(|(id, _, value, _)| Op::Put {
                        key: keys::node(id),
                        value: value.clone(),
                        lease: Some(lease),
                    })
                    .collect();
                let revision = match self.inner.store.txn(Vec::new(), ops).await? {
                    TxnOutcome::Committed { revision } => revision,
                    TxnOutcome::Conflict { .. } => continue,
                };
                let mut state = self.state();
                for (id, stream, _, _) in chunk {
                    if let Some(entry) = current(&mut state, id, *stream) {
                        entry.written = Some((now, revision));
                        entry.dirty = false;
                        entry.heartbeat_dirty = false;
                    }
                }
            }
        }
        for (id, stream, value, written) in gone {
            // Only if nobody else (another stream, another replica) wrote the
            // record since our last write.
            let outcome = match written {
                Some((_, revision)) => {
                    self.inner
                        .store
                        .txn(
                            vec![Compare::ModRevision {
                                key: keys::node(&id),
                                equals: revision,
                            }],
                            vec![Op::Put {
                                key: keys::node(&id),
                                value,
                                lease: None,
                            }],
                        )
                        .await?
                }
                None => TxnOutcome::Conflict { revision: 0 },
            };
            if let TxnOutcome::Conflict { .. } = outcome {
                tracing::debug!(node = %id, "node record taken over; not marking it disconnected");
            }
            let mut state = self.state();
            if current(&mut state, &id, stream).is_some() {
                state.nodes.remove(&id);
            }
        }
        Ok(())
    }

    /// Nodes matching `region` (empty = any) and `selector`, ordered by id,
    /// starting after `after`; at most `limit` (and whether more exist).
    pub async fn list(
        &self,
        cache: &ConfigCache,
        region: &str,
        selector: &LabelSelector,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<pb::Node>, bool), StoreError> {
        let mut nodes = Vec::new();
        let mut cursor = if after.is_empty() {
            String::new()
        } else {
            keys::node(after)
        };
        let revision = cache.current().revision;
        loop {
            let page = self
                .inner
                .store
                .range(RangeRequest {
                    prefix: keys::NODES.to_string(),
                    after: cursor.clone(),
                    limit: limit + 1,
                })
                .await?;
            for kv in &page.kvs {
                cursor.clone_from(&kv.key);
                let Some(node) = self.decode(&kv.value, revision) else {
                    continue;
                };
                if (region.is_empty() || node.region == region) && selector.matches(&node.labels) {
                    if nodes.len() == limit {
                        return Ok((nodes, true));
                    }
                    nodes.push(node);
                }
            }
            if !page.more {
                return Ok((nodes, false));
            }
        }
    }

    /// One node, if it is known.
    pub async fn get(
        &self,
        cache: &ConfigCache,
        node_id: &str,
    ) -> Result<Option<pb::Node>, StoreError> {
        let revision = cache.current().revision;
        let stored = self.inner.store.get(&keys::node(node_id)).await?;
        Ok(stored.and_then(|kv| self.decode(&kv.value, revision)))
    }

    /// A stored record, replaced by our in-memory one while the node is
    /// connected here, with its lag filled in.
    fn decode(&self, value: &[u8], revision: Revision) -> Option<pb::Node> {
        let stored = match pb::Node::decode(value) {
            Ok(node) => node,
            Err(error) => {
                tracing::warn!(%error, "skipping an undecodable node record");
                return None;
            }
        };
        let mut node = {
            let state = self.state();
            match state.nodes.get(&stored.node_id) {
                Some(entry) if entry.connected => entry.node.clone(),
                _ => stored,
            }
        };
        node.lag_revisions = revision.saturating_sub(node.applied_revision).max(0);
        Some(node)
    }

    /// Leader-only: deletes records of nodes disconnected for longer than
    /// `retention`. Each delete is fenced on the leader key and on the
    /// record's revision. Returns how many were forgotten.
    pub async fn forget_disconnected(
        &self,
        fence: &Fence,
        retention: Duration,
    ) -> Result<usize, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let records = self
            .inner
            .store
            .range(RangeRequest::prefix(keys::NODES))
            .await?;
        let mut forgotten = 0;
        for kv in records.kvs {
            let Ok(node) = pb::Node::decode(kv.value.as_slice()) else {
                continue;
            };
            let seen = node
                .last_heartbeat_time
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            if node.connected || kv.lease.is_some() || seen > cutoff {
                continue;
            }
            let outcome = self
                .inner
                .store
                .txn(
                    vec![
                        fence.compare(),
                        Compare::ModRevision {
                            key: kv.key.clone(),
                            equals: kv.mod_revision,
                        },
                    ],
                    vec![Op::Delete { key: kv.key }],
                )
                .await?;
            if let TxnOutcome::Committed { .. } = outcome {
                forgotten += 1;
                tracing::info!(node = %node.node_id, "forgot a node disconnected beyond retention");
            }
        }
        Ok(forgotten)
    }
}

/// The entry of `node_id` if `stream` is still its current stream.
fn current<'a>(state: &'a mut State, node_id: &str, stream: StreamId) -> Option<&'a mut Entry> {
    state.nodes.get_mut(node_id).filter(|e| e.stream == stream)
}

fn held_resources(session: &Session) -> Vec<pb::HeldResource> {
    session
        .held()
        .iter()
        .filter_map(|(key, version)| {
            Some(pb::HeldResource {
                resource: Some(super::session::reference(key)?),
                version: *version,
            })
        })
        .collect()
}

/// Parked NACKs, keeping the time a NACK first arrived.
fn parked_nacks(session: &Session, before: &[pb::ParkedNack]) -> Vec<pb::ParkedNack> {
    let now = timestamp(SystemTime::now());
    session
        .parked()
        .iter()
        .filter_map(|(key, parked)| {
            let resource = super::session::reference(key)?;
            let time = before
                .iter()
                .find(|p| p.resource.as_ref() == Some(&resource) && p.version == parked.version)
                .and_then(|p| p.time)
                .unwrap_or(now);
            Some(pb::ParkedNack {
                resource: Some(resource),
                version: parked.version,
                error: parked.error.clone(),
                time: Some(time),
            })
        })
        .collect()
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
