//! Leader election (`fleet::leader`) on both backends, a real etcd and the
//! embedded store, because the elector is built only on the `Store` trait
//! and must behave the same on each: one leader among three replicas with
//! the others naming it, fast handover when the leader stops, fencing of a
//! deposed leader's writes, step-down when the leader's lease is revoked
//! behind its back, and step-down *before* the lease can expire when the
//! leader loses its store (so the old leader has stopped believing it leads
//! before anyone else can win).
//!
//! While replicas change hands, a monitor samples every replica's state and
//! counts moments at which two of them provably believed they led at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aios_control_plane::{
    fleet::leader::{Elector, Fence, LEADER_KEY, Leadership},
    store::{
        Compare, KeyValue, LeaseId, Op, Range, RangeRequest, Revision, SharedStore, Store,
        StoreError, TxnOutcome, WatchStream,
        embedded::{EmbeddedOptions, EmbeddedStore},
        etcd::EtcdStore,
    },
};
use aios_tests::etcd::EtcdServer;
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// Upper bound for anything the election should do promptly.
const WAIT: Duration = Duration::from_secs(30);
/// Long enough that leadership moving within [`WAIT`] cannot be lease
/// expiry: it must be a handover (revoke) or a watched delete.
const LONG_TTL: Duration = Duration::from_secs(60);

// === harness ===

