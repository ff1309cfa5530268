//! bench-budget: what budgets add to a request, how soon an approved
//! action runs, and whether a small budget holds under load.
//!
//! An embedded control plane runs in this process on a runtime (thread) of
//! its own; bench-overhead's config (a guarded support agent on a two-tier
//! routing table, instant in-process models) is applied to it for tenant
//! `bench`, which has a daily BLOCK budget too large to refuse anything,
//! and again for tenant `bench-free`, which has none. One data-plane node
//! streams that config and serves from this thread (a current-thread
//! runtime), every stage on; the bench's client runs on the same thread.
//!
//! 1. Budget overhead per request. (a) The pipeline in process (no gRPC):
//!    every stage but budget; every stage, the tenant without a budget (the
//!    stage's lookup alone); every stage, the tenant with one (lookup,
//!    reserve before the model call, settle after). Its purse leases from
//!    the control plane through the node's reporter code. (b) End to end:
//!    the same gRPC `Execute` requests with one tenant's key and the
//!    other's, alternating in blocks, one in flight; p50/p99 added, the
//!    handler's own time, and how many `BudgetService.Allowances` calls and
//!    ledger transactions the control plane served per budgeted request
//!    (nodes never ask per request); then a light-load probe, budgeted
//!    requests at 100/s, for the calls per request and the wait there.
//! 2. Approval decision to execution, for a HIGH action (one approver): from
//!    the moment `ApprovalService.Decide` returns to the moment the caller
//!    has the executed action's answer; the caller waiting
//!    (`wait_for_approval`: the node long-polls), watching the queue and
//!    re-submitting, or told at once. See `approvals.rs`.
//! 3. Strictness under load: 1,000 requests at once over 5 more nodes
//!    against a $0.01 budget: spend against the limit, overspend (must be
//!    0), and the share refused while money was left. See `fleet.rs`.
//!
//! Last, the ledger of tenant `bench` must hold exactly the sum of the
//! costs of the requests that counted against it.
//!
//! cargo run --release -p aios-tests --bin bench-budget -- [--requests N] [--warmup N] [--block N] [--paced N] [--paced-rate R] [--in-process N] [--approvals N] [--decide-jitter-ms MS] [--nodes N] [--fleet-requests N] [--no-in-process] [--no-grpc] [--no-approvals] [--no-fleet]
//!
//! `--requests`/`--warmup`/`--block` size 1b (per tenant), `--paced` and
//! `--paced-rate` its light-load probe (100 requests at 100/s),
//! `--in-process` 1a (calls per row), `--approvals` 2 (per mode), `--nodes` and
//! `--fleet-requests` 3.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark program: printing is its job

mod approvals;
mod fleet;
mod overhead;
mod report;
// bench-overhead's world (config, requests, instant models) as is, so the
// two benches measure the same requests; this bench uses part of it.
#[allow(dead_code)]
#[path = "../bench_overhead/setup.rs"]
mod setup;
mod world;

use std::{sync::atomic::AtomicU64, time::Duration};

use aios_runtime::cli::{EXIT_FAILURE, exit_config, exit_with};
use aios_tests::bench::{Args, Machine, positive};
use anyhow::{Result, anyhow};
use serde_json::{Value, json};
use tokio::runtime::Handle;

use world::{BUDGET, BUDGETED, WAIT, World};

const RUN_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The design brief's bound on everything the pipeline adds, p99.
pub(crate) const TARGET_ADDED_P99_US: f64 = 50.0;

// === Options ===

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) requests: usize,
    pub(crate) warmup: usize,
    pub(crate) block: usize,
    pub(crate) paced: usize,
    pub(crate) paced_rate: u64,
    pub(crate) in_process: usize,
    pub(crate) approvals: usize,
    pub(crate) decide_jitter_ms: u64,
    pub(crate) nodes: usize,
    pub(crate) fleet_requests: usize,
    pub(crate) in_process_on: bool,
    pub(crate) grpc: bool,
    pub(crate) approvals_on: bool,
    pub(crate) fleet: bool,
}

