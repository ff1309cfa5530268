//! bench-overhead: what the execution pipeline adds to a request.
//!
//! Two data-plane nodes serve the same config, read from a snapshot on disk
//! (`--control-plane` points at a closed port: no control plane runs). Their
//! agent calls an instant in-process backend (a fixed answer with usage,
//! returned at once), so what is measured is the node itself. One node runs
//! with every stage switched off (the agent runs as the `bench` tenant); the
//! other with all of them on: authenticate, rate limit, input guardrails
//! (prompt injection BLOCK, PII REDACT), policy, route (two tiers, weighted
//! splits, sticky per user), cache lookup, and in the agent loop output
//! redaction and cost. Every request differs by a counter, so the cache is
//! looked up, misses, and stores the answer. Spans arrive with the telemetry
//! issue and are not measured yet.
//!
//! 1. Latency at one request in flight: the same gRPC requests (loopback,
//!    TCP_NODELAY), alternating between the two nodes in blocks to cancel
//!    drift, after a warm-up that fills the response cache; p50/p99/p99.9
//!    per node and the added latency (on − off). The client runs once on
//!    another thread (each request wakes the node's thread and back: on a
//!    VM whose idle vCPUs halt, that wake-up grows with the time the node
//!    spends) and once on the node's own thread (no wake-ups: on − off is
//!    what the stages add). The handler's own time (the response's
//!    `latency`) is reported beside both.
//! 2. Throughput on one core: each node serves from its own OS thread with a
//!    current-thread runtime; the load (another runtime, over several HTTP/2
//!    connections) steps concurrency up; the highest rate whose p99 < 20 ms,
//!    and the server thread's CPU time per request (from /proc), which is
//!    what "per core" means when the load generator shares the machine.
//! 3. Where the time goes: the pipeline in process (no gRPC) with stages
//!    switched on one by one, and the stage functions alone.
//!
//! cargo run --release -p aios-tests --bin bench-overhead -- [--requests N] [--warmup N] [--block N] [--step-secs S] [--concurrency 1,2,4,…] [--connections C] [--client-threads T] [--micro N] [--no-throughput] [--no-micro]

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark program: printing is its job

use std::{
    hint::black_box,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aios_data_plane::{
    DataPlane,
    backend::{
        Backend, BackendError, ChatMessage, ChatRequest, ChatResponse, FinishReason, Role, Usage,
    },
    fleet::{Applied, NodeConfig, ResourceKey},
    guardrails,
    pipeline::{
        self, BackendFactory, Caller, Catalog, CatalogHandle, ExecRequest, Input, Params, Pipeline,
        RateLimiter, Settings, Stages, cache::KeyBuilder, policy::Ask,
    },
    router,
};
use aios_model::Model;
use aios_proto::v1::{self as pb, agent_service_client::AgentServiceClient, resource::Spec};
use aios_runtime::cli::{EXIT_FAILURE, exit_config, exit_with};
use anyhow::{Context, Result, anyhow, bail};
use prost::Message;
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tonic::{
    metadata::{AsciiMetadataValue, MetadataMap},
    transport::{Channel, Endpoint},
};

const TENANT: &str = "bench";
const AGENT: &str = "support";
const POLICY: &str = "guarded";
const TABLE: &str = "tiers";
const SECRET: &str = "aios_bench-overhead-caller-key-0123456789abcdef";
/// Throughput counts only steps whose p99 stays under this.
const P99_BOUND: Duration = Duration::from_millis(20);
/// Targets from the design brief.
const TARGET_ADDED_P99_US: f64 = 50.0;
const TARGET_RPS_PER_CORE: f64 = 15_000.0;
/// Part of each throughput step not measured (connections warm, queues fill).
const STEP_WARMUP: Duration = Duration::from_millis(300);
const START_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

const SYSTEM_PROMPT: &str = "You are a customer-support agent for an online store. Answer \
politely and concisely, check the order status before promising anything, never reveal internal \
notes, and hand the conversation to a human when the customer asks for one.";
const REPLY: &str = "I'm sorry your order is late. I checked the shipment: the carrier has not \
scanned the parcel since the label was created, so it is most likely lost. I have arranged a \
replacement at no cost, which ships within two business days, and you will get a new tracking \
link by e-mail. If you would rather have a refund, reply to this message and it will reach your \
original payment method within a week.";

// === Options ===

#[derive(Clone, Debug)]
struct Options {
    requests: usize,
    warmup: usize,
    block: usize,
    step: Duration,
    concurrency: Vec<usize>,
    connections: usize,
    client_threads: usize,
    micro: usize,
    throughput: bool,
    micro_on: bool,
}

fn positive(arg: &str, text: &str) -> usize {
    text.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| exit_config(&format!("{arg} {text}: expected N > 0")))
}

