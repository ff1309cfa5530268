//! Tools end to end: resources applied to a control plane reach a
//! data-plane node, whose agent loop calls a fake provider speaking the
//! real OpenAI protocol; the fake asks for a tool call first and answers
//! with the tool's result (`tool said: …`) once the conversation ends with
//! it.
//!
//! A built-in tool runs on the node and its result reaches the model; an
//! external tool is a real `ToolService` on loopback, called over gRPC;
//! forensic mode (the agent's flag, or the request's) keeps a
//! side-effecting tool from being called, while the same tool runs without
//! it; an action runs one tool directly, with no model.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aios_control_plane::Secret;
use aios_data_plane::{
    DataPlane,
    pipeline::{RemoteProviders, Settings},
};
use aios_proto::v1::{
    self as pb,
    admin_service_client::AdminServiceClient,
    agent_service_client::AgentServiceClient,
    resource::Spec,
    tool_service_server::{ToolService, ToolServiceServer},
};
use aios_tests::{
    admin::{ADMIN_KEY, TestPlane, api_key, tenant},
    fake_provider::{FakeProvider, Reply},
};
use serde_json::Value;
use tokio_stream::wrappers::TcpListenerStream;

const WAIT: Duration = Duration::from_secs(20);

type Admin = AdminServiceClient<aios_client::AuthChannel>;
type Agents = AgentServiceClient<aios_client::AuthChannel>;

// === A tool server ===

/// `payments.refund` at a real `ToolService`: records every call.
#[derive(Debug, Default)]
struct Payments {
    calls: Mutex<Vec<pb::InvokeRequest>>,
}