fn parse_args() -> Options {
    let mut options = Options {
        requests: 20_000,
        warmup: 10_000,
        block: 500,
        paced: 100,
        paced_rate: 100,
        in_process: 20_000,
        approvals: 100,
        // A decision at a random moment after the request, as a person's.
        decide_jitter_ms: 100,
        nodes: 5,
        fleet_requests: 1_000,
        in_process_on: true,
        grpc: true,
        approvals_on: true,
        fleet: true,
    };
    let mut args = Args::from_env();
    while let Some(arg) = args.next() {
        let mut value = || args.value(&arg);
        match arg.as_str() {
            "--requests" => options.requests = positive(&arg, &value()),
            "--warmup" => options.warmup = positive(&arg, &value()),
            "--block" => options.block = positive(&arg, &value()),
            "--paced" => options.paced = positive(&arg, &value()),
            "--paced-rate" => options.paced_rate = positive(&arg, &value()) as u64,
            "--in-process" => options.in_process = positive(&arg, &value()),
            "--approvals" => options.approvals = positive(&arg, &value()),
            "--decide-jitter-ms" => options.decide_jitter_ms = positive(&arg, &value()) as u64,
            "--nodes" => options.nodes = positive(&arg, &value()),
            "--fleet-requests" => options.fleet_requests = positive(&arg, &value()),
            "--no-in-process" => options.in_process_on = false,
            "--no-grpc" => options.grpc = false,
            "--no-approvals" => options.approvals_on = false,
            "--no-fleet" => options.fleet = false,
            other => exit_config(&format!(
                "unknown option {other}; see the header of tests/src/bin/bench_budget/main.rs"
            )),
        }
    }
    options
}

async fn run(options: &Options, machine: &Machine, cp: Handle) -> Result<()> {
    eprintln!("starting a control plane and a node…");
    let world = World::start(cp).await?;
    let result = measure(options, &world).await;
    world.stop().await;
    let results = result?;
    report::report(options, machine, &results);
    let summary = json!({
        "bench": "budget",
        "machine": { "nproc": machine.nproc, "cpu": machine.cpu },
        "options": {
            "requests": options.requests,
            "warmup": options.warmup,
            "block": options.block,
            "paced": options.paced,
            "paced_rate": options.paced_rate,
            "in_process": options.in_process,
            "approvals": options.approvals,
            "decide_jitter_ms": options.decide_jitter_ms,
            "nodes": options.nodes,
            "fleet_requests": options.fleet_requests,
        },
        "targets": { "pipeline_added_p99_us": TARGET_ADDED_P99_US, "overspend_micros": 0 },
        "results": results,
    });
    println!("{summary}");
    Ok(())
}

async fn measure(options: &Options, world: &World) -> Result<Value> {
    let counter = AtomicU64::new(0);
    let spend = overhead::Spend::default();
    let mut results = json!({});
    if options.in_process_on {
        eprintln!("1a. the pipeline in process…");
        results["in_process"] = overhead::in_process(options, world, &counter, &spend).await?;
    }
    if options.grpc {
        eprintln!("1b. end to end over gRPC…");
        results["end_to_end"] = overhead::end_to_end(options, world, &counter, &spend).await?;
    }
    if options.approvals_on {
        eprintln!("2. approvals…");
        results["approvals"] = approvals::run(options, world).await?;
    }
    results["ledger"] = ledger_check(world, &spend).await?;
    if options.fleet {
        eprintln!("3. 1,000 requests at once against a $0.01 budget…");
        results["fleet"] = fleet::run(options, world, &counter).await?;
    }
    Ok(results)
}

/// Whether the budgeted tenant's ledger holds exactly what its requests
/// cost, once every node settled and gave back what it held.
async fn ledger_check(world: &World, spend: &overhead::Spend) -> Result<Value> {
    let expected = spend.micros.load(std::sync::atomic::Ordering::Relaxed) as i64;
    let deadline = tokio::time::Instant::now() + WAIT;
    let (spent, reserved) = loop {
        let (spent, reserved) = world.budget_status(BUDGETED, BUDGET).await?;
        if (spent == expected && reserved == 0) || tokio::time::Instant::now() > deadline {
            break (spent, reserved);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(json!({
        "sum_of_costs_micros": expected,
        "spent_micros": spent,
        "reserved_micros": reserved,
        "matches": spent == expected && reserved == 0,
    }))
}

fn main() {
    let options = parse_args();
    let machine = Machine::read();
    // The control plane on a thread of its own; the node and the bench's
    // client share this one.
    let cp = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("control-plane")
        .enable_all()
        .build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let (cp, runtime) = match (cp, runtime) {
        (Ok(cp), Ok(runtime)) => (cp, runtime),
        (Err(error), _) | (_, Err(error)) => {
            exit_with(EXIT_FAILURE, &format!("tokio runtime: {error}"))
        }
    };
    let result = runtime.block_on(async {
        tokio::time::timeout(RUN_TIMEOUT, run(&options, &machine, cp.handle().clone()))
            .await
            .unwrap_or_else(|_| Err(anyhow!("the run took over {RUN_TIMEOUT:?}")))
    });
    drop(runtime);
    cp.shutdown_timeout(Duration::from_secs(2));
    if let Err(error) = result {
        exit_with(EXIT_FAILURE, &format!("bench-budget: {error:#}"));
    }
}
