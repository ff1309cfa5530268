//! Leader election with fencing, built only on the [`Store`] trait, so it
//! runs the same on etcd and on the embedded store.
//!
//! Some work must happen on one replica at a time (rollups, budget resets,
//! garbage collection). A replica leads while it holds the leader key: it
//! creates the key under its own lease with a compare-and-swap ("create if
//! absent"), keeps the lease alive every `ttl / 3`, and everyone else
//! watches the key and campaigns again when it is deleted (lease expiry,
//! revoke, delete).
//!
//! Believing you lead is not enough to write safely: a paused or partitioned
//! leader may still think it leads after its lease expired. So every term
//! carries a [`Fence`]: the key's `mod_revision` at which this replica won.
//! Every leader-only transaction includes [`Fence::compare`], which holds
//! only while the key is still the one this replica created; a deposed
//! leader's write fails with `Conflict` instead of racing the new leader.
//!
//! The step-down rule keeps the belief honest too: a leader gives up (and
//! publishes [`Leadership::Follower`]) once `ttl - ttl / 5` has passed since
//! the *sending* of its last successful keep-alive. The store renewed the
//! lease no earlier than that send, so the lease cannot expire, and nobody
//! else can win, before `ttl` has passed; the fifth of the TTL in between
//! absorbs timer lateness and the time subscribers take to see the change.
//! A revoke or delete behind the leader's back is seen through its watch on
//! the key; in that window only the fence protects writes.
//!
//! [`Store`]: crate::store::Store

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::store::{
    Compare, EventKind, KeyValue, LeaseId, Op, Revision, SharedStore, StoreError, TxnOutcome,
    WatchMessage,
};

/// The key the leader holds (see `keys::LEADER`).
pub const LEADER_KEY: &str = crate::keys::LEADER;

/// Shortest lease TTL accepted: shorter ones would turn the keep-alive
/// loop into a busy loop (etcd rounds them up to about 2 s anyway).
const MIN_TTL: Duration = Duration::from_secs(1);
/// First pause after a failed store call.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause between retries of the election loop.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What this replica currently is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Another replica leads (`leader` names it), or nobody known does.
    Follower {
        /// Identity stored in the leader key, if any other replica holds it.
        leader: Option<String>,
    },
    /// This replica leads.
    Leader {
        /// Guard for every leader-only transaction of this term.
        fence: Fence,
        /// The lease the leader key hangs on: keys put with it vanish when
        /// this term ends.
        lease: LeaseId,
    },
}

impl Leadership {
    /// This term's fence, while leading.
    pub fn fence(&self) -> Option<&Fence> {
        match self {
            Self::Leader { fence, .. } => Some(fence),
            Self::Follower { .. } => None,
        }
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        matches!(self, Self::Leader { .. })
    }
}

/// Proof of one leadership term: the leader key and the revision at which
/// this replica created it. Each term has its own revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    key: Arc<str>,
    revision: Revision,
}

impl Fence {
    /// The leader key's `mod_revision` at which this term began.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The compare every leader-only transaction includes: it fails once the
    /// key was deleted or recreated, i.e. once this term is over.
    pub fn compare(&self) -> Compare {
        Compare::ModRevision {
            key: self.key.to_string(),
            equals: self.revision,
        }
    }
}

/// One replica's side of the election.
#[derive(Debug)]
pub struct Elector {
    store: SharedStore,
    key: String,
    identity: String,
    ttl: Duration,
    state: watch::Sender<Leadership>,
}

/// A term just won: its lease, fence revision, and when the lease was last
/// renewed (the send time of the request that renewed it).
#[derive(Clone, Copy, Debug)]
struct Term {
    lease: LeaseId,
    revision: Revision,
    renewed_at: Instant,
}

/// Why a leader stepped down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepDown {
    Shutdown,
    LeaseLost,
    Unreachable,
    KeyChanged,
}

