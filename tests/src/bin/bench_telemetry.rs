//! bench-telemetry: how many spans one control plane ingests and rolls up
//! per second of its CPU, and how soon a subscriber sees a span.
//!
//! A fresh `aios-control-plane` process (so its CPU time can be read from
//! /proc) on an embedded store (or etcd). Part 1, throughput: N simulated
//! nodes open real `Report` streams and send batches of spans (a request
//! span and a model-call child per request, spread over 4 tenants, 8 agents,
//! 3 models) with up to 8 batches unacknowledged each, until every span is
//! acknowledged and `GetSummary` counts every request. Spans per CPU-second
//! of the control plane = spans ÷ the CPU time it used over that interval.
//! Part 2, latency: a `Subscribe` stream with spans, while one node sends a
//! small batch every 10 ms whose spans end at the moment of sending; the
//! latency of a span is when the subscriber receives it minus that moment.
//!
//! cargo build --release -p aios-control-plane -p aios-tests --bins
//! cargo run --release -p aios-tests --bin bench-telemetry -- [--spans N] [--batch N] [--nodes N] [--latency-seconds N] [--store embedded|etcd://HOST:PORT]

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark program: printing is its job

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aios_client::AuthChannel;
use aios_proto::v1::{
    self as pb, report_request, subscribe_response,
    telemetry_service_client::TelemetryServiceClient,
};
use aios_runtime::cli::{EXIT_FAILURE, exit_config, exit_with};
use aios_tests::{
    admin::ADMIN_KEY,
    bench::{self, Args, Machine, plane::PlaneProcess, positive},
};
use anyhow::{Context, Result, anyhow, bail};
use prost::Message;
use serde_json::json;
use tokio::{sync::mpsc, task::JoinSet};

const TENANTS: usize = 4;
const AGENTS: usize = 8;
const MODELS: [&str; 3] = ["gpt-4o-mini", "claude-haiku", "smollm2"];
/// Batches a simulated node keeps unacknowledged.
const WINDOW: u64 = 8;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(20 * 60);

// === Options ===

#[derive(Clone, Debug)]
struct Options {
    spans: usize,
    batch: usize,
    nodes: usize,
    latency_seconds: u64,
    store: String,
}

fn parse_args() -> Options {
    let mut options = Options {
        spans: 1_000_000,
        batch: 2_000,
        nodes: 4,
        latency_seconds: 5,
        store: "embedded".into(),
    };
    let mut args = Args::from_env();
    while let Some(arg) = args.next() {
        let mut value = || args.value(&arg);
        match arg.as_str() {
            "--spans" => options.spans = positive(&arg, &value()),
            "--batch" => options.batch = positive(&arg, &value()).min(10_000),
            "--nodes" => options.nodes = positive(&arg, &value()),
            "--latency-seconds" => options.latency_seconds = positive(&arg, &value()) as u64,
            "--store" => options.store = value(),
            other => exit_config(&format!(
                "unknown option {other}; see the header of tests/src/bin/bench_telemetry.rs"
            )),
        }
    }
    // Whole requests (two spans each) in whole batches.
    options.batch += options.batch % 2;
    options
}

