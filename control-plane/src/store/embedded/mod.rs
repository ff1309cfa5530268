//! A durable single-file [`Store`] on redb, for one machine.
//!
//! Why it is built this way:
//! - etcd's model maps onto five redb tables: `keys` (current state),
//!   `history` (revision → the events it produced: what watches replay and
//!   compaction trims), `leases` (id → TTL), `lease_keys` (lease → attached
//!   keys, so revoking never scans every key) and `meta` (revision, compact
//!   revision, next lease id). One redb write transaction per store write
//!   gives etcd's atomicity; redb's default durability fsyncs every commit.
//! - redb blocks, so every transaction runs in `spawn_blocking`. Writers also
//!   hold a mutex until their commit is published on a broadcast channel, so
//!   watchers see revisions in order. A watcher subscribes before it reads
//!   history, which lets it splice history and live events with no gap and no
//!   duplicate; one that falls behind (`Lagged`) re-reads history rather than
//!   slowing writers down.
//! - Leases persist their id and TTL; deadlines live in memory on the
//!   monotonic clock, and reopening gives every lease a full TTL again. That
//!   is etcd's behaviour: holders that could not reach a stopped store do not
//!   lose their keys the moment it restarts, and keep-alives cost no fsync.
//! - The expiry task holds only a weak reference and is aborted when the last
//!   handle (a clone or a watch stream) is dropped, which closes the file.

mod lease;
mod records;
mod txn;
mod watch;

#[cfg(test)]
mod tests;

use std::{
    ops::Bound,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use prost::Message;
use redb::{
    Database, DatabaseError, MultimapTableDefinition, ReadTransaction, ReadableTable,
    TableDefinition,
};
use tokio::{sync::broadcast, task::AbortHandle};

use self::{
    lease::{LeaseClock, LeaseMap, reap},
    records::{Record, to_kv},
    txn::{Effect, Tables},
    watch::{LIVE_CAPACITY, Watch},
};
use super::{
    Compare, Event, KeyValue, LeaseId, Op, Range, RangeRequest, Revision, Store, StoreError,
    TxnOutcome, WatchMessage, WatchStream, check_limits, prefix_end,
};

const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
const HISTORY: TableDefinition<i64, &[u8]> = TableDefinition::new("history");
/// Lease id → TTL in milliseconds.
const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");
const LEASE_KEYS: MultimapTableDefinition<i64, &[u8]> = MultimapTableDefinition::new("lease_keys");

const REVISION: &str = "revision";
/// First revision still in history (etcd's compact revision); 0 = never compacted.
const COMPACT_REVISION: &str = "compact_revision";
const NEXT_LEASE: &str = "next_lease";

/// Tuning for [`EmbeddedStore`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Auto-compaction keeps this many revisions of history (0 or less: never compact).
    pub history_revisions: i64,
    /// How often expired leases are looked for.
    pub lease_check_interval: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            history_revisions: 10_000,
            lease_check_interval: Duration::from_millis(250),
        }
    }
}

/// The embedded store: a cheap, cloneable handle to one open file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Database,
    path: PathBuf,
    history_revisions: i64,
    /// Held from `begin_write` until the commit is published, so live
    /// messages go out in revision order.
    write_lock: Mutex<()>,
    revision: AtomicI64,
    live: broadcast::Sender<Arc<Committed>>,
    /// Shared with the expiry task, which reads it without keeping the store open.
    leases: Arc<Mutex<LeaseMap>>,
    reaper: Mutex<Option<AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(reaper) = self
            .reaper
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            reaper.abort();
        }
    }
}

/// One committed revision, as published to live watchers.
struct Committed {
    revision: Revision,
    events: Vec<Event>,
}

// === errors and small helpers ===

trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, StoreError>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|error| StoreError::Internal(format!("embedded store: {what}: {error}")))
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).ctx("corrupt record")
}

fn utf8(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).ctx("key is not UTF-8")
}

/// The guarded data stays consistent on panic (each update is one
/// statement), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn meta_get(table: &impl ReadableTable<&'static str, i64>, name: &str) -> Result<i64, StoreError> {
    Ok(table.get(name).ctx("read meta")?.map_or(0, |v| v.value()))
}

