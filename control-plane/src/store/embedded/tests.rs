use super::super::{EventKind, MAX_VALUE_BYTES, SharedStore, conformance};
use super::*;

type Message = Option<Result<WatchMessage, StoreError>>;

async fn open_with(
    dir: &tempfile::TempDir,
    options: EmbeddedOptions,
) -> Result<EmbeddedStore, StoreError> {
    // The parent directory does not exist yet: open creates it.
    EmbeddedStore::open(&dir.path().join("state/store.redb"), options).await
}

async fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    open_with(dir, EmbeddedOptions::default()).await.unwrap()
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
        lease: None,
    }
}

fn del(key: &str) -> Op {
    Op::Delete { key: key.into() }
}

fn kv(key: &str, value: &str, create: Revision, modified: Revision, version: i64) -> KeyValue {
    let (key, value) = (key.into(), value.into());
    KeyValue {
        key,
        value,
        create_revision: create,
        mod_revision: modified,
        version,
        lease: None,
    }
}

async fn commit(s: &EmbeddedStore, ops: Vec<Op>) -> Revision {
    match s.txn(vec![], ops).await.unwrap() {
        TxnOutcome::Committed { revision } => revision,
        other => panic!("unconditional txn: {other:?}"),
    }
}

async fn message(stream: &mut WatchStream) -> Message {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
}

async fn events(stream: &mut WatchStream, count: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < count {
        match message(stream).await {
            Some(Ok(WatchMessage::Events(batch))) => out.extend(batch),
            other => panic!("wanted events, got {other:?}"),
        }
    }
    assert_eq!(out.len(), count, "{out:?}");
    out
}

fn revisions(events: &[Event]) -> Vec<Revision> {
    events.iter().map(|e| e.kv.mod_revision).collect()
}

fn compacted(compact_revision: Revision) -> Message {
    Some(Ok(WatchMessage::Compacted { compact_revision }))
}

#[tokio::test]
async fn revisions_and_metadata_follow_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    assert_eq!(s.revision().await.unwrap(), 1, "an empty store is at 1");
    assert_eq!(commit(&s, vec![put("a", "1"), put("b", "1")]).await, 2);
    assert_eq!(s.get("a").await.unwrap(), Some(kv("a", "1", 2, 2, 1)));
    assert_eq!(
        commit(&s, vec![put("a", "1")]).await,
        3,
        "identical puts write"
    );
    assert_eq!(s.get("a").await.unwrap(), Some(kv("a", "1", 2, 3, 2)));
    assert_eq!(commit(&s, vec![del("absent")]).await, 3, "deleting nothing");
    assert_eq!(commit(&s, vec![del("a")]).await, 4);
    assert_eq!(s.get("a").await.unwrap(), None);
    assert_eq!(commit(&s, vec![put("a", "2")]).await, 5);
    assert_eq!(s.get("a").await.unwrap(), Some(kv("a", "2", 5, 5, 1)));

    let twice = s.txn(vec![], vec![put("c", "1"), del("c")]).await;
    assert!(matches!(&twice, Err(StoreError::Internal(m)) if m.contains("duplicate")));
    let twice = s.txn(vec![], vec![put("c", "1"), put("c", "2")]).await;
    assert!(matches!(&twice, Err(StoreError::Internal(m)) if m.contains("duplicate")));
    let big = s
        .txn(vec![], vec![put("c", &"x".repeat(MAX_VALUE_BYTES + 1))])
        .await;
    assert!(matches!(big, Err(StoreError::TooLarge { .. })), "{big:?}");
    assert_eq!(s.revision().await.unwrap(), 5, "a refused txn wrote");
    assert_eq!(s.get("c").await.unwrap(), None);
    assert!(s.describe().starts_with("embedded:") && s.describe().ends_with("store.redb"));
}

#[tokio::test]
async fn range_honours_prefix_after_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    commit(
        &s,
        ["p/a", "p/b", "p/c", "p0", "o"]
            .map(|k| put(k, "v"))
            .to_vec(),
    )
    .await;
    let range = |after: &str, limit| {
        let request = RangeRequest {
            prefix: "p/".into(),
            after: after.into(),
            limit,
        };
        let s = s.clone();
        async move { s.range(request).await.unwrap() }
    };
    let keys = |r: &Range| r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
    let page = range("p/a", 1).await;
    assert_eq!(
        (keys(&page), page.more, page.revision),
        (vec!["p/b".into()], true, 2)
    );
    let page = range("p/b", 5).await;
    assert_eq!((keys(&page), page.more), (vec!["p/c".into()], false));
    let page = range("q", 0).await; // after every key under the prefix
    assert_eq!((keys(&page), page.more), (vec![], false));
    let all = s.range(RangeRequest::prefix("")).await.unwrap();
    assert_eq!(keys(&all), ["o", "p/a", "p/b", "p/c", "p0"]);
}