fn parse_args() -> Options {
    let mut options = Options {
        requests: 20_000,
        // Per node and client placement: 40,000 requests through the "on"
        // node fill its 64 MiB response cache, so what is measured is the
        // steady state (evicting), not a cache still growing.
        warmup: 20_000,
        block: 500,
        step: Duration::from_secs(2),
        concurrency: vec![1, 2, 4, 8, 16, 32, 64, 128, 256],
        connections: 4,
        client_threads: 1,
        micro: 20_000,
        throughput: true,
        micro_on: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| exit_config(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--requests" => options.requests = positive(&arg, &value()),
            "--warmup" => options.warmup = positive(&arg, &value()),
            "--block" => options.block = positive(&arg, &value()),
            "--connections" => options.connections = positive(&arg, &value()),
            "--client-threads" => options.client_threads = positive(&arg, &value()),
            "--micro" => options.micro = positive(&arg, &value()),
            "--step-secs" => {
                let text = value();
                options.step = text
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > STEP_WARMUP.as_secs_f64() && *s < 60.0)
                    .map(Duration::from_secs_f64)
                    .unwrap_or_else(|| {
                        exit_config(&format!("--step-secs {text}: expected 0.5-60"))
                    });
            }
            "--concurrency" => {
                let list = value();
                options.concurrency = list
                    .split(',')
                    .map(|n| n.trim().parse::<usize>().ok().filter(|n| *n > 0))
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_else(|| {
                        exit_config(&format!("--concurrency {list}: expected e.g. 1,2,4,8"))
                    });
            }
            "--no-throughput" => options.throughput = false,
            "--no-micro" => options.micro_on = false,
            other => exit_config(&format!(
                "unknown option {other}; see the header of tests/src/bin/bench_overhead.rs"
            )),
        }
    }
    options
}

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

