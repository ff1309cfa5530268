//! The production [`Store`]: etcd v3 through the `etcd-client` crate.
//!
//! Two connections share the endpoint list. Unary calls (reads, txns,
//! leases, compaction) each run under their own deadline
//! ([`EtcdOptions::call_timeout`]) and retry within it; watches use a
//! second connection with no deadline at all, because a channel-wide
//! timeout would cut every watch (and, later, elections and locks) that is
//! meant to wait for as long as the process lives. With [`EtcdTls`] both
//! connections use TLS (rustls through tonic), with an optional client
//! certificate for etcd's `--client-cert-auth`.
//!
//! Retries: the crate balances calls over every endpoint, dead ones
//! included, so without retries a share of calls fails while one member is
//! down. Idempotent calls (reads, lease keep-alive and revoke, compaction)
//! retry transport failures and UNAVAILABLE with short jittered backoff. A
//! txn or lease grant that may have reached etcd could apply twice if sent
//! again, so writes retry only when the failure proves nothing was sent
//! (tonic could not connect to the member it picked). Any other failure is
//! [`StoreError::Unavailable`] and the caller decides; a CAS it retries
//! simply conflicts if the first attempt landed.

mod call;
mod convert;
mod tls;
mod watch;

#[cfg(test)]
mod tests;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use etcd_client::{
    Client, CompactionOptions, ConnectOptions, Error as EtcdError, GetOptions, KvClient,
    LeaseClient, Txn, WatchClient, WatchOptions,
};
use futures::StreamExt;

pub use self::tls::EtcdTls;
use self::{
    call::{COMPACTED, Call, LEASE_NOT_FOUND, done_before, retry_until},
    convert::{header_revision, key_range, key_value, txn_compare, txn_op},
    watch::WatchState,
};
use super::{
    Compare, KeyValue, LeaseId, Op, Range, RangeRequest, Revision, Store, StoreError, TxnOutcome,
    WatchStream, check_limits,
};

/// Largest response the client decodes: etcd's own send limit (gRPC
/// `math.MaxInt32`). tonic's 4 MiB default would refuse a range or a
/// watch batch holding a few maximum-size values.
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// HTTP/2 pings find dead connections under long-lived watches. etcd's
/// default `--grpc-keepalive-min-time` is 5 s; pinging more often gets the
/// connection closed with "too_many_pings".
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

// === Options ===

/// How to reach etcd.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Cluster members as `host:port`; calls are balanced over all of them.
    pub endpoints: Vec<String>,
    /// Deadline of one call, retries included (not applied to watch streams).
    pub call_timeout: Duration,
    /// Deadline for opening a TCP connection to one member.
    pub connect_timeout: Duration,
    /// etcd user name and password, when etcd has auth enabled.
    pub user: Option<(String, String)>,
    /// Connect over TLS (`https://` endpoints) with these files; `None` = plain HTTP.
    pub tls: Option<EtcdTls>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Options get logged; the password must not be.
        let user = self.user.as_ref().map(|(name, _)| (name, "<redacted>"));
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("user", &user)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["127.0.0.1:2379".into()],
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            user: None,
            tls: None,
        }
    }
}

// === EtcdStore ===

