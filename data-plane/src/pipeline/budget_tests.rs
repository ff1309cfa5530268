//! The budget stage and [`Hold`] against a [`Purse`] told by hand what the
//! control plane would say: which budgets count a request and under which
//! subject, BLOCK refusals before routing, DEGRADE routing, ALERT_ONLY
//! budgets, per-request caps, and reservations going back when a Hold is
//! dropped or its call cannot run (a refused approval claim).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{sync::Arc, time::Duration};

use aios_model::{Role as KeyRole, Usd};
use aios_proto::v1::{self as pb, resource::Spec};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic_types::StatusExt;
use tower::Service;

use super::*;
use crate::{
    backend::{
        Backend, BackendError, ChatMessage, ChatRequest, ChatResponse, FinishReason, Role, Usage,
    },
    pipeline::{
        Caller, Catalog, ExecRequest, Input, Params,
        agent_loop::AgentLoop,
        backends::{BackendFactory, Backends},
        route::RouteStage,
        testing::{budget_resource, catalog, resource},
    },
    reliability::{Breakers, Reliability, RetryPolicy},
};

/// Every test budget's limit (10 USD), micro-USD.
const LIMIT: i64 = 10_000_000;

// === The world ===

fn model(name: &str, usd_per_mtok: f64) -> pb::Resource {
    resource(
        name,
        Spec::Model(pb::ModelSpec {
            provider: pb::ModelProvider::Openai as i32,
            provider_model: name.into(),
            input_price_usd_per_mtok: usd_per_mtok,
            output_price_usd_per_mtok: usd_per_mtok,
            ..Default::default()
        }),
    )
}

fn table(name: &str, model: &str) -> pb::Resource {
    resource(
        name,
        Spec::RoutingTable(pb::RoutingTableSpec {
            tiers: vec![pb::RouteTier {
                name: "all".into(),
                complexity: pb::Complexity::Complex as i32,
                targets: vec![pb::WeightedTarget {
                    model: model.into(),
                    weight: 1,
                }],
                fallbacks: Vec::new(),
            }],
            ..Default::default()
        }),
    )
}

/// Agent `bot` routing through `std` (model `big`, priced); table `cheap`
/// routes to `free` (no list price); and `budgets`.
fn world(budgets: Vec<pb::Resource>) -> Arc<Catalog> {
    let mut resources = vec![
        model("big", 10.0),
        model("free", 0.0),
        table("std", "big"),
        table("cheap", "free"),
        resource(
            "bot",
            Spec::Agent(pb::AgentSpec {
                system_prompt: "Be brief.".into(),
                routing_table: "std".into(),
                ..Default::default()
            }),
        ),
    ];
    resources.extend(budgets);
    Arc::new(catalog(resources))
}

const USER: pb::BudgetScopeKind = pb::BudgetScopeKind::User;
const AGENT: pb::BudgetScopeKind = pb::BudgetScopeKind::Agent;
const API_KEY: pb::BudgetScopeKind = pb::BudgetScopeKind::ApiKey;

/// A BLOCK budget of tenant `acme` counting `scope`: `subject`'s spend, or
/// each one's separately when `subject` is empty.
fn scoped(name: &str, scope: pb::BudgetScopeKind, subject: &str) -> pb::Resource {
    budget_resource("acme", name, |b| {
        b.scope = Some(pb::BudgetScope {
            kind: scope as i32,
            subject: subject.into(),
        });
    })
}

/// A tenant-wide budget of `acme` doing `on_exceed` once spent (DEGRADE:
/// to table `cheap`).
fn tenant_budget(name: &str, on_exceed: pb::OnExceed) -> pb::Resource {
    capped(name, 0.0, on_exceed)
}

/// [`tenant_budget`], capping each request at `cap_usd` (0 = no cap).
fn capped(name: &str, cap_usd: f64, on_exceed: pb::OnExceed) -> pb::Resource {
    budget_resource("acme", name, |b| {
        b.per_request_cap_usd = cap_usd;
        b.on_exceed = on_exceed as i32;
        if on_exceed == pb::OnExceed::Degrade {
            b.degrade_routing_table = "cheap".into();
        }
    })
}

