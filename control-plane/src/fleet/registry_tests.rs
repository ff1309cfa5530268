#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;

use super::*;
use crate::{
    fleet::leader::{Elector, Leadership},
    store::embedded::EmbeddedStore,
};

struct Fixture {
    _dir: tempfile::TempDir,
    store: SharedStore,
    cache: ConfigCache,
    shutdown: CancellationToken,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(
        EmbeddedStore::open(&dir.path().join("s.db"), Default::default())
            .await
            .unwrap(),
    );
    let shutdown = CancellationToken::new();
    let (cache, _) = ConfigCache::start(store.clone(), Duration::from_millis(1), shutdown.clone())
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        store,
        cache,
        shutdown,
    }
}

fn hello(id: &str, region: &str, labels: &[(&str, &str)]) -> pb::NodeHello {
    pb::NodeHello {
        node_id: id.into(),
        region: region.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        agent_version: "0.1.0".into(),
        ..Default::default()
    }
}

async fn stored(store: &SharedStore, id: &str) -> Option<(pb::Node, Option<LeaseId>)> {
    let kv = store.get(&keys::node(id)).await.unwrap()?;
    Some((pb::Node::decode(kv.value.as_slice()).unwrap(), kv.lease))
}

#[tokio::test]
async fn a_connected_node_is_stored_under_the_lease_and_kept_disconnected_after() {
    let f = fixture().await;
    let registry = Registry::new(f.store.clone(), "replica-a", Duration::from_secs(10));
    let stream = registry.connect(&hello("n1", "us-east-1", &[("tier", "gpu")]));
    registry.flush().await.unwrap();
    let (node, lease) = stored(&f.store, "n1").await.unwrap();
    assert!(node.connected && lease.is_some());
    assert_eq!(node.connected_replica, "replica-a");
    assert_eq!(node.labels["tier"], "gpu");

    let got = registry.get(&f.cache, "n1").await.unwrap().unwrap();
    assert_eq!(got.region, "us-east-1");

    // Written at most once a second: a change right away waits.
    registry.disconnect("n1", stream);
    registry.flush().await.unwrap();
    assert!(stored(&f.store, "n1").await.unwrap().0.connected);
    tokio::time::sleep(MIN_WRITE_INTERVAL).await;
    registry.flush().await.unwrap();
    let (node, lease) = stored(&f.store, "n1").await.unwrap();
    assert!(!node.connected && lease.is_none(), "{node:?}");
    assert!(node.connected_replica.is_empty());
    assert!(registry.state().nodes.is_empty(), "forgotten in memory");
    f.shutdown.cancel();
}

#[tokio::test]
async fn a_disconnect_never_overwrites_a_record_another_replica_took_over() {
    let f = fixture().await;
    let a = Registry::new(f.store.clone(), "replica-a", Duration::from_secs(10));
    let b = Registry::new(f.store.clone(), "replica-b", Duration::from_secs(10));
    let stream = a.connect(&hello("n1", "r", &[]));
    a.flush().await.unwrap();
    // The node reconnects to b before a notices its old stream is gone.
    b.connect(&hello("n1", "r", &[]));
    b.flush().await.unwrap();
    a.disconnect("n1", stream);
    tokio::time::sleep(MIN_WRITE_INTERVAL).await;
    a.flush().await.unwrap();
    let (node, lease) = stored(&f.store, "n1").await.unwrap();
    assert!(node.connected && lease.is_some());
    assert_eq!(node.connected_replica, "replica-b");
    f.shutdown.cancel();
}

#[tokio::test]
async fn updates_of_a_replaced_stream_are_ignored() {
    let f = fixture().await;
    let registry = Registry::new(f.store.clone(), "replica-a", Duration::from_secs(10));
    let old = registry.connect(&hello("n1", "r", &[]));
    let new = registry.connect(&hello("n1", "r", &[]));
    registry.disconnect("n1", old);
    registry.heartbeat("n1", old, Some(7), None);
    let state = registry.state();
    let entry = &state.nodes["n1"];
    assert!(entry.connected && entry.stream == new);
    assert_eq!(entry.node.in_flight_requests, 0);
    drop(state);
    f.shutdown.cancel();
}