impl StepDown {
    fn as_str(self) -> &'static str {
        match self {
            Self::Shutdown => "shutting down",
            Self::LeaseLost => "lease lost",
            Self::Unreachable => "no keep-alive succeeded in time",
            Self::KeyChanged => "leader key deleted or replaced",
        }
    }
}

// === impl Elector ===

impl Elector {
    /// An elector for `identity` (unique per replica) on `key`, with leases
    /// of `ttl` (at least 1 s). Nothing happens until [`Elector::run`].
    pub fn new(
        store: SharedStore,
        key: impl Into<String>,
        identity: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        let (state, _) = watch::channel(Leadership::Follower { leader: None });
        Self {
            store,
            key: key.into(),
            identity: identity.into(),
            ttl: ttl.max(MIN_TTL),
            state,
        }
    }

    /// Leadership changes; the current value is always the latest state.
    /// Subscribe before [`Elector::run`] consumes the elector.
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.subscribe()
    }

    /// Campaigns, leads, and campaigns again, until `shutdown` is cancelled;
    /// then hands leadership over (revokes the lease) and publishes
    /// `Follower { leader: None }`. Store errors are retried with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            key = %self.key,
            identity = %self.identity,
            ttl_ms = self.ttl.as_millis(),
            store = %self.store.describe(),
            "leader election starting"
        );
        let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
        while !shutdown.is_cancelled() {
            let absent = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                absent = self.follow() => absent,
            };
            // A campaign runs to its end even during shutdown, so a lease it
            // granted is always revoked or led; store calls are bounded.
            let outcome = match absent {
                Ok(()) => self.campaign().await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(Some(term)) => {
                    backoff.reset();
                    self.lead(term, &shutdown).await;
                }
                // Someone else won: follow them.
                Ok(None) => backoff.reset(),
                Err(error) => {
                    let pause = backoff.next();
                    tracing::warn!(
                        key = %self.key,
                        %error,
                        retry_in_ms = pause.as_millis(),
                        "leader election: store call failed"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        self.publish(Leadership::Follower { leader: None });
        tracing::info!(key = %self.key, identity = %self.identity, "leader election stopped");
    }

    // --- following ---

    /// Follows whoever holds the key; returns `Ok` once the key is absent.
    async fn follow(&self) -> Result<(), StoreError> {
        loop {
            let (current, start) = self.observe().await?;
            let Some(kv) = current else {
                return Ok(());
            };
            self.publish(Leadership::Follower {
                leader: self.holder(&kv),
            });
            let mut stream = self.store.watch(&self.key, start).await?;
            loop {
                match stream.next().await {
                    None => return Err(StoreError::Unavailable("leader watch ended".into())),
                    Some(Err(error)) => return Err(error),
                    // History is gone: look again and watch from now.
                    Some(Ok(WatchMessage::Compacted { .. })) => break,
                    Some(Ok(WatchMessage::Events(events))) => {
                        // The watch is on a prefix: skip longer keys.
                        for event in events.iter().filter(|e| e.kv.key == self.key) {
                            match event.kind {
                                EventKind::Delete => return Ok(()),
                                EventKind::Put => self.publish(Leadership::Follower {
                                    leader: self.holder(&event.kv),
                                }),
                            }
                        }
                    }
                }
            }
        }
    }

    /// Reads the key, and the revision to watch from so that no later change
    /// is missed and none already seen is replayed.
    async fn observe(&self) -> Result<(Option<KeyValue>, Revision), StoreError> {
        // Read the revision first: any change after the get is newer than it.
        let revision = self.store.revision().await?;
        let current = self.store.get(&self.key).await?;
        let seen = current
            .as_ref()
            .map_or(revision, |kv| kv.mod_revision.max(revision));
        Ok((current, seen + 1))
    }

    /// The leader a key names. A key naming this replica while it follows is
    /// a term it already gave up, waiting for its lease to go: nobody leads.
    fn holder(&self, kv: &KeyValue) -> Option<String> {
        let name = String::from_utf8_lossy(&kv.value);
        (name != self.identity).then(|| name.into_owned())
    }

    // --- campaigning ---

    /// Tries to create the key under a fresh lease. `Ok(None)`: another
    /// replica holds it.
    async fn campaign(&self) -> Result<Option<Term>, StoreError> {
        // Taken before the grant: the lease lives at least `ttl` from here.
        let granted_at = Instant::now();
        let lease = self.store.grant_lease(self.ttl).await?;
        let compare = Compare::ModRevision {
            key: self.key.clone(),
            equals: 0,
        };
        let put = Op::Put {
            key: self.key.clone(),
            value: self.identity.clone().into_bytes(),
            lease: Some(lease),
        };
        let term = |revision| Term {
            lease,
            revision,
            renewed_at: granted_at,
        };
        match self.store.txn(vec![compare], vec![put]).await {
            Ok(TxnOutcome::Committed { revision }) => Ok(Some(term(revision))),
            Ok(TxnOutcome::Conflict { .. }) => {
                self.revoke(lease).await;
                Ok(None)
            }
            Err(error) => {
                // The write may have committed before the error: the key
                // carrying our lease says it did.
                match self.store.get(&self.key).await {
                    Ok(Some(kv)) if kv.lease == Some(lease) => Ok(Some(term(kv.mod_revision))),
                    _ => {
                        self.revoke(lease).await;
                        Err(error)
                    }
                }
            }
        }
    }

    // --- leading ---

    /// Leads for one term: until the lease or the key is lost, or shutdown.
    async fn lead(&self, term: Term, shutdown: &CancellationToken) {
        let expired = Instant::now() >= step_down_at(term.renewed_at, self.ttl);
        if shutdown.is_cancelled() || expired {
            // Won too late to lead safely, or no longer wanted.
            self.revoke(term.lease).await;
            return;
        }
        let fence = Fence {
            key: self.key.as_str().into(),
            revision: term.revision,
        };
        self.publish(Leadership::Leader {
            fence,
            lease: term.lease,
        });
        let reason = tokio::select! {
            biased;
            () = shutdown.cancelled() => StepDown::Shutdown,
            reason = self.keep_alive(term) => reason,
            reason = self.watch_own_key(term.revision) => reason,
        };
        // Stop believing first, then hand over: nobody can win before the
        // revoke, so no subscriber ever sees two leaders.
        self.publish(Leadership::Follower { leader: None });
        if reason != StepDown::Shutdown {
            tracing::warn!(
                key = %self.key,
                identity = %self.identity,
                reason = reason.as_str(),
                "stepped down"
            );
        }
        self.revoke(term.lease).await;
    }

    /// Renews the lease every `ttl / 3`, retrying failures with backoff;
    /// returns when leadership must end (see the module docs).
    async fn keep_alive(&self, term: Term) -> StepDown {
        let interval = self.ttl / 3;
        let mut backoff = Backoff::new(BACKOFF_START, self.ttl / 10);
        let mut ttl = self.ttl;
        let mut renewed_at = term.renewed_at;
        let mut next = renewed_at + interval;
        loop {
            let deadline = step_down_at(renewed_at, ttl);
            if next >= deadline {
                tokio::time::sleep_until(deadline).await;
                return StepDown::Unreachable;
            }
            tokio::time::sleep_until(next).await;
            let sent = Instant::now();
            match tokio::time::timeout_at(deadline, self.store.keep_alive(term.lease)).await {
                Err(_elapsed) => return StepDown::Unreachable,
                Ok(Ok(granted)) => {
                    // A store that grants less than asked shortens the term.
                    ttl = granted.min(self.ttl);
                    renewed_at = sent;
                    next = sent + interval;
                    backoff.reset();
                }
                Ok(Err(StoreError::LeaseNotFound(_))) => return StepDown::LeaseLost,
                Ok(Err(error)) => {
                    let pause = backoff.next();
                    tracing::warn!(
                        key = %self.key,
                        lease = term.lease,
                        %error,
                        retry_in_ms = pause.as_millis(),
                        "leader keep-alive failed"
                    );
                    next = Instant::now() + pause;
                }
            }
        }
    }

    /// Returns once the key no longer holds the term won at `won_at`;
    /// store errors are retried (the keep-alive deadline bounds an outage).
    async fn watch_own_key(&self, won_at: Revision) -> StepDown {
        let mut backoff = Backoff::new(BACKOFF_START, self.ttl / 10);
        loop {
            match self.own_key_changed(won_at).await {
                Ok(()) => return StepDown::KeyChanged,
                Err(error) => {
                    let pause = backoff.next();
                    tracing::warn!(key = %self.key, %error, "leader watch failed");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn own_key_changed(&self, won_at: Revision) -> Result<(), StoreError> {
        let mut start = won_at + 1;
        loop {
            let mut stream = self.store.watch(&self.key, start).await?;
            loop {
                match stream.next().await {
                    None => return Err(StoreError::Unavailable("leader watch ended".into())),
                    Some(Err(error)) => return Err(error),
                    Some(Ok(WatchMessage::Compacted { .. })) => break,
                    Some(Ok(WatchMessage::Events(events))) => {
                        // Only the leader writes the key, and only once.
                        if events.iter().any(|e| e.kv.key == self.key) {
                            return Ok(());
                        }
                    }
                }
            }
            let (current, next) = self.observe().await?;
            if current.map(|kv| kv.mod_revision) != Some(won_at) {
                return Ok(());
            }
            start = next;
        }
    }

    // --- helpers ---

    /// Best effort: a lease that cannot be revoked expires within `ttl`.
    async fn revoke(&self, lease: LeaseId) {
        match tokio::time::timeout(self.ttl, self.store.revoke_lease(lease)).await {
            Ok(Ok(()) | Err(StoreError::LeaseNotFound(_))) => {}
            Ok(Err(error)) => {
                tracing::warn!(key = %self.key, lease, %error, "could not revoke election lease");
            }
            Err(_elapsed) => {
                tracing::warn!(key = %self.key, lease, "revoking election lease timed out");
            }
        }
    }

    /// Publishes `next` if it differs from the current state; logs the change.
    fn publish(&self, next: Leadership) {
        let changed = self.state.send_if_modified(|current| {
            let changed = *current != next;
            if changed {
                *current = next.clone();
            }
            changed
        });
        if !changed {
            return;
        }
        match &next {
            Leadership::Leader { fence, lease } => tracing::info!(
                key = %self.key,
                identity = %self.identity,
                fence = fence.revision,
                lease,
                "became leader"
            ),
            Leadership::Follower { leader } => tracing::info!(
                key = %self.key,
                identity = %self.identity,
                leader = leader.as_deref().unwrap_or("<none>"),
                "following"
            ),
        }
    }
}

/// When a leader whose lease was renewed at `renewed_at` must step down:
/// a fifth of the TTL before the earliest moment the lease can expire.
fn step_down_at(renewed_at: Instant, ttl: Duration) -> Instant {
    renewed_at + (ttl - ttl / 5)
}

/// Exponential backoff between `start` and `max`.
#[derive(Debug)]
struct Backoff {
    start: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(start: Duration, max: Duration) -> Self {
        let max = max.max(start);
        Self {
            start,
            max,
            next: start,
        }
    }

    fn next(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    fn reset(&mut self) {
        self.next = self.start;
    }
}

#[cfg(test)]
mod tests {
    // The step-down rule's behaviour (a cut-off leader gives up before its
    // lease expires) is tested end to end in tests/tests/leader.rs.
    use super::*;

    #[test]
    fn step_down_comes_a_fifth_of_the_ttl_before_expiry() {
        let now = Instant::now();
        let at = step_down_at(now, Duration::from_secs(10));
        assert_eq!(at - now, Duration::from_secs(8));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let pauses: Vec<_> = (0..4).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(100));
    }
}