/// The ledger of budget `name` of `acme` for `subject` (every test budget
/// counts over all time: window start 0).
fn ledger(name: &str, subject: &str) -> LedgerKey {
    LedgerKey {
        tenant: "acme".into(),
        budget: name.into(),
        window_start: 0,
        subject: subject.into(),
    }
}

/// As the control plane would answer once `ledger`'s budget is spent.
fn spend_out(purse: &Purse, ledger: &LedgerKey) {
    purse.answer_for_test(ledger, 0, LIMIT, LIMIT);
}

/// As the control plane would answer leasing `held` to this node.
fn lease(purse: &Purse, ledger: &LedgerKey, held: i64) {
    purse.answer_for_test(ledger, held, 0, LIMIT);
}

/// A chat request to `bot` with API key `ci` of `acme`; `key_user` is the
/// key's own user, `request_user` the one the request names.
fn call(catalog: &Arc<Catalog>, key_user: Option<&str>, request_user: &str) -> Call {
    let now = Instant::now();
    Call {
        catalog: catalog.clone(),
        metadata: MetadataMap::new(),
        trace: crate::telemetry::TraceContext::join(None),
        request: ExecRequest {
            agent: "bot".into(),
            input: Input::Messages(vec![ChatMessage::text(Role::User, "hello")]),
            params: Params::default(),
            user: request_user.into(),
            constraints: Default::default(),
            forensic: false,
            idempotency_key: String::new(),
        },
        received: now,
        deadline: now + Duration::from_secs(30),
        caller_deadline: true,
        caller: Some(Caller {
            tenant: "acme".into(),
            key_name: "ci".into(),
            role: KeyRole::Caller,
            rate_limit: Default::default(),
            allowed_agents: Vec::new(),
            user: key_user.map(String::from),
        }),
        admitted: None,
        claim: None,
        budget: None,
        degraded_to: None,
        route: None,
        cache_key: None,
        flags: Vec::new(),
        events: None,
    }
}

/// The Hold the budget stage gives `call`.
fn hold(stage: &BudgetStage, call: &mut Call) -> Arc<Hold> {
    stage.before(call).unwrap();
    call.budget.clone().expect("a budget counts the request")
}

/// The (budget, subject) ledgers a Hold counts against, in order.
fn counted(hold: &Hold) -> Vec<(String, String)> {
    hold.keys
        .iter()
        .map(|(key, _)| (key.budget.clone(), key.subject.clone()))
        .collect()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_millis(200)
}

fn usd(micros: i64) -> Usd {
    Usd::from_micros(micros)
}

/// The QuotaFailure subject of a budget refusal.
fn refused_subject(error: ExecError) -> String {
    match error {
        ExecError::BudgetExhausted { subject, .. } => subject,
        other => panic!("not a budget refusal: {other:?}"),
    }
}

// === A model that always answers ===

#[derive(Debug)]
struct Answers;

#[tonic::async_trait]
impl Backend for Answers {
    async fn chat(&self, _: &ChatRequest) -> Result<ChatResponse, BackendError> {
        Ok(ChatResponse {
            content: "ok".into(),
            tool_calls: Vec::new(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
            },
            finish: FinishReason::Stop,
            device_cost: None,
        })
    }
}

impl BackendFactory for Answers {
    fn build(&self, _: &str, _: &str, _: &aios_model::Model) -> Result<Arc<dyn Backend>, String> {
        Ok(Arc::new(Answers))
    }
}

async fn run_agent(call: Call) -> Result<crate::pipeline::Outcome, ExecError> {
    let mut agent_loop = AgentLoop::new(
        Backends::new(Arc::new(Answers)),
        Reliability::new(
            RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            Breakers::default(),
        ),
        true,
        None,
    );
    agent_loop.call(Box::new(call)).await.map(|ran| ran.outcome)
}

// === Which budgets count a request ===

