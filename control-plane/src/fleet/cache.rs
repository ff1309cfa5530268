//! The replica's in-memory copy of every resource, fed by one store watch
//! and shared by every node stream.
//!
//! Node streams never read the store: a new node gets its snapshot from
//! here, and changes reach all streams through one `tokio::sync::watch`
//! channel. That channel keeps only the latest value, which is exactly the
//! coalescing slow nodes need: a stream that wakes late sees the newest
//! snapshot, never a backlog, so it cannot delay anyone else. Bursts of
//! writes are gathered for `debounce` before one snapshot is published.
//!
//! Snapshots are immutable and shared (`Arc`); each publish copies the map
//! of `Arc`ed objects (pointer copies, not resource copies).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aios_model::{Kind, Placement};
use aios_proto::v1 as pb;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::decode_resource,
    keys,
    store::{
        EventKind, KeyValue, RangeRequest, Revision, SharedStore, StoreError,
        watch::{Update, resyncing_watch},
    },
};

/// One resource as nodes receive it.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedObject {
    /// Kind.
    pub kind: Kind,
    /// Tenant (empty for Tenant objects).
    pub tenant: String,
    /// Name.
    pub name: String,
    /// Its resource_version (the key's mod_revision).
    pub version: Revision,
    /// The object, with `resource_version` set.
    pub resource: pb::Resource,
    /// Which nodes receive it.
    pub placement: Placement,
}

/// Every resource at one store revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The store revision this snapshot reflects.
    pub revision: Revision,
    /// Objects by store key.
    pub objects: BTreeMap<String, Arc<CachedObject>>,
}

/// Handle to the cache; cheap to clone.
#[derive(Clone, Debug)]
pub struct ConfigCache {
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl ConfigCache {
    /// Lists every resource, publishes that snapshot, and keeps following
    /// the store until `shutdown`. Returns once the first snapshot exists.
    pub async fn start(
        store: SharedStore,
        debounce: Duration,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let listing = store.range(RangeRequest::prefix(keys::RESOURCES)).await?;
        let first = Snapshot {
            revision: listing.revision,
            objects: listing
                .kvs
                .iter()
                .filter_map(cached)
                .map(|o| (keys::resource(o.kind, &o.tenant, &o.name), Arc::new(o)))
                .collect(),
        };
        let start = first.revision + 1;
        let (tx, rx) = watch::channel(Arc::new(first));
        let task = tokio::spawn(follow(store, tx, start, debounce, shutdown));
        Ok((Self { snapshots: rx }, task))
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// A receiver that wakes on every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }
}

/// Applies store changes to the snapshot until shutdown. A watch error
/// (store unreachable) restarts the watch from the last revision seen, after
/// a pause; compaction arrives as a resync and replaces the snapshot whole.
async fn follow(
    store: SharedStore,
    tx: watch::Sender<Arc<Snapshot>>,
    mut next: Revision,
    debounce: Duration,
    shutdown: CancellationToken,
) {
    const RETRY: Duration = Duration::from_millis(500);
    loop {
        let mut updates = resyncing_watch(store.clone(), keys::RESOURCES.to_string(), next);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                update = updates.next() => update,
            };
            let Some(Ok(first)) = first else {
                if let Some(Err(error)) = first {
                    tracing::warn!(%error, "config cache watch failed; retrying");
                }
                break;
            };
            let mut working = (*tx.borrow().clone()).clone();
            apply(&mut working, first);
            // Gather the rest of a burst, then publish once.
            let deadline = tokio::time::sleep(debounce);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    update = updates.next() => match update {
                        Some(Ok(update)) => apply(&mut working, update),
                        _ => break,
                    },
                }
            }
            next = working.revision + 1;
            tx.send_replace(Arc::new(working));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

fn apply(snapshot: &mut Snapshot, update: Update) {
    match update {
        Update::Events(events) => {
            for event in events {
                snapshot.revision = snapshot.revision.max(event.kv.mod_revision);
                match event.kind {
                    EventKind::Put => match cached(&event.kv) {
                        Some(object) => {
                            snapshot
                                .objects
                                .insert(event.kv.key.clone(), Arc::new(object));
                        }
                        None => {
                            snapshot.objects.remove(&event.kv.key);
                        }
                    },
                    EventKind::Delete => {
                        snapshot.objects.remove(&event.kv.key);
                    }
                }
            }
        }
        Update::Resync {
            kvs,
            revision,
            compact_revision,
        } => {
            tracing::info!(
                revision,
                compact_revision,
                "config cache resynced after compaction"
            );
            snapshot.revision = revision;
            snapshot.objects = kvs
                .iter()
                .filter_map(|kv| cached(kv).map(|o| (kv.key.clone(), Arc::new(o))))
                .collect();
        }
    }
}

/// A store entry as a cached object; `None` for keys that are not resources
/// or values that do not decode (logged: the store holds something foreign).
fn cached(kv: &KeyValue) -> Option<CachedObject> {
    let (kind, tenant, name) = keys::parse_resource(&kv.key)?;
    let resource = match decode_resource(kv) {
        Ok(resource) => resource,
        Err(error) => {
            tracing::error!(key = %kv.key, %error, "undecodable resource in the store; not distributed");
            return None;
        }
    };
    // Stored objects were valid when applied. One that no longer validates
    // (a stricter rule since) still goes out, placed by its metadata, so the
    // node NACKs it with the reason where operators can see it.
    let placement = match aios_model::validate(&resource) {
        Ok(valid) => valid.placement,
        Err(_) => {
            let meta = resource.metadata.clone().unwrap_or_default();
            Placement {
                regions: meta.regions,
                node_selector: aios_model::labels::LabelSelector::parse(&meta.node_selector)
                    .unwrap_or_default(),
            }
        }
    };
    Some(CachedObject {
        kind,
        tenant,
        name,
        version: kv.mod_revision,
        resource,
        placement,
    })
}

#[cfg(test)]
mod tests {
    use aios_proto::v1::resource::Spec;
    use prost::Message;

