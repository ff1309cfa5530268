//! OTLP export: spans to any OpenTelemetry collector, by config
//! (`--otlp-endpoint`), for long-term storage.
//!
//! The replica that takes a batch exports it, once it is stored: every
//! stored batch is exported by exactly one replica, and a replayed duplicate
//! is not exported again. Export never slows ingest: batches are converted
//! on the ingest path and queued (bounded); one task sends them, several
//! batches per `Export` call, retrying transient failures with backoff. A
//! full queue, or a collector that keeps failing, drops spans and counts
//! them (`aios_otlp_spans_total{outcome}`); the rollups never depend on it.
//! On shutdown what is queued gets a short flush.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aios_proto::{
    otlp::{
        collector::trace::v1::{
            ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
        },
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
    },
    v1 as pb,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};

use super::rollup::is_request;

/// Where and how to export.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The collector's OTLP/gRPC URL, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// Metadata sent with every call (e.g. an auth header), lowercase keys.
    pub headers: Vec<(String, String)>,
    /// Batches queued for export before new ones are dropped.
    pub queue_batches: usize,
    /// Most spans in one `Export` call.
    pub max_spans_per_call: usize,
    /// Deadline of one `Export` call.
    pub timeout: Duration,
}

impl OtlpSettings {
    /// Defaults for `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            headers: Vec::new(),
            queue_batches: 1024,
            max_spans_per_call: 4096,
            timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for OtlpSettings {
    /// Header values are left out: they are often credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self.headers.iter().map(|(k, _)| format!("{k}=…")).collect();
        f.debug_struct("OtlpSettings")
            .field("endpoint", &self.endpoint)
            .field("headers", &headers)
            .field("queue_batches", &self.queue_batches)
            .field("max_spans_per_call", &self.max_spans_per_call)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Attempts per `Export` call before its spans are dropped.
const ATTEMPTS: u32 = 4;
/// How long shutdown waits for queued spans to leave.
const FLUSH: Duration = Duration::from_secs(2);

/// The ingest side of the exporter; cheap to clone.
#[derive(Clone, Debug)]
pub struct OtlpExporter {
    queue: mpsc::Sender<ResourceSpans>,
}

impl OtlpExporter {
    /// Starts the export task. Fails only on a malformed endpoint or
    /// header; the collector is connected to lazily and may be down.
    pub fn start(
        settings: OtlpSettings,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), String> {
        let endpoint = Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|e| format!("--otlp-endpoint {}: {e}", settings.endpoint))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(settings.timeout);
        let mut metadata = MetadataMap::new();
        for (key, value) in &settings.headers {
            let key = MetadataKey::from_bytes(key.as_bytes())
                .map_err(|_| format!("--otlp-header {key}: not a valid header name"))?;
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|_| format!("--otlp-header {key}: not a valid header value"))?;
            metadata.insert(key, value);
        }
        let (queue, receiver) = mpsc::channel(settings.queue_batches.max(1));
        let sender = Sender {
            client: TraceServiceClient::new(endpoint.connect_lazy()),
            metadata,
            max_spans: settings.max_spans_per_call.max(1),
        };
        let task = tokio::spawn(sender.run(receiver, shutdown));
        Ok((Self { queue }, task))
    }

    /// Queues the spans of a batch just stored, converted by [`convert`].
    /// Never waits: a full queue drops them, counted.
    pub fn offer(&self, spans: ResourceSpans) {
        let count = span_count(&spans);
        if self.queue.try_send(spans).is_err() {
            metrics::counter!("aios_otlp_spans_total", "outcome" => "dropped_queue_full")
                .increment(count);
        }
    }
}

