//! The bench's world: the config snapshot the nodes serve, the requests,
//! and the instant backend.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aios_data_plane::{
    backend::{
        Backend, BackendError, ChatMessage, ChatRequest, ChatResponse, FinishReason, Role, Usage,
    },
    fleet::{Applied, NodeConfig, ResourceKey},
    pipeline::{
        self, BackendFactory, ExecRequest, Input, Outcome, Params, Pipeline, Settings, Stages,
    },
    telemetry::{SpanSink, outbox, outbox::DEFAULT_OUTBOX_CAPACITY},
};
use aios_model::Model;
use aios_proto::v1::{self as pb, agent_service_client::AgentServiceClient, resource::Spec};
use anyhow::{Result, anyhow, bail};
use tonic::{
    metadata::{AsciiMetadataValue, MetadataMap},
    transport::Channel,
};

pub(crate) const TENANT: &str = "bench";
pub(crate) const AGENT: &str = "support";
pub(crate) const POLICY: &str = "guarded";
pub(crate) const TABLE: &str = "tiers";
pub(crate) const SECRET: &str = "aios_bench-overhead-caller-key-0123456789abcdef";

pub(crate) const SYSTEM_PROMPT: &str = "You are a customer-support agent for an online store. Answer \
politely and concisely, check the order status before promising anything, never reveal internal \
notes, and hand the conversation to a human when the customer asks for one.";
pub(crate) const REPLY: &str = "I'm sorry your order is late. I checked the shipment: the carrier has not \
scanned the parcel since the label was created, so it is most likely lost. I have arranged a \
replacement at no cost, which ships within two business days, and you will get a new tracking \
link by e-mail. If you would rather have a refund, reply to this message and it will reach your \
original payment method within a week.";

// === The config: one tenant, a guarded agent on a two-tier table ===

fn meta(tenant: &str, name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        tenant: tenant.into(),
        resource_version: 1,
        ..Default::default()
    })
}

fn resource(tenant: &str, name: &str, spec: Spec) -> pb::Resource {
    pb::Resource {
        metadata: meta(tenant, name),
        spec: Some(spec),
    }
}

/// Where the gRPC part's models point: never called, its nodes' backend
/// factory answers in process.
pub(crate) const UNCALLED_ENDPOINT: &str = "http://127.0.0.1:9/v1";

/// The bench's resources, every model at `endpoint` (an OpenAI-compatible
/// base URL, `…/v1`).
pub(crate) fn resources(endpoint: &str) -> Vec<pb::Resource> {
    let rule = |glob: &str, criticality: pb::Criticality| pb::ActionRule {
        action_glob: glob.into(),
        criticality: criticality as i32,
        deny: false,
    };
    let tier =
        |name: &str, complexity: pb::Complexity, targets: [(&str, u32); 2], fallback: &str| {
            pb::RouteTier {
                name: name.into(),
                complexity: complexity as i32,
                targets: targets
                    .iter()
                    .map(|(model, weight)| pb::WeightedTarget {
                        model: (*model).into(),
                        weight: *weight,
                    })
                    .collect(),
                fallbacks: vec![fallback.into()],
            }
        };
    let mut all = vec![
        resource(
            "",
            TENANT,
            Spec::Tenant(pb::TenantSpec {
                display_name: "Bench".into(),
                disabled: false,
            }),
        ),
        resource(
            TENANT,
            "caller",
            Spec::ApiKey(pb::ApiKeySpec {
                role: pb::Role::Caller as i32,
                secret_hash: aios_runtime::keys::hash_secret(SECRET),
                // Enforced, but high enough never to refuse.
                rate_limit: Some(pb::RateLimit {
                    requests_per_minute: 1_000_000_000,
                    tokens_per_minute: 1_000_000_000_000,
                }),
                ..Default::default()
            }),
        ),
        resource(
            TENANT,
            POLICY,
            Spec::Policy(pb::PolicySpec {
                rules: vec![
                    rule("payments.*", pb::Criticality::High),
                    rule("refunds.*", pb::Criticality::Medium),
                    rule("chat", pb::Criticality::Low),
                ],
                input: Some(pb::InputGuardrails {
                    max_input_bytes: 32 * 1024,
                    prompt_injection: pb::GuardrailAction::Block as i32,
                    pii: pb::GuardrailAction::Redact as i32,
                    pii_kinds: vec![],
                }),
                output: Some(pb::OutputGuardrails {
                    redact_pii: true,
                    redact_secrets: true,
                    pii_kinds: vec![],
                }),
                approval: None,
            }),
        ),
        resource(
            TENANT,
            TABLE,
            Spec::RoutingTable(pb::RoutingTableSpec {
                tiers: vec![
                    tier(
                        "simple",
                        pb::Complexity::Simple,
                        [("small-a", 80), ("small-b", 20)],
                        "large-a",
                    ),
                    tier(
                        "general",
                        pb::Complexity::Unspecified,
                        [("large-a", 90), ("large-b", 10)],
                        "small-a",
                    ),
                ],
                sticky_by_user: true,
                baseline_model: "large-a".into(),
                default_constraints: None,
            }),
        ),
        resource(
            TENANT,
            AGENT,
            Spec::Agent(pb::AgentSpec {
                system_prompt: SYSTEM_PROMPT.into(),
                routing_table: TABLE.into(),
                policy: POLICY.into(),
                max_steps: 4,
                ..Default::default()
            }),
        ),
    ];
    for (name, input_price) in [
        ("small-a", 0.15),
        ("small-b", 0.20),
        ("large-a", 2.50),
        ("large-b", 3.00),
    ] {
        all.push(resource(
            TENANT,
            name,
            Spec::Model(pb::ModelSpec {
                provider: pb::ModelProvider::OpenaiCompatible as i32,
                provider_model: format!("{name}-v1"),
                endpoint: endpoint.into(),
                capabilities: vec![pb::ModelCapability::Chat as i32],
                input_price_usd_per_mtok: input_price,
                output_price_usd_per_mtok: input_price * 4.0,
                context_window_tokens: 128_000,
                max_output_tokens: 1_024,
                ..Default::default()
            }),
        ));
    }
    all
}