impl Payments {
    fn calls(&self) -> Vec<pb::InvokeRequest> {
        self.calls.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl ToolService for Payments {
    async fn invoke(
        &self,
        request: tonic::Request<pb::InvokeRequest>,
    ) -> Result<tonic::Response<pb::InvokeResponse>, tonic::Status> {
        let request = request.into_inner();
        self.calls.lock().unwrap().push(request.clone());
        if request.tool != "payments.refund" {
            return Err(tonic::Status::not_found(request.tool));
        }
        let args: Value = serde_json::from_str(&request.arguments_json).unwrap();
        Ok(tonic::Response::new(pb::InvokeResponse {
            result_json: format!(r#"{{"refunded":{},"status":"done"}}"#, args["id"]),
            ..Default::default()
        }))
    }
}

async fn serve(payments: Arc<Payments>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ToolServiceServer::from_arc(payments))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

// === The world ===

struct World {
    plane: TestPlane,
    node: DataPlane,
    fake: FakeProvider,
    admin: Admin,
    agents: Agents,
    payments: Arc<Payments>,
    _dir: tempfile::TempDir,
}

fn meta(name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        tenant: "acme".into(),
        ..Default::default()
    })
}

fn model(name: &str, url: &str) -> pb::Resource {
    pb::Resource {
        metadata: meta(name),
        spec: Some(Spec::Model(pb::ModelSpec {
            provider: pb::ModelProvider::OpenaiCompatible as i32,
            provider_model: format!("{name}-v1"),
            endpoint: format!("{url}/v1"),
            capabilities: vec![
                pb::ModelCapability::Chat as i32,
                pb::ModelCapability::Tools as i32,
            ],
            input_price_usd_per_mtok: 0.15,
            output_price_usd_per_mtok: 0.6,
            ..Default::default()
        })),
    }
}

fn table() -> pb::Resource {
    pb::Resource {
        metadata: meta("std"),
        spec: Some(Spec::RoutingTable(pb::RoutingTableSpec {
            tiers: vec![pb::RouteTier {
                name: "all".into(),
                complexity: pb::Complexity::Complex as i32,
                targets: vec![pb::WeightedTarget {
                    model: "a".into(),
                    weight: 1,
                }],
                fallbacks: Vec::new(),
            }],
            ..Default::default()
        })),
    }
}

fn tool(name: &str, spec: pb::ToolSpec) -> pb::Resource {
    pb::Resource {
        metadata: meta(name),
        spec: Some(Spec::Tool(spec)),
    }
}

fn agent(name: &str, tools: &[&str], forensic: bool) -> pb::Resource {
    pb::Resource {
        metadata: meta(name),
        spec: Some(Spec::Agent(pb::AgentSpec {
            system_prompt: "Use your tools.".into(),
            routing_table: "std".into(),
            allowed_tools: tools.iter().map(|t| t.to_string()).collect(),
            forensic,
            ..Default::default()
        })),
    }
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

/// A control plane, a node streaming from it, a fake provider, a tool
/// server, and: model `a` at the fake; table `std` → a; tools `calc`
/// (built-in `math.evaluate`) and `payments.refund` (at the tool server,
/// side-effecting); agents `calculator` (calc), `refunder` (both) and
/// `auditor` (both, forensic).
async fn world() -> World {
    let fake = FakeProvider::start().await.unwrap();
    let payments = Arc::new(Payments::default());
    let tool_server = serve(payments.clone()).await;
    let plane = TestPlane::embedded().await;
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), WAIT)
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(channel);
    apply(&mut admin, tenant("acme")).await;
    apply(&mut admin, model("a", &fake.url())).await;
    apply(&mut admin, table()).await;
    apply(
        &mut admin,
        tool(
            "calc",
            pb::ToolSpec {
                description: "Evaluates arithmetic.".into(),
                address: "builtin".into(),
                remote_name: "math.evaluate".into(),
                ..Default::default()
            },
        ),
    )
    .await;
    apply(
        &mut admin,
        tool(
            "payments.refund",
            pb::ToolSpec {
                description: "Refunds a payment.".into(),
                address: tool_server,
                side_effects: true,
                parameters_json_schema:
                    r#"{"type":"object","properties":{"id":{"type":"string"}},"required":["id"]}"#
                        .into(),
                ..Default::default()
            },
        ),
    )
    .await;
    apply(&mut admin, agent("calculator", &["calc"], false)).await;
    apply(
        &mut admin,
        agent("refunder", &["calc", "payments.refund"], false),
    )
    .await;
    apply(
        &mut admin,
        agent("auditor", &["calc", "payments.refund"], true),
    )
    .await;
    let secret = apply(&mut admin, api_key("acme", "caller", pb::Role::Caller))
        .await
        .api_key_secret;

    let dir = tempfile::tempdir().unwrap();
    let mut config =
        aios_data_plane::Config::local(plane.url().parse().unwrap(), dir.path().to_path_buf());
    config.node_key = Some(Secret::new(ADMIN_KEY.into()).unwrap());
    let node = DataPlane::start_with(
        &config,
        Arc::new(RemoteProviders::new().unwrap()),
        Settings::default(),
    )
    .await
    .unwrap();
    let channel =
        aios_client::connect(&format!("http://{}", node.grpc_addr()), Some(&secret), WAIT)
            .await
            .unwrap();
    let world = World {
        plane,
        node,
        fake,
        admin,
        agents: AgentServiceClient::new(channel),
        payments,
        _dir: dir,
    };
    world.synced().await;
    world
}