#[test]
fn a_request_counts_against_each_budget_that_names_it_or_counts_each() {
    let catalog = world(vec![
        tenant_budget("all", pb::OnExceed::Block),
        scoped("each-user", USER, ""),
        scoped("vip", USER, "u-1"),
        scoped("each-agent", AGENT, ""),
        scoped("bot-only", AGENT, "bot"),
        scoped("other-agent", AGENT, "helper"),
        scoped("each-key", API_KEY, ""),
        scoped("ci-key", API_KEY, "ci"),
        scoped("deploy-key", API_KEY, "deploy"),
        budget_resource("globex", "all", |_| {}),
    ]);
    let stage = BudgetStage::new(Purse::new());
    let pairs = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(b, s)| (b.to_string(), s.to_string()))
            .collect::<Vec<_>>()
    };

    // The key's own user wins over the one the request names; a budget
    // naming its subject counts under no subject, one counting each
    // subject separately under the subject's own name.
    let mut c = call(&catalog, Some("u-1"), "u-2");
    assert_eq!(
        counted(&hold(&stage, &mut c)),
        pairs(&[
            ("all", ""),
            ("bot-only", ""),
            ("ci-key", ""),
            ("each-agent", "bot"),
            ("each-key", "ci"),
            ("each-user", "u-1"),
            ("vip", ""),
        ])
    );

    // Without a user on the key, the request's user counts.
    let mut c = call(&catalog, None, "u-2");
    let held = counted(&hold(&stage, &mut c));
    assert!(
        held.contains(&("each-user".into(), "u-2".into())),
        "{held:?}"
    );
    assert!(!held.iter().any(|(b, _)| b == "vip"), "{held:?}");

    // Without any user, per-user budgets do not count the request.
    let mut c = call(&catalog, None, "");
    let hold = hold(&stage, &mut c);
    assert_eq!(
        counted(&hold),
        pairs(&[
            ("all", ""),
            ("bot-only", ""),
            ("ci-key", ""),
            ("each-agent", "bot"),
            ("each-key", "ci"),
        ])
    );
    assert!(
        hold.keys.iter().all(|(_, enforce)| *enforce),
        "BLOCK budgets enforce"
    );
}

#[test]
fn a_request_no_budget_counts_carries_no_hold() {
    let catalog = world(vec![
        scoped("vip", USER, "u-1"),
        budget_resource("globex", "all", |_| {}),
    ]);
    let stage = BudgetStage::new(Purse::new());
    let mut c = call(&catalog, Some("u-2"), "");
    assert!(matches!(stage.before(&mut c), Ok(Flow::Continue)));
    assert!(c.budget.is_none());
}

// === BLOCK ===

#[test]
fn a_spent_block_budget_refuses_before_routing_naming_budget_and_subject() {
    let catalog = world(vec![
        tenant_budget("daily", pb::OnExceed::Block),
        scoped("per-user", USER, ""),
    ]);
    let purse = Purse::new();
    let stage = BudgetStage::new(purse.clone());
    spend_out(&purse, &ledger("per-user", "u-1"));

    let mut c = call(&catalog, Some("u-1"), "");
    let error = stage.before(&mut c).unwrap_err();
    assert!(c.budget.is_none(), "a refused request holds nothing");
    let status = tonic::Status::from(error.clone());
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let violations = status.get_details_quota_failure().unwrap().violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].subject, "budget:acme/per-user/u-1");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "BUDGET_EXHAUSTED"
    );

    // Another user of the same per-user budget still has money.
    let mut c = call(&catalog, Some("u-2"), "");
    assert!(stage.before(&mut c).is_ok());
    assert!(c.budget.is_some());

    // The tenant-wide budget spent: everyone is refused, under its name.
    spend_out(&purse, &ledger("daily", ""));
    let mut c = call(&catalog, Some("u-2"), "");
    assert_eq!(
        refused_subject(stage.before(&mut c).unwrap_err()),
        "budget:acme/daily"
    );
}

#[test]
fn a_spent_block_budget_refuses_even_when_a_degrade_budget_would_reroute() {
    let catalog = world(vec![
        tenant_budget("a-soft", pb::OnExceed::Degrade),
        tenant_budget("b-hard", pb::OnExceed::Block),
    ]);
    let purse = Purse::new();
    let stage = BudgetStage::new(purse.clone());
    spend_out(&purse, &ledger("a-soft", ""));
    spend_out(&purse, &ledger("b-hard", ""));
    let mut c = call(&catalog, None, "");
    assert_eq!(
        refused_subject(stage.before(&mut c).unwrap_err()),
        "budget:acme/b-hard"
    );
}

