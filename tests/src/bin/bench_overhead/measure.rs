//! Parts 1 and 2 of the bench, over gRPC: latency at one request in
//! flight, throughput on one core, and the statistics and stepping that
//! part 4 (over HTTP) shares.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aios_tests::bench;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tonic::metadata::AsciiMetadataValue;

use crate::{
    Options,
    node::{Client, Node, call, connect, process_cpu},
    setup::{SECRET, grpc_request},
};

/// Throughput counts only steps whose p99 stays under this.
pub(crate) const P99_BOUND: Duration = Duration::from_millis(20);
/// Targets from the design brief.
pub(crate) const TARGET_ADDED_P99_US: f64 = 50.0;
pub(crate) const TARGET_RPS_PER_CORE: f64 = 15_000.0;
/// Part of each throughput step not measured (connections warm, queues fill).
pub(crate) const STEP_WARMUP: Duration = Duration::from_millis(300);

// === Statistics ===

/// Nearest-rank percentile of sorted samples, in µs.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    bench::us(bench::percentile(sorted, p))
}

pub(crate) fn mean(samples: &[Duration]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    bench::us(samples.iter().sum::<Duration>()) / samples.len() as f64
}

pub(crate) fn summary(samples: &mut [Duration]) -> Value {
    samples.sort();
    json!({
        "n": samples.len(),
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "p999_us": percentile(samples, 0.999),
        "mean_us": mean(samples),
    })
}

pub(crate) fn field(value: &Value, key: &str) -> f64 {
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

/// The nodes part 1 compares: every stage off, every stage on, and the
/// calibration node (stages off, a backend that computes for a fixed time).
pub(crate) const LATENCY_NODES: [&str; 3] = ["off", "on", "calibration"];

pub(crate) async fn latency(
    options: &Options,
    nodes: [&Node; 3],
    counter: &Arc<AtomicU64>,
) -> Result<Value> {
    // clients[place][node]; a client's connection is driven where it was made.
    let mut clients: [[Option<Client>; 3]; 2] = Default::default();
    for (which, node) in nodes.iter().enumerate() {
        clients[0][which] = Some(connect(node.addr).await?);
        clients[1][which] = Some(node.on_thread(connect(node.addr)).await??);
    }
    // samples[place][node]: (client side, server side).
    let mut samples: [[Vec<(Duration, Duration)>; 3]; 2] = Default::default();
    let mut done = 0;
    let mut block = 0;
    let total = options.warmup + options.requests;
    while done < total {
        let size = options.block.min(total - done);
        // Rotate which node goes first, so none always follows another.
        let order = [0, 1, 2].map(|i| (i + block) % nodes.len());
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
    for (place, by_node) in PLACES.iter().zip(samples) {
        let side = |samples: &[(Duration, Duration)], server: bool| -> Value {
            let mut d: Vec<Duration> = samples
                .iter()
                .map(|(c, s)| if server { *s } else { *c })
                .collect();
            summary(&mut d)
        };
        let mut entry = serde_json::Map::new();
        let mut sides = Vec::new();
        for (name, samples) in LATENCY_NODES.iter().zip(&by_node) {
            let (client, server) = (side(samples, false), side(samples, true));
            entry.insert(
                (*name).to_string(),
                json!({ "client": client, "server": server }),
            );
            sides.push((client, server));
        }
        let added = |key: &str, a: &Value, b: &Value| field(b, key) - field(a, key);
        let ((off_c, off_s), (on_c, on_s), (cal_c, cal_s)) = (&sides[0], &sides[1], &sides[2]);
        for (prefix, c, s) in [("", on_c, on_s), ("calibration_", cal_c, cal_s)] {
            for (key, value) in [
                ("added_p50_us", added("p50_us", off_c, c)),
                ("added_p99_us", added("p99_us", off_c, c)),
                ("added_p999_us", added("p999_us", off_c, c)),
                ("added_server_p50_us", added("p50_us", off_s, s)),
                ("added_server_p99_us", added("p99_us", off_s, s)),
            ] {
                entry.insert(format!("{prefix}{key}"), json!(value));
            }
        }
        result.insert((*place).to_string(), Value::Object(entry));
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
    let (server_cpu, process) = cpu_over(start, end, node).await;
    let mut samples = Vec::new();
    while let Some(joined) = loops.join_next().await {
        samples.extend(joined??);
    }
    Ok(step_figures(
        concurrency,
        &mut samples,
        measure,
        server_cpu,
        process,
    ))
}

/// Waits until `end`, reading CPU time at `start` and `end`: the node's
/// thread's and the whole process's, within the window.
pub(crate) async fn cpu_over(start: Instant, end: Instant, node: &Node) -> (Duration, Duration) {
    tokio::time::sleep_until(start.into()).await;
    let (server0, process0) = (node.cpu.read(), process_cpu());
    tokio::time::sleep_until(end.into()).await;
    let (server1, process1) = (node.cpu.read(), process_cpu());
    (
        server1.saturating_sub(server0),
        process1.saturating_sub(process0),
    )
}

/// A throughput step's figures from its latencies and the CPU time its
/// `window` took.
pub(crate) fn step_figures(
    concurrency: usize,
    samples: &mut [Duration],
    window: Duration,
    server_cpu: Duration,
    process_cpu: Duration,
) -> Value {
    samples.sort();
    let seconds = window.as_secs_f64();
    let rps = samples.len() as f64 / seconds;
    let server_cpu = server_cpu.as_secs_f64() / seconds;
    let process = process_cpu.as_secs_f64() / seconds;
    json!({
        "concurrency": concurrency,
        "rps": rps,
        "p50_ms": percentile(samples, 0.50) / 1000.0,
        "p99_ms": percentile(samples, 0.99) / 1000.0,
        "p999_ms": percentile(samples, 0.999) / 1000.0,
        "server_cores": server_cpu,
        "process_cores": process,
        "server_cpu_us_per_request": if rps > 0.0 { server_cpu * 1e6 / rps } else { 0.0 },
    })
}

pub(crate) async fn throughput(
    options: &Options,
    name: &str,
    node: &Node,
    counter: &Arc<AtomicU64>,
) -> Result<Value> {
    let mut clients = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        clients.push(connect(node.addr).await?);
    }
    let clients = &clients;
    let measure = options.step - STEP_WARMUP;
    stepped(options, name, async |concurrency| {
        step(clients, concurrency, measure, node, counter).await
    })
    .await
}

/// Steps concurrency up through `options.concurrency`, each step measured
/// by `step`, until p99 reaches the bound; the best step under it, and
/// every step.
pub(crate) async fn stepped(
    options: &Options,
    name: &str,
    mut step: impl AsyncFnMut(usize) -> Result<Value>,
) -> Result<Value> {
    let mut steps = Vec::new();
    for &concurrency in &options.concurrency {
        let result = step(concurrency).await?;
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
