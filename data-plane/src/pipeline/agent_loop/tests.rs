//! The loop against a scripted model: tools asked for, run and read back;
//! errors going back to the model; max_steps; deadlines; actions; forensic
//! skipping; streamed steps; approvals claimed right before the run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use aios_model::Role as KeyRole;
use aios_proto::v1::{self as pb, resource::Spec};
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;

use super::*;
use crate::{
    approvals::claim::testing::{Claims, claim, serve},
    backend::{Backend, BackendError, ChatEvent, ChatStream, ErrorKind, FinishReason},
    pipeline::{
        Caller, Catalog, ExecRequest, Params,
        backends::BackendFactory,
        testing::{catalog, resource},
    },
    reliability::{Breakers, RetryPolicy},
};

// === A scripted model ===

#[derive(Debug)]
enum Turn {
    Answer(&'static str),
    /// Tool calls: (name, arguments).
    Tools(Vec<(&'static str, &'static str)>),
    Fail(ErrorKind),
    Hang,
}

#[derive(Debug, Default)]
struct Scripted {
    script: Mutex<VecDeque<Turn>>,
    requests: Mutex<Vec<ChatRequest>>,
}

impl Scripted {
    fn new(turns: impl IntoIterator<Item = Turn>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(turns.into_iter().collect()),
            ..Self::default()
        })
    }

    fn requests(&self) -> Vec<ChatRequest> {
        self.requests.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl Backend for Scripted {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        self.requests.lock().unwrap().push(request.clone());
        let turn = self.script.lock().unwrap().pop_front();
        let usage = Usage {
            input_tokens: 100,
            output_tokens: 10,
        };
        match turn {
            Some(Turn::Answer(text)) => Ok(ChatResponse {
                content: text.into(),
                tool_calls: Vec::new(),
                usage,
                finish: FinishReason::Stop,
                device_cost: None,
            }),
            Some(Turn::Tools(calls)) => Ok(ChatResponse {
                content: String::new(),
                tool_calls: calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, (name, args))| ToolCall {
                        id: format!("t{i}"),
                        name: name.into(),
                        arguments_json: args.into(),
                    })
                    .collect(),
                usage,
                finish: FinishReason::ToolCalls,
                device_cost: None,
            }),
            Some(Turn::Fail(kind)) => Err(BackendError::new(kind, "scripted")),
            Some(Turn::Hang) => std::future::pending().await,
            None => Err(BackendError::new(ErrorKind::Protocol, "script ran out")),
        }
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, BackendError> {
        let response = self.chat(request).await?;
        let events = vec![
            Ok(ChatEvent::Delta(response.content.clone())),
            Ok(ChatEvent::Done(response)),
        ];
        Ok(Box::pin(futures::stream::iter(events)))
    }
}

#[derive(Debug)]
struct Factory(Arc<Scripted>);

impl BackendFactory for Factory {
    fn build(&self, _: &str, _: &str, _: &Model) -> Result<Arc<dyn Backend>, String> {
        Ok(self.0.clone())
    }
}

// === The world ===

fn builtin_tool(name: &str, remote_name: &str, side_effects: bool) -> pb::Resource {
    resource(
        name,
        Spec::Tool(pb::ToolSpec {
            description: format!("the {name} tool"),
            address: "builtin".into(),
            remote_name: remote_name.into(),
            side_effects,
            ..Default::default()
        }),
    )
}