// === DEGRADE ===

#[tokio::test]
async fn a_spent_degrade_budget_routes_through_its_cheaper_table() {
    let catalog = world(vec![tenant_budget("soft", pb::OnExceed::Degrade)]);
    let purse = Purse::new();
    let stage = BudgetStage::new(purse.clone());

    // Money left: the agent's own table.
    let mut c = call(&catalog, None, "");
    stage.before(&mut c).unwrap();
    assert_eq!(c.degraded_to, None);
    RouteStage.before(&mut c).unwrap();
    assert_eq!(c.route.as_ref().unwrap().candidates, ["big"]);

    // Spent: the budget's table, and the answer says it was degraded.
    spend_out(&purse, &ledger("soft", ""));
    let mut c = call(&catalog, None, "");
    stage.before(&mut c).unwrap();
    assert_eq!(c.degraded_to.as_deref(), Some("cheap"));
    assert!(c.budget.is_some(), "a degraded request still counts");
    RouteStage.before(&mut c).unwrap();
    assert_eq!(c.route.as_ref().unwrap().candidates, ["free"]);
    let outcome = run_agent(c).await.unwrap();
    let route = outcome.route.expect("a routed request reports its route");
    assert_eq!(route.model, "free");
    assert!(route.degraded, "{route:?}");
}

#[tokio::test(start_paused = true)]
async fn a_degraded_request_is_served_past_the_limit_and_still_counted() {
    let catalog = world(vec![tenant_budget("soft", pb::OnExceed::Degrade)]);
    let purse = Purse::new();
    let stage = BudgetStage::new(purse.clone());
    spend_out(&purse, &ledger("soft", ""));
    let mut c = call(&catalog, None, "");
    let hold = hold(&stage, &mut c);
    assert!(c.degraded_to.is_some());
    assert_eq!(
        hold.keys,
        [(ledger("soft", ""), false)],
        "counted, no longer limiting"
    );
    // The cheaper route's call gets its worst case at once, without an
    // allowance: the spent budget no longer limits it.
    let grant = hold.reserve(usd(500), usd(100), soon()).await.unwrap();
    assert_eq!(grant.amount, 500);
}

#[tokio::test]
async fn a_spent_degrade_budget_still_limits_nothing_but_itself() {
    // A BLOCK budget beside the spent DEGRADE one still limits the
    // degraded request.
    let catalog = world(vec![
        tenant_budget("soft", pb::OnExceed::Degrade),
        tenant_budget("hard", pb::OnExceed::Block),
    ]);
    let purse = Purse::new();
    let stage = BudgetStage::new(purse.clone());
    spend_out(&purse, &ledger("soft", ""));
    let mut c = call(&catalog, None, "");
    let hold = hold(&stage, &mut c);
    assert!(c.degraded_to.is_some());
    assert_eq!(
        hold.keys,
        [(ledger("hard", ""), true), (ledger("soft", ""), false)]
    );
}

// === ALERT_ONLY ===

#[tokio::test]
async fn an_alert_only_budget_never_refuses_nor_caps() {
    let catalog = world(vec![capped("watch", 0.000_01, pb::OnExceed::AlertOnly)]);
    let purse = Purse::new();
    let stage = BudgetStage::new(purse.clone());
    spend_out(&purse, &ledger("watch", ""));

    let mut c = call(&catalog, None, "");
    let hold = hold(&stage, &mut c);
    assert_eq!(c.degraded_to, None);
    assert_eq!(
        hold.keys,
        [(ledger("watch", ""), false)],
        "counted, not enforced"
    );
    // Spent, capped at 10 micro-USD and holding no allowance: a call of
    // 5000 still gets all of it, at once.
    let grant = hold.reserve(usd(5_000), usd(100), soon()).await.unwrap();
    assert_eq!(grant.amount, 5_000);
    hold.settle(grant, usd(4_000));
    let grant = hold.reserve(usd(5_000), usd(100), soon()).await.unwrap();
    assert_eq!(grant.amount, 5_000, "what the request spent is not capped");
}