#[tokio::test]
async fn a_heartbeat_with_capabilities_updates_the_record() {
    let f = fixture().await;
    let registry = Registry::new(f.store.clone(), "replica-a", Duration::from_secs(10));
    let stream = registry.connect(&hello("n1", "r", &[]));
    let loaded = pb::NodeCapabilities {
        models_loaded: vec!["acme/smollm2".into()],
        cpu_cores: 2,
        ..Default::default()
    };
    registry.heartbeat("n1", stream, Some(1), Some(&loaded));
    let state = registry.state();
    assert_eq!(state.nodes["n1"].node.capabilities.as_ref(), Some(&loaded));
    assert!(state.nodes["n1"].dirty, "written on the next flush");
    drop(state);
    // Without capabilities, they stay as they were.
    registry.heartbeat("n1", stream, Some(0), None);
    let state = registry.state();
    assert_eq!(state.nodes["n1"].node.capabilities.as_ref(), Some(&loaded));
    drop(state);
    f.shutdown.cancel();
}

#[tokio::test]
async fn list_filters_by_region_and_labels_and_pages_in_node_order() {
    let f = fixture().await;
    let registry = Registry::new(f.store.clone(), "replica-a", Duration::from_secs(10));
    for (id, region, tier) in [
        ("n3", "eu", "gpu"),
        ("n1", "us", "gpu"),
        ("n2", "us", "cpu"),
        ("n4", "us", "gpu"),
    ] {
        registry.connect(&hello(id, region, &[("tier", tier)]));
    }
    registry.flush().await.unwrap();
    let all = LabelSelector::parse("").unwrap();
    let ids = |nodes: &[pb::Node]| nodes.iter().map(|n| n.node_id.clone()).collect::<Vec<_>>();

    let (page, more) = registry.list(&f.cache, "", &all, "", 2).await.unwrap();
    assert_eq!((ids(&page), more), (vec!["n1".into(), "n2".into()], true));
    let (page, more) = registry.list(&f.cache, "", &all, "n2", 2).await.unwrap();
    assert_eq!((ids(&page), more), (vec!["n3".into(), "n4".into()], false));

    let gpu = LabelSelector::parse("tier=gpu").unwrap();
    let (page, _) = registry.list(&f.cache, "us", &gpu, "", 10).await.unwrap();
    assert_eq!(ids(&page), ["n1", "n4"]);
    f.shutdown.cancel();
}

#[tokio::test]
async fn the_leader_forgets_nodes_disconnected_beyond_retention_and_a_deposed_one_cannot() {
    let f = fixture().await;
    let registry = Registry::new(f.store.clone(), "replica-a", Duration::from_secs(10));
    let gone = registry.connect(&hello("gone", "r", &[]));
    registry.connect(&hello("live", "r", &[]));
    registry.flush().await.unwrap();
    registry.disconnect("gone", gone);
    tokio::time::sleep(MIN_WRITE_INTERVAL).await;
    registry.flush().await.unwrap();

    let elector = Elector::new(
        f.store.clone(),
        keys::LEADER,
        "replica-a",
        Duration::from_secs(5),
    );
    let mut leadership = elector.subscribe();
    let stop = CancellationToken::new();
    let election = tokio::spawn(elector.run(stop.clone()));
    let fence = leadership
        .wait_for(Leadership::is_leader)
        .await
        .unwrap()
        .fence()
        .cloned()
        .unwrap();

    assert_eq!(
        registry
            .forget_disconnected(&fence, Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "within retention"
    );
    // Leadership ends: the old fence no longer holds.
    stop.cancel();
    election.await.unwrap();
    assert_eq!(
        registry
            .forget_disconnected(&fence, Duration::ZERO)
            .await
            .unwrap(),
        0,
        "a deposed leader's delete fails its fence"
    );
    assert!(stored(&f.store, "gone").await.is_some());

    let elector = Elector::new(
        f.store.clone(),
        keys::LEADER,
        "replica-a",
        Duration::from_secs(5),
    );
    let mut leadership = elector.subscribe();
    let stop = CancellationToken::new();
    let election = tokio::spawn(elector.run(stop.clone()));
    let fence = leadership
        .wait_for(Leadership::is_leader)
        .await
        .unwrap()
        .fence()
        .cloned()
        .unwrap();
    assert_eq!(
        registry
            .forget_disconnected(&fence, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert!(stored(&f.store, "gone").await.is_none());
    assert!(
        stored(&f.store, "live").await.is_some(),
        "connected nodes stay"
    );
    stop.cancel();
    election.await.unwrap();
    f.shutdown.cancel();
}
