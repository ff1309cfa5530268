#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU32, Ordering},
};

use aios_proto::v1::{
    resource::Spec,
    tool_service_server::{ToolService, ToolServiceServer},
};
use tokio_stream::wrappers::TcpListenerStream;

use super::*;
use crate::pipeline::{
    Catalog,
    testing::{catalog, resource},
};

fn tool(name: &str, address: &str, side_effects: bool, schema: &str) -> pb::Resource {
    resource(
        name,
        Spec::Tool(pb::ToolSpec {
            description: format!("the {name} tool"),
            address: address.into(),
            side_effects,
            parameters_json_schema: schema.into(),
            timeout: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            ..Default::default()
        }),
    )
}

fn builtin(name: &str, remote_name: &str) -> pb::Resource {
    let mut r = tool(name, "builtin", false, "");
    if let Some(Spec::Tool(t)) = r.spec.as_mut() {
        t.remote_name = remote_name.into();
    }
    r
}

const REFUND_SCHEMA: &str =
    r#"{"type":"object","properties":{"id":{"type":"string"}},"required":["id"]}"#;

/// Agent `bot` allowed `tools`, plus the given Tool resources.
fn world(tools: &[&str], resources: Vec<pb::Resource>) -> Catalog {
    let mut all = vec![resource(
        "bot",
        Spec::Agent(pb::AgentSpec {
            routing_table: "std".into(),
            allowed_tools: tools.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }),
    )];
    all.extend(resources);
    catalog(all)
}

fn caller<'a>(catalog: &'a Catalog, forensic: bool) -> Caller<'a> {
    Caller {
        catalog,
        tenant: "acme",
        agent_name: "bot",
        agent: catalog.agent("acme", "bot").unwrap(),
        forensic,
        deadline: Instant::now() + Duration::from_secs(10),
        user: "u-1",
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        execution_id: "ex1",
    }
}