// === Per-request caps ===

#[tokio::test]
async fn a_cap_that_cannot_cover_the_minimum_refuses_though_the_budget_has_money() {
    let catalog = world(vec![capped("daily", 0.001, pb::OnExceed::Block)]);
    let purse = Purse::new();
    lease(&purse, &ledger("daily", ""), 1_000_000);
    let stage = BudgetStage::new(purse.clone());
    let mut c = call(&catalog, None, "");
    let hold = hold(&stage, &mut c);

    let error = hold
        .reserve(usd(5_000), usd(1_001), soon())
        .await
        .unwrap_err();
    let ExecError::BudgetExhausted {
        subject,
        description,
    } = error
    else {
        panic!("not a budget refusal: {error:?}");
    };
    assert_eq!(subject, "budget:acme/daily");
    assert!(description.contains("per-request cap"), "{description}");
    // The cap itself is enough: a call the cap covers goes through.
    let grant = hold.reserve(usd(800), usd(100), soon()).await.unwrap();
    assert_eq!(grant.amount, 800, "a bound under the cap is not raised");
}

#[tokio::test]
async fn the_cap_bounds_each_call_by_what_the_request_has_left_of_it() {
    let catalog = world(vec![capped("daily", 0.001, pb::OnExceed::Block)]);
    let purse = Purse::new();
    lease(&purse, &ledger("daily", ""), 1_000_000);
    let stage = BudgetStage::new(purse.clone());
    let mut c = call(&catalog, None, "");
    let hold = hold(&stage, &mut c);

    // First call: its worst case (5000) is cut to the cap (1000).
    let grant = hold.reserve(usd(5_000), usd(100), soon()).await.unwrap();
    assert_eq!(grant.amount, 1_000);
    hold.settle(grant, usd(600));
    // Second call: 400 of the cap is left.
    let grant = hold.reserve(usd(5_000), usd(100), soon()).await.unwrap();
    assert_eq!(grant.amount, 400);
    hold.settle(grant, usd(350));
    // Third call: 50 left, too little for its minimum.
    let error = hold
        .reserve(usd(5_000), usd(100), soon())
        .await
        .unwrap_err();
    assert_eq!(refused_subject(error), "budget:acme/daily");

    // The cap is per request: the next request starts afresh.
    let mut c = call(&catalog, None, "");
    let next = self::hold(&stage, &mut c);
    let grant = next.reserve(usd(5_000), usd(100), soon()).await.unwrap();
    assert_eq!(grant.amount, 1_000);
}

#[tokio::test]
async fn the_smallest_enforced_cap_applies_and_its_refusal_names_its_budget() {
    // Sorted by name, the looser cap comes first and the ALERT_ONLY one
    // (smallest of all, but it only counts) second.
    let catalog = world(vec![
        capped("a-loose", 0.005, pb::OnExceed::Block),
        capped("alert", 0.000_01, pb::OnExceed::AlertOnly),
        capped("z-tight", 0.001, pb::OnExceed::Degrade),
    ]);
    let purse = Purse::new();
    lease(&purse, &ledger("a-loose", ""), 1_000_000);
    lease(&purse, &ledger("z-tight", ""), 1_000_000);
    let stage = BudgetStage::new(purse.clone());
    let mut c = call(&catalog, None, "");
    let hold = hold(&stage, &mut c);

    let error = hold
        .reserve(usd(10_000), usd(2_000), soon())
        .await
        .unwrap_err();
    assert_eq!(refused_subject(error), "budget:acme/z-tight");
    let grant = hold.reserve(usd(10_000), usd(100), soon()).await.unwrap();
    assert_eq!(grant.amount, 1_000);
}

// === Reservations going back ===

