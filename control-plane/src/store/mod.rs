//! Where the control plane keeps desired state: one [`Store`] trait, two
//! backends that pass one conformance suite ([`conformance`]).
//!
//! - [`etcd`]: production; any number of control-plane replicas share it.
//! - [`embedded`]: a durable single-file store (redb) for one machine, the
//!   quickstart's default, with the same semantics.
//!
//! The semantics are etcd's, because etcd is what production runs on: one
//! global revision that every write increments; per-key `create_revision`,
//! `mod_revision` and `version`; transactions that compare mod_revisions and
//! then apply puts and deletes atomically; watches from any revision still
//! in history; leases whose expiry deletes the keys attached to them.
//!
//! A watch from a compacted revision is not an error: the stream yields
//! [`WatchMessage::Compacted`] and ends. [`watch::ResyncingWatch`] turns that
//! into a fresh listing followed by a new watch, never a silent resume.

pub mod conformance;
pub mod embedded;
pub mod etcd;
pub mod sweep;
pub mod watch;

use std::{sync::Arc, time::Duration};

use futures::stream::BoxStream;

/// The store's logical clock: incremented by every committed write.
pub type Revision = i64;

/// A lease id. Keys put with a lease are deleted when it expires.
pub type LeaseId = i64;

/// Largest value a store accepts, in bytes. etcd refuses requests over
/// 1.5 MiB; staying well under leaves room for keys and transaction framing.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Most operations in one transaction (etcd's default `--max-txn-ops` is 128).
pub const MAX_TXN_OPS: usize = 128;

/// A stored key and its value, with etcd's per-key metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key: a `/`-separated path (see ARCHITECTURE.md for the layout).
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last delete).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since the key was created: 1 after creation.
    pub version: i64,
    /// Lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// Result of a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// Matching keys, in ascending key order.
    pub kvs: Vec<KeyValue>,
    /// Store revision the read observed.
    pub revision: Revision,
    /// Whether more keys matched than `limit` allowed.
    pub more: bool,
}

/// Which keys a range read returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// Keys starting with this prefix.
    pub prefix: String,
    /// Only keys strictly greater than this one (pagination); empty = from the start.
    pub after: String,
    /// Most keys to return; 0 = no limit.
    pub limit: usize,
}

impl RangeRequest {
    /// All keys under `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }
}

/// A condition a transaction checks before writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod_revision equals this value; 0 means "the key does not exist".
    ModRevision {
        /// Key to check.
        key: String,
        /// Expected mod_revision (0 = absent).
        equals: Revision,
    },
}

/// A write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a key.
    Put {
        /// Key.
        key: String,
        /// Value (at most [`MAX_VALUE_BYTES`]).
        value: Vec<u8>,
        /// Attach to this lease.
        lease: Option<LeaseId>,
    },
    /// Delete a key (no-op if absent).
    Delete {
        /// Key.
        key: String,
    },
}

/// Outcome of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every compare held and every op was applied at `revision`.
    Committed {
        /// Revision of the write (unchanged if every op was a no-op delete).
        revision: Revision,
    },
    /// A compare failed; nothing was written.
    Conflict {
        /// Store revision at the time of the check.
        revision: Revision,
    },
}

/// What kind of change an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted (explicitly, or by lease expiry).
    Delete,
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after a put; after a delete, the key with an empty value and
    /// `mod_revision` = the delete's revision (other fields 0).
    pub kv: KeyValue,
}

/// A message on a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes, in revision order; one message never splits a revision.
    Events(Vec<Event>),
    /// The requested start revision has been compacted away: history from
    /// there is gone. The stream ends after this message; re-list and watch
    /// again (see [`watch::ResyncingWatch`]).
    Compacted {
        /// The store's compact revision: history before it is gone.
        compact_revision: Revision,
    },
}

/// A stream of watch messages.
pub type WatchStream = BoxStream<'static, Result<WatchMessage, StoreError>>;