/// The config as a node holds it, every resource validated, every model
/// at `endpoint`.
pub(crate) fn node_config(endpoint: &str) -> Result<NodeConfig> {
    let mut config = NodeConfig {
        revision: 1,
        ..Default::default()
    };
    for resource in resources(endpoint) {
        let validated = aios_model::validate(&resource).map_err(|e| {
            anyhow!(
                "bench resource {:?} is invalid: {e:?}",
                resource.metadata.as_ref().map(|m| &m.name)
            )
        })?;
        let key = ResourceKey::new(validated.kind, &validated.tenant, &validated.name);
        config.resources.insert(
            key,
            Arc::new(Applied {
                version: 1,
                resource,
                validated,
            }),
        );
    }
    Ok(config)
}

// === Requests ===

/// The user's message: ~440 bytes, unique per `n` (a reference in
/// letters, so no detector mistakes it for a phone or card number).
pub(crate) fn prompt(n: u64) -> String {
    let mut reference = String::with_capacity(8);
    let mut rest = n;
    for _ in 0..6 {
        reference.push(char::from(b'A' + (rest % 26) as u8));
        rest /= 26;
    }
    format!(
        "Hello, I placed order {reference} last week and the package still has not arrived. The \
tracking page has shown \"label created\" for six days now, and the delivery estimate keeps \
moving. Could you check what is happening with the shipment, tell me whether it is lost, and if \
so arrange a replacement or a refund to my original payment method? I would also like to know \
how long a refund usually takes to appear on my statement. Thank you for your help."
    )
}

/// End users, so per-user rate limits and sticky splits do their work.
pub(crate) fn user(n: u64) -> String {
    format!("customer-{}", n % 64)
}

pub(crate) fn grpc_request(n: u64, key: &AsciiMetadataValue) -> tonic::Request<pb::ExecuteRequest> {
    let mut request = tonic::Request::new(pb::ExecuteRequest {
        agent: AGENT.into(),
        input: Some(pb::execute_request::Input::Messages(pb::Messages {
            messages: vec![pb::Message {
                role: pb::MessageRole::User as i32,
                content: prompt(n),
                ..Default::default()
            }],
        })),
        user: user(n),
        ..Default::default()
    });
    request.metadata_mut().insert("x-api-key", key.clone());
    request
}

pub(crate) fn exec_request(n: u64) -> ExecRequest {
    ExecRequest {
        agent: AGENT.into(),
        input: Input::Messages(vec![ChatMessage::text(Role::User, prompt(n))]),
        params: Params::default(),
        user: user(n),
        constraints: Default::default(),
        forensic: false,
        idempotency_key: String::new(),
    }
}

// === The instant backend ===

/// A model that answers at once with a fixed text and plausible usage,
/// after `work` steps of pure arithmetic (none for the bench's nodes).
#[derive(Debug)]
struct InstantModel {
    work: u64,
}