fn resources() -> Vec<pb::Resource> {
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
                // Never called: the bench's backend factory answers in process.
                endpoint: "http://127.0.0.1:9/v1".into(),
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

/// The config as a node holds it, every resource validated.
fn node_config() -> Result<NodeConfig> {
    let mut config = NodeConfig {
        revision: 1,
        ..Default::default()
    };
    for resource in resources() {
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
fn prompt(n: u64) -> String {
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
fn user(n: u64) -> String {
    format!("customer-{}", n % 64)
}

fn grpc_request(n: u64, key: &AsciiMetadataValue) -> tonic::Request<pb::ExecuteRequest> {
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

fn exec_request(n: u64) -> ExecRequest {
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

/// A model that answers at once with a fixed text and plausible usage.
#[derive(Debug)]
struct InstantModel;

#[tonic::async_trait]
impl Backend for InstantModel {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        let bytes: usize = request.messages.iter().map(|m| m.content.len()).sum();
        Ok(ChatResponse {
            content: REPLY.to_string(),
            tool_calls: Vec::new(),
            usage: Usage {
                input_tokens: (bytes / 4) as u64,
                output_tokens: (REPLY.len() / 4) as u64,
            },
            finish: FinishReason::Stop,
        })
    }
}

#[derive(Debug)]
struct InstantModels;

impl BackendFactory for InstantModels {
    fn build(&self, _: &str, _: &str, _: &Model) -> Result<Arc<dyn Backend>, String> {
        Ok(Arc::new(InstantModel))
    }
}

const NO_STAGES: Stages = Stages {
    authenticate: false,
    rate_limit: false,
    guardrails: false,
    policy: false,
    route: false,
    cache: false,
};

fn settings(stages: Stages) -> Settings {
    Settings {
        stages,
        unauthenticated_tenant: Some(TENANT.into()),
        ..Settings::default()
    }
}

// === CPU time from /proc ===

/// One thread's CPU time (`/proc/<pid>/task/<tid>/schedstat`, ns).
#[derive(Clone, Debug)]
struct ThreadCpu(PathBuf);

impl ThreadCpu {
    /// The calling thread.
    fn current() -> Option<Self> {
        let link = std::fs::read_link("/proc/thread-self").ok()?;
        Some(Self(Path::new("/proc").join(link)))
    }

    fn read(&self) -> Duration {
        read_schedstat(&self.0).unwrap_or_default()
    }
}

fn read_schedstat(task: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(task.join("schedstat")).ok()?;
    let ns = text.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

/// CPU time of every live thread of this process.
fn process_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter_map(|task| read_schedstat(&task.path()))
        .sum()
}

// === A node on its own thread ===

/// Work sent to run on a node's thread.
type Job = futures::future::BoxFuture<'static, ()>;

/// A data-plane node serving from its own OS thread (one core), which
/// also runs jobs sent to it (a client sharing the node's thread).
#[derive(Debug)]
struct Node {
    addr: SocketAddr,
    cpu: ThreadCpu,
    jobs: mpsc::UnboundedSender<Job>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Ready = Result<(SocketAddr, Option<ThreadCpu>, usize)>;

impl Node {
    fn start(name: &str, state_dir: &Path, control_plane: &str, stages: Stages) -> Result<Self> {
        let mut config = aios_data_plane::Config::local(
            control_plane
                .parse()
                .map_err(|e| anyhow!("control-plane URL {control_plane}: {e}"))?,
            state_dir.to_path_buf(),
        );
        config.node.node_id = format!("bench-{name}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Ready>();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (jobs, mut jobs_rx) = mpsc::unbounded_channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(format!("node-{name}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let plane =
                        DataPlane::start_with(&config, Arc::new(InstantModels), settings(stages))
                            .await;
                    let plane = match plane {
                        Ok(plane) => plane,
                        Err(error) => {
                            let _ = ready_tx.send(Err(error.into()));
                            return;
                        }
                    };
                    let held = plane.node_config().current().resources.len();
                    let _ = ready_tx.send(Ok((plane.grpc_addr(), ThreadCpu::current(), held)));
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            job = jobs_rx.recv() => match job {
                                Some(job) => job.await,
                                None => break,
                            },
                        }
                    }
                    plane.shutdown(Duration::from_secs(2)).await;
                });
            })?;
        let (addr, cpu, held) = ready_rx
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| anyhow!("node {name} did not start within {START_TIMEOUT:?}"))??;
        let expected = resources().len();
        if held != expected {
            bail!("node {name} loaded {held} of the {expected} resources in its snapshot");
        }
        Ok(Self {
            addr,
            cpu: cpu.context("cannot read /proc/thread-self (Linux only)")?,
            jobs,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Runs `work` on the node's thread and returns its result.
    async fn on_thread<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::pin(async move {
                let _ = done.send(work.await);
            }))
            .map_err(|_| anyhow!("the node's thread has stopped"))?;
        result
            .await
            .map_err(|_| anyhow!("the node's thread dropped a job"))
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

type Client = AgentServiceClient<Channel>;

async fn connect(addr: SocketAddr) -> Result<Client> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(START_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(AgentServiceClient::new(channel))
}

/// One request; its client-side and server-side (the response's
/// `latency`) durations. Anything but an uncached success is an error.
async fn call(
    client: &mut Client,
    request: tonic::Request<pb::ExecuteRequest>,
) -> Result<(Duration, Duration)> {
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
    let server = response.latency.map_or(Duration::ZERO, |d| {
        Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
    });
    Ok((took, server))
}

// === Statistics ===

fn us(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Nearest-rank percentile of sorted samples, in µs.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    us(sorted[index])
}

fn mean(samples: &[Duration]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    us(samples.iter().sum::<Duration>()) / samples.len() as f64
}

fn summary(samples: &mut [Duration]) -> Value {
    samples.sort();
    json!({
        "n": samples.len(),
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "p999_us": percentile(samples, 0.999),
        "mean_us": mean(samples),
    })
}

fn field(value: &Value, key: &str) -> f64 {
    value.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

// === 1. Latency at one request in flight ===

/// `count` sequential requests, on whatever runtime polls this; the client
/// comes back for the next block.
async fn sequential(
    mut client: Client,
    count: usize,
    counter: Arc<AtomicU64>,
) -> Result<(Client, Vec<(Duration, Duration)>)> {
    let key = AsciiMetadataValue::from_static(SECRET);
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let request = grpc_request(counter.fetch_add(1, Ordering::Relaxed), &key);
        samples.push(call(&mut client, request).await?);
    }
    Ok((client, samples))
}

/// Where the client runs: on the load generator's thread (two threads,
/// each request wakes the other one up), or on the node's own thread.
const PLACES: [&str; 2] = ["other_thread", "node_thread"];

async fn latency(options: &Options, nodes: [&Node; 2], counter: &Arc<AtomicU64>) -> Result<Value> {
    // clients[place][node]; a client's connection is driven where it was made.
    let mut clients: [[Option<Client>; 2]; 2] = Default::default();
    for (which, node) in nodes.iter().enumerate() {
        clients[0][which] = Some(connect(node.addr).await?);
        clients[1][which] = Some(node.on_thread(connect(node.addr)).await??);
    }
    // samples[place][node]: (client side, server side).
    let mut samples: [[Vec<(Duration, Duration)>; 2]; 2] = Default::default();
    let mut done = 0;
    let mut block = 0;
    let total = options.warmup + options.requests;
    while done < total {
        let size = options.block.min(total - done);
        // Alternate which node goes first, so neither always follows the other.
        let order = if block % 2 == 0 { [0, 1] } else { [1, 0] };
        for place in 0..PLACES.len() {
            for which in order {
                let client = clients[place][which]
                    .take()
                    .context("a latency client was lost")?;
                let work = sequential(client, size, counter.clone());
                let (client, taken) = match place {
                    0 => work.await?,
                    _ => nodes[which].on_thread(work).await??,
                };
                clients[place][which] = Some(client);
                if done >= options.warmup {
                    samples[place][which].extend(taken);
                }
            }
        }
        done += size;
        block += 1;
    }
    let mut result = serde_json::Map::new();
    for (place, [off, on]) in PLACES.iter().zip(samples) {
        let side = |samples: &[(Duration, Duration)], server: bool| -> Value {
            let mut d: Vec<Duration> = samples
                .iter()
                .map(|(c, s)| if server { *s } else { *c })
                .collect();
            summary(&mut d)
        };
        let (off_c, on_c, off_s, on_s) = (
            side(&off, false),
            side(&on, false),
            side(&off, true),
            side(&on, true),
        );
        let added = |key: &str, a: &Value, b: &Value| field(b, key) - field(a, key);
        result.insert(
            (*place).to_string(),
            json!({
                "off": { "client": off_c, "server": off_s },
                "on": { "client": on_c, "server": on_s },
                "added_p50_us": added("p50_us", &off_c, &on_c),
                "added_p99_us": added("p99_us", &off_c, &on_c),
                "added_p999_us": added("p999_us", &off_c, &on_c),
                "added_server_p50_us": added("p50_us", &off_s, &on_s),
                "added_server_p99_us": added("p99_us", &off_s, &on_s),
            }),
        );
    }
    Ok(Value::Object(result))
}

// === 2. Throughput on one core ===

/// One step: `concurrency` loops of sequential requests over `clients`.
async fn step(
    clients: &[Client],
    concurrency: usize,
    measure: Duration,
    node: &Node,
    counter: &Arc<AtomicU64>,
) -> Result<Value> {
    let key = AsciiMetadataValue::from_static(SECRET);
    let start = Instant::now() + STEP_WARMUP;
    let end = start + measure;
    let mut loops = JoinSet::new();
    for i in 0..concurrency {
        let mut client = clients[i % clients.len()].clone();
        let counter = counter.clone();
        let key = key.clone();
        loops.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let request = grpc_request(n, &key);
                let sent = Instant::now();
                if sent >= end {
                    return Ok::<_, anyhow::Error>(samples);
                }
                let (took, _) = call(&mut client, request).await?;
                if sent >= start {
                    samples.push(took);
                }
            }
        });
    }
    tokio::time::sleep_until(start.into()).await;
    let (server0, process0) = (node.cpu.read(), process_cpu());
    tokio::time::sleep_until(end.into()).await;
    let (server1, process1) = (node.cpu.read(), process_cpu());
    let mut samples = Vec::new();
    while let Some(joined) = loops.join_next().await {
        samples.extend(joined??);
    }
    samples.sort();
    let seconds = measure.as_secs_f64();
    let rps = samples.len() as f64 / seconds;
    let server_cpu = (server1.saturating_sub(server0)).as_secs_f64() / seconds;
    let process = (process1.saturating_sub(process0)).as_secs_f64() / seconds;
    Ok(json!({
        "concurrency": concurrency,
        "rps": rps,
        "p50_ms": percentile(&samples, 0.50) / 1000.0,
        "p99_ms": percentile(&samples, 0.99) / 1000.0,
        "p999_ms": percentile(&samples, 0.999) / 1000.0,
        "server_cores": server_cpu,
        "process_cores": process,
        "server_cpu_us_per_request": if rps > 0.0 { server_cpu * 1e6 / rps } else { 0.0 },
    }))
}

