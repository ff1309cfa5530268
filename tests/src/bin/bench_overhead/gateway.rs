//! Part 4 of the bench: the data plane as an OpenAI-compatible gateway,
//! measured the way published gateway benchmarks are. The same
//! `POST /v1/chat/completions` goes straight to an instant provider and
//! through the data plane's HTTP API, which calls that provider over
//! loopback with its real backend (`RemoteProviders`: the pooled HTTP/1.1
//! client, the JSON both ways). What the gateway adds is the difference.
//!
//! Two nodes: `off` (every stage switched off: the gateway alone, as
//! published gateway figures are taken, without guardrails) and `on`
//! (every stage).
//!
//! - Latency at one request in flight: each node's provider is served on
//!   the node's own thread. The client runs once on that thread too (no
//!   thread wake-ups: the gateway's work and the extra loopback hop) and
//!   once on another thread (each request, direct or not, crosses
//!   threads twice). Direct and gateway calls alternate in blocks.
//! - Throughput: fresh nodes call a provider served on the load
//!   generator's thread, so the node's thread serves only the gateway;
//!   one connection per request in flight (HTTP/1.1). Each node first
//!   serves as many requests as the latency part's warm-up sent it, so the
//!   "on" node's response cache is full before the first step.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aios_data_plane::pipeline::{RemoteProviders, Stages};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{
    Options,
    measure::{STEP_WARMUP, cpu_over, field, step_figures, stepped, summary},
    node::{Node, NodeSpec},
    provider::{HttpConn, Provider, chat_body},
    setup::{NO_STAGES, REPLY, node_config},
};

/// The published figures part 4 is compared with: p99 added latency, µs.
pub(crate) const LITELLM_RUST_P99_US: f64 = 107.0;
pub(crate) const BIFROST_P99_US: f64 = 11.0;

const NODES: [(&str, Stages); 2] = [("off", NO_STAGES), ("on", Stages::ALL)];

/// A node calling the provider at `provider_url`, its snapshot in `dir`.
fn start_node(
    name: &str,
    stages: Stages,
    provider_url: &str,
    dir: &Path,
    control_plane: &str,
) -> Result<Node> {
    aios_data_plane::fleet::persist::write(dir, &node_config(provider_url)?)?;
    let backends = RemoteProviders::new().map_err(|e| anyhow!("remote providers: {e}"))?;
    Node::start(NodeSpec {
        name,
        state_dir: dir,
        control_plane,
        stages,
        backends: Arc::new(backends),
    })
}

pub(crate) async fn run(
    options: &Options,
    control_plane: &str,
    counter: &Arc<AtomicU64>,
) -> Result<Value> {
    let latency = latency(options, control_plane, counter).await?;
    let mut throughput = Value::Null;
    if options.throughput {
        throughput = throughput_part(options, control_plane, counter).await?;
    }
    Ok(json!({ "latency": latency, "throughput": throughput }))
}

// === Latency at one request in flight ===

/// A client's target: the provider itself, or the node in front of it.
const SERIES: [&str; 2] = ["direct", "gateway"];
const GATEWAY: usize = 1;
/// Where the client runs (as in part 1).
const PLACES: [&str; 2] = ["other_thread", "node_thread"];

/// `count` sequential requests; the connection comes back for the next
/// block. Through the gateway, each answer must be an uncached success.
async fn sequential(
    mut conn: HttpConn,
    count: usize,
    gateway: bool,
    counter: Arc<AtomicU64>,
) -> Result<(HttpConn, Vec<Duration>)> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let body = chat_body(counter.fetch_add(1, Ordering::Relaxed));
        let (took, answer) = conn.post(body).await?;
        if gateway && !contains(&answer, br#""cache_hit":false"#) {
            bail!(
                "expected an uncached answer from the gateway, got {}",
                String::from_utf8_lossy(&answer)
            );
        }
        samples.push(took);
    }
    Ok((conn, samples))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The gateway's answer to one request, checked field by field.