// === Spans ===

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Request `i` of `node` as two spans, ending at `end` (unix nanos).
fn request_spans(node: usize, i: u64, end: u64, out: &mut Vec<pb::Span>) {
    let tenant = format!("tenant-{}", i as usize % TENANTS);
    let agent = format!("agent-{}", i as usize % AGENTS);
    let model = MODELS[i as usize % MODELS.len()].to_string();
    let trace = ((node as u128) << 64 | i as u128).to_be_bytes().to_vec();
    let root_id = (i << 1 | 1).to_be_bytes().to_vec();
    let latency = 200_000 + (i % 1000) * 3_000; // 0.2–3.2 ms
    let common = pb::Span {
        trace_id: trace,
        tenant,
        agent,
        model,
        node: format!("node-{node}"),
        region: "bench".into(),
        action: "chat".into(),
        end_time_unix_nano: end,
        start_time_unix_nano: end - latency,
        status: Some(pb::SpanStatus {
            code: if i.is_multiple_of(50) {
                pb::SpanStatusCode::Error
            } else {
                pb::SpanStatusCode::Ok
            } as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    out.push(pb::Span {
        span_id: (i << 1).to_be_bytes().to_vec(),
        parent_span_id: root_id.clone(),
        name: format!("chat {}", common.model),
        operation: "chat".into(),
        input_tokens: 120 + i % 40,
        output_tokens: 30 + i % 20,
        cost_usd: 0.000_05,
        baseline_cost_usd: 0.000_4,
        start_time_unix_nano: end - latency + 50_000,
        end_time_unix_nano: end - 20_000,
        ..common.clone()
    });
    out.push(pb::Span {
        span_id: root_id,
        name: format!("invoke_agent {}", common.agent),
        operation: "invoke_agent".into(),
        cache_hit: i.is_multiple_of(10),
        ..common
    });
}

// === Simulated nodes ===

/// A batch encoded before the clock starts, as a node sends it.
struct Encoded {
    sequence: u64,
    bytes: Vec<u8>,
}

/// A node's Report stream: sends `batches` (already built), keeping at most
/// [`WINDOW`] unacknowledged, and returns when all are acknowledged.
async fn report(channel: AuthChannel, node: usize, batches: Vec<Encoded>) -> Result<()> {
    let (tx, rx) = mpsc::channel::<pb::ReportRequest>(WINDOW as usize + 1);
    tx.send(pb::ReportRequest {
        msg: Some(report_request::Msg::Hello(pb::ReportHello {
            node_id: format!("node-{node}"),
            region: "bench".into(),
            incarnation: format!("bench-{}", now_nanos()),
        })),
    })
    .await?;
    let mut acks = TelemetryServiceClient::new(channel)
        .report(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("Report")?
        .into_inner();
    let last = batches.last().map_or(0, |b| b.sequence);
    let mut acked = 0;
    let mut pending = batches.into_iter();
    let mut sent = 0;
    loop {
        while sent < acked + WINDOW {
            let Some(batch) = pending.next() else { break };
            sent = batch.sequence;
            tx.send(pb::ReportRequest {
                msg: Some(report_request::Msg::Batch(batch.bytes.into())),
            })
            .await?;
        }
        if acked >= last {
            return Ok(());
        }
        let ack = tokio::time::timeout(CALL_TIMEOUT, acks.message())
            .await
            .context("no ack")??
            .ok_or_else(|| anyhow!("the control plane closed the Report stream"))?;
        acked = acked.max(ack.acked_sequence);
    }
}

// === Part 1: throughput ===

struct Throughput {
    spans: usize,
    wall: Duration,
    cpu: Duration,
}

async fn throughput(options: &Options, plane: &PlaneProcess) -> Result<Throughput> {
    let requests_per_node = options.spans / 2 / options.nodes;
    let per_batch = options.batch / 2;
    // Build every batch first: the clock measures the control plane, not
    // the bench's encoding.
    let end = now_nanos();
    let mut work = Vec::new();
    for node in 0..options.nodes {
        let mut batches = Vec::new();
        let mut i = 0;
        while i < requests_per_node as u64 {
            let mut spans = Vec::with_capacity(options.batch);
            for _ in 0..per_batch.min(requests_per_node - i as usize) {
                request_spans(node, i, end, &mut spans);
                i += 1;
            }
            let sequence = batches.len() as u64 + 1;
            let batch = pb::SpanBatch {
                sequence,
                spans,
                dropped_spans: 0,
            };
            batches.push(Encoded {
                sequence,
                bytes: batch.encode_to_vec(),
            });
        }
        work.push(batches);
    }
    let total_requests = (requests_per_node * options.nodes) as u64;
    let mut channels = Vec::new();
    for _ in 0..options.nodes {
        channels.push(aios_client::connect(&plane.url(), Some(ADMIN_KEY), CALL_TIMEOUT).await?);
    }
    let cpu_before = plane.cpu_time()?;
    let started = Instant::now();
    let mut nodes = JoinSet::new();
    for (node, (batches, channel)) in work.into_iter().zip(channels).enumerate() {
        nodes.spawn(report(channel, node, batches));
    }
    while let Some(done) = nodes.join_next().await {
        done??;
    }
    // Acknowledged = durably taken; now wait until the rollups count all.
    let mut client = telemetry(plane).await?;
    loop {
        let summary = everything(&mut client).await?;
        if summary.requests >= total_requests {
            if summary.requests > total_requests {
                bail!(
                    "the rollups count {} requests, {total_requests} were sent",
                    summary.requests
                );
            }
            break;
        }
        if started.elapsed() > RUN_TIMEOUT {
            bail!(
                "the rollups counted {} of {total_requests}",
                summary.requests
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let wall = started.elapsed();
    let cpu = plane.cpu_time()? - cpu_before;
    Ok(Throughput {
        spans: total_requests as usize * 2,
        wall,
        cpu,
    })
}

async fn telemetry(plane: &PlaneProcess) -> Result<TelemetryServiceClient<AuthChannel>> {
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), CALL_TIMEOUT).await?;
    Ok(TelemetryServiceClient::new(channel))
}

/// The summary over every tenant, for the last hour.
async fn everything(client: &mut TelemetryServiceClient<AuthChannel>) -> Result<pb::Summary> {
    Ok(client
        .get_summary(pb::GetSummaryRequest {
            filter: Some(pb::SummaryFilter {
                tenant: "*".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .summary
        .unwrap_or_default())
}

// === Part 2: span-to-subscriber latency ===

async fn latency(options: &Options, plane: &PlaneProcess) -> Result<Vec<Duration>> {
    let mut client = telemetry(plane).await?;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            filter: Some(pb::SummaryFilter {
                tenant: "*".into(),
                node: "node-latency".into(),
                ..Default::default()
            }),
            window: pb::RollupWindow::Second as i32,
            include_spans: true,
            include_alerts: false,
        })
        .await?
        .into_inner();
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), CALL_TIMEOUT).await?;
    let (tx, rx) = mpsc::channel::<pb::ReportRequest>(64);
    tx.send(pb::ReportRequest {
        msg: Some(report_request::Msg::Hello(pb::ReportHello {
            node_id: "node-latency".into(),
            region: "bench".into(),
            incarnation: format!("latency-{}", now_nanos()),
        })),
    })
    .await?;
    let mut acks = TelemetryServiceClient::new(channel)
        .report(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = acks.message().await {} });
    let batches = options.latency_seconds * 100;
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for sequence in 1..=batches {
            tick.tick().await;
            let mut spans = Vec::new();
            request_spans(usize::MAX >> 1, sequence, now_nanos(), &mut spans);
            for span in &mut spans {
                span.node = "node-latency".into();
            }
            let batch = pb::SpanBatch {
                sequence,
                spans,
                dropped_spans: 0,
            };
            if tx
                .send(pb::ReportRequest {
                    msg: Some(report_request::Msg::Batch(batch.encode_to_vec().into())),
                })
                .await
                .is_err()
            {
                break;
            }
        }
        tx
    });
    let expected = batches as usize * 2;
    let mut seen: HashMap<Vec<u8>, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(options.latency_seconds + 30);
    while seen.len() < expected && Instant::now() < deadline {
        let Ok(item) = tokio::time::timeout(CALL_TIMEOUT, stream.message()).await else {
            break;
        };
        let Some(item) = item? else { break };
        if let Some(subscribe_response::Event::Span(span)) = item.event {
            let at = now_nanos();
            let sent = span.end_time_unix_nano.max(span.start_time_unix_nano);
            // The request span ends at the moment of sending.
            if span.operation == "invoke_agent" {
                seen.insert(
                    span.span_id.clone(),
                    Duration::from_nanos(at.saturating_sub(sent)),
                );
            } else {
                seen.entry(span.span_id.clone()).or_default();
            }
        }
    }
    drop(sender.await?);
    let mut latencies: Vec<Duration> = seen.into_values().filter(|d| !d.is_zero()).collect();
    latencies.sort();
    if latencies.is_empty() {
        bail!("the subscriber received no span");
    }
    Ok(latencies)
}

// === Main ===

async fn run(options: &Options, machine: &Machine) -> Result<()> {
    let program = PlaneProcess::program()?;
    let plane = PlaneProcess::start(&program, &options.store).await?;
    let t = throughput(options, &plane)
        .await
        .map_err(|e| anyhow!("{e:#}\ncontrol plane {}", plane.stderr_text()))?;
    let per_cpu_second = t.spans as f64 / t.cpu.as_secs_f64();
    let per_wall_second = t.spans as f64 / t.wall.as_secs_f64();
    let lat = latency(options, &plane)
        .await
        .map_err(|e| anyhow!("{e:#}\ncontrol plane {}", plane.stderr_text()))?;
    let (p50, p99) = (bench::percentile(&lat, 0.50), bench::percentile(&lat, 0.99));
    println!("machine: {} CPUs, {}", machine.nproc, machine.cpu);
    println!(
        "store {}, {} nodes, {} spans in batches of {}",
        options.store, options.nodes, t.spans, options.batch
    );
    println!();
    println!(
        "| spans | wall s | control-plane CPU s | spans/s (wall) | spans per CPU-second | ratio to 500k |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2}× |",
        t.spans,
        t.wall.as_secs_f64(),
        t.cpu.as_secs_f64(),
        per_wall_second,
        per_cpu_second,
        per_cpu_second / 500_000.0
    );
    println!();
    println!(
        "span to subscriber: {} spans, p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        bench::ms(p50),
        bench::ms(p99)
    );
    println!(
        "{}",
        json!({
            "bench": "telemetry",
            "nproc": machine.nproc,
            "cpu": machine.cpu,
            "store": options.store,
            "nodes": options.nodes,
            "batch": options.batch,
            "spans": t.spans,
            "wall_s": t.wall.as_secs_f64(),
            "cpu_s": t.cpu.as_secs_f64(),
            "spans_per_wall_second": per_wall_second,
            "spans_per_cpu_second": per_cpu_second,
            "subscriber_latency_p50_ms": bench::ms(p50),
            "subscriber_latency_p99_ms": bench::ms(p99),
        })
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let options = parse_args();
    let machine = Machine::read();
    let result = tokio::time::timeout(RUN_TIMEOUT, run(&options, &machine))
        .await
        .unwrap_or_else(|_| Err(anyhow!("the run took over {RUN_TIMEOUT:?}")));
    if let Err(e) = result {
        exit_with(EXIT_FAILURE, &format!("bench-telemetry: {e:#}"));
    }
}