#[tokio::test]
async fn builtins_are_offered_with_their_own_schema_and_run() {
    let c = world(
        &["calc", "missing", "text.stats"],
        vec![builtin("calc", "math.evaluate"), builtin("text.stats", "")],
    );
    let caller = caller(&c, false);
    let tools = Tools::new();
    let offered = tools.offered(&caller);
    let names: Vec<&str> = offered.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["calc", "text_stats"],
        "missing tools are not offered"
    );
    assert!(offered[0].parameters_json_schema.contains("expression"));
    assert_eq!(offered[0].description, "the calc tool");

    let run = tools
        .run(&caller, "calc", r#"{"expression": "6 * 7"}"#, "c1")
        .await;
    assert_eq!(run.error, None);
    assert_eq!(run.content, r#"{"expression":"6 * 7","result":42}"#);
    // The model's spelling of a dotted name resolves.
    let run = tools
        .run(&caller, "text_stats", r#"{"text": "a b"}"#, "c2")
        .await;
    assert_eq!(run.name, "text.stats");
    assert!(run.content.contains(r#""words":2"#), "{}", run.content);
    // A tool that fails tells the model why.
    let run = tools
        .run(&caller, "calc", r#"{"expression": "1/0"}"#, "c3")
        .await;
    assert_eq!(run.error.as_ref().unwrap().reason(), "TOOL_FAILED");
    assert_eq!(run.content, r#"{"error":"division by zero at position 1"}"#);
}

#[tokio::test]
async fn unknown_tools_and_bad_arguments_are_errors_the_model_can_read() {
    let c = world(&["calc", "gone"], vec![builtin("calc", "math.evaluate")]);
    let caller = caller(&c, false);
    let tools = Tools::new();
    let run = tools.run(&caller, "shell", "{}", "c1").await;
    assert_eq!(run.error.as_ref().unwrap().reason(), "UNKNOWN_TOOL");
    assert!(
        run.content.contains("unknown tool 'shell'"),
        "{}",
        run.content
    );
    assert!(run.content.contains("calc, gone"), "{}", run.content);

    let run = tools.run(&caller, "calc", r#"{"expr": "1"}"#, "c2").await;
    assert_eq!(run.error.as_ref().unwrap().reason(), "INVALID_ARGUMENTS");
    assert!(
        run.content.contains("'expression' is required"),
        "{}",
        run.content
    );
    let run = tools.run(&caller, "calc", "[1, 2]", "c3").await;
    assert_eq!(run.error.as_ref().unwrap().reason(), "INVALID_ARGUMENTS");

    let run = tools.run(&caller, "gone", "{}", "c4").await;
    assert_eq!(run.error.as_ref().unwrap().reason(), "TOOL_UNAVAILABLE");
}

// === A ToolService for the tests ===

#[derive(Debug, Default)]
struct Server {
    calls: Mutex<Vec<pb::InvokeRequest>>,
    traceparents: Mutex<Vec<String>>,
    /// Answer UNAVAILABLE to this many calls first.
    unavailable: AtomicU32,
    hang: bool,
}

#[tonic::async_trait]
impl ToolService for Server {
    async fn invoke(
        &self,
        request: tonic::Request<pb::InvokeRequest>,
    ) -> Result<tonic::Response<pb::InvokeResponse>, tonic::Status> {
        if let Some(t) = request.metadata().get("traceparent") {
            self.traceparents
                .lock()
                .unwrap()
                .push(t.to_str().unwrap().to_string());
        }
        let request = request.into_inner();
        self.calls.lock().unwrap().push(request.clone());
        if self
            .unavailable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(tonic::Status::unavailable("warming up"));
        }
        if self.hang {
            std::future::pending::<()>().await;
        }
        let args: Value = serde_json::from_str(&request.arguments_json).unwrap();
        Ok(tonic::Response::new(if args["id"] == "bad" {
            pb::InvokeResponse {
                is_error: true,
                error_message: "no such payment".into(),
                ..Default::default()
            }
        } else {
            pb::InvokeResponse {
                result_json: format!(r#"{{"refunded":{}}}"#, args["id"]),
                ..Default::default()
            }
        }))
    }
}

async fn serve(server: Arc<Server>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ToolServiceServer::from_arc(server))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

#[tokio::test]
async fn remote_tools_are_invoked_with_context_and_retried_when_unavailable() {
    let server = Arc::new(Server {
        unavailable: AtomicU32::new(1),
        ..Server::default()
    });
    let address = serve(server.clone()).await;
    let c = world(
        &["payments.refund"],
        vec![tool("payments.refund", &address, true, REFUND_SCHEMA)],
    );
    let caller = caller(&c, false);
    let tools = Tools::new();
    let run = tools
        .run(&caller, "payments_refund", r#"{"id": "p-7"}"#, "call_1")
        .await;
    assert_eq!(run.error, None, "{run:?}");
    assert_eq!(run.content, r#"{"refunded":"p-7"}"#);
    let calls = server.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "UNAVAILABLE was retried");
    assert_eq!(calls[0].idempotency_key, calls[1].idempotency_key);
    let sent = &calls[1];
    assert_eq!(sent.tool, "payments.refund");
    assert_eq!(sent.tenant, "acme");
    assert_eq!(sent.agent, "bot");
    assert_eq!(sent.user, "u-1");
    assert_eq!(sent.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(sent.idempotency_key, "ex1:call_1");
    assert!(!sent.dry_run);
    assert_eq!(
        server.traceparents.lock().unwrap()[0],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );

    // A tool that ran and failed: its message, not retried.
    let run = tools
        .run(&caller, "payments.refund", r#"{"id": "bad"}"#, "c2")
        .await;
    assert_eq!(run.error, Some(ToolError::Failed("no such payment".into())));
    assert_eq!(run.content, r#"{"error":"no such payment"}"#);
    assert_eq!(server.calls.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn forensic_mode_skips_side_effects_but_runs_read_only_tools() {
    let server = Arc::new(Server::default());
    let address = serve(server.clone()).await;
    let c = world(
        &["payments.refund", "lookup", "calc"],
        vec![
            tool("payments.refund", &address, true, REFUND_SCHEMA),
            tool("lookup", &address, false, REFUND_SCHEMA),
            builtin("calc", "math.evaluate"),
        ],
    );
    let forensic = caller(&c, true);
    let tools = Tools::new();
    let run = tools
        .run(&forensic, "payments.refund", r#"{"id": "p-7"}"#, "c1")
        .await;
    assert!(run.skipped_forensic);
    assert_eq!(run.error, None);
    let notice: Value = serde_json::from_str(&run.content).unwrap();
    assert_eq!(notice["executed"], false);
    assert!(notice["message"].as_str().unwrap().contains("not executed"));
    assert!(
        server.calls.lock().unwrap().is_empty(),
        "nothing reached the tool"
    );
    // A dry run still checks the arguments.
    let run = tools.run(&forensic, "payments.refund", "{}", "c2").await;
    assert!(!run.skipped_forensic);
    assert_eq!(run.error.unwrap().reason(), "INVALID_ARGUMENTS");
    // Read-only tools run, told it is a dry run.
    let run = tools
        .run(&forensic, "lookup", r#"{"id": "p-7"}"#, "c3")
        .await;
    assert!(!run.skipped_forensic && run.error.is_none(), "{run:?}");
    assert!(server.calls.lock().unwrap()[0].dry_run);
    let run = tools
        .run(&forensic, "calc", r#"{"expression": "1+1"}"#, "c4")
        .await;
    assert!(!run.skipped_forensic && run.error.is_none());
}

#[tokio::test]
async fn unreachable_and_slow_tool_servers_become_errors() {
    // Nothing listens there (bound, then closed).
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let slow = serve(Arc::new(Server {
        hang: true,
        ..Server::default()
    }))
    .await;
    let c = world(
        &["down", "slow", "secure"],
        vec![
            tool("down", &closed, false, ""),
            tool("slow", &slow, false, ""),
            tool("secure", "https://tools.internal", false, ""),
        ],
    );
    let mut caller = caller(&c, false);
    caller.deadline = Instant::now() + Duration::from_millis(300);
    let tools = Tools::new();
    let run = tools.run(&caller, "down", "{}", "c1").await;
    assert_eq!(
        run.error.as_ref().unwrap().reason(),
        "TOOL_UNAVAILABLE",
        "{run:?}"
    );
    let started = Instant::now();
    let run = tools.run(&caller, "slow", "{}", "c2").await;
    assert_eq!(
        run.error.as_ref().unwrap().reason(),
        "TOOL_TIMEOUT",
        "{run:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "bounded by the deadline"
    );
    let run = tools.run(&caller, "secure", "{}", "c3").await;
    assert_eq!(run.error.as_ref().unwrap().reason(), "TOOL_UNAVAILABLE");
}
