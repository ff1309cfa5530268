//! Config distribution end to end: control-plane replicas on a real etcd
//! (or the embedded store), data-plane nodes in this process with their own
//! streams, `aiosctl` as operators run it.
//!
//! - a change applied with `aiosctl apply` reaches every node, and
//!   `ListNodes` shows each node's ACKed version;
//! - a resource a node cannot use is NACKed with its reason, the rest of the
//!   push applies, the old version stays in force, `aiosctl fleet describe`
//!   shows the NACK;
//! - a node restarted while the control plane is down serves its persisted
//!   config, and removals made meanwhile reach it when it reconnects;
//! - region scoping in both directions;
//! - killing the replica a node is connected to loses no update.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use aios_control_plane::{Config as CpConfig, ControlPlane, Secret};
use aios_data_plane::{
    DataPlane,
    fleet::{NodeConfig, ResourceKey},
};
use aios_model::Kind;
use aios_proto::v1::{
    self as pb, admin_service_client::AdminServiceClient, fleet_service_client::FleetServiceClient,
};
use aios_tests::{
    SpawnedPlane,
    admin::{ADMIN_KEY, model, tenant},
    bin,
    etcd::EtcdServer,
};

const WAIT: Duration = Duration::from_secs(20);

type Admin = AdminServiceClient<aios_client::AuthChannel>;
type Fleet = FleetServiceClient<aios_client::AuthChannel>;

async fn clients(url: &str) -> (Admin, Fleet) {
    let channel = aios_client::connect(url, Some(ADMIN_KEY), WAIT)
        .await
        .unwrap();
    (
        AdminServiceClient::new(channel.clone()),
        FleetServiceClient::new(channel),
    )
}

async fn apply(admin: &mut Admin, resource: pb::Resource) -> i64 {
    admin
        .apply(pb::ApplyRequest {
            resource: Some(resource),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
        .resource
        .unwrap()
        .metadata
        .unwrap()
        .resource_version
}

/// A data-plane node in this process, streaming from `urls` in turn.
async fn node(id: &str, region: &str, urls: &[String], state: &Path) -> DataPlane {
    let mut config = aios_data_plane::Config::local(urls[0].parse().unwrap(), state.to_path_buf());
    config.control_plane = urls.iter().map(|u| u.parse().unwrap()).collect();
    config.node.node_id = id.into();
    config.node.region = region.into();
    config.node_key = Some(Secret::new(ADMIN_KEY.into()).unwrap());
    DataPlane::start(&config).await.unwrap()
}

/// A model every node can use: its key variable (PATH) is set everywhere.
fn usable(name: &str) -> pb::Resource {
    let mut resource = model("acme", name);
    if let Some(pb::resource::Spec::Model(spec)) = resource.spec.as_mut() {
        spec.api_key_env = "PATH".into();
    }
    resource
}

fn key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::Model, "acme", name)
}

/// Waits until the node's config satisfies `check`.
async fn config_until(
    node: &DataPlane,
    what: &str,
    check: impl Fn(&NodeConfig) -> bool,
) -> Arc<NodeConfig> {
    let mut changes = node.node_config().subscribe();
    let config = tokio::time::timeout(WAIT, changes.wait_for(|c| check(c)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "node never got {what}; it has {:?}",
                node.node_config().current().held()
            )
        })
        .unwrap();
    config.clone()
}

fn version_on(config: &NodeConfig, name: &str) -> Option<i64> {
    config.get(&key(name)).map(|a| a.version)
}