/// Model `m` (1 USD per million tokens in, 2 out), table `std` → m, agent
/// `bot` (edited by `edit`) with tools `calc` (math.evaluate), `text.stats`
/// and `stamp` (time.now, declared side-effecting).
fn world(edit: impl FnOnce(&mut pb::AgentSpec)) -> Catalog {
    let mut agent = pb::AgentSpec {
        system_prompt: "Be brief.".into(),
        routing_table: "std".into(),
        allowed_tools: vec!["calc".into(), "text.stats".into(), "stamp".into()],
        ..Default::default()
    };
    edit(&mut agent);
    catalog(vec![
        resource(
            "m",
            Spec::Model(pb::ModelSpec {
                provider: pb::ModelProvider::Openai as i32,
                provider_model: "gpt".into(),
                input_price_usd_per_mtok: 1.0,
                output_price_usd_per_mtok: 2.0,
                ..Default::default()
            }),
        ),
        resource(
            "std",
            Spec::RoutingTable(pb::RoutingTableSpec {
                tiers: vec![pb::RouteTier {
                    name: "all".into(),
                    complexity: pb::Complexity::Complex as i32,
                    targets: vec![pb::WeightedTarget {
                        model: "m".into(),
                        weight: 1,
                    }],
                    fallbacks: Vec::new(),
                }],
                ..Default::default()
            }),
        ),
        resource("bot", Spec::Agent(agent)),
        builtin_tool("calc", "math.evaluate", false),
        builtin_tool("text.stats", "", false),
        builtin_tool("stamp", "time.now", true),
    ])
}

fn call(catalog: Catalog, input: Input, events: Option<mpsc::Sender<Event>>) -> Box<Call> {
    let now = Instant::now();
    Box::new(Call {
        catalog: Arc::new(catalog),
        metadata: MetadataMap::new(),
        trace: crate::telemetry::TraceContext::join(None),
        request: ExecRequest {
            agent: "bot".into(),
            input,
            params: Params::default(),
            user: String::new(),
            constraints: Default::default(),
            forensic: false,
            idempotency_key: String::new(),
        },
        received: now,
        deadline: now + Duration::from_secs(30),
        caller_deadline: true,
        budget: None,
        degraded_to: None,
        caller: Some(Caller {
            tenant: "acme".into(),
            key_name: "k".into(),
            role: KeyRole::Caller,
            rate_limit: Default::default(),
            allowed_agents: Vec::new(),
            user: None,
        }),
        admitted: None,
        claim: None,
        route: None,
        cache_key: None,
        flags: Vec::new(),
        events,
    })
}

fn ask(text: &str) -> Input {
    Input::Messages(vec![ChatMessage::text(Role::User, text)])
}

