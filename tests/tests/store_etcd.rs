//! `EtcdStore` against a real etcd 3.4 started per test: metadata, CAS,
//! pagination, watches (history, live, compaction, cancel on drop, loss),
//! leases, limits, auth, retries across a dead member, TLS files checked
//! before connecting, and the shared conformance suite (over TLS: etcd_tls.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aios_control_plane::store::{
    Compare, EventKind, MAX_TXN_OPS, MAX_VALUE_BYTES, Op, RangeRequest, Store, StoreError,
    TxnOutcome, WatchMessage, WatchStream, conformance,
    etcd::{EtcdOptions, EtcdStore, EtcdTls},
};
use aios_tests::{
    etcd::{ClosedPort, EtcdServer},
    http_get,
};
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(endpoints: Vec<String>) -> EtcdStore {
    EtcdStore::connect(EtcdOptions {
        endpoints,
        ..EtcdOptions::default()
    })
    .await
    .unwrap()
}

async fn start() -> (EtcdServer, EtcdStore) {
    let server = EtcdServer::start().unwrap();
    let store = connect(vec![server.endpoint()]).await;
    (server, store)
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        lease: None,
    }
}

async fn commit(store: &EtcdStore, ops: Vec<Op>) -> i64 {
    match store.txn(vec![], ops).await.unwrap() {
        TxnOutcome::Committed { revision } => revision,
        other => panic!("unconditional txn: {other:?}"),
    }
}

async fn next(stream: &mut WatchStream) -> WatchMessage {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no watch message in time")
        .expect("watch stream ended")
        .expect("watch failed")
}

#[tokio::test]
async fn put_and_get_carry_etcd_metadata() {
    let (_etcd, store) = start().await;
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let created = commit(&store, vec![put("m/a", "1")]).await;
    let updated = commit(
        &store,
        vec![Op::Put {
            key: "m/a".into(),
            value: b"2".to_vec(),
            lease: Some(lease),
        }],
    )
    .await;
    let kv = store.get("m/a").await.unwrap().unwrap();
    assert_eq!(kv.value, b"2");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (created, updated, 2, Some(lease))
    );
    assert_eq!(store.get("m/missing").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), updated);
    assert!(store.describe().starts_with("etcd://127.0.0.1:"));
}

#[tokio::test]
async fn a_failed_compare_writes_nothing() {
    let (_etcd, store) = start().await;
    let first = commit(&store, vec![put("cas/k", "a")]).await;
    let absent = Compare::ModRevision {
        key: "cas/k".into(),
        equals: 0,
    };
    let outcome = store
        .txn(vec![absent], vec![put("cas/k", "b"), put("cas/other", "b")])
        .await
        .unwrap();
    assert_eq!(outcome, TxnOutcome::Conflict { revision: first });
    assert_eq!(store.get("cas/k").await.unwrap().unwrap().value, b"a");
    assert_eq!(store.get("cas/other").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), first);

    let current = Compare::ModRevision {
        key: "cas/k".into(),
        equals: first,
    };
    let outcome = store.txn(vec![current], vec![put("cas/k", "c")]).await;
    assert_eq!(
        outcome,
        Ok(TxnOutcome::Committed {
            revision: first + 1
        })
    );
}

#[tokio::test]
async fn ranges_page_with_after_and_limit() {
    let (_etcd, store) = start().await;
    let ops = ["e", "a", "d", "b", "c"]
        .iter()
        .map(|k| put(&format!("r/{k}"), k))
        .chain([put("q", "before"), put("r0", "after the prefix")])
        .collect();
    let revision = commit(&store, ops).await;
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = store
            .range(RangeRequest {
                prefix: "r/".into(),
                after: after.clone(),
                limit: 2,
            })
            .await
            .unwrap();
        assert_eq!(page.revision, revision);
        seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        if !page.more {
            break;
        }
        after = page.kvs.last().unwrap().key.clone();
    }
    assert_eq!(seen, ["r/a", "r/b", "r/c", "r/d", "r/e"]);
    let everything = store.range(RangeRequest::prefix("")).await.unwrap();
    assert_eq!(everything.kvs.len(), 7);
    assert!(!everything.more);
}