async fn throughput(
    options: &Options,
    name: &str,
    node: &Node,
    counter: &Arc<AtomicU64>,
) -> Result<Value> {
    let mut clients = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        clients.push(connect(node.addr).await?);
    }
    let mut steps = Vec::new();
    for &concurrency in &options.concurrency {
        let result = step(
            &clients,
            concurrency,
            options.step - STEP_WARMUP,
            node,
            counter,
        )
        .await?;
        eprintln!(
            "  {name:>3} c={concurrency:<4} {:>9.0} req/s  p99 {:>7.2} ms  server {:.2} cores",
            field(&result, "rps"),
            field(&result, "p99_ms"),
            field(&result, "server_cores"),
        );
        let over = field(&result, "p99_ms") >= P99_BOUND.as_secs_f64() * 1000.0;
        steps.push(result);
        if over {
            break; // more in flight only queues longer
        }
    }
    let best = steps
        .iter()
        .filter(|s| field(s, "p99_ms") < P99_BOUND.as_secs_f64() * 1000.0)
        .max_by(|a, b| field(a, "rps").total_cmp(&field(b, "rps")))
        .cloned()
        .unwrap_or(Value::Null);
    // Server-thread CPU per request at the best step: what one request
    // costs the node's core, whatever rate the load generator could offer
    // (on a shared machine it may not saturate that core).
    let cpu_us = field(&best, "server_cpu_us_per_request");
    Ok(json!({
        "best": best,
        "server_cpu_us_per_request": cpu_us,
        "capacity_per_core_rps": if cpu_us > 0.0 { 1e6 / cpu_us } else { 0.0 },
        "steps": steps,
    }))
}