/// Store failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or is not answering (retryable).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A value exceeds [`MAX_VALUE_BYTES`].
    #[error("value of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Value size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A transaction has more than [`MAX_TXN_OPS`] operations.
    #[error("transaction of {ops} operations exceeds the {limit}-operation limit")]
    TooManyOps {
        /// Operation count.
        ops: usize,
        /// The limit.
        limit: usize,
    },
    /// The revision asked for has been compacted.
    #[error("revision {requested} is compacted (compact revision {compact_revision})")]
    Compacted {
        /// Revision requested.
        requested: Revision,
        /// Current compact revision.
        compact_revision: Revision,
    },
    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// Anything else: corrupt data, unexpected backend answers.
    #[error("store error: {0}")]
    Internal(String),
}

/// The control plane's view of a key-value store with etcd semantics.
#[tonic::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Reads keys in ascending order.
    async fn range(&self, request: RangeRequest) -> Result<Range, StoreError>;

    /// Checks every compare; if all hold, applies every op atomically at
    /// one new revision.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome, StoreError>;

    /// Streams changes to keys under `prefix` from `start_revision`
    /// (inclusive; 0 = from the next write). History comes first, then
    /// live changes. The stream ends when the receiver drops it.
    async fn watch(
        &self,
        prefix: &str,
        start_revision: Revision,
    ) -> Result<WatchStream, StoreError>;

    /// Grants a lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Renews a lease; returns its TTL. Fails with [`StoreError::LeaseNotFound`]
    /// once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Revokes a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Discards history before `revision`: watches from earlier revisions
    /// get [`WatchMessage::Compacted`].
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The current revision.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Backend name and address, for logs (`embedded:/path`, `etcd://h:p`).
    fn describe(&self) -> String;
}

/// A shared store handle.
pub type SharedStore = Arc<dyn Store>;

/// Checks the limits every backend enforces before touching storage, so
/// both refuse the same requests with the same errors.
pub fn check_limits(ops: &[Op]) -> Result<(), StoreError> {
    if ops.len() > MAX_TXN_OPS {
        return Err(StoreError::TooManyOps {
            ops: ops.len(),
            limit: MAX_TXN_OPS,
        });
    }
    let mut keys = std::collections::HashSet::with_capacity(ops.len());
    for op in ops {
        let key = match op {
            Op::Put { key, value, .. } => {
                if value.len() > MAX_VALUE_BYTES {
                    return Err(StoreError::TooLarge {
                        size: value.len(),
                        limit: MAX_VALUE_BYTES,
                    });
                }
                key
            }
            Op::Delete { key } => key,
        };
        // etcd refuses a transaction that touches one key twice.
        if !keys.insert(key.as_str()) {
            return Err(StoreError::Internal(format!(
                "duplicate key given in txn request: {key}"
            )));
        }
    }
    Ok(())
}

/// The smallest key greater than every key starting with `prefix`
/// (etcd's `range_end` for a prefix); `None` if there is none (all 0xff).
pub fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Opens the backend a `--store` URL names; `etcd` says how to reach an
/// `etcd://` store (TLS, credentials) and is ignored for the embedded one.
pub async fn open(
    url: &crate::config::StoreUrl,
    etcd: &crate::config::EtcdSettings,
) -> Result<SharedStore, StoreError> {
    match url {
        crate::config::StoreUrl::Embedded(path) => Ok(Arc::new(
            embedded::EmbeddedStore::open(path, embedded::EmbeddedOptions::default()).await?,
        )),
        crate::config::StoreUrl::Etcd(endpoints) => Ok(Arc::new(
            etcd::EtcdStore::connect(etcd::EtcdOptions {
                endpoints: endpoints.clone(),
                user: etcd
                    .auth
                    .as_ref()
                    .map(|auth| (auth.user.clone(), auth.password.expose().to_string())),
                tls: etcd.tls.clone(),
                ..etcd::EtcdOptions::default()
            })
            .await?,
        )),
    }
}
