//! Budgets end to end: a control plane and five data-plane nodes in this
//! process, each with its own config and allowance streams, spending
//! against one small budget through the fake provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use aios_data_plane::{DataPlane, fleet::ResourceKey};
use aios_model::Kind;
use aios_proto::v1::{
    self as pb, admin_service_client::AdminServiceClient, agent_service_client::AgentServiceClient,
    budget_service_client::BudgetServiceClient,
};
use aios_tests::{
    admin::{ADMIN_KEY, TestPlane},
    fake_provider::{FakeProvider, Fault},
    telemetry::{WAIT, alerts, next_alert, node, seed},
};
use tonic_types::StatusExt;

const LIMIT_USD: f64 = 0.01;

fn budget(name: &str, limit_usd: f64) -> pb::Resource {
    pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            tenant: "acme".into(),
            ..Default::default()
        }),
        spec: Some(pb::resource::Spec::Budget(pb::BudgetSpec {
            scope: Some(pb::BudgetScope {
                kind: pb::BudgetScopeKind::Tenant as i32,
                subject: String::new(),
            }),
            window: pb::BudgetWindow::Day as i32,
            limit_usd,
            on_exceed: pb::OnExceed::Block as i32,
            alert_threshold_percents: vec![50, 80],
            ..Default::default()
        })),
    }
}

async fn apply(plane: &TestPlane, resource: pb::Resource) {
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), WAIT)
        .await
        .unwrap();
    AdminServiceClient::new(channel)
        .apply(pb::ApplyRequest {
            resource: Some(resource),
            dry_run: false,
        })
        .await
        .expect("apply");
}

async fn has_budget(node: &DataPlane, name: &str) {
    let mut changes = node.node_config().subscribe();
    let key = ResourceKey::new(Kind::Budget, "acme", name);
    tokio::time::timeout(WAIT, changes.wait_for(|c| c.get(&key).is_some()))
        .await
        .expect("the node receives the budget")
        .unwrap();
}

async fn status(plane: &TestPlane, name: &str) -> pb::BudgetStatus {
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), WAIT)
        .await
        .unwrap();
    let mut statuses = BudgetServiceClient::new(channel)
        .get_status(pb::GetBudgetStatusRequest {
            tenant: "acme".into(),
            budget: name.into(),
        })
        .await
        .expect("budget status")
        .into_inner()
        .statuses;
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    statuses.remove(0)
}

