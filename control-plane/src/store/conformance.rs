//! One conformance suite for every [`Store`] backend.
//!
//! The embedded store promises etcd's semantics, and the only way to keep
//! that promise is to run the same checks against both. Each check works
//! under its own key prefix, so the suite can run on a store that holds
//! other data (a shared etcd). It returns `Err(description)` instead of
//! panicking, so any test harness can call it.

use std::time::Duration;

use futures::StreamExt;

use super::{
    Compare, EventKind, KeyValue, MAX_TXN_OPS, MAX_VALUE_BYTES, Op, RangeRequest, Revision,
    SharedStore, Store, StoreError, TxnOutcome, WatchMessage, WatchStream,
    watch::{Update, resyncing_watch},
};

/// How long any single expected event may take to arrive.
const EVENT_WAIT: Duration = Duration::from_secs(15);

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Runs every check; `root` namespaces the keys (e.g. a unique test id).
pub async fn run_all(store: SharedStore, root: &str) -> Result<(), String> {
    let s = store.as_ref();
    put_get_and_metadata(s, &format!("{root}/put"))
        .await
        .map_err(ctx("put_get_and_metadata"))?;
    compare_and_swap(s, &format!("{root}/cas"))
        .await
        .map_err(ctx("compare_and_swap"))?;
    transactions_are_atomic(s, &format!("{root}/atomic"))
        .await
        .map_err(ctx("transactions_are_atomic"))?;
    deletes(s, &format!("{root}/delete"))
        .await
        .map_err(ctx("deletes"))?;
    ranges_and_pagination(s, &format!("{root}/range"))
        .await
        .map_err(ctx("ranges_and_pagination"))?;
    limits(s, &format!("{root}/limits"))
        .await
        .map_err(ctx("limits"))?;
    watch_history_then_live(s, &format!("{root}/watch"))
        .await
        .map_err(ctx("watch_history_then_live"))?;
    watch_from_now(s, &format!("{root}/now"))
        .await
        .map_err(ctx("watch_from_now"))?;
    compaction_resyncs(&store, &format!("{root}/compact"))
        .await
        .map_err(ctx("compaction_resyncs"))?;
    leases(s, &format!("{root}/lease"))
        .await
        .map_err(ctx("leases"))?;
    concurrent_cas_loses_no_update(&store, &format!("{root}/counter"))
        .await
        .map_err(ctx("concurrent_cas_loses_no_update"))?;
    Ok(())
}

fn ctx(check: &'static str) -> impl Fn(String) -> String {
    move |e| format!("{check}: {e}")
}

fn e(error: StoreError) -> String {
    error.to_string()
}

// === helpers ===

async fn put(s: &dyn Store, key: &str, value: &str) -> Result<Revision, String> {
    match s
        .txn(
            vec![],
            vec![Op::Put {
                key: key.into(),
                value: value.into(),
                lease: None,
            }],
        )
        .await
        .map_err(e)?
    {
        TxnOutcome::Committed { revision } => Ok(revision),
        TxnOutcome::Conflict { .. } => Err(format!("unconditional put of {key} conflicted")),
    }
}

async fn get(s: &dyn Store, key: &str) -> Result<Option<KeyValue>, String> {
    s.get(key).await.map_err(e)
}

async fn next_message(stream: &mut WatchStream) -> Result<WatchMessage, String> {
    match tokio::time::timeout(EVENT_WAIT, stream.next()).await {
        Err(_) => Err(format!("no watch message within {EVENT_WAIT:?}")),
        Ok(None) => Err("watch stream ended".into()),
        Ok(Some(Err(error))) => Err(format!("watch failed: {error}")),
        Ok(Some(Ok(message))) => Ok(message),
    }
}

/// Collects watch events until `count` have arrived.
async fn next_events(stream: &mut WatchStream, count: usize) -> Result<Vec<super::Event>, String> {
    let mut events = Vec::new();
    while events.len() < count {
        match next_message(stream).await? {
            WatchMessage::Events(batch) => events.extend(batch),
            WatchMessage::Compacted { compact_revision } => {
                return Err(format!("unexpected compaction at {compact_revision}"));
            }
        }
    }
    ensure!(
        events.len() == count,
        "wanted {count} events, got {events:?}"
    );
    Ok(events)
}

// === checks ===