#[tokio::test]
async fn cas_conflict_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let created = commit(&s, vec![put("k", "1")]).await;
    let absent = Compare::ModRevision {
        key: "k".into(),
        equals: 0,
    };
    let outcome = s
        .txn(vec![absent], vec![put("k", "2"), put("other", "2")])
        .await;
    assert_eq!(outcome, Ok(TxnOutcome::Conflict { revision: created }));
    assert_eq!(
        s.get("k").await.unwrap(),
        Some(kv("k", "1", created, created, 1))
    );
    assert_eq!(s.get("other").await.unwrap(), None);
    assert_eq!(s.revision().await.unwrap(), created);
    let current = Compare::ModRevision {
        key: "k".into(),
        equals: created,
    };
    let outcome = s.txn(vec![current], vec![put("k", "3")]).await;
    assert_eq!(
        outcome,
        Ok(TxnOutcome::Committed {
            revision: created + 1
        })
    );
}

#[tokio::test]
async fn watch_splices_history_and_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    for i in 0..3 {
        commit(&s, vec![put(&format!("w/{i}"), "v")]).await; // revisions 2..=4
    }
    // Commits between the watch call and its first poll are both in
    // history and on the live channel: each must come out once.
    let mut watch = s.watch("w/", 2).await.unwrap();
    commit(&s, vec![put("w/3", "v"), put("x/3", "v")]).await;
    commit(&s, vec![put("x/4", "v")]).await; // outside the prefix
    let seen = events(&mut watch, 4).await;
    assert_eq!(revisions(&seen), [2, 3, 4, 5]);
    assert!(
        seen.iter()
            .all(|e| e.kind == EventKind::Put && e.kv.key.starts_with("w/"))
    );
    let quiet = tokio::time::timeout(Duration::from_millis(100), watch.next()).await;
    assert!(quiet.is_err(), "a revision came out twice: {quiet:?}");
    // Now live; falling further behind than the channel holds is
    // caught up from history.
    let behind = 3 * LIVE_CAPACITY as Revision;
    for i in 0..behind {
        commit(&s, vec![put(&format!("w/lag/{i}"), "v")]).await;
    }
    let lagged = events(&mut watch, behind as usize).await;
    assert_eq!(revisions(&lagged), (7..7 + behind).collect::<Vec<_>>());

    // And from history into live against a concurrent writer.
    const WRITES: Revision = 100;
    let start = s.revision().await.unwrap() + 1;
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..WRITES {
                commit(&s, vec![put(&format!("c/{i}"), "v")]).await;
            }
        })
    };
    while s.revision().await.unwrap() < start + 10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut watch = s.watch("c/", start).await.unwrap();
    let seen = events(&mut watch, WRITES as usize).await;
    assert_eq!(
        revisions(&seen),
        (start..start + WRITES).collect::<Vec<_>>()
    );
    writer.await.unwrap();
    let live = commit(&s, vec![put("c/after", "v")]).await;
    assert_eq!(revisions(&events(&mut watch, 1).await), [live]);
}

#[tokio::test]
async fn watch_from_now_and_from_the_future() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    commit(&s, vec![put("k", "old")]).await;
    let mut now = s.watch("k", 0).await.unwrap();
    let mut future = s.watch("k", 4).await.unwrap();
    let r3 = commit(&s, vec![put("k", "3")]).await;
    let r4 = commit(&s, vec![del("k")]).await;
    assert_eq!(revisions(&events(&mut now, 2).await), [r3, r4]);
    let deleted = events(&mut future, 1).await.remove(0);
    let tombstone = KeyValue {
        value: vec![],
        ..kv("k", "", 0, r4, 0)
    };
    assert_eq!((deleted.kind, deleted.kv), (EventKind::Delete, tombstone));
}

