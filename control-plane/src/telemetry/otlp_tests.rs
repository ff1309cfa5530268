use std::sync::{Arc, Mutex};

use aios_proto::otlp::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;

/// A collector speaking OTLP/gRPC on loopback that records what it gets
/// and answers the scripted failures first.
#[derive(Clone, Default)]
pub(crate) struct Collector {
    received: Arc<Mutex<Vec<(MetadataMap, ExportTraceServiceRequest)>>>,
    failures: Arc<Mutex<Vec<Code>>>,
    rejected: Arc<Mutex<i64>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(code) = self.failures.lock().unwrap().pop() {
            return Err(tonic::Status::new(code, "scripted failure"));
        }
        let metadata = request.metadata().clone();
        self.received
            .lock()
            .unwrap()
            .push((metadata, request.into_inner()));
        let rejected = std::mem::take(&mut *self.rejected.lock().unwrap());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: "too old".into(),
            }),
        }))
    }
}

impl Collector {
    pub(crate) async fn start(&self) -> (String, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        (url, stop)
    }

    pub(crate) fn spans(&self) -> Vec<Span> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, r)| r.resource_spans.iter())
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter().cloned())
            .collect()
    }

    pub(crate) async fn wait_for(&self, spans: usize) {
        for _ in 0..400 {
            if self.spans().len() >= spans {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the collector got {} spans, not {spans}",
            self.spans().len()
        );
    }
}

fn request_span(i: u8) -> pb::Span {
    pb::Span {
        trace_id: vec![i; 16],
        span_id: vec![i; 8],
        parent_span_id: Vec::new(),
        name: "invoke_agent support".into(),
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        tenant: "acme".into(),
        agent: "support".into(),
        action: "chat".into(),
        model: "gpt-4o-mini".into(),
        node: "node-1".into(),
        region: "eu".into(),
        operation: "invoke_agent".into(),
        input_tokens: 12,
        output_tokens: 3,
        cost_usd: 0.25,
        cache_hit: false,
        baseline_cost_usd: 1.0,
        status: Some(pb::SpanStatus {
            code: pb::SpanStatusCode::Error as i32,
            error_type: "timeout".into(),
            message: "the model did not answer in time".into(),
        }),
        attributes: [
            ("gen_ai.request.temperature".to_string(), "0.2".to_string()),
            (
                "gen_ai.agent.name".to_string(),
                "ignored duplicate".to_string(),
            ),
        ]
        .into(),
    }
}