/// Polls ListNodes until `check` holds for every listed node and `count` are listed.
async fn nodes_until(
    fleet: &mut Fleet,
    count: usize,
    check: impl Fn(&pb::Node) -> bool,
) -> Vec<pb::Node> {
    let deadline = Instant::now() + WAIT;
    loop {
        let nodes = fleet
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes;
        if nodes.len() == count && nodes.iter().all(&check) {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "fleet view never converged: {nodes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn applied_version(node: &pb::Node, name: &str) -> Option<i64> {
    node.applied
        .iter()
        .find(|h| h.resource.as_ref().is_some_and(|r| r.name == name))
        .map(|h| h.version)
}

fn aiosctl(url: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(bin("aiosctl").unwrap())
        .args(["--endpoint", url, "--api-key", ADMIN_KEY])
        .args(args)
        .env_remove("AIOS_API_KEY")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn replica(store: &str, id: &str) -> SpawnedPlane {
    SpawnedPlane::control_plane_on(
        store,
        &[("AIOS_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)],
        &["--replica-id", id],
        tempfile::tempdir().unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_change_applied_with_aiosctl_reaches_every_node_on_every_replica() {
    let etcd = EtcdServer::start().unwrap();
    let store = format!("etcd://{}", etcd.endpoint());
    let (a, b) = (replica(&store, "replica-a"), replica(&store, "replica-b"));
    let (mut admin, fleet) = clients(&a.grpc_url()).await;
    apply(&mut admin, tenant("acme")).await;
    apply(&mut admin, usable("gpt")).await;

    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for (i, urls) in [
        vec![a.grpc_url()],
        vec![b.grpc_url()],
        vec![b.grpc_url(), a.grpc_url()],
    ]
    .iter()
    .enumerate()
    {
        let state = dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&state).unwrap();
        nodes.push(node(&format!("n{i}"), "us", urls, &state).await);
    }
    for n in &nodes {
        config_until(n, "acme/gpt", |c| version_on(c, "gpt").is_some()).await;
    }

    // The policy change, as an operator makes it.
    let manifest = dir.path().join("change.yaml");
    std::fs::write(
        &manifest,
        "metadata: {tenant: acme, name: gpt}\nmodel:\n  provider: MODEL_PROVIDER_OPENAI\n  providerModel: gpt-4o\n  apiKeyEnv: PATH\n  inputPriceUsdPerMtok: 2.5\n",
    )
    .unwrap();
    let (ok, out) = aiosctl(&a.grpc_url(), &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}");
    let changed = admin
        .get(pb::GetRequest {
            kind: pb::Kind::Model as i32,
            tenant: "acme".into(),
            name: "gpt".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .metadata
        .unwrap()
        .resource_version;
    for n in &nodes {
        let config = config_until(n, "the change", |c| version_on(c, "gpt") == Some(changed)).await;
        let Some(pb::resource::Spec::Model(spec)) = &config.get(&key("gpt")).unwrap().resource.spec
        else {
            panic!("not a model");
        };
        assert_eq!(spec.provider_model, "gpt-4o");
    }
    // Every replica's fleet view shows every node's ACKed version.
    for url in [a.grpc_url(), b.grpc_url()] {
        let (_, mut fleet) = clients(&url).await;
        let seen = nodes_until(&mut fleet, 3, |n| {
            n.connected && applied_version(n, "gpt") == Some(changed) && n.lag_revisions == 0
        })
        .await;
        let replicas: Vec<&str> = seen.iter().map(|n| n.connected_replica.as_str()).collect();
        assert_eq!(replicas, ["replica-a", "replica-b", "replica-b"]);
    }
    let (ok, out) = aiosctl(&a.grpc_url(), &["fleet", "ls"]);
    assert!(
        ok && out.contains("n0") && out.contains("replica-b"),
        "{out}"
    );
    drop(fleet);
    for n in nodes {
        n.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn a_resource_the_node_cannot_use_is_nacked_and_the_old_version_stays_in_force() {
    let etcd = EtcdServer::start().unwrap();
    let store = format!("etcd://{}", etcd.endpoint());
    let cp = replica(&store, "replica-a");
    let (mut admin, mut fleet) = clients(&cp.grpc_url()).await;
    apply(&mut admin, tenant("acme")).await;
    // PATH is set in every environment, so this version is usable.
    let working = usable("gpt");
    let good = apply(&mut admin, working.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let n = node("n1", "us", &[cp.grpc_url()], dir.path()).await;
    config_until(&n, "gpt", |c| version_on(c, "gpt") == Some(good)).await;

    // One batch, one push: a model whose key variable this node lacks, and
    // a valid new model.
    let mut unusable = working.clone();
    if let Some(pb::resource::Spec::Model(spec)) = unusable.spec.as_mut() {
        spec.api_key_env = "AIOS_E2E_VARIABLE_NOBODY_SETS".into();
    }
    let batch = admin
        .batch_apply(pb::BatchApplyRequest {
            resources: vec![unusable, usable("fresh")],
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    let bad = batch.results[0]
        .resource
        .as_ref()
        .unwrap()
        .metadata
        .as_ref()
        .unwrap()
        .resource_version;
    let config = config_until(&n, "fresh", |c| version_on(c, "fresh").is_some()).await;
    assert_eq!(
        version_on(&config, "gpt"),
        Some(good),
        "the old version stays in force"
    );

    let mut fleet_view = fleet.clone();
    let seen = nodes_until(&mut fleet_view, 1, |n| !n.parked.is_empty()).await;
    let parked = &seen[0].parked[0];
    assert_eq!(parked.version, bad);
    assert!(
        parked.error.contains("AIOS_E2E_VARIABLE_NOBODY_SETS"),
        "{parked:?}"
    );
    assert_eq!(applied_version(&seen[0], "gpt"), Some(good));

    let (ok, out) = aiosctl(&cp.grpc_url(), &["fleet", "describe", "n1"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("AIOS_E2E_VARIABLE_NOBODY_SETS") && out.contains("not set on this node"),
        "{out}"
    );
    let (ok, out) = aiosctl(&cp.grpc_url(), &["fleet", "describe", "nope"]);
    assert!(!ok && out.contains("not found"), "{out}");

    // Fixing the resource clears the NACK.
    let fixed = apply(&mut admin, working).await;
    config_until(&n, "the fix", |c| version_on(c, "gpt") == Some(fixed)).await;
    nodes_until(&mut fleet, 1, |n| n.parked.is_empty()).await;
    n.shutdown(Duration::from_secs(5)).await;
}

/// A control plane in this process on `port` (0 = any) over the embedded store in `dir`.
async fn local_plane(dir: &Path, port: u16) -> ControlPlane {
    let mut config = CpConfig::local(dir);
    config.listen = aios_runtime::ListenAddr(([127, 0, 0, 1], port).into());
    config.bootstrap_admin_key = Some(Secret::new(ADMIN_KEY.into()).unwrap());
    ControlPlane::start(&config).await.unwrap()
}

#[tokio::test]
async fn a_node_restarted_while_the_control_plane_is_down_serves_its_persisted_config() {
    let cp_dir = tempfile::tempdir().unwrap();
    let node_dir = tempfile::tempdir().unwrap();
    let cp = local_plane(cp_dir.path(), 0).await;
    let port = cp.grpc_addr().port();
    let url = format!("http://{}", cp.grpc_addr());
    let (mut admin, _) = clients(&url).await;
    apply(&mut admin, tenant("acme")).await;
    let kept = apply(&mut admin, usable("kept")).await;
    apply(&mut admin, usable("doomed")).await;

    let n = node("n1", "us", std::slice::from_ref(&url), node_dir.path()).await;
    config_until(&n, "both models", |c| {
        version_on(c, "kept").is_some() && version_on(c, "doomed").is_some()
    })
    .await;
    n.shutdown(Duration::from_secs(5)).await;
    // Deleted while the node is away.
    admin
        .delete(pb::DeleteRequest {
            kind: pb::Kind::Model as i32,
            tenant: "acme".into(),
            name: "doomed".into(),
            resource_version: 0,
        })
        .await
        .unwrap();
    drop(admin);
    cp.shutdown(Duration::from_secs(5)).await;

    // No control plane answers: the node starts from disk and is ready.
    let n = node("n1", "us", std::slice::from_ref(&url), node_dir.path()).await;
    let config = n.node_config().current();
    assert_eq!(version_on(&config, "kept"), Some(kept));
    assert!(version_on(&config, "doomed").is_some(), "last known config");
    assert!(n.readiness().is_ready(), "serves from its persisted config");
    let health = aios_client::check_health(
        aios_client::connect(&format!("http://{}", n.grpc_addr()), None, WAIT)
            .await
            .unwrap(),
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        health,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // The control plane comes back on the same address: the node resumes
    // from what it holds and drops what was deleted meanwhile.
    let cp = local_plane(cp_dir.path(), port).await;
    let config = config_until(&n, "the removal", |c| version_on(c, "doomed").is_none()).await;
    assert_eq!(version_on(&config, "kept"), Some(kept));
    n.shutdown(Duration::from_secs(5)).await;
    cp.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn region_scoping_adds_and_removes_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let cp = local_plane(dir.path(), 0).await;
    let url = format!("http://{}", cp.grpc_addr());
    let (mut admin, _) = clients(&url).await;
    apply(&mut admin, tenant("acme")).await;
    let scoped = |regions: &[&str]| {
        let mut m = usable("regional");
        m.metadata.as_mut().unwrap().regions = regions.iter().map(|r| r.to_string()).collect();
        m
    };
    let v1 = apply(&mut admin, scoped(&["eu"])).await;
    let (eu_dir, us_dir) = (dir.path().join("eu"), dir.path().join("us"));
    std::fs::create_dir_all(&eu_dir).unwrap();
    std::fs::create_dir_all(&us_dir).unwrap();
    let eu = node("eu-1", "eu", std::slice::from_ref(&url), &eu_dir).await;
    let us = node("us-1", "us", std::slice::from_ref(&url), &us_dir).await;
    config_until(&eu, "the eu model", |c| {
        version_on(c, "regional") == Some(v1)
    })
    .await;
    let us_config = config_until(&us, "its first push", |c| c.revision > 0).await;
    assert_eq!(version_on(&us_config, "regional"), None);

    let v2 = apply(&mut admin, scoped(&["us"])).await;
    config_until(&us, "the re-scoped model", |c| {
        version_on(c, "regional") == Some(v2)
    })
    .await;
    config_until(&eu, "the removal", |c| version_on(c, "regional").is_none()).await;

    let v3 = apply(&mut admin, scoped(&[])).await;
    config_until(&eu, "the global model", |c| {
        version_on(c, "regional") == Some(v3)
    })
    .await;
    config_until(&us, "the global model", |c| {
        version_on(c, "regional") == Some(v3)
    })
    .await;
    eu.shutdown(Duration::from_secs(5)).await;
    us.shutdown(Duration::from_secs(5)).await;
    cp.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn killing_the_replica_a_node_is_connected_to_loses_no_update() {
    let etcd = EtcdServer::start().unwrap();
    let store = format!("etcd://{}", etcd.endpoint());
    let (a, b) = (replica(&store, "replica-a"), replica(&store, "replica-b"));
    let (mut admin, mut fleet) = clients(&b.grpc_url()).await;
    apply(&mut admin, tenant("acme")).await;
    let v1 = apply(&mut admin, usable("gpt")).await;
    let dir = tempfile::tempdir().unwrap();
    let n = node("n1", "us", &[a.grpc_url(), b.grpc_url()], dir.path()).await;
    config_until(&n, "gpt", |c| version_on(c, "gpt") == Some(v1)).await;
    nodes_until(&mut fleet, 1, |n| n.connected_replica == "replica-a").await;

    // SIGKILL: no drain, no goodbye. Changes made right away must still land.
    a.process.signal("KILL").unwrap();
    let mut changed = usable("gpt");
    if let Some(pb::resource::Spec::Model(spec)) = changed.spec.as_mut() {
        spec.provider_model = "gpt-4o".into();
    }
    let v2 = apply(&mut admin, changed).await;
    let v3 = apply(&mut admin, usable("added-while-failing-over")).await;
    config_until(&n, "both updates", |c| {
        version_on(c, "gpt") == Some(v2) && version_on(c, "added-while-failing-over") == Some(v3)
    })
    .await;
    nodes_until(&mut fleet, 1, |n| {
        n.connected && n.connected_replica == "replica-b"
    })
    .await;
    n.shutdown(Duration::from_secs(5)).await;
    drop(b);
}