async fn probe(node: &Node) -> Result<()> {
    let mut conn = HttpConn::connect(node.http).await?;
    let (_, answer) = conn.post(chat_body(u64::MAX / 3)).await?;
    let answer: Value = serde_json::from_slice(&answer).context("the gateway's answer")?;
    let content = answer["choices"][0]["message"]["content"].as_str();
    if content != Some(REPLY) || field(&answer["usage"], "completion_tokens") <= 0.0 {
        bail!("the gateway did not relay the provider's answer: {answer}");
    }
    eprintln!(
        "probe (HTTP): model {} tier {} cost ${:.6} cache_hit {}",
        answer["model"],
        answer["aios"]["route"]["tier"],
        field(&answer["aios"], "cost_usd"),
        answer["aios"]["cache_hit"],
    );
    Ok(())
}

async fn latency(
    options: &Options,
    control_plane: &str,
    counter: &Arc<AtomicU64>,
) -> Result<Value> {
    let mut nodes = Vec::new();
    let mut providers = Vec::new();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    for ((name, stages), dir) in NODES.into_iter().zip(&dirs) {
        let listener = Provider::bind()?;
        let url = Provider::base_url(listener.local_addr()?);
        let node = start_node(name, stages, &url, dir.path(), control_plane)?;
        // The provider shares the node's thread (see the header).
        providers.push(
            node.on_thread(async { Provider::serve(listener) })
                .await??,
        );
        nodes.push(node);
    }
    for node in &nodes {
        probe(node).await?;
    }
    let total = options.http_warmup + options.http_requests;
    eprintln!(
        "HTTP latency: {} requests per node, target and client placement…",
        options.http_requests
    );
    // conns[place][node][series]; a connection is driven where it was opened.
    let mut conns: [[[Option<HttpConn>; 2]; 2]; 2] = Default::default();
    for (which, node) in nodes.iter().enumerate() {
        let targets = [providers[which].addr, node.http];
        for (series, addr) in targets.into_iter().enumerate() {
            conns[0][which][series] = Some(HttpConn::connect(addr).await?);
            conns[1][which][series] = Some(node.on_thread(HttpConn::connect(addr)).await??);
        }
    }
    // samples[place][node][series]
    let mut samples: [[[Vec<Duration>; 2]; 2]; 2] = Default::default();
    let (mut done, mut block) = (0, 0);
    while done < total {
        let size = options.block.min(total - done);
        // Alternate which goes first, so neither always follows the other.
        let order = if block % 2 == 0 { [0, 1] } else { [1, 0] };
        for place in 0..PLACES.len() {
            for which in order {
                for series in order {
                    let conn = conns[place][which][series]
                        .take()
                        .context("a latency connection was lost")?;
                    let work = sequential(conn, size, series == GATEWAY, counter.clone());
                    let (conn, taken) = match place {
                        0 => work.await?,
                        _ => nodes[which].on_thread(work).await??,
                    };
                    conns[place][which][series] = Some(conn);
                    if done >= options.http_warmup {
                        samples[place][which][series].extend(taken);
                    }
                }
            }
        }
        done += size;
        block += 1;
    }
    drop(conns);
    for node in nodes {
        node.stop().await;
    }
    drop(providers);

    let mut result = serde_json::Map::new();
    for (place, per_node) in PLACES.iter().zip(samples) {
        let mut entry = serde_json::Map::new();
        for ((name, _), [mut direct, mut gateway]) in NODES.iter().zip(per_node) {
            let (direct, gateway) = (summary(&mut direct), summary(&mut gateway));
            let added = |key: &str| field(&gateway, key) - field(&direct, key);
            let node = json!({
                "added_p50_us": added("p50_us"),
                "added_p99_us": added("p99_us"),
                "added_p999_us": added("p999_us"),
                "added_mean_us": added("mean_us"),
                SERIES[0]: direct,
                SERIES[1]: gateway,
            });
            entry.insert((*name).to_string(), node);
        }
        // What the stages add through the gateway: on − off.
        let stages =
            |key: &str| field(&entry["on"]["gateway"], key) - field(&entry["off"]["gateway"], key);
        let (p50, p99) = (stages("p50_us"), stages("p99_us"));
        entry.insert("stages_added_p50_us".into(), p50.into());
        entry.insert("stages_added_p99_us".into(), p99.into());
        result.insert((*place).to_string(), Value::Object(entry));
    }
    Ok(Value::Object(result))
}

