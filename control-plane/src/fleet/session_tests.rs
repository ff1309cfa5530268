//! Tests of the StreamConfig session rules, one rule per test.

use std::sync::Arc;

use aios_model::{Kind, Placement, labels::LabelSelector};
use aios_proto::v1::{self as pb, resource::Spec};

use super::*;
use crate::fleet::cache::{CachedObject, Snapshot};

fn object(
    name: &str,
    version: Revision,
    regions: &[&str],
    selector: &str,
) -> (String, Arc<CachedObject>) {
    let resource = pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            tenant: "acme".into(),
            resource_version: version,
            ..Default::default()
        }),
        spec: Some(Spec::Model(pb::ModelSpec::default())),
    };
    let object = CachedObject {
        kind: Kind::Model,
        tenant: "acme".into(),
        name: name.into(),
        version,
        resource,
        placement: Placement {
            regions: regions.iter().map(|r| r.to_string()).collect(),
            node_selector: LabelSelector::parse(selector).unwrap(),
        },
    };
    (keys::resource(Kind::Model, "acme", name), Arc::new(object))
}

fn snapshot(revision: Revision, objects: Vec<(String, Arc<CachedObject>)>) -> Snapshot {
    Snapshot {
        revision,
        objects: objects.into_iter().collect(),
    }
}