fn micros(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

/// One request with `words` words of prompt and at most `max_tokens` out.
async fn ask(
    agents: &mut AgentServiceClient<aios_client::AuthChannel>,
    i: usize,
    words: usize,
    max_tokens: u32,
) -> Result<pb::ExecuteResponse, tonic::Status> {
    let text = (0..words)
        .map(|w| format!("w{i}x{w}"))
        .collect::<Vec<_>>()
        .join(" ");
    agents
        .execute(pb::ExecuteRequest {
            agent: "support".into(),
            input: Some(pb::execute_request::Input::Messages(pb::Messages {
                messages: vec![pb::Message {
                    role: pb::MessageRole::User as i32,
                    content: text,
                    ..Default::default()
                }],
            })),
            params: Some(pb::GenerationParams {
                max_tokens,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_requests_on_five_nodes_never_overspend() {
    let fake = FakeProvider::start().await.unwrap();
    let plane = TestPlane::embedded().await;
    let keys = seed(&plane, &fake).await;
    apply(&plane, budget("small", LIMIT_USD)).await;
    let mut alert_stream = alerts(&plane.url(), &keys.viewer).await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for n in 0..5 {
        let node = node(&plane.url(), &format!("node-{n}"), dir.path()).await;
        has_budget(&node, "small").await;
        nodes.push(node);
    }

    // 200 requests per node, all at once, of random sizes.
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let url = format!("http://{}", node.grpc_addr());
        let channel = aios_client::connect(&url, Some(&keys.caller), WAIT)
            .await
            .unwrap();
        for r in 0..200 {
            let mut agents = AgentServiceClient::new(channel.clone());
            let words = 5 + (rand::random::<u32>() % 60) as usize;
            let max_tokens = 10 + rand::random::<u32>() % 70;
            tasks.push(tokio::spawn(async move {
                ask(&mut agents, n * 1000 + r, words, max_tokens).await
            }));
        }
    }
    let (mut served, mut refused, mut cost) = (0usize, 0usize, 0i64);
    let mut min_cost = i64::MAX;
    for task in tasks {
        match task.await.unwrap() {
            Ok(response) => {
                assert_eq!(
                    response.status,
                    pb::ExecutionStatus::Succeeded as i32,
                    "{response:?}"
                );
                served += 1;
                let c = micros(response.cost_usd);
                cost += c;
                min_cost = min_cost.min(c);
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                let quota = status.get_details_quota_failure().expect("a QuotaFailure");
                assert_eq!(
                    quota.violations[0].subject, "budget:acme/small",
                    "{quota:?}"
                );
                refused += 1;
            }
        }
    }

    // Every node settles within a tick and gives back idle allowance
    // within seconds: wait for the ledger to hold exactly what was spent.
    let deadline = tokio::time::Instant::now() + WAIT;
    let settled = loop {
        let s = status(&plane, "small").await;
        if (micros(s.spent_usd) == cost && s.reserved_usd == 0.0)
            || tokio::time::Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let limit = micros(LIMIT_USD);
    let spent = micros(settled.spent_usd);
    let leftover = limit - spent;
    let could_have_run = if min_cost == i64::MAX {
        0
    } else {
        leftover / min_cost.max(1)
    };
    println!(
        "budget {LIMIT_USD} USD: served {served}, refused {refused}, spent {spent} µUSD \
         ({:.1}% of the limit), left {leftover} µUSD; refused while budget was left: at most \
         {} of {refused} ({:.1}% of all requests)",
        spent as f64 * 100.0 / limit as f64,
        could_have_run.min(refused as i64),
        could_have_run.min(refused as i64) as f64 * 100.0 / 1000.0,
    );
    assert_eq!(
        spent, cost,
        "the ledger holds exactly the settled costs: {settled:?}"
    );
    assert!(
        spent <= limit,
        "committed spend {spent} exceeds the limit {limit}"
    );
    assert_eq!(
        settled.reserved_usd, 0.0,
        "idle allowances are given back: {settled:?}"
    );
    assert!(
        served > 0 && refused > 0,
        "the budget binds: served {served}, refused {refused}"
    );
    assert!(
        spent * 10 >= limit * 8,
        "most of the budget is used: {spent} of {limit}"
    );

    // The soft thresholds went out on the telemetry stream: 50% (unless
    // one settle crossed both), then 80%, which a late subscriber hears
    // first, as firing.
    let mut raised = Vec::new();
    while raised.last() != Some(&0.8) {
        let event = next_alert(&mut alert_stream).await;
        assert_eq!(
            (event.rule.as_str(), event.state(), event.metric()),
            (
                "budget/small",
                pb::AlertState::Firing,
                pb::AlertMetric::BudgetSpent
            ),
            "{event:?}"
        );
        assert!(event.value >= event.threshold, "{event:?}");
        raised.push(event.threshold);
    }
    assert!(raised == [0.5, 0.8] || raised == [0.8], "{raised:?}");
    let late = next_alert(&mut alerts(&plane.url(), &keys.viewer).await).await;
    assert_eq!((late.rule.as_str(), late.threshold), ("budget/small", 0.8));
    drop(nodes);
}

#[tokio::test]
async fn a_crashed_nodes_allowance_comes_back_after_the_ttl() {
    let fake = FakeProvider::start().await.unwrap();
    let plane = TestPlane::embedded_with(|c| c.budget_allowance_ttl = Duration::from_secs(3)).await;
    let keys = seed(&plane, &fake).await;
    apply(&plane, budget("small", LIMIT_USD)).await;
    let dir = tempfile::tempdir().unwrap();
    let node = node(&plane.url(), "doomed", dir.path()).await;
    has_budget(&node, "small").await;
    let url = format!("http://{}", node.grpc_addr());
    let channel = aios_client::connect(&url, Some(&keys.caller), WAIT)
        .await
        .unwrap();
    let mut agents = AgentServiceClient::new(channel);
    // A call that will not finish: the node reserves for it, then dies.
    fake.script(vec![Fault::Delay(Duration::from_secs(30))]);
    let in_flight = tokio::spawn(async move { ask(&mut agents, 1, 20, 50).await });
    let deadline = tokio::time::Instant::now() + WAIT;
    let held = loop {
        let s = status(&plane, "small").await;
        if s.reserved_usd > 0.0 || tokio::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        held.reserved_usd > 0.0,
        "the node holds an allowance: {held:?}"
    );

    // The node dies without giving anything back.
    drop(node);
    in_flight.abort();
    let crashed_at = tokio::time::Instant::now();
    let s = status(&plane, "small").await;
    assert!(
        s.reserved_usd > 0.0,
        "still held right after the crash: {s:?}"
    );
    let deadline = crashed_at + WAIT;
    let s = loop {
        let s = status(&plane, "small").await;
        if s.reserved_usd == 0.0 || tokio::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s.reserved_usd, 0.0, "the allowance came back: {s:?}");
    assert!(
        crashed_at.elapsed() <= Duration::from_secs(4),
        "within the 3 s TTL"
    );
    assert_eq!(s.spent_usd, 0.0, "nothing was settled: {s:?}");
    assert_eq!(micros(s.remaining_usd), micros(LIMIT_USD));
}