impl World {
    /// Waits until the node holds everything applied so far.
    async fn synced(&self) {
        let mut admin = self.admin.clone();
        let mut newest = 0;
        let mut page_token = String::new();
        loop {
            let page = admin
                .list(pb::ListRequest {
                    tenant: "*".into(),
                    page_token: page_token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            for r in &page.resources {
                newest = newest.max(r.metadata.as_ref().map_or(0, |m| m.resource_version));
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let mut changes = self.node.node_config().subscribe();
        tokio::time::timeout(WAIT, changes.wait_for(|c| c.revision >= newest))
            .await
            .expect("the node catches up")
            .unwrap();
    }

    async fn execute(&self, request: pb::ExecuteRequest) -> pb::ExecuteResponse {
        self.agents
            .clone()
            .execute(request)
            .await
            .unwrap()
            .into_inner()
    }

    async fn stop(self) {
        self.node.shutdown(Duration::from_secs(5)).await;
        self.plane.stop().await;
    }
}

fn ask(agent: &str, text: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        agent: agent.into(),
        input: Some(pb::execute_request::Input::Messages(pb::Messages {
            messages: vec![pb::Message {
                role: pb::MessageRole::User as i32,
                content: text.into(),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

fn action(agent: &str, tool: &str, arguments_json: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        agent: agent.into(),
        input: Some(pb::execute_request::Input::Action(pb::ActionCall {
            action: tool.into(),
            arguments_json: arguments_json.into(),
        })),
        ..Default::default()
    }
}

fn succeeded(response: &pb::ExecuteResponse) -> bool {
    response.status == pb::ExecutionStatus::Succeeded as i32
}

/// (kind, name, skipped_forensic, has error) of each step.
fn steps(response: &pb::ExecuteResponse) -> Vec<(pb::StepKind, String, bool, bool)> {
    response
        .steps
        .iter()
        .map(|s| {
            (
                s.kind(),
                s.name.clone(),
                s.skipped_forensic,
                !s.error.is_empty(),
            )
        })
        .collect()
}

/// The tool message the model got in `request` (the fake's recorded body).
fn tool_message(request: &aios_tests::fake_provider::RecordedRequest) -> String {
    let messages = request.body["messages"].as_array().unwrap();
    let tool = messages
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap_or_else(|| panic!("no tool message in {messages:?}"));
    assert!(
        tool["tool_call_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    tool["content"].as_str().unwrap().to_string()
}

// === Tests ===

#[tokio::test]
async fn a_builtin_tool_runs_on_the_node_and_its_result_reaches_the_model() {
    let w = world().await;
    w.fake.reply(Reply::ToolCall {
        name: "calc".into(),
        arguments_json: r#"{"expression": "(2 + 4) * 7"}"#.into(),
    });
    let answer = w.execute(ask("calculator", "What is (2+4)*7?")).await;
    assert!(succeeded(&answer), "{answer:?}");
    assert_eq!(
        answer.output,
        r#"tool said: {"expression":"(2 + 4) * 7","result":42}"#
    );
    use pb::StepKind::{ModelCall, ToolCall};
    assert_eq!(
        steps(&answer),
        [
            (ModelCall, "a".into(), false, false),
            (ToolCall, "calc".into(), false, false),
            (ModelCall, "a".into(), false, false),
        ]
    );
    let usage = answer.usage.unwrap();
    let first = answer.steps[0].usage.unwrap();
    let last = answer.steps[2].usage.unwrap();
    assert_eq!(
        usage.input_tokens,
        first.input_tokens + last.input_tokens,
        "usage adds up over model calls"
    );
    let roles: Vec<i32> = answer.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            pb::MessageRole::Assistant as i32,
            pb::MessageRole::Tool as i32,
            pb::MessageRole::Assistant as i32
        ]
    );

    let sent = w.fake.requests();
    assert_eq!(sent.len(), 2);
    let offered = &sent[0].body["tools"][0]["function"];
    assert_eq!(offered["name"], "calc");
    assert_eq!(
        offered["parameters"]["required"][0], "expression",
        "a built-in offers its own schema"
    );
    assert_eq!(
        tool_message(&sent[1]),
        r#"{"expression":"(2 + 4) * 7","result":42}"#
    );

    // Streamed, every step arrives as it finishes, then Done.
    let mut events = w
        .agents
        .clone()
        .execute_stream(ask("calculator", "Again: (2+4)*7?"))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    let mut done = None;
    while let Some(event) = events.message().await.unwrap() {
        match event.event.unwrap() {
            pb::execute_event::Event::Step(s) => streamed.push((s.index, s.name)),
            pb::execute_event::Event::Token(_) => {}
            pb::execute_event::Event::Done(d) => done = Some(d),
        }
    }
    assert_eq!(
        streamed,
        [(0, "a".into()), (1, "calc".into()), (2, "a".into())]
    );
    assert!(done.unwrap().output.ends_with(r#""result":42}"#));
    w.stop().await;
}

#[tokio::test]
async fn forensic_mode_keeps_side_effecting_tools_from_running() {
    let w = world().await;
    // The model's spelling of `payments.refund`.
    w.fake.reply(Reply::ToolCall {
        name: "payments_refund".into(),
        arguments_json: r#"{"id": "pay-7"}"#.into(),
    });
    use pb::StepKind::{ModelCall, ToolCall};
    let skipped = [
        (ModelCall, "a".to_string(), false, false),
        (ToolCall, "payments.refund".to_string(), true, false),
        (ModelCall, "a".to_string(), false, false),
    ];

    // The agent is forensic.
    let answer = w.execute(ask("auditor", "Refund pay-7")).await;
    assert!(succeeded(&answer), "{answer:?}");
    assert!(answer.forensic);
    assert_eq!(steps(&answer), skipped);
    assert!(w.payments.calls().is_empty(), "the tool server got no call");
    let told = tool_message(&w.fake.requests()[1]);
    assert!(told.contains("not executed"), "{told}");
    assert!(answer.output.contains("dry-run"), "{}", answer.output);

    // The request is forensic.
    let mut request = ask("refunder", "Refund pay-7, forensically");
    request.forensic = true;
    let answer = w.execute(request).await;
    assert!(succeeded(&answer) && answer.forensic, "{answer:?}");
    assert_eq!(steps(&answer), skipped);
    assert!(w.payments.calls().is_empty(), "the tool server got no call");

    // Without forensic mode the same tool runs, over gRPC.
    let answer = w.execute(ask("refunder", "Refund pay-7 for real")).await;
    assert!(succeeded(&answer) && !answer.forensic, "{answer:?}");
    assert_eq!(
        steps(&answer),
        [
            (ModelCall, "a".to_string(), false, false),
            (ToolCall, "payments.refund".to_string(), false, false),
            (ModelCall, "a".to_string(), false, false),
        ]
    );
    assert_eq!(
        answer.output,
        r#"tool said: {"refunded":"pay-7","status":"done"}"#
    );
    let calls = w.payments.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].tool, "payments.refund");
    assert_eq!(calls[0].tenant, "acme");
    assert_eq!(calls[0].agent, "refunder");
    assert_eq!(calls[0].arguments_json, r#"{"id":"pay-7"}"#);
    assert!(!calls[0].dry_run);
    assert!(!calls[0].idempotency_key.is_empty());
    w.stop().await;
}

#[tokio::test]
async fn an_action_runs_one_tool_directly() {
    let w = world().await;
    let answer = w
        .execute(action("calculator", "calc", r#"{"expression": "2^10"}"#))
        .await;
    assert!(succeeded(&answer), "{answer:?}");
    assert_eq!(answer.output, r#"{"expression":"2^10","result":1024}"#);
    assert_eq!(answer.steps.len(), 1);
    assert_eq!(answer.steps[0].kind(), pb::StepKind::ToolCall);

    // An external tool, the same way.
    let answer = w
        .execute(action("refunder", "payments.refund", r#"{"id": "pay-9"}"#))
        .await;
    assert!(succeeded(&answer), "{answer:?}");
    assert_eq!(answer.output, r#"{"refunded":"pay-9","status":"done"}"#);
    assert_eq!(w.payments.calls().len(), 1);

    // Bad arguments fail the action, and nothing is called.
    let answer = w
        .execute(action("refunder", "payments.refund", r#"{"ref": 9}"#))
        .await;
    assert_eq!(answer.status, pb::ExecutionStatus::Failed as i32);
    assert_eq!(answer.error.unwrap().reason, "INVALID_ARGUMENTS");
    assert_eq!(w.payments.calls().len(), 1);
    assert!(w.fake.requests().is_empty(), "no model was called");
    w.stop().await;
}
