//! Telemetry end to end: requests through two data-plane nodes reach the
//! control plane's rollups (`GetSummary`) and a live `Subscribe` stream,
//! with costs equal to the sum of the responses' costs; across a
//! control-plane restart, while the nodes keep serving, every span reaches
//! the rollups exactly once; and alert rules applied as config fire and
//! resolve on a subscription, changed without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use aios_data_plane::{DataPlane, fleet::ResourceKey};
use aios_model::Kind;
use aios_proto::v1::{self as pb, admin_service_client::AdminServiceClient, resource::Spec};
use aios_runtime::hex;
use aios_tests::{
    admin::{ADMIN_KEY, TestPlane, alert_rule, api_key},
    fake_provider::{FakeProvider, Reply},
    telemetry::{WAIT, next_alert, node, ready, seed, send, summary, summary_reaching, telemetry},
};

/// Sends `count` requests to `node` and returns the sum of their costs.
async fn ask(node: &DataPlane, key: &str, count: usize) -> f64 {
    aios_tests::telemetry::ask(node, key, count)
        .await
        .iter()
        .map(|response| response.cost_usd)
        .sum()
}

fn assert_cost(seen: f64, sent: f64) {
    assert!(sent > 0.0, "the fake provider's answers cost something");
    assert!(
        (seen - sent).abs() <= sent * 1e-9,
        "the rollups hold ${seen}, the responses cost ${sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_through_two_nodes_reach_the_summary_and_a_subscriber_with_their_costs() {
    let fake = FakeProvider::start().await.unwrap();
    fake.reply(Reply::Text("Four.".into()));
    let plane = TestPlane::embedded().await;
    let aios_tests::telemetry::Keys { caller, viewer } = seed(&plane, &fake).await;
    let dir = tempfile::tempdir().unwrap();
    let (east, west) = (
        node(&plane.url(), "node-east", dir.path()).await,
        node(&plane.url(), "node-west", dir.path()).await,
    );
    ready(&east).await;
    ready(&west).await;

    // A dashboard subscribes before the traffic starts.
    let mut client = telemetry(&plane.url(), &viewer).await;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            window: pb::RollupWindow::Second as i32,
            include_spans: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let sent = ask(&east, &caller, 12).await + ask(&west, &caller, 8).await;

    let s = summary_reaching(&mut client, 20).await;
    assert_eq!(s.requests, 20, "{s:?}");
    assert_eq!(s.errors, 0);
    assert_cost(s.cost_usd, sent);
    assert!(s.input_tokens > 0 && s.output_tokens > 0, "{s:?}");
    assert!(s.savings_usd > 0.0, "the baseline model costs more: {s:?}");
    assert!(s.latency_p50.is_some() && s.latency_p99.is_some());
    assert_eq!(s.per_agent.len(), 1);
    assert_eq!(s.per_agent[0].agent, "support");
    assert_eq!(s.per_agent[0].requests, 20);

    // Each node's share, by filter.
    let east_only = client
        .get_summary(pb::GetSummaryRequest {
            filter: Some(pb::SummaryFilter {
                node: "node-east".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .summary
        .unwrap();
    assert_eq!(east_only.requests, 12);

    // The subscriber sees the same requests in its per-second rollups, and
    // the spans themselves, each of one trace with a request span.
    let (mut requests, mut cost, mut spans) = (0, 0.0, Vec::new());
    let deadline = tokio::time::Instant::now() + WAIT;
    while requests < 20 && tokio::time::Instant::now() < deadline {
        let Ok(Some(item)) = tokio::time::timeout(WAIT, stream.message()).await.unwrap() else {
            break;
        };
        match item.event {
            Some(pb::subscribe_response::Event::Rollup(r)) => {
                requests += r.requests;
                cost += r.cost_usd;
            }
            Some(pb::subscribe_response::Event::Span(span)) => spans.push(span),
            _ => {}
        }
    }
    assert_eq!(requests, 20);
    assert_cost(cost, sent);
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.operation == "invoke_agent")
        .collect();
    assert_eq!(roots.len(), 20, "one request span per request");
    assert!(spans.iter().all(|s| s.tenant == "acme"));

    // A whole trace by id: the request span and its model call.
    let root = roots[0];
    let trace = client
        .get_trace(pb::GetTraceRequest {
            trace_id: hex::encode(&root.trace_id),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(trace.spans.len() >= 2, "{trace:?}");
    assert!(
        trace
            .spans
            .iter()
            .any(|s| s.operation == "chat" && s.parent_span_id == root.span_id)
    );

    east.shutdown(Duration::from_secs(5)).await;
    west.shutdown(Duration::from_secs(5)).await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_restart_loses_no_span_and_counts_none_twice() {
    let fake = FakeProvider::start().await.unwrap();
    fake.reply(Reply::Text("Four.".into()));
    let store_dir = tempfile::tempdir().unwrap();
    let plane = TestPlane::embedded_at(store_dir.path()).await;
    let (addr, url) = (plane.addr(), plane.url());
    let aios_tests::telemetry::Keys { caller, viewer } = seed(&plane, &fake).await;
    let dir = tempfile::tempdir().unwrap();
    let (east, west) = (
        node(&url, "node-east", dir.path()).await,
        node(&url, "node-west", dir.path()).await,
    );
    ready(&east).await;
    ready(&west).await;

    let mut sent = ask(&east, &caller, 10).await + ask(&west, &caller, 10).await;
    // The control plane goes away while the nodes keep serving.
    plane.stop().await;
    sent += ask(&east, &caller, 15).await + ask(&west, &caller, 5).await;

    let plane = TestPlane::embedded_on(store_dir.path(), addr).await;
    let mut client = telemetry(&url, &viewer).await;
    let s = summary_reaching(&mut client, 40).await;
    assert_eq!(s.requests, 40, "{s:?}");

    // Once the nodes have flushed and stopped, nothing more arrives: had a
    // replayed batch been counted again, the count would be over 40.
    east.shutdown(Duration::from_secs(5)).await;
    west.shutdown(Duration::from_secs(5)).await;
    let s = summary(&mut client).await;
    assert_eq!(s.requests, 40, "{s:?}");
    assert_eq!(s.dropped_spans, 0);
    assert_cost(s.cost_usd, sent);

    // A second restart rebuilds the same rollups from the store.
    plane.stop().await;
    let plane = TestPlane::embedded_on(store_dir.path(), addr).await;
    let mut client = telemetry(&url, &viewer).await;
    let s = summary_reaching(&mut client, 40).await;
    assert_eq!(s.requests, 40, "{s:?}");
    assert_cost(s.cost_usd, sent);
    plane.stop().await;
}

/// The next alert event on `stream`, skipping rollups and spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alert_rules_from_config_fire_and_resolve_on_a_subscription_without_a_restart() {
    let fake = FakeProvider::start().await.unwrap();
    fake.reply(Reply::Text("Four.".into()));
    let plane = TestPlane::embedded().await;
    let aios_tests::telemetry::Keys { caller, viewer } = seed(&plane, &fake).await;
    let dir = tempfile::tempdir().unwrap();
    let east = node(&plane.url(), "node-east", dir.path()).await;
    ready(&east).await;
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), WAIT)
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(channel);
    let mut apply = async |resource: pb::Resource| {
        admin
            .apply(pb::ApplyRequest {
                resource: Some(resource),
                dry_run: false,
            })
            .await
    };

    // A bad rule is refused field by field.
    let mut bad = alert_rule("acme", "errors", pb::AlertMetric::ErrorRate, 5.0);
    if let Some(Spec::AlertRule(spec)) = bad.spec.as_mut() {
        spec.window = Some(prost_types::Duration {
            seconds: 7200,
            nanos: 0,
        });
    }
    let status = apply(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let fields = aios_tests::violated_fields(&status);
    assert!(
        fields.iter().any(|f| f.ends_with("alert_rule.threshold"))
            && fields.iter().any(|f| f.ends_with("alert_rule.window")),
        "{fields:?}"
    );

    // More than 5% of requests failing over the last 5 minutes, once at
    // least 3 were seen.
    let rule = |threshold: f64| {
        let mut rule = alert_rule("acme", "errors", pb::AlertMetric::ErrorRate, threshold);
        if let Some(Spec::AlertRule(spec)) = rule.spec.as_mut() {
            spec.window = Some(prost_types::Duration {
                seconds: 300,
                nanos: 0,
            });
            spec.min_requests = 3;
            spec.severity = pb::AlertSeverity::Critical as i32;
        }
        rule
    };
    apply(rule(0.05)).await.unwrap();
    let mut client = telemetry(&plane.url(), &viewer).await;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            include_alerts: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    fake.set_failure_rate(1.0, 7);
    let failed = send(&east, &caller, 4).await;
    assert!(
        failed.iter().all(|r| r
            .as_ref()
            .map_or(true, |r| r.status != pb::ExecutionStatus::Succeeded as i32)),
        "{failed:?}"
    );
    let firing = next_alert(&mut stream).await;
    assert_eq!(firing.rule, "errors");
    assert_eq!(firing.state(), pb::AlertState::Firing);
    assert_eq!(firing.severity(), pb::AlertSeverity::Critical);
    assert_eq!(firing.metric(), pb::AlertMetric::ErrorRate);
    assert_eq!((firing.value, firing.threshold), (1.0, 0.05));
    assert!(firing.requests >= 3, "{firing:?}");
    assert_eq!(firing.scope.as_ref().unwrap().tenant, "acme");

    // A subscriber arriving now hears what is firing first.
    let mut late = client
        .subscribe(pb::SubscribeRequest {
            include_alerts: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_alert(&mut late).await, firing);

    // The rule changes with an Apply, no restart: at 100% it no longer
    // holds, and the alert resolves at the next evaluation.
    apply(rule(1.0)).await.unwrap();
    let resolved = next_alert(&mut stream).await;
    assert_eq!(
        (resolved.rule.as_str(), resolved.state()),
        ("errors", pb::AlertState::Resolved),
        "{resolved:?}"
    );

    // Alert rules are the control plane's: the node never receives one.
    apply(api_key("acme", "later", pb::Role::Viewer))
        .await
        .unwrap();
    let mut changes = east.node_config().subscribe();
    let later = ResourceKey::new(Kind::ApiKey, "acme", "later");
    tokio::time::timeout(WAIT, changes.wait_for(|c| c.get(&later).is_some()))
        .await
        .unwrap()
        .unwrap();
    let rule_key = ResourceKey::new(Kind::AlertRule, "acme", "errors");
    assert!(east.node_config().current().get(&rule_key).is_none());

    east.shutdown(Duration::from_secs(5)).await;
    plane.stop().await;
}