// === 3. Where the time goes ===

/// The pipeline in process, stages switched on in stack order: each row
/// adds one stage to the one before.
async fn ladder(options: &Options, config: &NodeConfig, counter: &AtomicU64) -> Result<Vec<Value>> {
    let catalog = CatalogHandle::fixed(Catalog::build(Arc::new(config.clone())));
    let mut stages = NO_STAGES;
    let mut rungs: Vec<(&str, Settings)> = vec![("none", settings(stages))];
    for (name, set) in [
        (
            "+ authenticate",
            (|s: &mut Stages| s.authenticate = true) as fn(&mut Stages),
        ),
        ("+ rate limit", |s| s.rate_limit = true),
        ("+ guardrails (in + out)", |s| s.guardrails = true),
        ("+ policy", |s| s.policy = true),
        ("+ route", |s| s.route = true),
        ("+ cache (= all)", |s| s.cache = true),
    ] {
        set(&mut stages);
        rungs.push((name, settings(stages)));
    }
    // The rows above fill a cache that grows all run long (64 MiB holds
    // every answer); a full one evicts instead of growing.
    rungs.push((
        "all, cache full (1 MiB)",
        Settings {
            cache_max_bytes: 1 << 20,
            ..settings(Stages::ALL)
        },
    ));
    let pipelines: Vec<Pipeline> = rungs
        .iter()
        .map(|(_, settings)| {
            Pipeline::new(catalog.clone(), Arc::new(InstantModels), settings.clone())
        })
        .collect();
    let key = AsciiMetadataValue::from_static(SECRET);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); rungs.len()];
    let batch = 250;
    let rounds = options.micro.div_ceil(batch) + 2; // the first two are warm-up
    for round in 0..rounds {
        for (i, pipeline) in pipelines.iter().enumerate() {
            for _ in 0..batch {
                let n = counter.fetch_add(1, Ordering::Relaxed);
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
                if round >= 2 {
                    samples[i].push(took);
                }
            }
        }
    }
    let mut rows = Vec::new();
    let mut previous = 0.0;
    for ((name, _), mut rung) in rungs.iter().zip(samples) {
        rung.sort();
        let p50 = percentile(&rung, 0.50);
        rows.push(json!({
            "stages": name,
            "p50_us": p50,
            "p99_us": percentile(&rung, 0.99),
            "mean_us": mean(&rung),
            "step_p50_us": if rows.is_empty() { 0.0 } else { p50 - previous },
        }));
        previous = p50;
    }
    Ok(rows)
}

/// `f` timed call by call, after a warm-up: p50, p99 and mean in ns.
fn time_ns(iterations: usize, mut f: impl FnMut(u64)) -> Value {
    for i in 0..(iterations / 10).max(10) {
        f(i as u64);
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|i| {
            let started = Instant::now();
            f(i as u64);
            started.elapsed()
        })
        .collect();
    samples.sort();
    json!({
        "p50_ns": percentile(&samples, 0.50) * 1e3,
        "p99_ns": percentile(&samples, 0.99) * 1e3,
        "mean_ns": mean(&samples) * 1e3,
    })
}