#[tokio::test(start_paused = true)]
async fn dropping_a_hold_returns_what_it_still_reserves() {
    let catalog = world(vec![tenant_budget("daily", pb::OnExceed::Block)]);
    let purse = Purse::new();
    lease(&purse, &ledger("daily", ""), 1_000);
    let stage = BudgetStage::new(purse.clone());

    let mut first = call(&catalog, None, "");
    let first_hold = hold(&stage, &mut first);
    let grant = first_hold.reserve(usd(1_000), usd(1_000), soon()).await;
    assert_eq!(grant.unwrap().amount, 1_000);
    // Everything the node holds is reserved: another request gets nothing.
    let mut second = call(&catalog, None, "");
    let second_hold = hold(&stage, &mut second);
    assert!(
        second_hold
            .reserve(usd(1_000), usd(1), soon())
            .await
            .is_err()
    );

    // The first request ends without settling (cancelled mid-call).
    drop(first);
    drop(first_hold);
    let started = Instant::now();
    let grant = second_hold
        .reserve(usd(1_000), usd(1_000), soon())
        .await
        .unwrap();
    assert_eq!(grant.amount, 1_000);
    assert_eq!(started.elapsed(), Duration::ZERO, "granted at once");

    // Settled for 300: the rest goes back at once, and the settled Hold,
    // dropped, gives back nothing more (it must not free what another
    // request reserved).
    second_hold.settle(grant, usd(300));
    let mut third = call(&catalog, None, "");
    let third_hold = hold(&stage, &mut third);
    let grant = third_hold.reserve(usd(400), usd(400), soon()).await;
    assert_eq!(grant.unwrap().amount, 400, "1000 held, 300 spent");
    drop(second);
    drop(second_hold);
    let mut fourth = call(&catalog, None, "");
    let fourth_hold = hold(&stage, &mut fourth);
    let grant = fourth_hold.reserve(usd(1_000), usd(1), soon()).await;
    assert_eq!(grant.unwrap().amount, 300, "300 spent, 400 reserved");
}

#[tokio::test(start_paused = true)]
async fn a_reservation_abandoned_while_waiting_does_not_hide_a_spent_budget() {
    let catalog = world(vec![tenant_budget("daily", pb::OnExceed::Block)]);
    let purse = Purse::new();
    lease(&purse, &ledger("daily", ""), 0);
    let stage = BudgetStage::new(purse.clone());

    // A call waits for allowance; its request goes away (the caller hung
    // up) before the control plane answers.
    let mut c = call(&catalog, None, "");
    let abandoned = self::hold(&stage, &mut c);
    let far = Instant::now() + Duration::from_secs(5);
    let waited = tokio::time::timeout(
        Duration::from_millis(50),
        abandoned.reserve(usd(500), usd(100), far),
    )
    .await;
    assert!(waited.is_err(), "still waiting when abandoned");
    drop(c);
    drop(abandoned);

    // The answer: the budget is spent. The next request is refused before
    // routing, as if the abandoned call had never waited.
    spend_out(&purse, &ledger("daily", ""));
    let mut c = call(&catalog, None, "");
    assert_eq!(
        refused_subject(stage.before(&mut c).unwrap_err()),
        "budget:acme/daily"
    );
}

// === Approvals ===

#[tokio::test]
async fn a_refused_claim_gives_back_its_first_call_s_reservation() {
    use crate::approvals::claim::testing::{Claims, claim, serve};

    let catalog = world(vec![capped("daily", 0.001, pb::OnExceed::Block)]);
    let purse = Purse::new();
    lease(&purse, &ledger("daily", ""), 1_000_000);
    let stage = BudgetStage::new(purse.clone());
    let claims = Arc::new(Claims::default());
    *claims.refuse.lock().unwrap() = Some(tonic::Status::failed_precondition("executed"));
    let mut c = call(&catalog, None, "");
    c.claim = Some(claim(serve(claims.clone()).await));
    let hold = hold(&stage, &mut c);
    RouteStage.before(&mut c).unwrap();

    let error = run_agent(c).await.unwrap_err();
    assert!(
        matches!(error, ExecError::FailedPrecondition { .. }),
        "{error:?}"
    );
    assert_eq!(claims.count(), 1);
    // The call that could not run spent nothing of the request's cap.
    let grant = hold.reserve(usd(5_000), usd(100), soon()).await.unwrap();
    assert_eq!(grant.amount, 1_000);
}
