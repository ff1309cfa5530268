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
//! looked up, misses, and stores the answer. The *on* node also runs the
//! budget stage and builds every request's spans, handing them (encoded) to
//! an outbox that a thread of the bench empties, as a node's reporter would
//! (the reporter's batching and sending are not measured). The nodes use
//! the node binary's allocator (mimalloc).
//!
//! 1. Latency at one request in flight: the same gRPC requests (loopback,
//!    TCP_NODELAY), alternating between the two nodes in blocks to cancel
//!    drift, after a warm-up that fills the response cache; p50/p99/p99.9
//!    per node and the added latency (on − off). The client runs once on
//!    another thread (each request wakes the node's thread and back: on a
//!    VM whose idle vCPUs halt, that wake-up grows with the time the node
//!    spends) and once on the node's own thread (no wake-ups: on − off is
//!    what the stages add). The handler's own time (the response's
//!    `latency`) is reported beside both. A third node, *calibration*, runs
//!    with the stages off and a backend that computes for a fixed 10 µs
//!    (arithmetic only): its added p99 ÷ p50 is what this machine's tail
//!    makes of plain CPU time, the yardstick for the stages' own ratio.
//! 2. Throughput on one core: each node serves from its own OS thread with a
//!    current-thread runtime; the load (another runtime, over several HTTP/2
//!    connections) steps concurrency up; the highest rate whose p99 < 20 ms,
//!    and the server thread's CPU time per request (from /proc), which is
//!    what "per core" means when the load generator shares the machine.
//! 3. Where the time goes: the pipeline in process (no gRPC) with stages
//!    switched on one by one, and the stage functions alone.
//! 4. The data plane as an OpenAI-compatible gateway, comparable to
//!    published gateway benchmarks: the same `POST /v1/chat/completions`
//!    straight to an instant HTTP provider and through the node's HTTP API
//!    to it (the real remote backend, over loopback); the added latency at
//!    one request in flight, with stages off (the gateway alone) and on,
//!    and the throughput through the HTTP API with p99 < 20 ms. See
//!    `gateway.rs`.
//!
//! The parts: `setup.rs` (the config snapshot, requests, instant backend),
//! `node.rs` (a node on its own thread), `measure.rs` (1 and 2),
//! `stages.rs` (3), `provider.rs` and `gateway.rs` (4), `report.rs` (the
//! tables).
//!
//! cargo run --release -p aios-tests --bin bench-overhead -- [--requests N] [--warmup N] [--block N] [--step-secs S] [--concurrency 1,2,4,…] [--connections C] [--client-threads T] [--micro N] [--http-requests N] [--http-warmup N] [--no-throughput] [--no-micro] [--no-grpc] [--no-http]
//!
//! `--requests`/`--warmup` size part 1, `--http-requests`/`--http-warmup`
//! part 4 (per node, target and client placement); `--block`,
//! `--step-secs` and `--concurrency` apply to both; `--no-throughput`
//! skips the throughput of both; `--no-grpc` skips parts 1 and 2,
//! `--no-micro` part 3, `--no-http` part 4.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark program: printing is its job

// The node binary's allocator (see data-plane/src/main.rs): the node measured here
// allocates as a deployed one does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod gateway;
mod measure;
mod node;
mod provider;
mod report;
mod setup;
mod stages;

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use aios_data_plane::pipeline::Stages;
use aios_runtime::cli::{EXIT_FAILURE, exit_config, exit_with};
use aios_tests::bench::{Args, Machine, positive, positive_list};
use anyhow::{Result, anyhow};
use serde_json::{Value, json};
use tonic::metadata::AsciiMetadataValue;

use measure::{P99_BOUND, STEP_WARMUP, TARGET_ADDED_P99_US, TARGET_RPS_PER_CORE};
use node::{Node, NodeSpec, connect};
use setup::{InstantModels, NO_STAGES, SECRET, UNCALLED_ENDPOINT, grpc_request, node_config};

const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The calibration node's stand-in for the stages: this much plain CPU
/// time per request (about what the stages cost in process at p50).
const CALIBRATION_WORK: Duration = Duration::from_micros(10);

