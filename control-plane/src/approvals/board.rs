//! The replica's view of live approvals (open, or approved and not yet
//! executed), followed from the store: what `Watch` starts from, what it
//! streams, and what the sweeper times out.
//!
//! One `resyncing_watch` on `/aios/v1/approvals/` per replica keeps the
//! live set and broadcasts every change. Every replica sweeps: a due
//! approval is timed out by compare-and-swap, so when replicas race one
//! wins and the others' writes fail and change nothing.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use aios_proto::v1 as pb;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{Approvals, decode, machine};
use crate::{
    auth::Scope,
    keys,
    store::{
        Event, EventKind, KeyValue, RangeRequest, SharedStore, StoreError,
        watch::{Follower, follow},
    },
};

/// How often each replica looks for due approvals.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Changes a slow watcher may fall behind before it is sent the open set again.
const CHANGES_BUFFER: usize = 1024;

/// One approval as it is after a change.
#[derive(Clone, Debug)]
pub struct Change {
    /// The approval now.
    pub approval: Arc<pb::Approval>,
    /// Whether it was open (PENDING or ESCALATED) before this change.
    pub was_open: bool,
}

/// Live approvals by store key, and their changes; cheap to clone.
#[derive(Clone, Debug)]
pub struct Board {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Never held across an await.
    live: RwLock<HashMap<String, Arc<pb::Approval>>>,
    changes: broadcast::Sender<Change>,
    shutdown: CancellationToken,
}

impl Board {
    /// Lists every approval, then follows the store until `shutdown`.
    pub async fn start(
        store: SharedStore,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let listing = store.range(RangeRequest::prefix(keys::APPROVALS)).await?;
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        let board = Self {
            inner: Arc::new(Inner {
                live: RwLock::new(HashMap::new()),
                changes,
                shutdown: shutdown.clone(),
            }),
        };
        board.replace(&listing.kvs);
        let task = tokio::spawn(follow(
            store,
            keys::APPROVALS.to_string(),
            listing,
            board.clone(),
            shutdown,
        ));
        Ok((board, task))
    }

    fn put(&self, kv: &KeyValue) {
        let Ok(approval) = decode(kv) else {
            tracing::error!(key = %kv.key, "undecodable approval ignored");
            return;
        };
        let approval = Arc::new(approval);
        let was_open = {
            let Ok(mut live) = self.inner.live.write() else {
                return;
            };
            let before = if machine::is_live(machine::state(&approval)) {
                live.insert(kv.key.clone(), approval.clone())
            } else {
                live.remove(&kv.key)
            };
            before.is_some_and(|b| machine::is_open(machine::state(&b)))
        };
        // No receivers is fine: nobody is watching.
        let _ = self.inner.changes.send(Change { approval, was_open });
    }

    fn remove(&self, key: &str) {
        if let Ok(mut live) = self.inner.live.write() {
            live.remove(key);
        }
    }

    fn replace(&self, kvs: &[KeyValue]) {
        let mut fresh = HashMap::new();
        for kv in kvs {
            match decode(kv) {
                Ok(approval) if machine::is_live(machine::state(&approval)) => {
                    fresh.insert(kv.key.clone(), Arc::new(approval));
                }
                Ok(_) => {}
                Err(_) => tracing::error!(key = %kv.key, "undecodable approval ignored"),
            }
        }
        if let Ok(mut live) = self.inner.live.write() {
            *live = fresh;
        }
    }

    /// Open approvals (PENDING, ESCALATED) in `scope`, by criticality then age.
    pub fn open(&self, scope: &Scope) -> Vec<Arc<pb::Approval>> {
        let Ok(live) = self.inner.live.read() else {
            return Vec::new();
        };
        let mut open: Vec<Arc<pb::Approval>> = live
            .values()
            .filter(|a| machine::is_open(machine::state(a)) && in_scope(scope, a))
            .cloned()
            .collect();
        open.sort_by(|a, b| super::list::order(a, b));
        open
    }

    /// Every change from now on (a receiver that falls behind more than
    /// the buffer is told it lagged).
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// (tenant, id) of every live approval due at `now`.
    pub fn due(&self, now: SystemTime) -> Vec<(String, String)> {
        let Ok(live) = self.inner.live.read() else {
            return Vec::new();
        };
        live.values()
            .filter(|a| machine::is_due(a, now))
            .map(|a| (a.tenant.clone(), a.id.clone()))
            .collect()
    }

    /// The open approvals in `scope`, then each change as it happens (with
    /// `include_decided`, also changes after closing), until the replica
    /// shuts down. A watcher that falls behind gets the open set again.
    pub fn watch(&self, scope: Scope, include_decided: bool) -> BoxStream<'static, pb::Approval> {
        // Subscribe before the snapshot, so no change falls in between (one
        // may come twice, which is harmless: events are states, not deltas).
        let receiver = self.inner.changes.subscribe();
        let queue: VecDeque<Arc<pb::Approval>> = self.open(&scope).into();
        let state = WatchState {
            board: self.clone(),
            receiver,
            queue,
            scope,
            include_decided,
        };
        futures::stream::unfold(state, |mut state| async move {
            let next = state.next().await?;
            Some((next, state))
        })
        .boxed()
    }

    /// Times out due approvals every [`SWEEP_INTERVAL`] until shutdown.
    pub async fn sweep(self, approvals: Approvals) {
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
            for (tenant, id) in self.due(SystemTime::now()) {
                match approvals.time_out(&tenant, &id).await {
                    Ok(true) => tracing::info!(%tenant, approval = %id, "approval timed out"),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%tenant, approval = %id, %error, "approval timeout failed; retrying");
                    }
                }
            }
        }
    }
}

impl Follower for Board {
    fn replace(&mut self, kvs: &[KeyValue]) {
        Board::replace(self, kvs);
    }

    fn apply(&mut self, event: &Event) {
        match event.kind {
            EventKind::Put => self.put(&event.kv),
            EventKind::Delete => self.remove(&event.kv.key),
        }
    }
}

struct WatchState {
    board: Board,
    receiver: broadcast::Receiver<Change>,
    queue: VecDeque<Arc<pb::Approval>>,
    scope: Scope,
    include_decided: bool,
}

impl WatchState {
    async fn next(&mut self) -> Option<pb::Approval> {
        loop {
            if let Some(approval) = self.queue.pop_front() {
                return Some((*approval).clone());
            }
            let change = tokio::select! {
                _ = self.board.inner.shutdown.cancelled() => return None,
                change = self.receiver.recv() => change,
            };
            match change {
                Ok(change) => {
                    let open_now = machine::is_open(machine::state(&change.approval));
                    if in_scope(&self.scope, &change.approval)
                        && (self.include_decided || open_now || change.was_open)
                    {
                        return Some((*change.approval).clone());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.queue = self.board.open(&self.scope).into();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn in_scope(scope: &Scope, approval: &pb::Approval) -> bool {
    match scope {
        Scope::All => true,
        Scope::Tenant(tenant) => &approval.tenant == tenant,
    }
}