#[tokio::test]
async fn watch_replays_history_then_follows_live_changes() {
    let (_etcd, store) = start().await;
    let first = commit(&store, vec![put("w/a", "1")]).await;
    commit(&store, vec![put("w/b", "1"), put("x/elsewhere", "1")]).await;
    let deleted = commit(&store, vec![Op::Delete { key: "w/a".into() }]).await;

    let mut stream = store.watch("w/", first).await.unwrap();
    let mut history = Vec::new();
    while history.len() < 3 {
        let WatchMessage::Events(events) = next(&mut stream).await else {
            panic!("compaction without a compact");
        };
        history.extend(events);
    }
    let summary: Vec<_> = history
        .iter()
        .map(|e| (e.kind, e.kv.key.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (EventKind::Put, "w/a"),
            (EventKind::Put, "w/b"),
            (EventKind::Delete, "w/a")
        ]
    );
    let delete = &history[2].kv;
    assert_eq!(
        (
            delete.value.len(),
            delete.mod_revision,
            delete.create_revision,
            delete.version,
            delete.lease
        ),
        (0, deleted, 0, 0, None)
    );

    let live = commit(&store, vec![put("w/c", "live"), put("w/d", "live")]).await;
    let WatchMessage::Events(events) = next(&mut stream).await else {
        panic!("expected events");
    };
    // One revision, one message, both keys.
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.kind == EventKind::Put && e.kv.mod_revision == live)
    );
}

#[tokio::test]
async fn watch_from_a_compacted_revision_yields_compacted_and_ends() {
    let (_etcd, store) = start().await;
    let first = commit(&store, vec![put("c/k", "1")]).await;
    commit(&store, vec![put("c/k", "2")]).await;
    let last = commit(&store, vec![put("c/k", "3")]).await;
    store.compact(last).await.unwrap();

    let mut stream = store.watch("c/", first).await.unwrap();
    assert_eq!(
        next(&mut stream).await,
        WatchMessage::Compacted {
            compact_revision: last
        }
    );
    let end = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert!(end.is_none(), "stream went on: {end:?}");

    // From the compact revision on, history is still there.
    let mut stream = store.watch("c/", last).await.unwrap();
    let WatchMessage::Events(events) = next(&mut stream).await else {
        panic!("the compact revision itself is kept");
    };
    assert_eq!(events[0].kv.mod_revision, last);

    // Compacting again below it names the revision history starts at.
    assert_eq!(
        store.compact(first).await,
        Err(StoreError::Compacted {
            requested: first,
            compact_revision: last
        })
    );
    assert!(matches!(
        store.compact(last + 100).await,
        Err(StoreError::Internal(_))
    ));
}