    use super::*;
    use crate::store::{Op, Store, embedded::EmbeddedStore};

    fn model(tenant: &str, name: &str, regions: &[&str]) -> pb::Resource {
        pb::Resource {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                tenant: tenant.into(),
                regions: regions.iter().map(|r| r.to_string()).collect(),
                ..Default::default()
            }),
            spec: Some(Spec::Model(pb::ModelSpec {
                provider: pb::ModelProvider::Openai as i32,
                provider_model: "gpt-4o-mini".into(),
                capabilities: vec![pb::ModelCapability::Chat as i32],
                ..Default::default()
            })),
        }
    }

    async fn put(store: &dyn Store, resource: &pb::Resource) -> Revision {
        let meta = resource.metadata.clone().unwrap_or_default();
        let key = keys::resource(Kind::Model, &meta.tenant, &meta.name);
        match store
            .txn(
                vec![],
                vec![Op::Put {
                    key,
                    value: resource.encode_to_vec(),
                    lease: None,
                }],
            )
            .await
            .unwrap()
        {
            crate::store::TxnOutcome::Committed { revision } => revision,
            other => panic!("{other:?}"),
        }
    }

    /// Waits until the published snapshot reaches `revision`.
    async fn at(cache: &ConfigCache, revision: Revision) -> Arc<Snapshot> {
        let mut rx = cache.subscribe();
        let snapshot = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| s.revision >= revision),
        )
        .await
        .unwrap()
        .unwrap();
        snapshot.clone()
    }

    #[tokio::test]
    async fn follows_puts_deletes_and_placement() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(
            EmbeddedStore::open(&dir.path().join("s.db"), Default::default())
                .await
                .unwrap(),
        );
        put(store.as_ref(), &model("acme", "before", &[])).await;
        let shutdown = CancellationToken::new();
        let (cache, task) =
            ConfigCache::start(store.clone(), Duration::from_millis(5), shutdown.clone())
                .await
                .unwrap();
        assert_eq!(
            cache.current().objects.len(),
            1,
            "the first snapshot lists what exists"
        );

        let r = put(store.as_ref(), &model("acme", "eu-only", &["eu-west-1"])).await;
        let snapshot = at(&cache, r).await;
        let eu = &snapshot.objects[&keys::resource(Kind::Model, "acme", "eu-only")];
        assert_eq!(eu.version, r);
        assert_eq!(eu.resource.metadata.as_ref().unwrap().resource_version, r);
        let labels = BTreeMap::<String, String>::new();
        assert!(eu.placement.includes("eu-west-1", &labels));
        assert!(!eu.placement.includes("us-east-1", &labels));

        let key = keys::resource(Kind::Model, "acme", "before");
        let TxnOutcome::Committed { revision } = store
            .txn(vec![], vec![Op::Delete { key: key.clone() }])
            .await
            .unwrap()
        else {
            panic!()
        };
        let snapshot = at(&cache, revision).await;
        assert!(!snapshot.objects.contains_key(&key));
        assert_eq!(snapshot.objects.len(), 1);

        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_burst_is_published_as_one_consistent_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(
            EmbeddedStore::open(&dir.path().join("s.db"), Default::default())
                .await
                .unwrap(),
        );
        let shutdown = CancellationToken::new();
        let (cache, task) =
            ConfigCache::start(store.clone(), Duration::from_millis(50), shutdown.clone())
                .await
                .unwrap();
        let mut rx = cache.subscribe();
        let mut last = 0;
        for i in 0..20 {
            last = put(store.as_ref(), &model("acme", &format!("m{i}"), &[])).await;
        }
        let snapshot = at(&cache, last).await;
        assert_eq!(snapshot.objects.len(), 20);
        // Every snapshot a stream could see is whole: revisions only grow and
        // each holds every object up to its revision.
        let mut seen = 0;
        while rx.has_changed().unwrap_or(false) {
            let s = rx.borrow_and_update().clone();
            assert!(s.revision >= seen);
            assert!(s.objects.values().all(|o| o.version <= s.revision));
            seen = s.revision;
        }
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn a_resync_replaces_the_snapshot_whole() {
        // What the watch yields after compaction (the watch's own resync is in
        // the store conformance suite): objects missing from the listing were
        // deleted while history was gone, and must disappear.
        let kv = |name: &str, revision: Revision| KeyValue {
            key: keys::resource(Kind::Model, "acme", name),
            value: model("acme", name, &[]).encode_to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        };
        let mut snapshot = Snapshot::default();
        apply(
            &mut snapshot,
            Update::Events(vec![crate::store::Event {
                kind: EventKind::Put,
                kv: kv("stale", 3),
            }]),
        );
        assert_eq!((snapshot.revision, snapshot.objects.len()), (3, 1));
        apply(
            &mut snapshot,
            Update::Resync {
                kvs: vec![kv("fresh", 9)],
                revision: 12,
                compact_revision: 10,
            },
        );
        assert_eq!(snapshot.revision, 12);
        let names: Vec<&str> = snapshot.objects.values().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["fresh"]);
    }

    use crate::store::TxnOutcome;
}
