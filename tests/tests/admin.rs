//! The Admin API end to end over real gRPC: tenant isolation and roles on
//! every RPC, validation with field violations, optimistic concurrency,
//! size limits, all-or-nothing batches, watch (compaction included), the
//! audit log, and state that survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use aios_proto::v1::{self as pb, admin_service_client::AdminServiceClient, resource::Spec};
use aios_tests::admin::{
    ADMIN_KEY, TestPlane, agent, api_key, budget, model, routing_table, tenant,
};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

/// A client for `plane` acting with `key`.
async fn client(plane: &TestPlane, key: &str) -> AdminServiceClient<aios_client::AuthChannel> {
    let channel = aios_client::connect(&plane.url(), Some(key), Duration::from_secs(10))
        .await
        .unwrap();
    AdminServiceClient::new(channel)
}

async fn apply(
    c: &mut AdminServiceClient<aios_client::AuthChannel>,
    resource: pb::Resource,
) -> Result<pb::ApplyResponse, tonic::Status> {
    c.apply(pb::ApplyRequest {
        resource: Some(resource),
        dry_run: false,
    })
    .await
    .map(|r| r.into_inner())
}

fn get_req(kind: pb::Kind, tenant: &str, name: &str) -> pb::GetRequest {
    pb::GetRequest {
        kind: kind as i32,
        tenant: tenant.into(),
        name: name.into(),
    }
}

/// Two tenants, each with an admin key; acme also has a viewer and an operator.
struct Tenants {
    acme_admin: String,
    acme_viewer: String,
    acme_operator: String,
    globex_admin: String,
}

async fn two_tenants(plane: &TestPlane) -> Tenants {
    let mut platform = client(plane, ADMIN_KEY).await;
    for name in ["acme", "globex"] {
        apply(&mut platform, tenant(name)).await.unwrap();
    }
    let key = |tenant: &'static str, name: &'static str, role: pb::Role| {
        let mut platform = platform.clone();
        async move {
            apply(&mut platform, api_key(tenant, name, role))
                .await
                .unwrap()
                .api_key_secret
        }
    };
    let t = Tenants {
        acme_admin: key("acme", "admin", pb::Role::Admin).await,
        acme_viewer: key("acme", "viewer", pb::Role::Viewer).await,
        acme_operator: key("acme", "operator", pb::Role::Operator).await,
        globex_admin: key("globex", "admin", pb::Role::Admin).await,
    };
    assert!(
        t.acme_admin.starts_with("aios_"),
        "the secret is returned once, on creation"
    );
    t
}