// === Options ===

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) requests: usize,
    pub(crate) warmup: usize,
    pub(crate) block: usize,
    pub(crate) step: Duration,
    pub(crate) concurrency: Vec<usize>,
    pub(crate) connections: usize,
    pub(crate) client_threads: usize,
    pub(crate) micro: usize,
    pub(crate) http_requests: usize,
    pub(crate) http_warmup: usize,
    pub(crate) throughput: bool,
    pub(crate) micro_on: bool,
    pub(crate) grpc: bool,
    pub(crate) http: bool,
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
        // As for part 1: 40,000 requests through the "on" gateway fill its
        // response cache before anything is measured.
        http_requests: 20_000,
        http_warmup: 20_000,
        throughput: true,
        micro_on: true,
        grpc: true,
        http: true,
    };
    let mut args = Args::from_env();
    while let Some(arg) = args.next() {
        let mut value = || args.value(&arg);
        match arg.as_str() {
            "--requests" => options.requests = positive(&arg, &value()),
            "--warmup" => options.warmup = positive(&arg, &value()),
            "--block" => options.block = positive(&arg, &value()),
            "--connections" => options.connections = positive(&arg, &value()),
            "--client-threads" => options.client_threads = positive(&arg, &value()),
            "--micro" => options.micro = positive(&arg, &value()),
            "--http-requests" => options.http_requests = positive(&arg, &value()),
            "--http-warmup" => options.http_warmup = positive(&arg, &value()),
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
                options.concurrency = positive_list(&arg, &value(), "e.g. 1,2,4,8");
            }
            "--no-throughput" => options.throughput = false,
            "--no-micro" => options.micro_on = false,
            "--no-grpc" => options.grpc = false,
            "--no-http" => options.http = false,
            other => exit_config(&format!(
                "unknown option {other}; see the header of tests/src/bin/bench_overhead/main.rs"
            )),
        }
    }
    options
}

async fn run(options: &Options, machine: &Machine) -> Result<()> {
    let config = node_config(UNCALLED_ENDPOINT)?;
    // A control-plane address nothing listens on: the nodes serve the
    // snapshot they find on disk, as after a restart during an outage.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let control_plane = format!("http://{closed}");
    let counter = Arc::new(AtomicU64::new(0));
    let (mut latency, mut throughput_results) = (Value::Null, Value::Null);
    if options.grpc {
        (latency, throughput_results) = grpc(options, &config, &control_plane, &counter).await?;
    }
    let mut http = Value::Null;
    if options.http {
        http = gateway::run(options, &control_plane, &counter).await?;
    }
    let (mut stage_rows, mut functions_rows) = (Value::Null, Value::Null);
    if options.micro_on {
        eprintln!("where the time goes: in-process pipeline and stage functions…");
        stage_rows = Value::from(stages::ladder(options, &config, &counter).await?);
        functions_rows = Value::from(stages::functions(options, &config)?);
    }
    let results = json!({
        "latency": latency,
        "throughput": throughput_results,
        "stages": stage_rows,
        "functions": functions_rows,
        "http": http,
    });
    report::report(options, machine, &results);
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
            "http_requests": options.http_requests,
            "http_warmup": options.http_warmup,
        },
        "targets": { "added_p99_us": TARGET_ADDED_P99_US, "rps_per_core": TARGET_RPS_PER_CORE, "p99_bound_ms": P99_BOUND.as_secs_f64() * 1000.0 },
        "published": { "litellm_rust_added_p99_us": gateway::LITELLM_RUST_P99_US, "bifrost_added_p99_us": gateway::BIFROST_P99_US },
        "results": results,
    });
    println!("{summary}");
    Ok(())
}

/// Parts 1 and 2: two nodes with the instant in-process backend, over gRPC.
async fn grpc(
    options: &Options,
    config: &aios_data_plane::fleet::NodeConfig,
    control_plane: &str,
    counter: &Arc<AtomicU64>,
) -> Result<(Value, Value)> {
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    for dir in &dirs {
        aios_data_plane::fleet::persist::write(dir.path(), config)?;
    }
    let start = |name, dir: &tempfile::TempDir, stages, work| {
        Node::start(NodeSpec {
            name,
            state_dir: dir.path(),
            control_plane,
            stages,
            backends: Arc::new(InstantModels { work }),
        })
    };
    let off = start("off", &dirs[0], NO_STAGES, 0)?;
    let on = start("on", &dirs[1], Stages::ALL, 0)?;
    // Stages off, and a backend that computes for CALIBRATION_WORK: what
    // this machine's tail makes of that much plain CPU time.
    let steps = setup::steps_for(CALIBRATION_WORK);
    let calibration = start("calibration", &dirs[2], NO_STAGES, steps)?;

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
    let mut latency = measure::latency(options, [&off, &on, &calibration], counter).await?;
    latency["calibration_work_us"] = json!(CALIBRATION_WORK.as_secs_f64() * 1e6);
    latency["calibration_steps"] = json!(steps);
    let mut throughput = Value::Null;
    if options.throughput {
        eprintln!("throughput: stepping concurrency…");
        let off_t = measure::throughput(options, "off", &off, counter).await?;
        let on_t = measure::throughput(options, "on", &on, counter).await?;
        throughput = json!({ "off": off_t, "on": on_t });
    }
    off.stop().await;
    on.stop().await;
    calibration.stop().await;
    Ok((latency, throughput))
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