async fn execute(model: &Arc<Scripted>, call: Box<Call>) -> Result<Outcome, ExecError> {
    let mut agent_loop = AgentLoop::new(
        Backends::new(Arc::new(Factory(model.clone()))),
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
    agent_loop.call(call).await.map(|ran| ran.outcome)
}

fn kinds(outcome: &Outcome) -> Vec<(StepKind, &str, bool)> {
    outcome
        .steps
        .iter()
        .map(|s| (s.kind, s.name.as_str(), s.error.is_some()))
        .collect()
}

// === Tests ===

#[tokio::test]
async fn the_model_asks_for_a_tool_reads_its_result_and_answers() {
    let model = Scripted::new([
        Turn::Tools(vec![("calc", r#"{"expression": "6 * 7"}"#)]),
        Turn::Answer("It is 42."),
    ]);
    let outcome = execute(&model, call(world(|_| {}), ask("6 times 7?"), None))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output, "It is 42.");
    assert_eq!(
        kinds(&outcome),
        [
            (StepKind::Model, "m", false),
            (StepKind::Tool, "calc", false),
            (StepKind::Model, "m", false)
        ]
    );
    assert_eq!(
        outcome.steps.iter().map(|s| s.index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    // Usage and cost add up over both model calls: 2 × (100 × 1 + 10 × 2) µUSD.
    assert_eq!(outcome.usage.input_tokens, 200);
    assert_eq!(outcome.usage.output_tokens, 20);
    assert_eq!(outcome.cost.micros(), 240);

    let requests = model.requests();
    assert_eq!(requests.len(), 2);
    let offered: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(offered, ["calc", "text_stats", "stamp"]);
    let second = &requests[1].messages;
    let assistant = &second[second.len() - 2];
    assert_eq!(assistant.role, Role::Assistant);
    assert_eq!(assistant.tool_calls[0].name, "calc");
    let tool = &second[second.len() - 1];
    assert_eq!(tool.role, Role::Tool);
    assert_eq!(tool.tool_call_id.as_deref(), Some("t0"));
    assert_eq!(tool.content, r#"{"expression":"6 * 7","result":42}"#);

    let roles: Vec<Role> = outcome.messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::Assistant, Role::Tool, Role::Assistant]);
}

#[tokio::test]
async fn a_tool_error_goes_back_to_the_model() {
    let model = Scripted::new([
        Turn::Tools(vec![
            ("calc", r#"{"expression": "1/0"}"#),
            ("nope", "{}"),
            ("text_stats", r#"{"text": "a b c"}"#),
        ]),
        Turn::Answer("Cannot divide by zero."),
    ]);
    let outcome = execute(&model, call(world(|_| {}), ask("1/0?"), None))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(
        kinds(&outcome),
        [
            (StepKind::Model, "m", false),
            (StepKind::Tool, "calc", true),
            (StepKind::Tool, "nope", true),
            (StepKind::Tool, "text.stats", false),
            (StepKind::Model, "m", false)
        ]
    );
    let sent = &model.requests()[1].messages;
    let results: Vec<&str> = sent
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(results[0], r#"{"error":"division by zero at position 1"}"#);
    assert!(results[1].contains("unknown tool 'nope'"), "{}", results[1]);
    assert!(results[2].contains(r#""words":3"#), "in the order asked");
}

#[tokio::test]
async fn max_steps_leaves_no_room_for_tools_whose_results_nobody_reads() {
    let model = Scripted::new([Turn::Tools(vec![("stamp", "{}")])]);
    let outcome = execute(&model, call(world(|a| a.max_steps = 2), ask("time?"), None))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.error.as_ref().unwrap().0, "MAX_STEPS");
    assert_eq!(
        kinds(&outcome),
        [(StepKind::Model, "m", false)],
        "the tool never ran"
    );

    // A model that keeps asking runs out of steps.
    let model = Scripted::new([
        Turn::Tools(vec![("calc", r#"{"expression": "1"}"#)]),
        Turn::Tools(vec![("calc", r#"{"expression": "2"}"#)]),
        Turn::Answer("never"),
    ]);
    let outcome = execute(&model, call(world(|a| a.max_steps = 4), ask("loop"), None))
        .await
        .unwrap();
    assert_eq!(
        outcome.error.as_ref().unwrap().0,
        "MAX_STEPS",
        "{outcome:?}"
    );
    assert_eq!(outcome.steps.len(), 3);
    assert_eq!(model.requests().len(), 2);
}

#[tokio::test]
async fn forensic_requests_skip_side_effecting_tools_and_tell_the_model() {
    let model = Scripted::new([
        Turn::Tools(vec![("stamp", "{}"), ("calc", r#"{"expression": "2+2"}"#)]),
        Turn::Answer("done"),
    ]);
    let mut forensic = call(world(|_| {}), ask("go"), None);
    forensic.request.forensic = true;
    let outcome = execute(&model, forensic).await.unwrap();
    assert!(outcome.forensic);
    let skipped: Vec<bool> = outcome.steps.iter().map(|s| s.skipped_forensic).collect();
    assert_eq!(skipped, [false, true, false, false]);
    let sent = &model.requests()[1].messages;
    let stamp = sent
        .iter()
        .find(|m| m.tool_call_id.as_deref() == Some("t0"));
    assert!(stamp.unwrap().content.contains("not executed"));
    let calc = sent
        .iter()
        .find(|m| m.tool_call_id.as_deref() == Some("t1"));
    assert!(
        calc.unwrap().content.contains(r#""result":4"#),
        "read-only tools run"
    );
}

#[tokio::test]
async fn an_action_runs_its_tool_without_a_model() {
    let model = Scripted::new([]);
    let action = Input::Action {
        name: "calc".into(),
        arguments_json: r#"{"expression": "2^10"}"#.into(),
    };
    let outcome = execute(&model, call(world(|_| {}), action, None))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(outcome.output, r#"{"expression":"2^10","result":1024}"#);
    assert_eq!(kinds(&outcome), [(StepKind::Tool, "calc", false)]);
    assert!(model.requests().is_empty());

    let bad = Input::Action {
        name: "calc".into(),
        arguments_json: r#"{"expression": "(("}"#.into(),
    };
    let outcome = execute(&model, call(world(|_| {}), bad, None))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.error.unwrap().0, "TOOL_FAILED");
    assert!(outcome.steps[0].error.is_some());

    let mut dry = call(
        world(|a| a.forensic = true),
        Input::Action {
            name: "stamp".into(),
            arguments_json: "{}".into(),
        },
        None,
    );
    dry.request.forensic = false;
    let outcome = execute(&model, dry).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    assert!(outcome.forensic && outcome.steps[0].skipped_forensic);
    assert!(
        outcome.output.contains("\"executed\":false"),
        "{}",
        outcome.output
    );
}

/// A claim of `apr_1` on a fake control plane; refused with `refuse`.
async fn approved(refuse: Option<tonic::Status>) -> (Arc<Claims>, crate::approvals::Claim) {
    let claims = Arc::new(Claims::default());
    *claims.refuse.lock().unwrap() = refuse;
    let claim = claim(serve(claims.clone()).await);
    (claims, claim)
}

#[tokio::test]
async fn an_approved_action_is_claimed_right_before_its_tool_runs() {
    let model = Scripted::new([]);
    let action = || Input::Action {
        name: "calc".into(),
        arguments_json: r#"{"expression": "1+1"}"#.into(),
    };
    let (claims, claim) = approved(None).await;
    let mut c = call(world(|_| {}), action(), None);
    c.claim = Some(claim.clone());
    let outcome = execute(&model, c).await.unwrap();
    assert_eq!(kinds(&outcome), [(StepKind::Tool, "calc", false)]);
    assert_eq!(claims.count(), 1);
    assert!(matches!(claim.made(), Some(Ok(()))));

    // Refused: the tool does not run, and the request ends with why.
    let (claims, claim) = approved(Some(tonic::Status::failed_precondition("executed"))).await;
    let mut c = call(world(|_| {}), action(), None);
    c.claim = Some(claim.clone());
    let (events, mut seen) = mpsc::channel(8);
    c.events = Some(events);
    let error = execute(&model, c).await.unwrap_err();
    assert!(
        matches!(error, ExecError::FailedPrecondition { .. }),
        "{error:?}"
    );
    assert_eq!(claims.count(), 1);
    assert!(seen.try_recv().is_err(), "no step ran");
}

#[tokio::test]
async fn an_approved_conversation_is_claimed_once_before_its_first_model_call() {
    let model = Scripted::new([
        Turn::Tools(vec![("calc", r#"{"expression": "6 * 7"}"#)]),
        Turn::Answer("42"),
    ]);
    let (claims, claim) = approved(None).await;
    let mut c = call(world(|_| {}), ask("6 times 7?"), None);
    c.claim = Some(claim);
    let outcome = execute(&model, c).await.unwrap();
    assert_eq!(outcome.steps.len(), 3, "{outcome:?}");
    assert_eq!(claims.count(), 1, "later calls of the run do not claim");

    let model = Scripted::new([Turn::Answer("never")]);
    let (claims, claim) = approved(Some(tonic::Status::failed_precondition("no"))).await;
    let mut c = call(world(|_| {}), ask("6 times 7?"), None);
    c.claim = Some(claim);
    assert!(execute(&model, c).await.is_err());
    assert_eq!(claims.count(), 1);
    assert!(model.requests().is_empty(), "no model was called");
}

#[tokio::test]
async fn an_approved_conversation_neither_hits_nor_fills_the_cache() {
    use crate::pipeline::{
        cache::CacheStage,
        route::RouteStage,
        stage::{Ran, StageLayer},
    };

    let model = Scripted::new([Turn::Answer("a"), Turn::Answer("b"), Turn::Answer("c")]);
    let cache = Arc::new(CacheStage::new(Duration::from_secs(60), 1 << 20));
    let mut stack = tower::ServiceBuilder::new()
        .layer(StageLayer(Arc::new(RouteStage)))
        .layer(StageLayer(cache.clone()))
        .service(AgentLoop::new(
            Backends::new(Arc::new(Factory(model.clone()))),
            Reliability::new(RetryPolicy::default(), Breakers::default()),
            true,
            None,
        ));
    let mut run = async |text: &str, claim: Option<crate::approvals::Claim>| {
        // No tools: routing asks for none.
        let mut c = call(world(|a| a.allowed_tools.clear()), ask(text), None);
        c.claim = claim;
        let ran: Ran = stack.call(c).await.unwrap();
        ran.outcome
    };
    assert_eq!(run("q", None).await.output, "a", "answered, and cached");
    let (claims, claim) = approved(None).await;
    let outcome = run("q", Some(claim)).await;
    assert_eq!(outcome.output, "b", "an approved request runs");
    assert!(!outcome.cache_hit);
    assert_eq!(claims.count(), 1);
    let (_, claim) = approved(None).await;
    assert_eq!(run("r", Some(claim)).await.output, "c");
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.entries),
        (0, 1, 1),
        "approved requests are not looked up nor stored"
    );
}

#[tokio::test]
async fn model_failures_are_errors_before_tools_and_outcomes_after() {
    let model = Scripted::new([Turn::Fail(ErrorKind::Auth)]);
    let error = execute(&model, call(world(|_| {}), ask("hi"), None))
        .await
        .unwrap_err();
    assert!(matches!(error, ExecError::Unavailable(_)), "{error:?}");

    // At capacity everywhere (429s, a full local queue): back off, not fail.
    let model = Scripted::new((0..16).map(|_| Turn::Fail(ErrorKind::RateLimited)));
    let error = execute(&model, call(world(|_| {}), ask("hi"), None))
        .await
        .unwrap_err();
    assert!(matches!(error, ExecError::RateLimited { .. }), "{error:?}");

    let model = Scripted::new([
        Turn::Tools(vec![("calc", r#"{"expression": "1"}"#)]),
        Turn::Fail(ErrorKind::Auth),
    ]);
    let outcome = execute(&model, call(world(|_| {}), ask("hi"), None))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.error.as_ref().unwrap().0, "MODEL_UNAVAILABLE");
    assert_eq!(
        kinds(&outcome),
        [
            (StepKind::Model, "m", false),
            (StepKind::Tool, "calc", false),
            (StepKind::Model, "m", true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_run_that_already_called_tools() {
    let model = Scripted::new([
        Turn::Tools(vec![("calc", r#"{"expression": "1"}"#)]),
        Turn::Hang,
    ]);
    let mut short = call(world(|_| {}), ask("hi"), None);
    short.deadline = short.received + Duration::from_secs(2);
    let outcome = execute(&model, short).await.unwrap();
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(
        outcome.error.as_ref().unwrap().0,
        "DEADLINE_EXCEEDED",
        "{outcome:?}"
    );
    assert_eq!(outcome.steps.len(), 3);
}

#[tokio::test]
async fn steps_and_tokens_are_streamed_in_order() {
    let model = Scripted::new([
        Turn::Tools(vec![("calc", r#"{"expression": "3"}"#)]),
        Turn::Answer("three"),
    ]);
    let (tx, mut rx) = mpsc::channel(64);
    let outcome = execute(&model, call(world(|_| {}), ask("3?"), Some(tx)))
        .await
        .unwrap();
    assert_eq!(outcome.output, "three");
    let mut seen = Vec::new();
    while let Ok(event) = rx.try_recv() {
        seen.push(match event {
            Event::Token { text, index } if !text.is_empty() => format!("token {index} {text}"),
            Event::Token { .. } => continue,
            Event::Step(step) => format!("step {} {}", step.index, step.name),
        });
    }
    assert_eq!(
        seen,
        ["step 0 m", "step 1 calc", "token 2 three", "step 2 m"]
    );
}