/// The stage functions alone, on the bench's request.
fn functions(options: &Options, config: &NodeConfig) -> Result<Vec<Value>> {
    let catalog = Catalog::build(Arc::new(config.clone()));
    let handle = CatalogHandle::fixed(Catalog::build(Arc::new(config.clone())));
    let policy = catalog
        .policy(TENANT, POLICY)
        .context("the bench policy is not in the catalog")?;
    let table = catalog
        .routing_table(TENANT, TABLE)
        .context("the bench routing table is not in the catalog")?;
    let (applied, key) = catalog
        .key_by_hash(&aios_runtime::keys::hash_secret(SECRET))
        .context("the bench key is not in the catalog")?;
    let caller = Caller {
        tenant: applied.validated.tenant.clone(),
        key_name: applied.validated.name.clone(),
        role: key.role,
        rate_limit: key.rate_limit,
        allowed_agents: key.allowed_agents.clone(),
        user: Some(user(1)),
    };
    let text = prompt(12_345);
    match guardrails::check_input(&policy.input, [text.as_str()]) {
        guardrails::InputVerdict::Passed(passed) if !passed.changed() => {}
        other => bail!("the bench prompt should pass the guardrails untouched: {other:?}"),
    }
    let limiter = RateLimiter::default();
    let models = |name: &str| catalog.model(TENANT, name);
    let conversation = [(Role::System, SYSTEM_PROMPT), (Role::User, text.as_str())];
    let analysis = router::analyze(conversation, false, None);
    let constraints = Default::default();
    let wire_request = grpc_request(1, &AsciiMetadataValue::from_static(SECRET)).into_inner();
    let iterations = options.micro;
    let mut rows = Vec::new();
    let mut row = |name: &str, mut timed: Value| {
        timed["function"] = name.into();
        rows.push(timed);
    };
    row(
        "catalog load (ArcSwap)",
        time_ns(iterations, |_| {
            black_box(handle.load());
        }),
    );
    row(
        "authn: hash_secret (SHA-256 of the key)",
        time_ns(iterations, |_| {
            black_box(aios_runtime::keys::hash_secret(black_box(SECRET)));
        }),
    );
    row(
        "rate limit: admit",
        time_ns(iterations, |_| {
            let _ = black_box(limiter.admit(&caller, tokio::time::Instant::now()));
        }),
    );
    row(
        "guardrails: check_input (injection + PII)",
        time_ns(iterations, |_| {
            black_box(guardrails::check_input(
                &policy.input,
                [black_box(text.as_str())],
            ));
        }),
    );
    row(
        "guardrails: assess_injection",
        time_ns(iterations, |_| {
            black_box(guardrails::assess_injection(black_box(&text)));
        }),
    );
    row(
        "guardrails: detect (every PII kind)",
        time_ns(iterations, |_| {
            black_box(guardrails::detect(
                black_box(&text),
                guardrails::KindSet::ALL,
            ));
        }),
    );
    row(
        "guardrails: redact_output (reply)",
        time_ns(iterations, |_| {
            black_box(guardrails::redact_output(&policy.output, black_box(REPLY)));
        }),
    );
    row(
        "guardrails: detect on the reply (every kind)",
        time_ns(iterations, |_| {
            black_box(guardrails::detect(
                black_box(REPLY),
                guardrails::KindSet::ALL,
            ));
        }),
    );
    row(
        "policy: decide",
        time_ns(iterations, |_| {
            let _ = black_box(pipeline::policy::decide(
                &catalog,
                &caller,
                AGENT,
                Ask::Chat,
                false,
            ));
        }),
    );
    row(
        "route: analyze",
        time_ns(iterations, |_| {
            black_box(router::analyze(black_box(conversation), false, None));
        }),
    );
    row(
        "route: route (two tiers, sticky split)",
        time_ns(iterations, |i| {
            let request = router::RouteRequest {
                analysis: &analysis,
                constraints: &constraints,
                user: Some("customer-1"),
                seed: i,
                p95_latency: None,
            };
            let _ = black_box(router::route(TABLE, table, &models, &request));
        }),
    );
    row(
        "cache: key (normalise + hash)",
        time_ns(iterations, |_| {
            let mut key = KeyBuilder::default();
            key.field(AGENT)
                .field(1i64.to_le_bytes())
                .field("small-a")
                .text(black_box(&text));
            black_box(key.build(TENANT));
        }),
    );
    row(
        "wire: ExecuteRequest encode + decode",
        time_ns(iterations, |_| {
            let bytes = black_box(&wire_request).encode_to_vec();
            let _ = black_box(pb::ExecuteRequest::decode(bytes.as_slice()));
        }),
    );
    Ok(rows)
}