#[tokio::test]
async fn a_tenant_key_never_reads_or_changes_another_tenant() {
    let plane = TestPlane::embedded().await;
    let keys = two_tenants(&plane).await;
    let mut globex = client(&plane, &keys.globex_admin).await;
    apply(&mut globex, model("globex", "secret-model"))
        .await
        .unwrap();
    let mut acme = client(&plane, &keys.acme_admin).await;
    apply(&mut acme, model("acme", "m1")).await.unwrap();

    let denied =
        |status: tonic::Status| assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Apply, BatchApply (and nothing of the batch is written), Get, List, Delete, Watch, audit.
    denied(
        apply(&mut acme, model("globex", "intruder"))
            .await
            .unwrap_err(),
    );
    let batch = pb::BatchApplyRequest {
        resources: vec![model("acme", "innocent"), model("globex", "intruder")],
        dry_run: false,
    };
    denied(acme.batch_apply(batch).await.unwrap_err());
    let missing = acme
        .get(get_req(pb::Kind::Model, "acme", "innocent"))
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        Code::NotFound,
        "a refused batch wrote part of itself"
    );
    denied(
        acme.get(get_req(pb::Kind::Model, "globex", "secret-model"))
            .await
            .unwrap_err(),
    );
    denied(
        acme.get(get_req(pb::Kind::Tenant, "", "globex"))
            .await
            .unwrap_err(),
    );
    for tenant in ["globex", "*"] {
        let list = pb::ListRequest {
            kind: pb::Kind::Model as i32,
            tenant: tenant.into(),
            ..Default::default()
        };
        denied(acme.list(list).await.unwrap_err());
    }
    let delete = pb::DeleteRequest {
        kind: pb::Kind::Model as i32,
        tenant: "globex".into(),
        name: "secret-model".into(),
        resource_version: 0,
    };
    denied(acme.delete(delete).await.unwrap_err());
    denied(
        acme.watch(pb::WatchRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    denied(
        acme.list_audit_events(pb::ListAuditEventsRequest {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );

    // Own-tenant listings show only the tenant's objects, tenants included.
    let all = acme
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    for resource in &all.resources {
        let meta = resource.metadata.as_ref().unwrap();
        let own = meta.tenant == "acme" || (meta.tenant.is_empty() && meta.name == "acme");
        assert!(own, "acme sees {meta:?}");
    }
    assert!(
        all.resources
            .iter()
            .any(|r| r.metadata.as_ref().unwrap().name == "m1")
    );
    let audit = acme
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!audit.events.is_empty());
    let own_event = |e: &pb::AuditEvent| {
        let target = e.target.as_ref().unwrap();
        target.tenant == "acme" || (target.kind == pb::Kind::Tenant as i32 && target.name == "acme")
    };
    assert!(audit.events.iter().all(own_event), "{:?}", audit.events);

    // A watch on all kinds sees acme's changes, never globex's.
    let mut events = acme
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    apply(&mut globex, model("globex", "later")).await.unwrap();
    apply(&mut acme, model("acme", "later")).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let meta = event.resource.unwrap().metadata.unwrap();
    assert_eq!(
        (meta.tenant.as_str(), meta.name.as_str()),
        ("acme", "later")
    );

    // The platform admin sees across tenants with "*".
    let mut platform = client(&plane, ADMIN_KEY).await;
    let list = pb::ListRequest {
        kind: pb::Kind::Model as i32,
        tenant: "*".into(),
        ..Default::default()
    };
    let names: Vec<String> = platform
        .list(list)
        .await
        .unwrap()
        .into_inner()
        .resources
        .into_iter()
        .map(|r| r.metadata.unwrap().name)
        .collect();
    assert!(
        names.contains(&"secret-model".to_string()) && names.contains(&"m1".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn roles_limit_what_a_key_may_do() {
    let plane = TestPlane::embedded().await;
    let keys = two_tenants(&plane).await;
    let mut viewer = client(&plane, &keys.acme_viewer).await;
    let status = apply(&mut viewer, model("acme", "m")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "ROLE_FORBIDDEN"
    );
    let batch = pb::BatchApplyRequest {
        resources: vec![model("acme", "m")],
        dry_run: true,
    };
    assert_eq!(
        viewer.batch_apply(batch).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let delete = pb::DeleteRequest {
        kind: pb::Kind::ApiKey as i32,
        tenant: String::new(),
        name: "admin".into(),
        resource_version: 0,
    };
    assert_eq!(
        viewer.delete(delete).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Reads work.
    viewer
        .get(get_req(pb::Kind::ApiKey, "", "admin"))
        .await
        .unwrap();
    viewer.list(pb::ListRequest::default()).await.unwrap();
    viewer
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .unwrap();
    viewer.watch(pb::WatchRequest::default()).await.unwrap();

    let mut operator = client(&plane, &keys.acme_operator).await;
    apply(&mut operator, model("acme", "ok")).await.unwrap();
    let status = apply(&mut operator, api_key("acme", "sneaky", pb::Role::Admin))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "operators do not mint keys"
    );
    let mut acme_admin = client(&plane, &keys.acme_admin).await;
    let status = apply(&mut acme_admin, tenant("acme2")).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "tenant admins do not create tenants"
    );

    let mut nobody = client(&plane, "aios_not-a-real-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaa").await;
    assert_eq!(
        nobody
            .list(pb::ListRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let channel = aios_client::connect(&plane.url(), None, Duration::from_secs(10))
        .await
        .unwrap();
    let status = AdminServiceClient::new(channel)
        .list(pb::ListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("x-api-key"), "{status:?}");
}

#[tokio::test]
async fn invalid_stale_and_oversized_writes_fail_cleanly_and_write_nothing() {
    let plane = TestPlane::embedded().await;
    let mut c = client(&plane, ADMIN_KEY).await;
    apply(&mut c, tenant("acme")).await.unwrap();
    let before = c
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .len();

    // Every bad field is reported, by path.
    let mut bad = budget("acme", "b");
    if let Some(Spec::Budget(spec)) = bad.spec.as_mut() {
        spec.limit_usd = -5.0;
        spec.window = 0;
    }
    let status = apply(&mut c, bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields = aios_tests::violated_fields(&status);
    assert!(
        fields.iter().any(|f| f.ends_with("limit_usd"))
            && fields.iter().any(|f| f.ends_with("window")),
        "{fields:?}"
    );
    assert!(
        fields.iter().all(|f| f.starts_with("resource.")),
        "{fields:?}"
    );

    // No spec at all, and an unknown kind on Get.
    let status = apply(
        &mut c,
        pb::Resource {
            metadata: Some(pb::ObjectMeta {
                name: "x".into(),
                ..Default::default()
            }),
            spec: None,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = c
        .get(pb::GetRequest {
            kind: 99,
            tenant: "acme".into(),
            name: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Optimistic concurrency.
    let created = apply(&mut c, model("acme", "m"))
        .await
        .unwrap()
        .resource
        .unwrap();
    let version = created.metadata.as_ref().unwrap().resource_version;
    let mut update = model("acme", "m");
    if let Some(Spec::Model(spec)) = update.spec.as_mut() {
        spec.output_price_usd_per_mtok = 9.0;
    }
    update.metadata.as_mut().unwrap().resource_version = version;
    let updated = apply(&mut c, update.clone())
        .await
        .unwrap()
        .resource
        .unwrap();
    assert!(updated.metadata.as_ref().unwrap().resource_version > version);
    assert_eq!(updated.metadata.as_ref().unwrap().generation, 2);
    let status = apply(&mut c, update).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "STALE_RESOURCE_VERSION"
    );
    let delete = pb::DeleteRequest {
        kind: pb::Kind::Model as i32,
        tenant: "acme".into(),
        name: "m".into(),
        resource_version: version,
    };
    assert_eq!(c.delete(delete).await.unwrap_err().code(), Code::Aborted);

    // Oversized values: the only fault is the size (the routing table exists).
    let rt = routing_table("acme", "rt", "m");
    apply(&mut c, rt).await.unwrap();
    apply(&mut c, agent("acme", "small", "rt")).await.unwrap();
    let mut huge = agent("acme", "huge", "rt");
    if let Some(Spec::Agent(spec)) = huge.spec.as_mut() {
        spec.system_prompt = "x".repeat(1_200_000);
    }
    let status = apply(&mut c, huge).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "resource");
    assert!(
        violations[0].description.contains("limit"),
        "{violations:?}"
    );
    assert_eq!(
        c.get(get_req(pb::Kind::Agent, "acme", "huge"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Re-applying identical content writes nothing.
    let again = apply(&mut c, model("acme", "fresh")).await.unwrap();
    let same = apply(&mut c, model("acme", "fresh")).await.unwrap();
    assert!(same.unchanged && !same.created);
    assert_eq!(
        again.resource.unwrap().metadata.unwrap().resource_version,
        same.resource.unwrap().metadata.unwrap().resource_version
    );

    let after = c
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .len();
    assert_eq!(
        after - before,
        5,
        "audit records only the writes that happened (m created and updated, rt, small, fresh)"
    );
}

#[tokio::test]
async fn batches_are_all_or_nothing_and_may_reference_each_other() {
    let plane = TestPlane::embedded().await;
    let mut c = client(&plane, ADMIN_KEY).await;
    apply(&mut c, tenant("acme")).await.unwrap();
    let mut rt = routing_table("acme", "rt", "m");
    // One invalid document: nothing is written.
    let mut bad_model = model("acme", "m");
    if let Some(Spec::Model(spec)) = bad_model.spec.as_mut() {
        spec.input_price_usd_per_mtok = -1.0;
    }
    let request = pb::BatchApplyRequest {
        resources: vec![rt.clone(), bad_model, agent("acme", "bot", "rt")],
        dry_run: false,
    };
    let status = c.batch_apply(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = aios_tests::violated_fields(&status);
    assert!(
        fields.iter().all(|f| f.starts_with("resources[1].")),
        "{fields:?}"
    );
    for (kind, name) in [
        (pb::Kind::RoutingTable, "rt"),
        (pb::Kind::Agent, "bot"),
        (pb::Kind::Model, "m"),
    ] {
        assert_eq!(
            c.get(get_req(kind, "acme", name)).await.unwrap_err().code(),
            Code::NotFound,
            "{name} was written"
        );
    }
    // A dangling reference is a failed precondition.
    let request = pb::BatchApplyRequest {
        resources: vec![rt.clone()],
        dry_run: false,
    };
    let status = c.batch_apply(request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // All valid, referencing each other: written together at one revision.
    let request = pb::BatchApplyRequest {
        resources: vec![agent("acme", "bot", "rt"), rt.clone(), model("acme", "m")],
        dry_run: false,
    };
    let response = c.batch_apply(request).await.unwrap().into_inner();
    assert!(response.revision > 0);
    for result in &response.results {
        assert!(result.created);
        assert_eq!(
            result
                .resource
                .as_ref()
                .unwrap()
                .metadata
                .as_ref()
                .unwrap()
                .resource_version,
            response.revision
        );
    }
    // Deleting what is still referenced fails; dry runs write nothing.
    let delete = pb::DeleteRequest {
        kind: pb::Kind::Model as i32,
        tenant: "acme".into(),
        name: "m".into(),
        resource_version: 0,
    };
    assert_eq!(
        c.delete(delete).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    rt.metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("changed".into(), "yes".into());
    let dry = c
        .batch_apply(pb::BatchApplyRequest {
            resources: vec![rt],
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.revision, 0);
    let stored = c
        .get(get_req(pb::Kind::RoutingTable, "acme", "rt"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        stored.metadata.unwrap().labels.is_empty(),
        "a dry run wrote"
    );
}

#[tokio::test]
async fn watch_streams_changes_and_reports_compaction() {
    let plane = TestPlane::embedded().await;
    let mut c = client(&plane, ADMIN_KEY).await;
    let first = apply(&mut c, tenant("acme"))
        .await
        .unwrap()
        .resource
        .unwrap()
        .metadata
        .unwrap()
        .resource_version;
    let watch = pb::WatchRequest {
        kind: pb::Kind::Model as i32,
        tenant: "acme".into(),
        start_revision: first,
    };
    let mut events = c.watch(watch).await.unwrap().into_inner();
    apply(&mut c, model("acme", "m")).await.unwrap();
    c.delete(pb::DeleteRequest {
        kind: pb::Kind::Model as i32,
        tenant: "acme".into(),
        name: "m".into(),
        resource_version: 0,
    })
    .await
    .unwrap();
    let put = events.message().await.unwrap().unwrap();
    assert_eq!(put.r#type, pb::WatchEventType::Put as i32);
    let deleted = events.message().await.unwrap().unwrap();
    assert_eq!(deleted.r#type, pb::WatchEventType::Delete as i32);
    assert!(
        matches!(deleted.resource.unwrap().spec, Some(Spec::Model(_))),
        "a delete names its kind"
    );

    for i in 0..3 {
        apply(&mut c, model("acme", &format!("n{i}")))
            .await
            .unwrap();
    }
    let now = apply(&mut c, model("acme", "last"))
        .await
        .unwrap()
        .resource
        .unwrap()
        .metadata
        .unwrap()
        .resource_version;
    plane.store().compact(now).await.unwrap();
    let watch = pb::WatchRequest {
        kind: 0,
        tenant: "acme".into(),
        start_revision: first,
    };
    let mut stream = c.watch(watch).await.unwrap().into_inner();
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "REVISION_COMPACTED"
    );
}

#[tokio::test]
async fn the_audit_log_records_who_what_and_versions() {
    let plane = TestPlane::embedded().await;
    let mut c = client(&plane, ADMIN_KEY).await;
    apply(&mut c, tenant("acme")).await.unwrap();
    let v1 = apply(&mut c, model("acme", "m"))
        .await
        .unwrap()
        .resource
        .unwrap()
        .metadata
        .unwrap()
        .resource_version;
    let mut changed = model("acme", "m");
    changed
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("a".into(), "b".into());
    let v2 = apply(&mut c, changed)
        .await
        .unwrap()
        .resource
        .unwrap()
        .metadata
        .unwrap()
        .resource_version;
    c.delete(pb::DeleteRequest {
        kind: pb::Kind::Model as i32,
        tenant: "acme".into(),
        name: "m".into(),
        resource_version: v2,
    })
    .await
    .unwrap();
    let request = pb::ListAuditEventsRequest {
        tenant: "acme".into(),
        kind: pb::Kind::Model as i32,
        name: "m".into(),
        ..Default::default()
    };
    let events = c
        .list_audit_events(request)
        .await
        .unwrap()
        .into_inner()
        .events;
    let summary: Vec<(i32, i64, i64)> = events
        .iter()
        .map(|e| (e.action, e.before_version, e.after_version))
        .collect();
    let (apply_, delete) = (
        pb::AuditAction::Apply as i32,
        pb::AuditAction::Delete as i32,
    );
    assert_eq!(
        summary,
        vec![(apply_, 0, v1), (apply_, v1, v2), (delete, v2, 0)]
    );
    assert!(
        events.iter().all(|e| e.actor == "bootstrap-admin"
            && e.actor_tenant == "system"
            && e.time.is_some())
    );
    let by_other = pb::ListAuditEventsRequest {
        tenant: "acme".into(),
        actor: "someone-else".into(),
        ..Default::default()
    };
    assert!(
        c.list_audit_events(by_other)
            .await
            .unwrap()
            .into_inner()
            .events
            .is_empty()
    );
}

#[tokio::test]
async fn state_survives_a_control_plane_restart() {
    let dir = tempfile::tempdir().unwrap();
    let plane = TestPlane::embedded_at(dir.path()).await;
    let mut c = client(&plane, ADMIN_KEY).await;
    apply(&mut c, tenant("acme")).await.unwrap();
    let secret = apply(&mut c, api_key("acme", "ci", pb::Role::Operator))
        .await
        .unwrap()
        .api_key_secret;
    let version = apply(&mut c, model("acme", "m"))
        .await
        .unwrap()
        .resource
        .unwrap()
        .metadata
        .unwrap()
        .resource_version;
    plane.stop().await;

    let plane = TestPlane::embedded_at(dir.path()).await;
    let mut c = client(&plane, &secret).await;
    let stored = c
        .get(get_req(pb::Kind::Model, "", "m"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.metadata.unwrap().resource_version, version);
    let next = apply(&mut c, model("acme", "m2"))
        .await
        .unwrap()
        .resource
        .unwrap()
        .metadata
        .unwrap()
        .resource_version;
    assert!(next > version, "the revision continues after a restart");
}