async fn put_get_and_metadata(s: &dyn Store, p: &str) -> Result<(), String> {
    let key = format!("{p}/k");
    ensure!(get(s, &key).await?.is_none(), "fresh key exists");
    let r1 = put(s, &key, "one").await?;
    let kv = get(s, &key).await?.ok_or("key missing after put")?;
    ensure!(kv.value == b"one", "value {:?}", kv.value);
    ensure!(
        kv.create_revision == r1 && kv.mod_revision == r1 && kv.version == 1 && kv.lease.is_none(),
        "metadata after create: {kv:?} (revision {r1})"
    );
    let r2 = put(s, &key, "two").await?;
    ensure!(r2 == r1 + 1, "revision went {r1} -> {r2}, not +1");
    let kv = get(s, &key).await?.ok_or("key missing after update")?;
    ensure!(
        kv.create_revision == r1 && kv.mod_revision == r2 && kv.version == 2,
        "metadata after update: {kv:?}"
    );
    // Identical value: still a write, as in etcd.
    let r3 = put(s, &key, "two").await?;
    ensure!(r3 == r2 + 1, "identical put did not advance the revision");
    let now = s.revision().await.map_err(e)?;
    ensure!(now >= r3, "revision() {now} is behind the last write {r3}");
    Ok(())
}

async fn compare_and_swap(s: &dyn Store, p: &str) -> Result<(), String> {
    let key = format!("{p}/k");
    let absent = Compare::ModRevision {
        key: key.clone(),
        equals: 0,
    };
    let write = |v: &str| {
        vec![Op::Put {
            key: key.clone(),
            value: v.into(),
            lease: None,
        }]
    };
    let r1 = match s.txn(vec![absent.clone()], write("a")).await.map_err(e)? {
        TxnOutcome::Committed { revision } => revision,
        other => return Err(format!("create-if-absent failed: {other:?}")),
    };
    let before = s.revision().await.map_err(e)?;
    let outcome = s.txn(vec![absent], write("b")).await.map_err(e)?;
    ensure!(
        matches!(outcome, TxnOutcome::Conflict { .. }),
        "create-if-absent on an existing key: {outcome:?}"
    );
    let stale = Compare::ModRevision {
        key: key.clone(),
        equals: r1 - 1,
    };
    let outcome = s.txn(vec![stale], write("c")).await.map_err(e)?;
    ensure!(
        matches!(outcome, TxnOutcome::Conflict { .. }),
        "stale compare: {outcome:?}"
    );
    ensure!(
        get(s, &key).await?.map(|kv| kv.value) == Some(b"a".to_vec()),
        "a conflicting txn wrote"
    );
    ensure!(
        s.revision().await.map_err(e)? == before,
        "a conflicting txn advanced the revision"
    );
    let fresh = Compare::ModRevision {
        key: key.clone(),
        equals: r1,
    };
    let outcome = s.txn(vec![fresh], write("d")).await.map_err(e)?;
    ensure!(
        matches!(outcome, TxnOutcome::Committed { .. }),
        "matching compare: {outcome:?}"
    );
    Ok(())
}

async fn transactions_are_atomic(s: &dyn Store, p: &str) -> Result<(), String> {
    let (a, b, guard) = (format!("{p}/a"), format!("{p}/b"), format!("{p}/guard"));
    put(s, &guard, "x").await?;
    let ops = vec![
        Op::Put {
            key: a.clone(),
            value: b"1".to_vec(),
            lease: None,
        },
        Op::Put {
            key: b.clone(),
            value: b"1".to_vec(),
            lease: None,
        },
    ];
    let failing = Compare::ModRevision {
        key: guard.clone(),
        equals: 0,
    };
    let outcome = s.txn(vec![failing], ops.clone()).await.map_err(e)?;
    ensure!(
        matches!(outcome, TxnOutcome::Conflict { .. }),
        "{outcome:?}"
    );
    ensure!(
        get(s, &a).await?.is_none() && get(s, &b).await?.is_none(),
        "a failed txn wrote part of its ops"
    );
    let TxnOutcome::Committed { revision } = s.txn(vec![], ops).await.map_err(e)? else {
        return Err("unconditional txn conflicted".into());
    };
    let (ka, kb) = (
        get(s, &a).await?.ok_or("a missing")?,
        get(s, &b).await?.ok_or("b missing")?,
    );
    ensure!(
        ka.mod_revision == revision && kb.mod_revision == revision,
        "ops of one txn at different revisions: {ka:?} {kb:?}"
    );
    Ok(())
}