// === Report ===

/// Where the numbers were taken.
#[derive(Debug)]
struct Machine {
    nproc: usize,
    cpu: String,
}

impl Machine {
    fn read() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
        }
    }
}

/// `value`'s numeric fields `keys`, each with `decimals`.
fn cells(value: &Value, keys: &[&str], decimals: usize) -> Vec<String> {
    keys.iter()
        .map(|key| format!("{:.*}", decimals, field(value, key)))
        .collect()
}

/// A table: the first column left-aligned, the others right-aligned.
fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let all: Vec<&Vec<String>> = std::iter::once(&header).chain(rows).collect();
    let width = |i: usize| {
        all.iter()
            .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
            .max()
    };
    let widths: Vec<usize> = (0..header.len()).map(|i| width(i).unwrap_or(0)).collect();
    println!("\n{title}");
    for row in all {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| match i {
                0 => format!("{cell:<w$}"),
                _ => format!("{cell:>w$}"),
            })
            .collect();
        println!("{}", line.join("  "));
    }
}

fn report(options: &Options, machine: &Machine, results: &Value) {
    println!(
        "bench-overhead: instant backend; every request a cache miss; spans not built yet (telemetry issue)"
    );
    println!(
        "machine: {} CPUs, {} (the load generator shares the machine)",
        machine.nproc, machine.cpu
    );
    if let Some(places) = results["latency"].as_object() {
        let mut rows = Vec::new();
        for (place, latency) in places {
            for name in ["off", "on"] {
                let (c, s) = (&latency[name]["client"], &latency[name]["server"]);
                let mut row = vec![place.clone(), name.into()];
                row.extend(cells(c, &["p50_us", "p99_us", "p999_us", "mean_us"], 1));
                row.extend(cells(s, &["p50_us", "p99_us"], 1));
                rows.push(row);
            }
            let mut row = vec![place.clone(), "added".into()];
            row.extend(cells(latency, &["added_p50_us", "added_p99_us"], 1));
            row.extend(["".into(), "".into()]);
            row.extend(cells(
                latency,
                &["added_server_p50_us", "added_server_p99_us"],
                1,
            ));
            rows.push(row);
        }
        let title = format!(
            "1. latency at 1 in flight, {} requests per node and client placement, blocks of {} (µs; handler = the node's own time; target: added p99 ≤ {TARGET_ADDED_P99_US})",
            options.requests, options.block
        );
        let header = [
            "client on",
            "node",
            "p50",
            "p99",
            "p99.9",
            "mean",
            "handler p50",
            "handler p99",
        ];
        print_table(&title, &header, &rows);
    }
    let throughput = &results["throughput"];
    if !throughput.is_null() {
        let mut rows = Vec::new();
        for name in ["off", "on"] {
            for step in throughput[name]["steps"].as_array().into_iter().flatten() {
                let mut row = vec![name.to_string()];
                row.extend(cells(step, &["concurrency", "rps"], 0));
                row.extend(cells(
                    step,
                    &["p50_ms", "p99_ms", "server_cores", "process_cores"],
                    2,
                ));
                row.extend(cells(step, &["server_cpu_us_per_request"], 1));
                rows.push(row);
            }
        }
        let title = format!(
            "2. throughput, node on one thread, {} connections, {:.1} s per step",
            options.connections,
            options.step.as_secs_f64()
        );
        let header = [
            "node",
            "in flight",
            "req/s",
            "p50 ms",
            "p99 ms",
            "node cores",
            "process cores",
            "node µs CPU/req",
        ];
        print_table(&title, &header, &rows);
        for name in ["off", "on"] {
            let (t, best) = (&throughput[name], &throughput[name]["best"]);
            println!(
                "{name:>3}: best with p99 < {} ms: {:.0} req/s at {} in flight ({:.2} node cores, {:.1} µs CPU/request); {:.2}× the target of {TARGET_RPS_PER_CORE} req/s per core",
                P99_BOUND.as_millis(),
                field(best, "rps"),
                field(best, "concurrency"),
                field(best, "server_cores"),
                field(t, "server_cpu_us_per_request"),
                field(best, "rps") / TARGET_RPS_PER_CORE,
            );
        }
    }
    if let Some(stages) = results["stages"].as_array() {
        let rows: Vec<Vec<String>> = stages
            .iter()
            .map(|r| {
                let mut row = vec![r["stages"].as_str().unwrap_or("").to_string()];
                row.extend(cells(r, &["p50_us", "p99_us", "mean_us", "step_p50_us"], 2));
                row
            })
            .collect();
        let title = "3a. the pipeline in process (no gRPC), stages added in stack order (µs)";
        print_table(title, &["stages", "p50", "p99", "mean", "step p50"], &rows);
    }
    if let Some(functions) = results["functions"].as_array() {
        let rows: Vec<Vec<String>> = functions
            .iter()
            .map(|r| {
                let mut row = vec![r["function"].as_str().unwrap_or("").to_string()];
                row.extend(cells(r, &["p50_ns", "p99_ns", "mean_ns"], 0));
                row
            })
            .collect();
        let title = "3b. stage functions alone, on the bench request (ns per call, timer included)";
        print_table(title, &["function", "p50", "p99", "mean"], &rows);
    }
}

