//! `FleetService.StreamConfig` on the wire, against a control plane in this
//! process: who may open a stream, hello validation, the initial push,
//! deltas, NACK parking, scoping in both directions, removals across a
//! reconnect, stale nonces, and what `GetNode`/`ListNodes` report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use aios_proto::v1::{
    self as pb, admin_service_client::AdminServiceClient, fleet_service_client::FleetServiceClient,
};
use aios_tests::{
    admin::{ADMIN_KEY, TestPlane, api_key, model, tenant},
    fleet::{SimNode, changes, hello},
};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

type Admin = AdminServiceClient<aios_client::AuthChannel>;
type FleetClient = FleetServiceClient<aios_client::AuthChannel>;

async fn clients(plane: &TestPlane) -> (Admin, FleetClient) {
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), WAIT)
        .await
        .unwrap();
    (
        AdminServiceClient::new(channel.clone()),
        FleetServiceClient::new(channel),
    )
}

async fn apply(admin: &mut Admin, resource: pb::Resource) -> pb::ApplyResponse {
    admin
        .apply(pb::ApplyRequest {
            resource: Some(resource),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
}

fn version(applied: &pb::ApplyResponse) -> i64 {
    applied
        .resource
        .as_ref()
        .and_then(|r| r.metadata.as_ref())
        .map_or(0, |m| m.resource_version)
}

fn scoped(mut resource: pb::Resource, regions: &[&str]) -> pb::Resource {
    if let Some(meta) = resource.metadata.as_mut() {
        meta.regions = regions.iter().map(|r| r.to_string()).collect();
    }
    resource
}

fn priced(mut resource: pb::Resource, price: f64) -> pb::Resource {
    if let Some(pb::resource::Spec::Model(spec)) = resource.spec.as_mut() {
        spec.input_price_usd_per_mtok = price;
    }
    resource
}

fn has_update(push: &pb::ConfigPush, name: &str) -> bool {
    changes(push).0.iter().any(|n| n == name)
}

/// Polls GetNode until `check` holds.
async fn node_until(
    fleet: &mut FleetClient,
    id: &str,
    check: impl Fn(&pb::Node) -> bool,
) -> pb::Node {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let node = fleet
            .get_node(pb::GetNodeRequest { node_id: id.into() })
            .await
            .map(|r| r.into_inner());
        match node {
            Ok(node) if check(&node) => return node,
            other if tokio::time::Instant::now() > deadline => {
                panic!("node {id} never reached the expected state: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn only_node_credentials_open_a_stream_and_a_bad_hello_names_its_fields() {
    let plane = TestPlane::embedded().await;
    let (mut admin, _) = clients(&plane).await;
    apply(&mut admin, tenant("acme")).await;
    let secret = |r: pb::ApplyResponse| r.api_key_secret;
    let tenant_admin = secret(apply(&mut admin, api_key("acme", "admin", pb::Role::Admin)).await);
    let node_key = secret(apply(&mut admin, api_key("system", "nodes", pb::Role::Node)).await);
    let operator = secret(apply(&mut admin, api_key("system", "ops", pb::Role::Operator)).await);

    let refused = SimNode::connect(
        &plane.url(),
        "aios_not-a-real-key-000000000000000000000",
        hello("n1", "us", &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    for key in [&tenant_admin, &operator] {
        let refused = SimNode::connect(&plane.url(), key, hello("n1", "us", &[]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }

    let bad = SimNode::connect(&plane.url(), &node_key, hello("-bad id", "", &[]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let fields = aios_tests::violated_fields(&bad);
    assert_eq!(fields, ["hello.node_id", "hello.region"]);

    // A NODE key of the system tenant works.
    let mut node = SimNode::connect(&plane.url(), &node_key, hello("n1", "us", &[]))
        .await
        .unwrap();
    let push = node.next_push(WAIT).await.unwrap();
    assert!(push.initial);
    plane.stop().await;
}

#[tokio::test]
async fn pushes_acks_nacks_and_the_fleet_view() {
    let plane = TestPlane::embedded().await;
    let (mut admin, mut fleet) = clients(&plane).await;
    apply(&mut admin, tenant("acme")).await;
    let gpt = version(&apply(&mut admin, model("acme", "gpt")).await);

    let mut node = SimNode::connect(
        &plane.url(),
        ADMIN_KEY,
        hello("n1", "us", &[("tier", "gpu")]),
    )
    .await
    .unwrap();
    let initial = node
        .push_with(WAIT, |p| has_update(p, "acme/gpt"))
        .await
        .unwrap();
    assert!(changes(&initial).1.is_empty());
    node.answer(&initial, &[]).await.unwrap();

    let seen = node_until(&mut fleet, "n1", |n| !n.applied.is_empty()).await;
    assert!(seen.connected && !seen.connected_replica.is_empty());
    assert_eq!(seen.region, "us");
    assert_eq!(seen.labels["tier"], "gpu");
    assert!(
        seen.applied
            .iter()
            .any(|h| h.resource.as_ref().unwrap().name == "gpt" && h.version == gpt)
    );

    // A change is pushed as a delta; the node rejects it.
    let rejected = version(&apply(&mut admin, priced(model("acme", "gpt"), 9.0)).await);
    let push = node.next_push(WAIT).await.unwrap();
    assert!(!push.initial);
    assert_eq!(changes(&push), (vec!["acme/gpt".to_string()], vec![]));
    node.answer(
        &push,
        &[(
            "acme/gpt",
            "model.api_key_env: OPENAI_API_KEY is not set on this node",
        )],
    )
    .await
    .unwrap();
    let seen = node_until(&mut fleet, "n1", |n| !n.parked.is_empty()).await;
    let parked = &seen.parked[0];
    assert_eq!(parked.version, rejected);
    assert!(parked.error.contains("OPENAI_API_KEY"), "{parked:?}");
    assert!(
        seen.applied.iter().any(|h| h.version == gpt),
        "the old version stays what the node runs: {seen:?}"
    );

    // Parked: an unrelated change does not resend it.
    apply(&mut admin, model("acme", "other")).await;
    let push = node.next_push(WAIT).await.unwrap();
    assert_eq!(changes(&push), (vec!["acme/other".to_string()], vec![]));
    // A stale nonce is ignored: nothing more is pushed, the real ACK works.
    node.send(pb::node_message::Msg::Ack(pb::ConfigAck {
        nonce: "not-the-nonce".into(),
        results: vec![],
    }))
    .await
    .unwrap();
    node.answer(&push, &[]).await.unwrap();

    // A new version of the parked resource is pushed again and accepted.
    let fixed = version(&apply(&mut admin, priced(model("acme", "gpt"), 1.0)).await);
    let push = node.next_push(WAIT).await.unwrap();
    assert_eq!(changes(&push), (vec!["acme/gpt".to_string()], vec![]));
    node.answer(&push, &[]).await.unwrap();
    let seen = node_until(&mut fleet, "n1", |n| {
        n.parked.is_empty() && n.lag_revisions == 0
    })
    .await;
    assert!(seen.applied.iter().any(|h| h.version == fixed));
    assert!(seen.applied_revision >= fixed);

    // ListNodes shows it; a region filter excludes it.
    let listed = fleet
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.nodes.len(), 1);
    let none = fleet
        .list_nodes(pb::ListNodesRequest {
            region: "eu".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.nodes.is_empty());
    let unknown = fleet
        .get_node(pb::GetNodeRequest {
            node_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Disconnected nodes stay visible, marked so.
    drop(node);
    let gone = node_until(&mut fleet, "n1", |n| !n.connected).await;
    assert!(gone.connected_replica.is_empty());
    plane.stop().await;
}

#[tokio::test]
async fn region_scoping_works_in_both_directions_and_removals_survive_a_reconnect() {
    let plane = TestPlane::embedded().await;
    let (mut admin, _) = clients(&plane).await;
    apply(&mut admin, tenant("acme")).await;
    apply(&mut admin, scoped(model("acme", "regional"), &["eu"])).await;

    let mut us = SimNode::connect(&plane.url(), ADMIN_KEY, hello("us-1", "us", &[]))
        .await
        .unwrap();
    let mut eu = SimNode::connect(&plane.url(), ADMIN_KEY, hello("eu-1", "eu", &[]))
        .await
        .unwrap();
    let push = eu
        .push_with(WAIT, |p| has_update(p, "acme/regional"))
        .await
        .unwrap();
    eu.answer(&push, &[]).await.unwrap();
    let push = us.next_push(WAIT).await.unwrap();
    assert!(!has_update(&push, "acme/regional"));
    us.answer(&push, &[]).await.unwrap();

    // Re-scoped from eu to us: a removal for eu, an update for us.
    apply(&mut admin, scoped(model("acme", "regional"), &["us"])).await;
    let push = eu.next_push(WAIT).await.unwrap();
    assert_eq!(changes(&push), (vec![], vec!["acme/regional".to_string()]));
    eu.answer(&push, &[]).await.unwrap();
    let push = us.next_push(WAIT).await.unwrap();
    assert_eq!(changes(&push), (vec!["acme/regional".to_string()], vec![]));
    us.answer(&push, &[]).await.unwrap();
    let held = push.updates[0].metadata.as_ref().unwrap().resource_version;

    // The us node goes away; the resource is deleted meanwhile; on reconnect
    // with what it holds, the removal is in its initial push.
    drop(us);
    admin
        .delete(pb::DeleteRequest {
            kind: pb::Kind::Model as i32,
            tenant: "acme".into(),
            name: "regional".into(),
            resource_version: 0,
        })
        .await
        .unwrap();
    let mut reconnect = hello("us-1", "us", &[]);
    reconnect.held = vec![pb::HeldResource {
        resource: Some(pb::ResourceRef {
            kind: pb::Kind::Model as i32,
            tenant: "acme".into(),
            name: "regional".into(),
        }),
        version: held,
    }];
    let mut us = SimNode::connect(&plane.url(), ADMIN_KEY, reconnect)
        .await
        .unwrap();
    us.push_with(WAIT, |p| {
        changes(p).1.contains(&"acme/regional".to_string())
    })
    .await
    .unwrap();
    // The eu node holds nothing of it, so it hears nothing.
    eu.expect_quiet(Duration::from_millis(300)).await.unwrap();
    plane.stop().await;
}

#[tokio::test]
async fn a_newer_stream_of_the_same_node_replaces_the_older() {
    let plane = TestPlane::embedded().await;
    let mut first = SimNode::connect(&plane.url(), ADMIN_KEY, hello("n1", "us", &[]))
        .await
        .unwrap();
    first.next_push(WAIT).await.unwrap();
    let mut second = SimNode::connect(&plane.url(), ADMIN_KEY, hello("n1", "us", &[]))
        .await
        .unwrap();
    second.next_push(WAIT).await.unwrap();
    let ended = first.next(WAIT).await.unwrap().unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    plane.stop().await;
}

#[tokio::test]
async fn a_stuck_node_delays_nobody_and_then_gets_one_coalesced_push() {
    let plane = TestPlane::embedded().await;
    let (mut admin, _) = clients(&plane).await;
    apply(&mut admin, tenant("acme")).await;
    let mut stuck = SimNode::connect(&plane.url(), ADMIN_KEY, hello("stuck", "us", &[]))
        .await
        .unwrap();
    let mut live = SimNode::connect(&plane.url(), ADMIN_KEY, hello("live", "us", &[]))
        .await
        .unwrap();
    let stuck_initial = stuck.next_push(WAIT).await.unwrap();

    // The stuck node never answers; the live one gets every change.
    let mut last = 0;
    for price in 1..=5 {
        last = version(&apply(&mut admin, priced(model("acme", "gpt"), f64::from(price))).await);
        let push = live
            .push_with(WAIT, |p| {
                p.updates
                    .iter()
                    .any(|r| aios_tests::fleet::version_of(r) == last)
            })
            .await
            .unwrap();
        live.answer(&push, &[]).await.unwrap();
    }
    stuck
        .expect_quiet(Duration::from_millis(200))
        .await
        .unwrap();

    // Once it answers, it gets one push with only the newest version.
    stuck.answer(&stuck_initial, &[]).await.unwrap();
    let push = stuck.next_push(WAIT).await.unwrap();
    let versions: Vec<i64> = push
        .updates
        .iter()
        .filter(|r| aios_tests::fleet::name_of(r) == "acme/gpt")
        .map(aios_tests::fleet::version_of)
        .collect();
    assert_eq!(versions, [last], "one push, newest version only");
    plane.stop().await;
}

#[tokio::test]
async fn a_node_that_moves_region_loses_what_no_longer_applies() {
    let plane = TestPlane::embedded().await;
    let (mut admin, _) = clients(&plane).await;
    apply(&mut admin, tenant("acme")).await;
    apply(&mut admin, scoped(model("acme", "us-only"), &["us"])).await;
    let mut node = SimNode::connect(&plane.url(), ADMIN_KEY, hello("n1", "us", &[]))
        .await
        .unwrap();
    let push = node
        .push_with(WAIT, |p| has_update(p, "acme/us-only"))
        .await
        .unwrap();
    node.answer(&push, &[]).await.unwrap();
    let held: Vec<pb::HeldResource> = push
        .updates
        .iter()
        .map(|r| pb::HeldResource {
            resource: Some(aios_tests::fleet::reference_of(r)),
            version: aios_tests::fleet::version_of(r),
        })
        .collect();
    drop(node);

    // Back with the same config, now in eu.
    let mut moved = hello("n1", "eu", &[]);
    moved.held = held;
    let mut node = SimNode::connect(&plane.url(), ADMIN_KEY, moved)
        .await
        .unwrap();
    let push = node.next_push(WAIT).await.unwrap();
    assert!(push.initial);
    assert_eq!(changes(&push).1, ["acme/us-only"]);
    plane.stop().await;
}