async fn deletes(s: &dyn Store, p: &str) -> Result<(), String> {
    let key = format!("{p}/k");
    put(s, &key, "v").await?;
    let TxnOutcome::Committed { revision } = s
        .txn(vec![], vec![Op::Delete { key: key.clone() }])
        .await
        .map_err(e)?
    else {
        return Err("delete conflicted".into());
    };
    ensure!(get(s, &key).await?.is_none(), "deleted key still readable");
    ensure!(
        s.revision().await.map_err(e)? >= revision,
        "delete revision ahead of store"
    );
    let before = s.revision().await.map_err(e)?;
    s.txn(
        vec![],
        vec![Op::Delete {
            key: format!("{p}/never-existed"),
        }],
    )
    .await
    .map_err(e)?;
    ensure!(
        s.revision().await.map_err(e)? == before,
        "deleting an absent key advanced the revision"
    );
    let r = put(s, &key, "again").await?;
    let kv = get(s, &key).await?.ok_or("recreated key missing")?;
    ensure!(
        kv.create_revision == r && kv.version == 1,
        "a recreated key keeps old metadata: {kv:?}"
    );
    Ok(())
}

async fn ranges_and_pagination(s: &dyn Store, p: &str) -> Result<(), String> {
    for k in ["d", "b", "a", "c"] {
        put(s, &format!("{p}/in/{k}"), k).await?;
    }
    put(s, &format!("{p}/inside-not"), "x").await?;
    put(s, &format!("{p}/im"), "x").await?;
    let prefix = format!("{p}/in/");
    let keys = |r: &super::Range| {
        r.kvs
            .iter()
            .map(|kv| kv.key.rsplit('/').next().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    let all = s
        .range(RangeRequest::prefix(prefix.clone()))
        .await
        .map_err(e)?;
    ensure!(
        keys(&all) == ["a", "b", "c", "d"] && !all.more,
        "full range: {:?}",
        keys(&all)
    );
    ensure!(
        all.revision == s.revision().await.map_err(e)?,
        "range revision {} is not current",
        all.revision
    );
    let page = s
        .range(RangeRequest {
            prefix: prefix.clone(),
            after: String::new(),
            limit: 2,
        })
        .await
        .map_err(e)?;
    ensure!(
        keys(&page) == ["a", "b"] && page.more,
        "first page: {:?} more={}",
        keys(&page),
        page.more
    );
    let last = page.kvs.last().map(|kv| kv.key.clone()).unwrap_or_default();
    let page = s
        .range(RangeRequest {
            prefix: prefix.clone(),
            after: last,
            limit: 2,
        })
        .await
        .map_err(e)?;
    ensure!(
        keys(&page) == ["c", "d"] && !page.more,
        "second page: {:?} more={}",
        keys(&page),
        page.more
    );
    let none = s
        .range(RangeRequest::prefix(format!("{p}/nothing/")))
        .await
        .map_err(e)?;
    ensure!(none.kvs.is_empty() && !none.more, "empty range: {none:?}");
    Ok(())
}

async fn limits(s: &dyn Store, p: &str) -> Result<(), String> {
    let key = format!("{p}/big");
    let fits = s
        .txn(
            vec![],
            vec![Op::Put {
                key: key.clone(),
                value: vec![b'x'; MAX_VALUE_BYTES],
                lease: None,
            }],
        )
        .await;
    ensure!(
        matches!(fits, Ok(TxnOutcome::Committed { .. })),
        "a value of exactly the limit: {fits:?}"
    );
    let big = s
        .txn(
            vec![],
            vec![Op::Put {
                key: format!("{p}/bigger"),
                value: vec![b'x'; MAX_VALUE_BYTES + 1],
                lease: None,
            }],
        )
        .await;
    ensure!(
        matches!(big, Err(StoreError::TooLarge { .. })),
        "an oversized value: {big:?}"
    );
    let ops: Vec<Op> = (0..=MAX_TXN_OPS)
        .map(|i| Op::Put {
            key: format!("{p}/many/{i}"),
            value: vec![],
            lease: None,
        })
        .collect();
    let many = s.txn(vec![], ops).await;
    ensure!(
        matches!(many, Err(StoreError::TooManyOps { .. })),
        "too many ops: {many:?}"
    );
    let written = s
        .range(RangeRequest::prefix(format!("{p}/many/")))
        .await
        .map_err(e)?;
    ensure!(
        written.kvs.is_empty() && get(s, &format!("{p}/bigger")).await?.is_none(),
        "a refused txn wrote something"
    );
    Ok(())
}

async fn watch_history_then_live(s: &dyn Store, p: &str) -> Result<(), String> {
    let prefix = format!("{p}/w/");
    let r1 = put(s, &format!("{prefix}a"), "1").await?;
    put(s, &format!("{p}/elsewhere"), "x").await?;
    put(s, &format!("{prefix}b"), "1").await?;
    s.txn(
        vec![],
        vec![Op::Delete {
            key: format!("{prefix}a"),
        }],
    )
    .await
    .map_err(e)?;
    let mut stream = s.watch(&prefix, r1).await.map_err(e)?;
    let history = next_events(&mut stream, 3).await?;
    let kinds: Vec<_> = history
        .iter()
        .map(|ev| {
            (
                ev.kind,
                ev.kv.key.rsplit('/').next().unwrap_or("").to_string(),
            )
        })
        .collect();
    ensure!(
        kinds
            == [
                (EventKind::Put, "a".into()),
                (EventKind::Put, "b".into()),
                (EventKind::Delete, "a".into())
            ],
        "history: {kinds:?}"
    );
    ensure!(
        history
            .windows(2)
            .all(|w| w[0].kv.mod_revision < w[1].kv.mod_revision),
        "history out of order: {history:?}"
    );
    let delete = &history[2];
    ensure!(
        delete.kv.value.is_empty() && delete.kv.mod_revision > history[1].kv.mod_revision,
        "delete event: {delete:?}"
    );
    let live = put(s, &format!("{prefix}c"), "live").await?;
    let events = next_events(&mut stream, 1).await?;
    ensure!(
        events[0].kind == EventKind::Put
            && events[0].kv.mod_revision == live
            && events[0].kv.value == b"live",
        "live event: {events:?}"
    );
    ensure!(
        events[0].kv.version == 1 && events[0].kv.create_revision == live,
        "live event metadata: {events:?}"
    );
    Ok(())
}

async fn watch_from_now(s: &dyn Store, p: &str) -> Result<(), String> {
    put(s, &format!("{p}/old"), "x").await?;
    let mut stream = s.watch(&format!("{p}/"), 0).await.map_err(e)?;
    let r = put(s, &format!("{p}/new"), "x").await?;
    let events = next_events(&mut stream, 1).await?;
    ensure!(
        events[0].kv.key.ends_with("/new") && events[0].kv.mod_revision == r,
        "watch from now replayed history: {events:?}"
    );
    Ok(())
}

async fn compaction_resyncs(store: &SharedStore, p: &str) -> Result<(), String> {
    let s = store.as_ref();
    let prefix = format!("{p}/");
    let r1 = put(s, &format!("{prefix}k"), "1").await?;
    put(s, &format!("{prefix}k"), "2").await?;
    let r3 = put(s, &format!("{prefix}k"), "3").await?;
    s.compact(r3).await.map_err(e)?;

    // The raw watch reports compaction as a message, not an error, then ends.
    let mut stream = s.watch(&prefix, r1).await.map_err(e)?;
    match next_message(&mut stream).await? {
        WatchMessage::Compacted { compact_revision } => ensure!(
            compact_revision >= r3,
            "compact revision {compact_revision} < {r3}"
        ),
        other => return Err(format!("watch from a compacted revision gave {other:?}")),
    }
    let end = tokio::time::timeout(EVENT_WAIT, stream.next())
        .await
        .map_err(|_| "stream did not end after Compacted".to_string())?;
    ensure!(end.is_none(), "stream went on after Compacted: {end:?}");

    // The resyncing watch re-lists, then follows live changes.
    let mut updates = resyncing_watch(store.clone(), prefix.clone(), r1);
    let update = tokio::time::timeout(EVENT_WAIT, updates.next())
        .await
        .map_err(|_| "no resync".to_string())?;
    match update {
        Some(Ok(Update::Resync { kvs, revision, .. })) => {
            ensure!(
                kvs.len() == 1 && kvs[0].value == b"3",
                "resync listing: {kvs:?}"
            );
            ensure!(revision >= r3, "resync revision {revision} < {r3}");
        }
        other => return Err(format!("expected a resync, got {other:?}")),
    }
    let r4 = put(s, &format!("{prefix}k"), "4").await?;
    let update = tokio::time::timeout(EVENT_WAIT, updates.next())
        .await
        .map_err(|_| "no event after resync".to_string())?;
    match update {
        Some(Ok(Update::Events(events))) => ensure!(
            events.len() == 1 && events[0].kv.mod_revision == r4,
            "after resync: {events:?}"
        ),
        other => return Err(format!("expected events after the resync, got {other:?}")),
    }
    let future = s.compact(s.revision().await.map_err(e)? + 100).await;
    ensure!(future.is_err(), "compacting to a future revision succeeded");
    Ok(())
}

async fn leases(s: &dyn Store, p: &str) -> Result<(), String> {
    let lease = s.grant_lease(Duration::from_secs(30)).await.map_err(e)?;
    let key = format!("{p}/held");
    s.txn(
        vec![],
        vec![Op::Put {
            key: key.clone(),
            value: b"v".to_vec(),
            lease: Some(lease),
        }],
    )
    .await
    .map_err(e)?;
    ensure!(
        get(s, &key).await?.and_then(|kv| kv.lease) == Some(lease),
        "key does not record its lease"
    );
    let ttl = s.keep_alive(lease).await.map_err(e)?;
    ensure!(
        ttl >= Duration::from_secs(1) && ttl <= Duration::from_secs(30),
        "keep-alive TTL {ttl:?}"
    );

    let mut stream = s.watch(&format!("{p}/"), 0).await.map_err(e)?;
    s.revoke_lease(lease).await.map_err(e)?;
    ensure!(
        get(s, &key).await?.is_none(),
        "revoking a lease left its key"
    );
    let events = next_events(&mut stream, 1).await?;
    ensure!(
        events[0].kind == EventKind::Delete && events[0].kv.key == key,
        "revoke event: {events:?}"
    );
    let gone = s.keep_alive(lease).await;
    ensure!(
        matches!(gone, Err(StoreError::LeaseNotFound(_))),
        "keep-alive of a revoked lease: {gone:?}"
    );
    let unknown = s
        .txn(
            vec![],
            vec![Op::Put {
                key: format!("{p}/orphan"),
                value: vec![],
                lease: Some(lease),
            }],
        )
        .await;
    ensure!(
        matches!(unknown, Err(StoreError::LeaseNotFound(_))),
        "put with a revoked lease: {unknown:?}"
    );

    // Expiry: no keep-alive, so the key goes (etcd rounds short TTLs up to its minimum).
    let short = s.grant_lease(Duration::from_secs(1)).await.map_err(e)?;
    let key = format!("{p}/expiring");
    s.txn(
        vec![],
        vec![Op::Put {
            key: key.clone(),
            value: b"v".to_vec(),
            lease: Some(short),
        }],
    )
    .await
    .map_err(e)?;
    let events = next_events(&mut stream, 2).await?;
    ensure!(
        events[0].kind == EventKind::Put
            && events[1].kind == EventKind::Delete
            && events[1].kv.key == key,
        "expiry events: {events:?}"
    );
    ensure!(
        get(s, &key).await?.is_none(),
        "an expired lease left its key"
    );
    Ok(())
}

async fn concurrent_cas_loses_no_update(store: &SharedStore, p: &str) -> Result<(), String> {
    const WRITERS: usize = 8;
    const INCREMENTS: usize = 5;
    let key = format!("{p}/n");
    put(store.as_ref(), &key, "0").await?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (store, key) = (store.clone(), key.clone());
        tasks.spawn(async move {
            let mut done = 0;
            while done < INCREMENTS {
                let kv = store
                    .get(&key)
                    .await
                    .map_err(e)?
                    .ok_or("counter vanished")?;
                let n: u64 = String::from_utf8_lossy(&kv.value)
                    .parse()
                    .map_err(|_| "counter is not a number")?;
                let compare = Compare::ModRevision {
                    key: key.clone(),
                    equals: kv.mod_revision,
                };
                let op = Op::Put {
                    key: key.clone(),
                    value: (n + 1).to_string().into_bytes(),
                    lease: None,
                };
                if let TxnOutcome::Committed { .. } =
                    store.txn(vec![compare], vec![op]).await.map_err(e)?
                {
                    done += 1;
                }
            }
            Ok::<(), String>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.map_err(|join| join.to_string())??;
    }
    let kv = get(store.as_ref(), &key).await?.ok_or("counter missing")?;
    let want = (WRITERS * INCREMENTS).to_string();
    ensure!(
        kv.value == want.as_bytes(),
        "counter is {}, want {want}: an update was lost",
        String::from_utf8_lossy(&kv.value)
    );
    Ok(())
}