/// A [`Store`] on an etcd v3 cluster. Cheap to clone: clones share connections.
#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient,
    lease: LeaseClient,
    /// On the second connection, which has no deadline.
    watch: WatchClient,
    call_timeout: Duration,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The crate's clients are not Debug; the endpoints say which store this is.
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to `options.endpoints` and reads the revision once, so a
    /// wrong address, a certificate etcd refuses or wrong credentials fail
    /// here rather than on first use.
    ///
    /// With [`EtcdOptions::tls`], the files are read now (a missing or
    /// unparsable one is [`StoreError::Internal`], naming it) and both
    /// connections, calls and watches, use TLS.
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Internal("no etcd endpoints given".into()));
        }
        let urls = tls::endpoint_urls(&options.endpoints, options.tls.is_some())?;
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            // etcd's keepalive policy forbids pings without open streams.
            .with_keep_alive_while_idle(false);
        let tls_options = match (&options.tls, urls.first()) {
            (Some(files), Some(url)) => Some(tls::client_config(files, url)?),
            _ => None,
        };
        if let Some(tls_options) = &tls_options {
            connect = connect.with_tls(tls_options.clone());
        }
        if let Some((name, password)) = &options.user {
            // Simple tokens expire (5 min by default): refresh, don't fail.
            connect = connect
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        // With credentials, connecting authenticates, which can hit a dead
        // member: retry it like a read.
        let deadline = Instant::now() + options.call_timeout;
        let client = || {
            retry_until(deadline, Call::read("connect"), |_| {
                Client::connect(&urls, Some(connect.clone()))
            })
        };
        let checked = async {
            let (unary, streams) = (client().await?, client().await?);
            let store = Self {
                kv: unary
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
                lease: unary.lease_client(),
                watch: streams
                    .watch_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
                call_timeout: options.call_timeout,
                endpoints: options.endpoints.clone(),
            };
            store.revision().await?;
            Ok(store)
        };
        match checked.await {
            // The balanced channel can hide why no member answered (it waits
            // for one to become ready): ask each directly, for the cause.
            Err(StoreError::Unavailable(message)) => {
                let causes = tls::probe(&urls, tls_options, options.connect_timeout).await;
                Err(StoreError::Unavailable(match causes.is_empty() {
                    true => message,
                    false => format!("{message}; {}", causes.join("; ")),
                }))
            }
            result => result,
        }
    }

    /// Runs `attempt` (given its number, from 0) under the call deadline,
    /// retrying as `call.retry` allows.
    async fn call<T, F, Fut>(&self, call: Call, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        retry_until(Instant::now() + self.call_timeout, call, attempt).await
    }

    /// etcd's compact revision is in no response header, but a watch from
    /// revision 1 is cancelled with it once anything has been compacted.
    async fn compact_revision(&self) -> Option<Revision> {
        let mut watch = self.watch.clone();
        let probe = async move {
            let options = WatchOptions::new().with_start_revision(1);
            let mut stream = watch.watch(vec![0], Some(options)).await.ok()?;
            while let Some(response) = stream.message().await.ok()? {
                if response.compact_revision() > 0 || response.canceled() {
                    return Some(response.compact_revision()).filter(|r| *r > 0);
                }
            }
            None
        };
        tokio::time::timeout(self.call_timeout, probe)
            .await
            .ok()
            .flatten()
    }
}

// === impl Store ===