// === Throughput on one core ===

/// One step: `concurrency` loops of sequential requests, one connection
/// each (opened before the step, kept for the next).
async fn step(
    conns: &mut Vec<HttpConn>,
    concurrency: usize,
    measure: Duration,
    node: &Node,
    counter: &Arc<AtomicU64>,
) -> Result<Value> {
    while conns.len() < concurrency {
        conns.push(HttpConn::connect(node.http).await?);
    }
    let start = Instant::now() + STEP_WARMUP;
    let end = start + measure;
    let mut loops = JoinSet::new();
    for mut conn in conns.drain(..concurrency) {
        let counter = counter.clone();
        loops.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let body = chat_body(counter.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                if sent >= end {
                    return Ok::<_, anyhow::Error>((conn, samples));
                }
                let (took, _) = conn.post(body).await?;
                if sent >= start {
                    samples.push(took);
                }
            }
        });
    }
    let (server_cpu, process) = cpu_over(start, end, node).await;
    let mut samples = Vec::new();
    while let Some(joined) = loops.join_next().await {
        let (conn, taken) = joined??;
        conns.push(conn);
        samples.extend(taken);
    }
    Ok(step_figures(
        concurrency,
        &mut samples,
        measure,
        server_cpu,
        process,
    ))
}

/// `count` requests over `WARM_UP_LOOPS` connections, not measured.
async fn warm_up(
    conns: &mut Vec<HttpConn>,
    count: usize,
    node: &Node,
    counter: &Arc<AtomicU64>,
) -> Result<()> {
    const WARM_UP_LOOPS: usize = 8;
    while conns.len() < WARM_UP_LOOPS {
        conns.push(HttpConn::connect(node.http).await?);
    }
    let mut loops = JoinSet::new();
    for conn in conns.drain(..WARM_UP_LOOPS) {
        let work = sequential(conn, count / WARM_UP_LOOPS, true, counter.clone());
        loops.spawn(work);
    }
    while let Some(joined) = loops.join_next().await {
        conns.push(joined??.0);
    }
    Ok(())
}

async fn throughput_part(
    options: &Options,
    control_plane: &str,
    counter: &Arc<AtomicU64>,
) -> Result<Value> {
    // On the load generator's runtime: the node's thread serves only the
    // gateway.
    let provider = Provider::serve(Provider::bind()?)?;
    let url = Provider::base_url(provider.addr);
    let measure = options.step - STEP_WARMUP;
    let mut result = serde_json::Map::new();
    eprintln!("HTTP throughput: stepping concurrency…");
    for (name, stages) in NODES {
        let dir = tempfile::tempdir()?;
        let node = start_node(name, stages, &url, dir.path(), control_plane)?;
        let mut conns = Vec::new();
        // As the latency part left its nodes: the "on" node's response
        // cache full (evicting), not growing through the first steps.
        let warmup = 2 * options.http_warmup;
        eprintln!("  {name:>3}: {warmup} requests of warm-up…");
        warm_up(&mut conns, warmup, &node, counter).await?;
        let node_ref = &node;
        let figures = stepped(options, name, async |concurrency| {
            step(&mut conns, concurrency, measure, node_ref, counter).await
        })
        .await;
        drop(conns);
        node.stop().await;
        result.insert(name.to_string(), figures?);
    }
    Ok(Value::Object(result))
}