#[tokio::test]
async fn compaction_ends_old_watches_with_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    for i in 0..5 {
        commit(&s, vec![put("k", &i.to_string())]).await; // revisions 2..=6
    }
    s.compact(4).await.unwrap();
    let mut old = s.watch("", 3).await.unwrap();
    assert_eq!(message(&mut old).await, compacted(4));
    assert_eq!(
        message(&mut old).await,
        None,
        "the stream ends after Compacted"
    );
    let mut kept = s.watch("", 4).await.unwrap();
    assert_eq!(revisions(&events(&mut kept, 3).await), [4, 5, 6]);
    let again = s.compact(4).await;
    assert_eq!(
        again,
        Err(StoreError::Compacted {
            requested: 4,
            compact_revision: 4
        })
    );
    let future = s.compact(7).await;
    assert!(matches!(&future, Err(StoreError::Internal(m)) if m.contains("future")));

    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        history_revisions: 3,
        ..EmbeddedOptions::default()
    };
    let s = open_with(&dir, options).await.unwrap();
    for i in 0..10 {
        commit(&s, vec![put("k", &i.to_string())]).await; // revisions 2..=11
    }
    assert_eq!(
        message(&mut s.watch("", 8).await.unwrap()).await,
        compacted(9)
    );
    let mut kept = s.watch("", 9).await.unwrap();
    assert_eq!(revisions(&events(&mut kept, 3).await), [9, 10, 11]);
}

#[tokio::test]
async fn lease_expiry_deletes_keys_and_emits_events() {
    let dir = tempfile::tempdir().unwrap();
    let every = Duration::from_millis(10);
    let options = EmbeddedOptions {
        lease_check_interval: every,
        ..EmbeddedOptions::default()
    };
    let s = open_with(&dir, options).await.unwrap();
    let ttl = Duration::from_millis(600);
    let lease = s.grant_lease(ttl).await.unwrap();
    let held = |key: &str| Op::Put {
        key: key.into(),
        value: vec![],
        lease: Some(lease),
    };
    let attached = commit(&s, vec![held("l/a"), held("l/b"), put("l/free", "v")]).await;
    assert_eq!(s.get("l/a").await.unwrap().unwrap().lease, Some(lease));
    let mut watch = s.watch("l/", 0).await.unwrap();
    // Renewing well inside the TTL keeps it alive past the TTL.
    for _ in 0..9 {
        tokio::time::sleep(ttl / 6).await;
        assert_eq!(s.keep_alive(lease).await, Ok(ttl));
    }
    assert!(
        s.get("l/a").await.unwrap().is_some(),
        "kept alive, yet expired"
    );
    let expired = events(&mut watch, 2).await;
    let keys: Vec<_> = expired.iter().map(|e| e.kv.key.as_str()).collect();
    assert_eq!(keys, ["l/a", "l/b"]);
    assert!(expired.iter().all(|e| e.kind == EventKind::Delete));
    assert_eq!(
        revisions(&expired),
        [attached + 1; 2],
        "one revision per lease"
    );
    assert_eq!(s.get("l/a").await.unwrap(), None);
    assert!(s.get("l/free").await.unwrap().is_some());
    assert_eq!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
    assert_eq!(
        s.revoke_lease(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
    let orphan = s.txn(vec![], vec![held("l/c")]).await;
    assert_eq!(orphan, Err(StoreError::LeaseNotFound(lease)));
}

#[tokio::test]
async fn data_revision_history_and_leases_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir).await;
    let lease = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    let held = Op::Put {
        key: "k/held".into(),
        value: vec![],
        lease: Some(lease),
    };
    let first = commit(&s, vec![put("k/a", "1"), held]).await;
    let last = commit(&s, vec![put("k/a", "2")]).await;
    drop(s);

    let s = open(&dir).await;
    assert_eq!(s.revision().await.unwrap(), last);
    assert_eq!(
        s.get("k/a").await.unwrap(),
        Some(kv("k/a", "2", first, last, 2))
    );
    assert_eq!(s.keep_alive(lease).await, Ok(Duration::from_secs(60)));
    let mut history = s.watch("k/", first).await.unwrap();
    assert_eq!(
        revisions(&events(&mut history, 3).await),
        [first, first, last]
    );
    let other = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    assert_ne!(other, lease, "a lease id was reused");
    s.revoke_lease(lease).await.unwrap();
    assert_eq!(s.get("k/held").await.unwrap(), None);
    assert_eq!(s.revision().await.unwrap(), last + 1);
}

#[tokio::test]
async fn a_second_open_is_unavailable_while_the_first_lives() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&dir).await;
    let second = open_with(&dir, EmbeddedOptions::default()).await;
    assert!(matches!(&second, Err(StoreError::Unavailable(m)) if m.contains("in use")));
    drop(first);
    open(&dir).await;
}

#[tokio::test]
async fn passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(open(&dir).await);
    conformance::run_all(store, "conformance").await.unwrap();
}