/// One node's batch as OTLP: a resource for the node (service
/// `aios-data-plane`, instance = node id, `cloud.region`), one scope, and a
/// span per span with GenAI attribute names and aios' own under `aios.`.
pub fn convert(node: &str, region: &str, batch: &pb::SpanBatch) -> ResourceSpans {
    let resource = Resource {
        attributes: vec![
            string("service.name", "aios-data-plane"),
            string("service.instance.id", node),
            string("cloud.region", region),
        ],
        ..Default::default()
    };
    ResourceSpans {
        resource: Some(resource),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "aios".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            spans: batch.spans.iter().map(span).collect(),
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

fn span(s: &pb::Span) -> Span {
    let kind = match s.operation.as_str() {
        _ if is_request(s) => SpanKind::Server,
        "chat" | "text_completion" | "embeddings" | "execute_tool" => SpanKind::Client,
        _ => SpanKind::Internal,
    };
    let mut attributes = Vec::with_capacity(12 + s.attributes.len());
    let mut put = |key: &str, value: Value| attributes.push(kv(key, value));
    put(
        "gen_ai.operation.name",
        Value::StringValue(s.operation.clone()),
    );
    if !s.agent.is_empty() {
        put("gen_ai.agent.name", Value::StringValue(s.agent.clone()));
    }
    if !s.model.is_empty() {
        put("gen_ai.request.model", Value::StringValue(s.model.clone()));
    }
    if s.input_tokens > 0 || s.output_tokens > 0 {
        put(
            "gen_ai.usage.input_tokens",
            Value::IntValue(clamp(s.input_tokens)),
        );
        put(
            "gen_ai.usage.output_tokens",
            Value::IntValue(clamp(s.output_tokens)),
        );
    }
    put("aios.tenant", Value::StringValue(s.tenant.clone()));
    if !s.action.is_empty() {
        put("aios.action", Value::StringValue(s.action.clone()));
    }
    put("aios.cost_usd", Value::DoubleValue(s.cost_usd));
    if s.baseline_cost_usd > 0.0 {
        put(
            "aios.baseline_cost_usd",
            Value::DoubleValue(s.baseline_cost_usd),
        );
    }
    put("aios.cache_hit", Value::BoolValue(s.cache_hit));
    let status = s.status.as_ref();
    if let Some(error_type) = status.map(|st| &st.error_type).filter(|t| !t.is_empty()) {
        put("error.type", Value::StringValue(error_type.clone()));
    }
    let set: Vec<String> = attributes.iter().map(|kv| kv.key.clone()).collect();
    let mut extra: Vec<(&String, &String)> = s
        .attributes
        .iter()
        .filter(|(key, _)| !set.contains(key))
        .collect();
    // Map order is random; a stable order makes exports comparable.
    extra.sort_unstable();
    for (key, value) in extra {
        attributes.push(kv(key, Value::StringValue(value.clone())));
    }
    let code = match status.map(|st| st.code()) {
        Some(pb::SpanStatusCode::Ok) => StatusCode::Ok,
        Some(pb::SpanStatusCode::Error) => StatusCode::Error,
        _ => StatusCode::Unset,
    };
    Span {
        trace_id: s.trace_id.clone(),
        span_id: s.span_id.clone(),
        parent_span_id: s.parent_span_id.clone(),
        name: s.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: s.start_time_unix_nano,
        end_time_unix_nano: s.end_time_unix_nano,
        attributes,
        status: Some(Status {
            message: status.map(|st| st.message.clone()).unwrap_or_default(),
            code: code as i32,
        }),
        ..Default::default()
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn span_count(spans: &ResourceSpans) -> u64 {
    spans.scope_spans.iter().map(|s| s.spans.len() as u64).sum()
}

// === The sending task ===

struct Sender {
    client: TraceServiceClient<Channel>,
    metadata: MetadataMap,
    max_spans: usize,
}

impl Sender {
    async fn run(mut self, mut queue: mpsc::Receiver<ResourceSpans>, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                first = queue.recv() => match first {
                    Some(first) => first,
                    None => return,
                },
            };
            let request = self.gather(first, &mut queue);
            self.export(request, Some(&shutdown)).await;
        }
        // Shutting down: what is queued gets one attempt each, within FLUSH.
        let deadline = Instant::now() + FLUSH;
        while let Ok(first) = queue.try_recv() {
            let request = self.gather(first, &mut queue);
            if Instant::now() >= deadline {
                count(&request, "dropped_shutdown");
                continue;
            }
            let call = self.export_once(request.clone());
            match tokio::time::timeout(deadline - Instant::now(), call).await {
                Ok(Ok(())) => {}
                _ => count(&request, "dropped_shutdown"),
            }
        }
    }

    /// `first` and what else is queued, up to `max_spans`, grouped by node.
    fn gather(
        &self,
        first: ResourceSpans,
        queue: &mut mpsc::Receiver<ResourceSpans>,
    ) -> ExportTraceServiceRequest {
        let mut spans = span_count(&first) as usize;
        let mut batches = vec![first];
        while spans < self.max_spans {
            match queue.try_recv() {
                Ok(next) => {
                    spans += span_count(&next) as usize;
                    batches.push(next);
                }
                Err(_) => break,
            }
        }
        ExportTraceServiceRequest {
            resource_spans: merge_by_resource(batches),
        }
    }

    /// Exports with retries on transient failures; drops (counted) after
    /// [`ATTEMPTS`] or on a permanent failure.
    async fn export(
        &mut self,
        request: ExportTraceServiceRequest,
        shutdown: Option<&CancellationToken>,
    ) {
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            match self.export_once(request.clone()).await {
                Ok(()) => return,
                Err(status) if retryable(status.code()) && attempt < ATTEMPTS => {
                    tracing::debug!(%status, attempt, "OTLP export failed; retrying");
                    let wait = tokio::time::sleep(backoff);
                    match shutdown {
                        Some(shutdown) => tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = wait => {}
                        },
                        None => wait.await,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(status) => {
                    tracing::warn!(%status, spans = count_of(&request), "OTLP export failed; spans dropped");
                    break;
                }
            }
        }
        count(&request, "dropped_failed");
    }

    async fn export_once(
        &mut self,
        request: ExportTraceServiceRequest,
    ) -> Result<(), tonic::Status> {
        let spans = count_of(&request);
        let mut call = tonic::Request::new(request);
        *call.metadata_mut() = self.metadata.clone();
        let response = self.client.export(call).await?.into_inner();
        let rejected = response
            .partial_success
            .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
            .min(spans);
        if rejected > 0 {
            metrics::counter!("aios_otlp_spans_total", "outcome" => "rejected").increment(rejected);
        }
        metrics::counter!("aios_otlp_spans_total", "outcome" => "exported")
            .increment(spans - rejected);
        Ok(())
    }
}

/// Whether a failed export may succeed if sent again (the OTLP spec's
/// retryable codes).
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
    )
}

/// Batches of the same node become one `ResourceSpans`.
fn merge_by_resource(batches: Vec<ResourceSpans>) -> Vec<ResourceSpans> {
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut out: Vec<ResourceSpans> = Vec::new();
    for batch in batches {
        let key = prost::Message::encode_to_vec(&batch.resource.clone().unwrap_or_default());
        match index.get(&key) {
            Some(&i) => {
                let scope = &mut out[i].scope_spans[0].spans;
                for s in batch.scope_spans {
                    scope.extend(s.spans);
                }
            }
            None => {
                index.insert(key, out.len());
                out.push(batch);
            }
        }
    }
    out
}

fn count_of(request: &ExportTraceServiceRequest) -> u64 {
    request.resource_spans.iter().map(span_count).sum()
}

fn count(request: &ExportTraceServiceRequest, outcome: &'static str) {
    metrics::counter!("aios_otlp_spans_total", "outcome" => outcome).increment(count_of(request));
}

#[cfg(test)]
#[path = "otlp_tests.rs"]
pub(crate) mod tests;