async fn run(options: &Options, machine: &Machine) -> Result<()> {
    let config = node_config()?;
    // A control-plane address nothing listens on: the nodes serve the
    // snapshot they find on disk, as after a restart during an outage.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let control_plane = format!("http://{closed}");
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    for dir in &dirs {
        aios_data_plane::fleet::persist::write(dir.path(), &config)?;
    }
    let off = Node::start("off", dirs[0].path(), &control_plane, NO_STAGES)?;
    let on = Node::start("on", dirs[1].path(), &control_plane, Stages::ALL)?;
    let counter = Arc::new(AtomicU64::new(0));

    // What the "on" node does with the bench request, for the record.
    let mut probe = connect(on.addr).await?;
    let sample = probe
        .execute(grpc_request(
            u64::MAX / 2,
            &AsciiMetadataValue::from_static(SECRET),
        ))
        .await
        .map_err(|s| anyhow!("probe request: {s}"))?
        .into_inner();
    let route = sample.route.unwrap_or_default();
    eprintln!(
        "probe: status {} model {} tier {} complexity {} cost ${:.6}",
        sample.status, sample.model, route.tier, route.complexity, sample.cost_usd
    );
    drop(probe);

    eprintln!("latency: {} requests per node…", options.requests);
    let latency = latency(options, [&off, &on], &counter).await?;
    let mut throughput_results = Value::Null;
    if options.throughput {
        eprintln!("throughput: stepping concurrency…");
        let off_t = throughput(options, "off", &off, &counter).await?;
        let on_t = throughput(options, "on", &on, &counter).await?;
        throughput_results = json!({ "off": off_t, "on": on_t });
    }
    off.stop().await;
    on.stop().await;
    let (mut stages, mut functions_rows) = (Value::Null, Value::Null);
    if options.micro_on {
        eprintln!("where the time goes: in-process pipeline and stage functions…");
        stages = Value::from(ladder(options, &config, &counter).await?);
        functions_rows = Value::from(functions(options, &config)?);
    }
    let results = json!({
        "latency": latency,
        "throughput": throughput_results,
        "stages": stages,
        "functions": functions_rows,
    });
    report(options, machine, &results);
    let summary = json!({
        "bench": "overhead",
        "machine": { "nproc": machine.nproc, "cpu": machine.cpu },
        "options": {
            "requests": options.requests,
            "warmup": options.warmup,
            "block": options.block,
            "step_secs": options.step.as_secs_f64(),
            "concurrency": options.concurrency,
            "connections": options.connections,
            "client_threads": options.client_threads,
            "micro": options.micro,
        },
        "targets": { "added_p99_us": TARGET_ADDED_P99_US, "rps_per_core": TARGET_RPS_PER_CORE, "p99_bound_ms": P99_BOUND.as_secs_f64() * 1000.0 },
        "results": results,
    });
    println!("{summary}");
    Ok(())
}

fn main() {
    let options = parse_args();
    let machine = Machine::read();
    // The load generator's runtime: one thread by default, so the node's
    // thread and the load's each have a core of this 2-core machine.
    let runtime = match options.client_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => exit_with(EXIT_FAILURE, &format!("tokio runtime: {error}")),
    };
    let result = runtime.block_on(async {
        tokio::time::timeout(RUN_TIMEOUT, run(&options, &machine))
            .await
            .unwrap_or_else(|_| Err(anyhow!("the run took over {RUN_TIMEOUT:?}")))
    });
    if let Err(error) = result {
        exit_with(EXIT_FAILURE, &format!("{error:#}"));
    }
}