fn load_kv(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<Record>, StoreError> {
    table
        .get(key)
        .ctx("read key")?
        .map(|v| decode(v.value()))
        .transpose()
}

async fn blocking<T: Send + 'static>(
    inner: Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || f(&inner))
        .await
        .ctx("store task")?
}

// === open ===

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`, creating parent directories.
    /// Fails with [`StoreError::Unavailable`] while another handle has it open.
    pub async fn open(path: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let owned = path.to_path_buf();
        let (db, revision, leases) = tokio::task::spawn_blocking(move || open_db(&owned))
            .await
            .ctx("open task")??;
        let inner = Arc::new(Inner {
            db,
            path: path.to_path_buf(),
            history_revisions: options.history_revisions,
            write_lock: Mutex::new(()),
            revision: AtomicI64::new(revision),
            live: broadcast::channel(LIVE_CAPACITY).0,
            leases: Arc::new(Mutex::new(leases)),
            reaper: Mutex::new(None),
        });
        let reaper = tokio::spawn(reap(
            Arc::downgrade(&inner),
            inner.leases.clone(),
            options.lease_check_interval,
        ));
        *lock(&inner.reaper) = Some(reaper.abort_handle());
        Ok(Self { inner })
    }
}

/// Opens the file and reads what the handle keeps in memory. Every lease
/// starts a full TTL now, as etcd does on restart.
fn open_db(path: &Path) -> Result<(Database, Revision, LeaseMap), StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).ctx(&format!("create {}", parent.display()))?;
    }
    let db = Database::create(path).map_err(|error| match error {
        DatabaseError::DatabaseAlreadyOpen => {
            StoreError::Unavailable(format!("{} is in use by another process", path.display()))
        }
        other => StoreError::Internal(format!("embedded store: open {}: {other}", path.display())),
    })?;
    let txn = db.begin_write().ctx("begin write")?;
    // Opening every table here creates them, so read transactions never
    // meet a missing table.
    let (revision, leases) = {
        let mut t = Tables::open(&txn, 0)?;
        if t.meta.get(REVISION).ctx("read meta")?.is_none() {
            // An empty etcd reports revision 1; its first write is 2.
            t.set_meta(REVISION, 1)?;
            t.set_meta(NEXT_LEASE, 1)?;
        }
        let leases = t.leases.iter().ctx("read leases")?;
        let leases = leases
            .map(|entry| {
                entry.ctx("read leases").map(|(id, ttl)| {
                    (
                        id.value(),
                        LeaseClock::start(Duration::from_millis(ttl.value())),
                    )
                })
            })
            .collect::<Result<LeaseMap, _>>()?;
        (t.meta(REVISION)?, leases)
    };
    txn.commit().ctx("commit")?;
    Ok((db, revision, leases))
}

// === impl Store ===

#[tonic::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        blocking(self.inner.clone(), move |inner| {
            inner.read(|txn| {
                let keys = txn.open_table(KEYS).ctx("open keys")?;
                Ok(load_kv(&keys, key.as_bytes())?.map(|kv| to_kv(key, kv)))
            })
        })
        .await
    }

    async fn range(&self, request: RangeRequest) -> Result<Range, StoreError> {
        blocking(self.inner.clone(), move |inner| {
            inner.read(|txn| read_range(txn, &request))
        })
        .await
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome, StoreError> {
        check_limits(&ops)?;
        check_duplicates(&ops)?;
        blocking(self.inner.clone(), move |inner| inner.txn(&compares, ops)).await
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        // Subscribe before looking at the revision or history: whatever
        // commits after this point is on the channel.
        let live = self.inner.live.subscribe();
        let next = if start_revision > 0 {
            start_revision
        } else {
            self.inner.revision.load(Ordering::SeqCst) + 1
        };
        let watch = Watch {
            inner: self.inner.clone(),
            prefix: prefix.to_owned(),
            live,
            next,
            replaying: true,
        };
        let stream = futures::stream::unfold(Some(watch), |watch| async move {
            let mut watch = watch?;
            let message = watch.next_message().await?;
            // Compacted and errors end the stream.
            let more = matches!(message, Ok(WatchMessage::Events(_)));
            Some((message, more.then_some(watch)))
        });
        Ok(stream.boxed())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, i64::MAX as u64);
        let id = blocking(self.inner.clone(), move |inner| {
            inner.write(|t| {
                let id = t.meta(NEXT_LEASE)?.max(1);
                t.leases.insert(id, ttl_ms).ctx("write lease")?;
                t.set_meta(NEXT_LEASE, id + 1)?;
                Ok((id, Effect::Commit))
            })
        })
        .await?;
        let ttl = Duration::from_millis(ttl_ms);
        lock(&self.inner.leases).insert(id, LeaseClock::start(ttl));
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let now = Instant::now();
        match lock(&self.inner.leases).get_mut(&lease) {
            // Past its deadline but not yet reaped counts as gone, as in etcd.
            Some(clock) if clock.deadline > now => {
                clock.deadline = now + clock.ttl;
                Ok(clock.ttl)
            }
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        blocking(self.inner.clone(), move |inner| {
            inner.write(|t| match t.revoke(lease)? {
                Some(effect) => Ok(((), effect)),
                None => Err(StoreError::LeaseNotFound(lease)),
            })
        })
        .await?;
        lock(&self.inner.leases).remove(&lease);
        Ok(())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        blocking(self.inner.clone(), move |inner| {
            inner.write(|t| {
                if revision > t.meta(REVISION)? {
                    return Err(StoreError::Internal(format!(
                        "cannot compact to {revision}: required revision is a future revision"
                    )));
                }
                let compact_revision = t.meta(COMPACT_REVISION)?;
                if revision <= compact_revision {
                    return Err(StoreError::Compacted {
                        requested: revision,
                        compact_revision,
                    });
                }
                t.trim_history(revision)?;
                Ok(((), Effect::Commit))
            })
        })
        .await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.revision.load(Ordering::SeqCst))
    }

    fn describe(&self) -> String {
        format!("embedded:{}", self.inner.path.display())
    }
}

fn read_range(txn: &ReadTransaction, request: &RangeRequest) -> Result<Range, StoreError> {
    let revision = meta_get(&txn.open_table(META).ctx("open meta")?, REVISION)?;
    let keys = txn.open_table(KEYS).ctx("open keys")?;
    let (prefix, after) = (request.prefix.as_bytes(), request.after.as_bytes());
    let start = if !after.is_empty() && after >= prefix {
        Bound::Excluded(after)
    } else {
        Bound::Included(prefix)
    };
    let end = prefix_end(&request.prefix);
    let mut range = Range {
        kvs: Vec::new(),
        revision,
        more: false,
    };
    if let (Bound::Excluded(start), Some(end)) = (start, &end)
        && start >= end.as_slice()
    {
        return Ok(range);
    }
    let end = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
    for entry in keys.range::<&[u8]>((start, end)).ctx("read range")? {
        let (key, kv) = entry.ctx("read range")?;
        if request.limit > 0 && range.kvs.len() == request.limit {
            range.more = true;
            break;
        }
        range
            .kvs
            .push(to_kv(utf8(key.value())?, decode(kv.value())?));
    }
    Ok(range)
}

/// etcd refuses a transaction that puts one key twice, or puts and deletes
/// it ("duplicate key given in txn request"); so does this store, so code
/// that works here works there.
fn check_duplicates(ops: &[Op]) -> Result<(), StoreError> {
    let mut puts = std::collections::HashSet::new();
    let puts_twice = ops.iter().find_map(|op| match op {
        Op::Put { key, .. } => (!puts.insert(key.as_str())).then_some(key),
        Op::Delete { .. } => None,
    });
    let put_and_deleted = || {
        ops.iter().find_map(|op| match op {
            Op::Delete { key } => puts.contains(key.as_str()).then_some(key),
            Op::Put { .. } => None,
        })
    };
    match puts_twice.or_else(put_and_deleted) {
        Some(key) => Err(StoreError::Internal(format!(
            "duplicate key given in txn request: {key}"
        ))),
        None => Ok(()),
    }
}