fn scope(region: &str, labels: &[(&str, &str)]) -> NodeScope {
    NodeScope {
        region: region.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn names(push: &pb::ConfigPush) -> (Vec<String>, Vec<String>) {
    let updates = push
        .updates
        .iter()
        .map(|r| r.metadata.as_ref().unwrap().name.clone())
        .collect();
    let removals = push.removals.iter().map(|r| r.name.clone()).collect();
    (updates, removals)
}

fn model_ref(name: &str) -> pb::ResourceRef {
    pb::ResourceRef {
        kind: pb::Kind::Model as i32,
        tenant: "acme".into(),
        name: name.into(),
    }
}

fn accept_all(push: &pb::ConfigPush) -> pb::ConfigAck {
    pb::ConfigAck {
        nonce: push.nonce.clone(),
        results: vec![],
    }
}

fn nack(push: &pb::ConfigPush, name: &str, version: Revision, error: &str) -> pb::ConfigAck {
    pb::ConfigAck {
        nonce: push.nonce.clone(),
        results: vec![pb::ResourceAck {
            resource: Some(model_ref(name)),
            version,
            accepted: false,
            error: error.into(),
        }],
    }
}

#[test]
fn the_first_push_is_the_nodes_scoped_view_and_waits_for_its_ack() {
    let mut session = Session::new(scope("us-east-1", &[("tier", "gpu")]), &[]);
    let snap = snapshot(
        9,
        vec![
            object("global", 3, &[], ""),
            object("eu-only", 4, &["eu-west-1"], ""),
            object("gpu-only", 5, &[], "tier=gpu"),
            object("cpu-only", 6, &[], "tier=cpu"),
        ],
    );
    let push = session.next_push(&snap).unwrap();
    assert!(push.initial && push.nonce == "n1" && push.revision == 9);
    assert_eq!(
        names(&push),
        (vec!["global".into(), "gpu-only".into()], vec![])
    );
    assert!(
        session.next_push(&snap).is_none(),
        "one push outstanding at a time"
    );
    assert_eq!(
        session.on_ack(&accept_all(&push)),
        AckOutcome::Applied { nacks: 0 }
    );
    assert_eq!(session.held().values().copied().collect::<Vec<_>>(), [3, 5]);
    assert_eq!(session.synced_revision(), 9);
    assert!(
        session.next_push(&snap).is_none(),
        "nothing differs any more"
    );
    let later = snapshot(12, snap.objects.clone().into_iter().collect());
    assert!(session.next_push(&later).is_none());
    assert_eq!(
        session.synced_revision(),
        12,
        "a node with nothing to change is in sync with the newest revision"
    );
}

#[test]
fn the_first_push_is_sent_even_when_nothing_differs() {
    let held = pb::HeldResource {
        resource: Some(model_ref("kept")),
        version: 3,
    };
    let mut session = Session::new(scope("us-east-1", &[]), &[held]);
    let snap = snapshot(10, vec![object("kept", 3, &[], "")]);
    let push = session.next_push(&snap).unwrap();
    assert!(push.initial && push.updates.is_empty() && push.removals.is_empty());
    assert_eq!(session.synced_revision(), 0, "not before the ACK");
    session.on_ack(&accept_all(&push));
    assert_eq!(session.synced_revision(), 10);
    assert!(session.next_push(&snap).is_none());
}

#[test]
fn what_the_node_already_holds_is_not_resent_and_what_it_should_not_hold_is_removed() {
    let held = |name: &str, version| pb::HeldResource {
        resource: Some(model_ref(name)),
        version,
    };
    let mut session = Session::new(
        scope("us-east-1", &[]),
        &[held("kept", 3), held("old", 2), held("gone", 1)],
    );
    let snap = snapshot(
        10,
        vec![object("kept", 3, &[], ""), object("old", 7, &[], "")],
    );
    let push = session.next_push(&snap).unwrap();
    assert_eq!(names(&push), (vec!["old".into()], vec!["gone".into()]));
}

#[test]
fn a_nacked_version_is_parked_until_the_object_changes() {
    let mut session = Session::new(scope("us-east-1", &[]), &[]);
    let push = session
        .next_push(&snapshot(5, vec![object("m", 5, &[], "")]))
        .unwrap();
    assert_eq!(
        session.on_ack(&nack(&push, "m", 5, "unknown provider")),
        AckOutcome::Applied { nacks: 1 }
    );
    let parked = &session.parked()[&keys::resource(Kind::Model, "acme", "m")];
    assert_eq!(
        (parked.version, parked.error.as_str()),
        (5, "unknown provider")
    );
    assert!(
        session.held().is_empty(),
        "the node keeps what it had: nothing"
    );
    assert!(
        session
            .next_push(&snapshot(6, vec![object("m", 5, &[], "")]))
            .is_none(),
        "not resent"
    );

    let push = session
        .next_push(&snapshot(7, vec![object("m", 7, &[], "")]))
        .unwrap();
    assert_eq!(names(&push).0, ["m"], "a new version is pushed");
    session.on_ack(&accept_all(&push));
    assert!(session.parked().is_empty());
    assert_eq!(session.held().values().copied().collect::<Vec<_>>(), [7]);
}

#[test]
fn acks_with_another_nonce_are_stale_and_ignored() {
    let mut session = Session::new(scope("r", &[]), &[]);
    let push = session
        .next_push(&snapshot(2, vec![object("m", 2, &[], "")]))
        .unwrap();
    let stale = pb::ConfigAck {
        nonce: "n0".into(),
        results: vec![],
    };
    assert_eq!(session.on_ack(&stale), AckOutcome::Stale);
    assert_eq!(
        session.outstanding_nonce(),
        Some(push.nonce.as_str()),
        "still waiting for the real answer"
    );
    assert_eq!(
        session.on_ack(&accept_all(&push)),
        AckOutcome::Applied { nacks: 0 }
    );
    assert_eq!(
        session.on_ack(&accept_all(&push)),
        AckOutcome::Stale,
        "a duplicate answer is stale too"
    );
}

#[test]
fn scope_changes_add_and_remove_in_both_directions() {
    let mut session = Session::new(scope("eu-west-1", &[]), &[]);
    let push = session
        .next_push(&snapshot(3, vec![object("m", 3, &[], "")]))
        .unwrap();
    session.on_ack(&accept_all(&push));
    // The resource is re-scoped away from this node's region: removed here.
    let push = session
        .next_push(&snapshot(4, vec![object("m", 4, &["us-east-1"], "")]))
        .unwrap();
    assert_eq!(names(&push), (vec![], vec!["m".into()]));
    session.on_ack(&accept_all(&push));
    assert!(session.held().is_empty());
    // And back: re-added.
    let push = session
        .next_push(&snapshot(5, vec![object("m", 5, &["eu-west-1"], "")]))
        .unwrap();
    assert_eq!(names(&push).0, ["m"]);

    // A node whose region changed reconnects with what it holds: the new
    // scope removes what no longer applies.
    let held = [pb::HeldResource {
        resource: Some(model_ref("m")),
        version: 5,
    }];
    let mut moved = Session::new(scope("ap-south-1", &[]), &held);
    let push = moved
        .next_push(&snapshot(5, vec![object("m", 5, &["eu-west-1"], "")]))
        .unwrap();
    assert_eq!(names(&push), (vec![], vec!["m".into()]));
}

#[test]
fn deletions_are_removals_and_forget_parked_versions() {
    let mut session = Session::new(scope("r", &[]), &[]);
    let push = session
        .next_push(&snapshot(
            2,
            vec![object("ok", 1, &[], ""), object("bad", 2, &[], "")],
        ))
        .unwrap();
    session.on_ack(&nack(&push, "bad", 2, "invalid"));
    let push = session.next_push(&snapshot(4, vec![])).unwrap();
    assert_eq!(
        names(&push),
        (vec![], vec!["ok".into()]),
        "the node never held the rejected one"
    );
    assert!(session.parked().is_empty());
}

#[test]
fn changes_behind_an_outstanding_push_coalesce_into_one() {
    let mut session = Session::new(scope("r", &[]), &[]);
    let push = session
        .next_push(&snapshot(1, vec![object("m", 1, &[], "")]))
        .unwrap();
    // Two more changes land while the node is slow to answer.
    assert!(
        session
            .next_push(&snapshot(2, vec![object("m", 2, &[], "")]))
            .is_none()
    );
    let latest = snapshot(3, vec![object("m", 3, &[], ""), object("n", 3, &[], "")]);
    assert!(session.next_push(&latest).is_none());
    session.on_ack(&accept_all(&push));
    let push = session.next_push(&latest).unwrap();
    assert_eq!(push.revision, 3);
    assert_eq!(names(&push).0, ["m", "n"]);
    assert!(
        push.updates
            .iter()
            .all(|r| r.metadata.as_ref().unwrap().resource_version == 3),
        "only the newest version travels"
    );
}