#[tonic::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut response = self
            .call(Call::read("get"), |_| {
                let mut kv = self.kv.clone();
                async move { kv.get(key, None).await }
            })
            .await?;
        let kv = response.take_kvs().into_iter().next();
        kv.map(key_value).transpose()
    }

    async fn range(&self, request: RangeRequest) -> Result<Range, StoreError> {
        let (start, end) = key_range(&request.prefix, &request.after);
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        // No explicit sort: etcd returns keys in ascending order already,
        // and 3.4 reads the whole range before applying `limit` whenever a
        // sort order is set, which would make every page a full scan.
        let options = GetOptions::new().with_range(end).with_limit(limit);
        let mut response = self
            .call(Call::read("range"), |_| {
                let (mut kv, start, options) = (self.kv.clone(), start.clone(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await?;
        let (revision, more) = (header_revision(response.header())?, response.more());
        let kvs: Result<_, _> = response.take_kvs().into_iter().map(key_value).collect();
        let kvs = kvs?;
        Ok(Range {
            kvs,
            revision,
            more,
        })
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome, StoreError> {
        check_limits(&ops)?;
        let counted = compares.len().max(ops.len());
        let lease = ops.iter().find_map(|op| match op {
            Op::Put { lease, .. } => *lease,
            Op::Delete { .. } => None,
        });
        let txn = Txn::new()
            .when(compares.into_iter().map(txn_compare).collect::<Vec<_>>())
            .and_then(ops.into_iter().map(txn_op).collect::<Vec<_>>());
        let call = Call {
            lease,
            ..Call::write("txn")
        };
        let result = self
            .call(call, |_| {
                let (mut kv, txn) = (self.kv.clone(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await;
        let response = match result {
            Err(StoreError::TooManyOps { limit, .. }) => {
                return Err(StoreError::TooManyOps {
                    ops: counted,
                    limit,
                });
            }
            other => other?,
        };
        let revision = header_revision(response.header())?;
        Ok(match response.succeeded() {
            true => TxnOutcome::Committed { revision },
            false => TxnOutcome::Conflict { revision },
        })
    }

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream, StoreError> {
        let (key, end) = key_range(prefix, "");
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(start);
        // Creating a watch is a read: the deadline covers it until etcd
        // confirms the watcher, so a put made after `watch` returns is
        // always seen. The stream itself has no deadline.
        let (stream, created) = self
            .call(Call::read("watch"), |_| {
                let (mut watch, key, options) = (self.watch.clone(), key.clone(), options.clone());
                async move {
                    let mut stream = watch.watch(key, Some(options)).await?;
                    let created = stream.message().await?;
                    Ok((stream, created))
                }
            })
            .await?;
        let Some(created) = created else {
            let message = "etcd watch: stream closed before the watcher was created";
            return Err(StoreError::Unavailable(message.into()));
        };
        let state = WatchState {
            stream,
            pending: Some(created),
            done: false,
        };
        Ok(futures::stream::unfold(state, WatchState::next).boxed())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        // etcd TTLs are whole seconds: round up, so a lease never lives shorter.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
        // A blind retry could only leave an orphan lease that expires
        // unused, but grants follow the write rule all the same.
        let response = self
            .call(Call::write("lease grant"), |_| {
                let mut lease = self.lease.clone();
                async move { lease.grant(seconds, None).await }
            })
            .await?;
        match response.error() {
            "" => Ok(response.id()),
            error => Err(StoreError::Internal(format!("etcd lease grant: {error}"))),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let ttl = self
            .call(Call::read("lease keep-alive").lease(lease), |_| {
                let mut client = self.lease.clone();
                async move {
                    // The crate's keep_alive() renews once but keeps that
                    // answer's TTL to itself, so renew again on the same
                    // stream to read it; renewing is idempotent.
                    let (mut keeper, mut stream) = client.keep_alive(lease).await?;
                    keeper.keep_alive().await?;
                    let closed = || EtcdError::LeaseKeepAliveError("stream closed".into());
                    Ok(stream.message().await?.ok_or_else(closed)?.ttl())
                }
            })
            .await?;
        // TTL 0 is etcd's "no such lease" on the keep-alive stream.
        let ttl = u64::try_from(ttl).ok().filter(|ttl| *ttl > 0);
        ttl.map(Duration::from_secs)
            .ok_or(StoreError::LeaseNotFound(lease))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.call(Call::read("lease revoke").lease(lease), |attempt| {
            let mut client = self.lease.clone();
            async move {
                match client.revoke(lease).await {
                    Err(e) if done_before(attempt, &e, LEASE_NOT_FOUND) => Ok(()),
                    other => other.map(drop),
                }
            }
        })
        .await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        // Physical: the call returns once the compaction is applied, so
        // watches made afterwards from earlier revisions see it.
        let options = CompactionOptions::new().with_physical();
        let call = Call {
            revision,
            ..Call::read("compact")
        };
        let result = self
            .call(call, |attempt| {
                let (mut kv, options) = (self.kv.clone(), options.clone());
                async move {
                    match kv.compact(revision, Some(options)).await {
                        Err(e) if done_before(attempt, &e, COMPACTED) => Ok(()),
                        other => other.map(drop),
                    }
                }
            })
            .await;
        match result {
            Err(StoreError::Compacted { requested, .. }) => Err(StoreError::Compacted {
                requested,
                compact_revision: self.compact_revision().await.unwrap_or(requested),
            }),
            other => other,
        }
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        // Counting one key is the cheapest linearizable read with a header.
        let options = GetOptions::new().with_count_only();
        let response = self
            .call(Call::read("revision"), |_| {
                let (mut kv, options) = (self.kv.clone(), options.clone());
                async move { kv.get(vec![0], Some(options)).await }
            })
            .await?;
        header_revision(response.header())
    }

    fn describe(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }
}