fn batch(spans: impl IntoIterator<Item = pb::Span>) -> pb::SpanBatch {
    pb::SpanBatch {
        sequence: 1,
        spans: spans.into_iter().collect(),
        ..Default::default()
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    let found: Vec<_> = span.attributes.iter().filter(|kv| kv.key == key).collect();
    assert!(found.len() <= 1, "{key} is set once");
    found
        .first()
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

#[test]
fn spans_map_to_otlp_with_genai_names() {
    let mut child = request_span(2);
    child.operation = "chat".into();
    child.parent_span_id = vec![1; 8];
    child.status = Some(pb::SpanStatus {
        code: pb::SpanStatusCode::Ok as i32,
        ..Default::default()
    });
    let out = convert("node-1", "eu", &batch([request_span(1), child]));
    let resource = out.resource.as_ref().unwrap();
    let names: Vec<&str> = resource
        .attributes
        .iter()
        .map(|kv| kv.key.as_str())
        .collect();
    assert_eq!(
        names,
        ["service.name", "service.instance.id", "cloud.region"]
    );
    let spans = &out.scope_spans[0].spans;
    let (root, child) = (&spans[0], &spans[1]);
    assert_eq!(root.trace_id, vec![1; 16]);
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(child.kind, SpanKind::Client as i32);
    assert_eq!(child.parent_span_id, vec![1; 8]);
    assert_eq!(
        (root.start_time_unix_nano, root.end_time_unix_nano),
        (1_000, 2_000)
    );
    let status = root.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "the model did not answer in time");
    assert_eq!(child.status.as_ref().unwrap().code, StatusCode::Ok as i32);
    assert_eq!(
        attribute(root, "gen_ai.agent.name"),
        Some(&Value::StringValue("support".into())),
        "the typed field wins over a map entry of the same name"
    );
    assert_eq!(
        attribute(root, "gen_ai.usage.input_tokens"),
        Some(&Value::IntValue(12))
    );
    assert_eq!(
        attribute(root, "aios.cost_usd"),
        Some(&Value::DoubleValue(0.25))
    );
    assert_eq!(
        attribute(root, "error.type"),
        Some(&Value::StringValue("timeout".into()))
    );
    assert_eq!(
        attribute(root, "gen_ai.request.temperature"),
        Some(&Value::StringValue("0.2".into()))
    );
    assert_eq!(attribute(child, "error.type"), None);
}

#[tokio::test]
async fn batches_reach_the_collector_with_headers_through_transient_failures() {
    let collector = Collector::default();
    // Popped from the end: UNAVAILABLE, then RESOURCE_EXHAUSTED, then success.
    *collector.failures.lock().unwrap() = vec![Code::ResourceExhausted, Code::Unavailable];
    let (url, stop) = collector.start().await;
    let mut settings = OtlpSettings::new(url);
    settings.headers = vec![("authorization".into(), "Bearer t0ken".into())];
    let shutdown = CancellationToken::new();
    let (exporter, task) = OtlpExporter::start(settings, shutdown.clone()).unwrap();
    exporter.offer(convert(
        "node-1",
        "eu",
        &batch([request_span(1), request_span(2)]),
    ));
    exporter.offer(convert("node-2", "us", &batch([request_span(3)])));
    collector.wait_for(3).await;
    assert_eq!(collector.spans().len(), 3, "each span once");
    let received = collector.received.lock().unwrap().clone();
    assert!(
        received
            .iter()
            .all(|(metadata, _)| metadata.get("authorization").unwrap() == "Bearer t0ken")
    );
    shutdown.cancel();
    task.await.unwrap();
    stop.cancel();
}

#[tokio::test]
async fn a_permanent_failure_drops_the_call_and_later_batches_still_go() {
    let collector = Collector::default();
    *collector.failures.lock().unwrap() = vec![Code::InvalidArgument];
    let (url, stop) = collector.start().await;
    let shutdown = CancellationToken::new();
    let (exporter, task) = OtlpExporter::start(OtlpSettings::new(url), shutdown.clone()).unwrap();
    exporter.offer(convert("node-1", "eu", &batch([request_span(1)])));
    // Sent after the first call failed for good (one call at a time).
    tokio::time::sleep(Duration::from_millis(200)).await;
    exporter.offer(convert("node-1", "eu", &batch([request_span(2)])));
    collector.wait_for(1).await;
    assert_eq!(collector.spans()[0].span_id, vec![2; 8]);
    shutdown.cancel();
    task.await.unwrap();
    stop.cancel();
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued() {
    let collector = Collector::default();
    let (url, stop) = collector.start().await;
    let shutdown = CancellationToken::new();
    let (exporter, task) = OtlpExporter::start(OtlpSettings::new(url), shutdown.clone()).unwrap();
    shutdown.cancel();
    for i in 0..5 {
        exporter.offer(convert("node-1", "eu", &batch([request_span(i)])));
    }
    task.await.unwrap();
    assert_eq!(collector.spans().len(), 5);
    // Batches of one node travel as one resource.
    let received = collector.received.lock().unwrap();
    assert!(received.iter().all(|(_, r)| r.resource_spans.len() == 1));
    drop(received);
    stop.cancel();
}

#[test]
fn merging_keeps_nodes_apart() {
    let merged = merge_by_resource(vec![
        convert("a", "eu", &batch([request_span(1)])),
        convert("b", "eu", &batch([request_span(2)])),
        convert("a", "eu", &batch([request_span(3)])),
    ]);
    assert_eq!(merged.len(), 2);
    assert_eq!(merged[0].scope_spans[0].spans.len(), 2);
    assert_eq!(merged[1].scope_spans[0].spans.len(), 1);
}