#[tokio::test]
async fn dropping_a_watch_cancels_it_in_etcd() {
    let (etcd, store) = start().await;
    let addr = etcd.endpoint().parse().unwrap();
    let watchers = || async move {
        let (_, metrics) = http_get(addr, "/metrics").await.unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap()
    };
    let before = watchers().await;
    let stream = store.watch("d/", 0).await.unwrap();
    assert_eq!(watchers().await, before + 1.0);
    drop(stream);
    let deadline = Instant::now() + WAIT;
    while watchers().await != before {
        assert!(Instant::now() < deadline, "watcher still registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn losing_etcd_ends_a_watch_with_unavailable() {
    let (etcd, store) = start().await;
    let mut stream = store.watch("gone/", 0).await.unwrap();
    etcd.stop();
    let item = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert!(
        matches!(item, Some(Err(StoreError::Unavailable(_)))),
        "{item:?}"
    );
    let end = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert!(end.is_none(), "stream went on after an error: {end:?}");
    let get = store.get("gone/k").await;
    assert!(matches!(get, Err(StoreError::Unavailable(_))), "{get:?}");
}

#[tokio::test]
async fn an_expired_lease_deletes_its_keys() {
    let (_etcd, store) = start().await;
    let lease = store.grant_lease(Duration::from_millis(500)).await.unwrap();
    let ttl = store.keep_alive(lease).await.unwrap();
    // Rounded up to whole seconds, then to etcd's minimum TTL.
    assert!(
        ttl >= Duration::from_secs(1) && ttl <= Duration::from_secs(5),
        "{ttl:?}"
    );
    let key = Op::Put {
        key: "l/k".into(),
        value: b"v".to_vec(),
        lease: Some(lease),
    };
    commit(&store, vec![key]).await;
    let deadline = Instant::now() + WAIT;
    while store.get("l/k").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "key outlived its lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
    assert_eq!(
        store.revoke_lease(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
    let orphan = Op::Put {
        key: "l/orphan".into(),
        value: vec![],
        lease: Some(lease),
    };
    assert_eq!(
        store.txn(vec![], vec![orphan]).await,
        Err(StoreError::LeaseNotFound(lease))
    );
}

#[tokio::test]
async fn oversized_values_are_refused_before_etcd() {
    let (_etcd, store) = start().await;
    let big = Op::Put {
        key: "big".into(),
        value: vec![0; MAX_VALUE_BYTES + 1],
        lease: None,
    };
    assert_eq!(
        store.txn(vec![], vec![big]).await,
        Err(StoreError::TooLarge {
            size: MAX_VALUE_BYTES + 1,
            limit: MAX_VALUE_BYTES
        })
    );
    assert_eq!(store.get("big").await.unwrap(), None);
    // The largest value fits etcd's default 1.5 MiB request limit.
    let fits = Op::Put {
        key: "big".into(),
        value: vec![0; MAX_VALUE_BYTES],
        lease: None,
    };
    commit(&store, vec![fits]).await;
    let range = store.range(RangeRequest::prefix("big")).await.unwrap();
    assert_eq!(range.kvs[0].value.len(), MAX_VALUE_BYTES);
    // etcd's --max-txn-ops bounds compares too.
    let compares = (0..=MAX_TXN_OPS)
        .map(|i| Compare::ModRevision {
            key: format!("c/{i}"),
            equals: 0,
        })
        .collect();
    let too_many = store.txn(compares, vec![put("c/x", "v")]).await;
    let limit = MAX_TXN_OPS;
    assert_eq!(
        too_many,
        Err(StoreError::TooManyOps {
            ops: limit + 1,
            limit
        })
    );
}

#[tokio::test]
async fn a_dead_member_does_not_fail_calls() {
    let etcd = EtcdServer::start().unwrap();
    let dead = ClosedPort::new().unwrap();
    let store = connect(vec![dead.endpoint(), etcd.endpoint()]).await;
    // The client balances over both members, so without retries about
    // half of these calls would reach the dead one and fail.
    for i in 0..20 {
        let key = format!("dead/{i}");
        let revision = commit(&store, vec![put(&key, "v")]).await;
        assert_eq!(
            store.get(&key).await.unwrap().unwrap().mod_revision,
            revision
        );
        assert_eq!(
            store
                .range(RangeRequest::prefix("dead/"))
                .await
                .unwrap()
                .kvs
                .len(),
            i + 1
        );
        assert!(store.revision().await.unwrap() >= revision);
        let mut stream = store.watch(&key, revision).await.unwrap();
        assert!(matches!(next(&mut stream).await, WatchMessage::Events(_)));
        let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        store.keep_alive(lease).await.unwrap();
        store.revoke_lease(lease).await.unwrap();
    }
    store
        .compact(store.revision().await.unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn no_live_member_fails_within_the_call_timeout() {
    let dead = ClosedPort::new().unwrap();
    let started = Instant::now();
    let result = EtcdStore::connect(EtcdOptions {
        endpoints: vec![dead.endpoint()],
        call_timeout: Duration::from_secs(1),
        ..EtcdOptions::default()
    })
    .await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unreadable_tls_files_fail_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let not_pem = dir.path().join("not-pem.txt");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    // Nothing listens: a file problem must be reported as such, at once,
    // not as an unreachable etcd after the call timeout.
    let dead = ClosedPort::new().unwrap();
    for (ca_file, expected) in [
        (&missing, "cannot read CA file"),
        (&not_pem, "no PEM certificate"),
    ] {
        let started = Instant::now();
        let result = EtcdStore::connect(EtcdOptions {
            endpoints: vec![dead.endpoint()],
            tls: Some(EtcdTls {
                ca_file: ca_file.clone(),
                client_cert_file: None,
                client_key_file: None,
            }),
            ..EtcdOptions::default()
        })
        .await;
        let Err(StoreError::Internal(message)) = result else {
            panic!("{result:?}");
        };
        let file = ca_file.display().to_string();
        assert!(
            message.contains(expected) && message.contains(&file),
            "{message}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[tokio::test]
async fn credentials_are_used_and_checked() {
    let etcd = EtcdServer::start().unwrap();
    etcd.enable_auth("pw").unwrap();
    let with = |user: Option<(&str, &str)>| EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        user: user.map(|(name, password)| (name.into(), password.into())),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(with(Some(("root", "pw"))))
        .await
        .unwrap();
    let revision = commit(&store, vec![put("auth/k", "v")]).await;
    assert_eq!(
        store.get("auth/k").await.unwrap().unwrap().mod_revision,
        revision
    );
    let wrong = EtcdStore::connect(with(Some(("root", "nope")))).await;
    assert!(matches!(wrong, Err(StoreError::Internal(_))), "{wrong:?}");
    let anonymous = EtcdStore::connect(with(None)).await;
    assert!(
        matches!(anonymous, Err(StoreError::Internal(_))),
        "{anonymous:?}"
    );
}

#[tokio::test]
async fn etcd_store_passes_the_conformance_suite() {
    let (_etcd, store) = start().await;
    conformance::run_all(Arc::new(store), "conformance")
        .await
        .unwrap();
}
