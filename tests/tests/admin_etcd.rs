//! Control-plane replicas share state through a real etcd: two processes
//! on one etcd see each other's writes, live, and agree on one bootstrap key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use aios_proto::v1::{self as pb, admin_service_client::AdminServiceClient};
use aios_tests::{
    SpawnedPlane,
    admin::{ADMIN_KEY, model, tenant},
    etcd::EtcdServer,
};

async fn client(plane: &SpawnedPlane) -> AdminServiceClient<aios_client::AuthChannel> {
    let channel = aios_client::connect(&plane.grpc_url(), Some(ADMIN_KEY), Duration::from_secs(10))
        .await
        .unwrap();
    AdminServiceClient::new(channel)
}

#[tokio::test]
async fn two_control_planes_on_one_etcd_see_each_others_writes() {
    let etcd = EtcdServer::start().unwrap();
    let store = format!("etcd://{}", etcd.endpoint());
    let env = [("AIOS_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)];
    let a =
        SpawnedPlane::control_plane_on(&store, &env, &[], tempfile::tempdir().unwrap()).unwrap();
    let b =
        SpawnedPlane::control_plane_on(&store, &env, &[], tempfile::tempdir().unwrap()).unwrap();
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);

    // B watches every tenant from now; A writes; B reads A's write and sees it live.
    let mut events = cb
        .watch(pb::WatchRequest {
            tenant: "*".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let apply = |resource| pb::ApplyRequest {
        resource: Some(resource),
        dry_run: false,
    };
    ca.apply(apply(tenant("acme"))).await.unwrap();
    let written = ca
        .apply(apply(model("acme", "m")))
        .await
        .unwrap()
        .into_inner()
        .resource
        .unwrap();
    let read = cb
        .get(pb::GetRequest {
            kind: pb::Kind::Model as i32,
            tenant: "acme".into(),
            name: "m".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, written);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(event.resource.unwrap().metadata.unwrap().name);
    }
    assert_eq!(seen, ["acme", "m"]);

    // And the other way round.
    cb.apply(apply(model("acme", "from-b"))).await.unwrap();
    let list = ca
        .list(pb::ListRequest {
            kind: pb::Kind::Model as i32,
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let names: Vec<String> = list
        .into_inner()
        .resources
        .into_iter()
        .map(|r| r.metadata.unwrap().name)
        .collect();
    assert_eq!(names, ["from-b", "m"]);

    // Both replicas bootstrapped against the same store: one key, one audit trail.
    let audit = ca
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The tenant, m (written through A) and from-b (through B), in order.
    let targets: Vec<String> = audit
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.target.unwrap().name)
        .collect();
    assert_eq!(targets, ["acme", "m", "from-b"]);
}