#[tonic::async_trait]
impl Backend for InstantModel {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        compute(self.work);
        let bytes: usize = request.messages.iter().map(|m| m.content.len()).sum();
        Ok(ChatResponse {
            content: REPLY.to_string(),
            tool_calls: Vec::new(),
            usage: Usage {
                input_tokens: (bytes / 4) as u64,
                output_tokens: (REPLY.len() / 4) as u64,
            },
            finish: FinishReason::Stop,
            device_cost: None,
        })
    }
}

/// Builds [`InstantModel`]s doing `work` steps per call.
#[derive(Debug)]
pub(crate) struct InstantModels {
    pub(crate) work: u64,
}

impl InstantModels {
    /// Answers at once.
    pub(crate) const INSTANT: Self = Self { work: 0 };
}

impl BackendFactory for InstantModels {
    fn build(&self, _: &str, _: &str, _: &Model) -> Result<Arc<dyn Backend>, String> {
        Ok(Arc::new(InstantModel { work: self.work }))
    }
}

// === Pure compute, for the calibration node ===

/// `steps` of a dependent multiply-add chain: CPU time that touches no
/// memory, allocates nothing and makes no call, so its latency on this
/// machine shows what the machine alone does to a fixed amount of work.
pub(crate) fn compute(steps: u64) -> u64 {
    let mut x = 1u64;
    for _ in 0..steps {
        x = std::hint::black_box(
            x.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
    x
}

/// The steps of [`compute`] that take about `target` on this thread (the
/// fastest of a few timings: the machine's speed, not its hiccups).
pub(crate) fn steps_for(target: Duration) -> u64 {
    const PROBE: u64 = 1_000_000;
    let fastest = (0..5)
        .map(|_| {
            let started = Instant::now();
            compute(PROBE);
            started.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_millis(1))
        .max(Duration::from_nanos(1));
    (PROBE as f64 * target.as_secs_f64() / fastest.as_secs_f64()).round() as u64
}

pub(crate) const NO_STAGES: Stages = Stages {
    authenticate: false,
    rate_limit: false,
    guardrails: false,
    policy: false,
    budget: false,
    route: false,
    cache: false,
    span: false,
};

pub(crate) fn settings(stages: Stages) -> Settings {
    Settings {
        stages,
        unauthenticated_tenant: Some(TENANT.into()),
        spans: Some(span_sink()),
        ..Settings::default()
    }
}

/// Where the bench's spans go: an outbox that a thread of its own empties.
/// The request path pays what a node's does (building the spans, handing
/// them off); the reporter's batching and sending, off the request path and
/// without a control plane here, are left out.
fn span_sink() -> SpanSink {
    let (outbox, mut spans) = outbox(DEFAULT_OUTBOX_CAPACITY);
    std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            runtime.block_on(async { while spans.recv().await.is_some() {} });
        }
    });
    SpanSink::new(outbox, "bench", "bench")
}

/// Request `n` through `pipeline` in process, as the key `key`; the time
/// it took and its outcome. Anything but an uncached success is an error.
pub(crate) async fn execute_in_process(
    pipeline: &Pipeline,
    key: &AsciiMetadataValue,
    n: u64,
) -> Result<(Duration, Outcome)> {
    let mut metadata = MetadataMap::new();
    metadata.insert("x-api-key", key.clone());
    let request = exec_request(n);
    let started = Instant::now();
    let outcome = pipeline.execute(metadata, request, None, None).await;
    let took = started.elapsed();
    let outcome = outcome.map_err(|e| anyhow!("in-process execute: {e}"))?;
    if outcome.status != pipeline::Status::Succeeded || outcome.cache_hit {
        bail!(
            "in-process execute: {:?} {:?}",
            outcome.status,
            outcome.error
        );
    }
    Ok((took, outcome))
}

/// One gRPC request: its client-side and handler (the response's
/// `latency`) durations, and the response. Anything but an uncached
/// success is an error.
pub(crate) async fn execute_timed(
    client: &mut AgentServiceClient<Channel>,
    request: tonic::Request<pb::ExecuteRequest>,
) -> Result<(Duration, Duration, pb::ExecuteResponse)> {
    let started = Instant::now();
    let response = client.execute(request).await;
    let took = started.elapsed();
    let response = response
        .map_err(|s| anyhow!("Execute failed: {s}"))?
        .into_inner();
    if response.status != pb::ExecutionStatus::Succeeded as i32 || response.cache_hit {
        bail!(
            "expected an uncached success, got status {} cache_hit {} error {:?}",
            response.status,
            response.cache_hit,
            response.error
        );
    }
    let handler = response.latency.map_or(Duration::ZERO, |d| {
        Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
    });
    Ok((took, handler, response))
}