/// One elector, running.
struct Replica {
    name: String,
    state: watch::Receiver<Leadership>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Replica {
    fn start(store: &SharedStore, name: &str, ttl: Duration) -> Self {
        let elector = Elector::new(store.clone(), LEADER_KEY, name, ttl);
        let state = elector.subscribe();
        let stop = CancellationToken::new();
        let task = tokio::spawn(elector.run(stop.clone()));
        Self {
            name: name.into(),
            state,
            stop,
            task,
        }
    }

    /// Cancels the elector, waits for it to end, returns its last state.
    async fn stop(self) -> Leadership {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("elector stops in time")
            .unwrap();
        self.state.borrow().clone()
    }
}

fn start_all(store: &SharedStore, ttl: Duration) -> Vec<Replica> {
    ["a", "b", "c"]
        .iter()
        .map(|name| Replica::start(store, name, ttl))
        .collect()
}

/// A term as seen by the whole group.
struct Term {
    leader: usize,
    fence: Fence,
    lease: LeaseId,
}

/// Polls until exactly one replica leads in a term `wanted` accepts and
/// every other one follows, naming it.
async fn settled(replicas: &[Replica], wanted: impl Fn(&Fence) -> bool) -> Term {
    let deadline = Instant::now() + WAIT;
    loop {
        let states: Vec<Leadership> = replicas.iter().map(|r| r.state.borrow().clone()).collect();
        let leaders: Vec<usize> = (0..states.len())
            .filter(|&i| states[i].is_leader())
            .collect();
        if let [leader] = leaders[..]
            && let Leadership::Leader { fence, lease } = &states[leader]
            && wanted(fence)
        {
            let named = Leadership::Follower {
                leader: Some(replicas[leader].name.clone()),
            };
            if states
                .iter()
                .enumerate()
                .all(|(i, s)| i == leader || *s == named)
            {
                return Term {
                    leader,
                    fence: fence.clone(),
                    lease: *lease,
                };
            }
        }
        assert!(
            Instant::now() < deadline,
            "not settled in {WAIT:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples every replica's state until stopped and counts proven overlaps:
/// replica `i` read as leader of one term twice, with replica `j` read as
/// a leader in between (a term, once left, never comes back, so `i` led
/// throughout).
fn monitor(replicas: &[Replica]) -> (CancellationToken, Arc<AtomicUsize>, JoinHandle<()>) {
    let states: Vec<_> = replicas.iter().map(|r| r.state.clone()).collect();
    let (stop, overlaps) = (CancellationToken::new(), Arc::new(AtomicUsize::new(0)));
    let (stopped, count) = (stop.clone(), overlaps.clone());
    let task = tokio::spawn(async move {
        while !stopped.is_cancelled() {
            let read = || -> Vec<Option<Fence>> {
                states.iter().map(|s| s.borrow().fence().cloned()).collect()
            };
            let (first, second) = (read(), read());
            for i in 0..states.len() {
                let (Some(held), Some(still)) = (&first[i], &second[i]) else {
                    continue;
                };
                // Reads of j between i's two reads: first pass after i, second before.
                let mut between = (0..states.len())
                    .filter(|&j| j != i)
                    .map(|j| if j > i { &first[j] } else { &second[j] });
                if held == still && between.any(|s| s.is_some()) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    (stop, overlaps, task)
}

fn write(key: &str, value: &str) -> Vec<Op> {
    vec![Op::Put {
        key: key.into(),
        value: value.into(),
        lease: None,
    }]
}

// === scenarios, on any store ===

/// Exactly one of three leads, the others name it, the key records the
/// term, and the leader keeps its lease alive well past the TTL.
async fn one_leader_others_follow(store: SharedStore) {
    let ttl = Duration::from_secs(3);
    let replicas = start_all(&store, ttl);
    let (stop_monitor, overlaps, monitor) = monitor(&replicas);
    let term = settled(&replicas, |_| true).await;
    let key = store.get(LEADER_KEY).await.unwrap().expect("leader key");
    assert_eq!(key.value, replicas[term.leader].name.as_bytes());
    assert_eq!(key.lease, Some(term.lease));
    assert_eq!(key.mod_revision, term.fence.revision());

    // Three TTLs later the same term still holds: keep-alives work.
    tokio::time::sleep(ttl * 3).await;
    let later = settled(&replicas, |_| true).await;
    assert_eq!((later.leader, later.fence), (term.leader, term.fence));

    stop_monitor.cancel();
    monitor.await.unwrap();
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two leaders at once");
    for replica in replicas {
        assert_eq!(replica.stop().await, Leadership::Follower { leader: None });
    }
    assert_eq!(
        store.get(LEADER_KEY).await.unwrap(),
        None,
        "key left behind"
    );
}

/// Stopping the leader hands over to another replica long before its
/// lease could expire, twice, and never shows two leaders at once.
async fn stopped_leader_hands_over(store: SharedStore) {
    let mut replicas = start_all(&store, LONG_TTL);
    let (stop_monitor, overlaps, monitor) = monitor(&replicas);
    let mut term = settled(&replicas, |_| true).await;
    for _ in 0..2 {
        let old = replicas.remove(term.leader);
        let old_name = old.name.clone();
        assert_eq!(old.stop().await, Leadership::Follower { leader: None });
        let previous = term.fence.revision();
        term = settled(&replicas, |fence| fence.revision() > previous).await;
        assert_ne!(replicas[term.leader].name, old_name);
    }
    stop_monitor.cancel();
    monitor.await.unwrap();
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two leaders at once");
    for replica in replicas {
        replica.stop().await;
    }
}

/// A write guarded by a deposed leader's fence conflicts and changes
/// nothing; the same write under the current leader's fence commits.
async fn fence_rejects_deposed_leader(store: SharedStore) {
    let mut replicas = start_all(&store, LONG_TTL);
    let first = settled(&replicas, |_| true).await;
    let guarded = "/aios/v1/test/guarded";
    let outcome = store
        .txn(vec![first.fence.compare()], write(guarded, "first"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TxnOutcome::Committed { .. }),
        "{outcome:?}"
    );

    replicas.remove(first.leader).stop().await;
    let second = settled(&replicas, |f| *f != first.fence).await;
    let outcome = store
        .txn(vec![first.fence.compare()], write(guarded, "stale"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TxnOutcome::Conflict { .. }),
        "{outcome:?}"
    );
    let value = store.get(guarded).await.unwrap().unwrap().value;
    assert_eq!(value, b"first", "the deposed leader's write landed");
    let outcome = store
        .txn(vec![second.fence.compare()], write(guarded, "second"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TxnOutcome::Committed { .. }),
        "{outcome:?}"
    );
    for replica in replicas {
        replica.stop().await;
    }
}

/// Revoking the leader's lease behind its back ends its term: it steps
/// down and a new term begins (any replica may win it, the old leader
/// included, but only in a new term with a newer fence).
async fn revoked_lease_steps_down(store: SharedStore) {
    let replicas = start_all(&store, LONG_TTL);
    let first = settled(&replicas, |_| true).await;
    store.revoke_lease(first.lease).await.unwrap();
    let second = settled(&replicas, |f| f.revision() > first.fence.revision()).await;
    assert!(
        replicas
            .iter()
            .all(|r| r.state.borrow().fence() != Some(&first.fence)),
        "someone still holds the revoked term"
    );
    let key = store.get(LEADER_KEY).await.unwrap().expect("leader key");
    assert_eq!(key.value, replicas[second.leader].name.as_bytes());
    assert_eq!(key.lease, Some(second.lease));
    let outcome = store
        .txn(vec![first.fence.compare()], write("/aios/v1/test/x", "x"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TxnOutcome::Conflict { .. }),
        "{outcome:?}"
    );
    for replica in replicas {
        replica.stop().await;
    }
}

/// A leader cut off from its store steps down while its lease (and so the
/// key) still exists, and only then does another replica take over.
async fn cut_off_leader_steps_down_before_its_lease_expires(store: SharedStore) {
    let ttl = Duration::from_secs(5);
    let cut_off = Arc::new(CutOff {
        inner: store.clone(),
        cut: AtomicBool::new(false),
    });
    let mut leader = Replica::start(&(cut_off.clone() as SharedStore), "cut", ttl);
    let won = tokio::time::timeout(WAIT, leader.state.wait_for(Leadership::is_leader))
        .await
        .expect("leads in time")
        .unwrap()
        .clone();
    let others = vec![
        Replica::start(&store, "b", ttl),
        Replica::start(&store, "c", ttl),
    ];
    let named = Leadership::Follower {
        leader: Some("cut".into()),
    };
    for other in &others {
        let mut state = other.state.clone();
        tokio::time::timeout(WAIT, state.wait_for(|s| *s == named))
            .await
            .expect("follows in time")
            .unwrap();
    }

    cut_off.cut.store(true, Ordering::SeqCst);
    let mut state = leader.state.clone();
    tokio::time::timeout(WAIT, state.wait_for(|s| !s.is_leader()))
        .await
        .expect("steps down in time")
        .unwrap();
    // Its lease has not expired yet: it stopped leading before anyone
    // else could start.
    let key = store
        .get(LEADER_KEY)
        .await
        .unwrap()
        .expect("key still held");
    assert_eq!(key.value, b"cut");
    assert!(others.iter().all(|r| !r.state.borrow().is_leader()));

    // Once it expires, one of the others leads in a newer term, and the
    // cut-off replica's fence is refused.
    let old = won.fence().unwrap();
    let next = settled(&others, |f| f.revision() > old.revision()).await;
    assert!(!leader.state.borrow().is_leader());
    let outcome = store
        .txn(vec![old.compare()], write("/aios/v1/test/x", "x"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TxnOutcome::Conflict { .. }),
        "{outcome:?}"
    );
    let outcome = store
        .txn(vec![next.fence.compare()], write("/aios/v1/test/x", "x"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TxnOutcome::Committed { .. }),
        "{outcome:?}"
    );
    assert_eq!(leader.stop().await, Leadership::Follower { leader: None });
    for replica in others {
        replica.stop().await;
    }
}

/// A store that can be cut off: every new call fails, as for a replica
/// that lost its network (watches already open keep going).
#[derive(Debug)]
struct CutOff {
    inner: SharedStore,
    cut: AtomicBool,
}

impl CutOff {
    fn check(&self) -> Result<&dyn Store, StoreError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("cut off".into()));
        }
        Ok(self.inner.as_ref())
    }
}

#[tonic::async_trait]
impl Store for CutOff {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.check()?.get(key).await
    }
    async fn range(&self, request: RangeRequest) -> Result<Range, StoreError> {
        self.check()?.range(request).await
    }
    async fn txn(&self, c: Vec<Compare>, o: Vec<Op>) -> Result<TxnOutcome, StoreError> {
        self.check()?.txn(c, o).await
    }
    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream, StoreError> {
        self.check()?.watch(prefix, start).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.check()?.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.check()?.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.check()?.revoke_lease(lease).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.check()?.compact(revision).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.check()?.revision().await
    }
    fn describe(&self) -> String {
        format!("cut-off {}", self.inner.describe())
    }
}

// === backends ===

async fn embedded() -> (tempfile::TempDir, SharedStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = EmbeddedStore::open(&path, EmbeddedOptions::default())
        .await
        .unwrap();
    (dir, Arc::new(store))
}

async fn etcd() -> (EtcdServer, SharedStore) {
    let server = EtcdServer::start().unwrap();
    let store = EtcdStore::connect(server.options()).await.unwrap();
    (server, Arc::new(store))
}

/// One module per scenario, with one test per backend.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                let (_dir, store) = super::embedded().await;
                super::$scenario(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn etcd() {
                let (_etcd, store) = super::etcd().await;
                super::$scenario(store).await;
            }
        }
    )*};
}

on_both_backends!(
    one_leader_others_follow,
    stopped_leader_hands_over,
    fence_rejects_deposed_leader,
    revoked_lease_steps_down,
    cut_off_leader_steps_down_before_its_lease_expires,
);
