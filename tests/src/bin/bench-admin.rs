//! bench-admin: Admin API write throughput and watch fan-out, on the
//! embedded store and on a real etcd, each against a reference measured in
//! the same run on the same store: raw store transactions (no gRPC, no
//! auth, no validation) for Apply, and raw store watches for fan-out.
//!
//! cargo run --release -p aios-tests --bin bench-admin -- [--applies N] [--concurrency C] [--watchers W] [--changes M] [--backend embedded|etcd|both]

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark program

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aios_control_plane::store::{Op, SharedStore};
use aios_proto::v1::{self as pb, admin_service_client::AdminServiceClient};
use aios_runtime::cli::exit_config;
use aios_tests::{
    admin::{ADMIN_KEY, TestPlane, model, tenant},
    etcd::EtcdServer,
};
use futures::StreamExt;
use serde_json::json;

#[derive(Clone, Copy)]
struct Options {
    applies: usize,
    concurrency: usize,
    watchers: usize,
    changes: usize,
}

fn parse_args() -> (Options, Vec<String>) {
    let mut options = Options {
        applies: 2000,
        concurrency: 16,
        watchers: 100,
        changes: 100,
    };
    let mut backends = vec!["embedded".to_string(), "etcd".to_string()];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        let number = || {
            value
                .parse::<usize>()
                .unwrap_or_else(|_| exit_config(&format!("{} needs a number", args[i])))
        };
        match args[i].as_str() {
            "--applies" => options.applies = number(),
            "--concurrency" => options.concurrency = number().max(1),
            "--watchers" => options.watchers = number().max(1),
            "--changes" => options.changes = number().max(1),
            "--backend" => {
                backends = if value == "both" {
                    backends
                } else {
                    vec![value.clone()]
                }
            }
            other => exit_config(&format!(
                "unknown option {other}; see the header of tests/src/bin/bench-admin.rs"
            )),
        }
        i += 2;
    }
    (options, backends)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

async fn client(plane: &TestPlane) -> AdminServiceClient<aios_client::AuthChannel> {
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), Duration::from_secs(30))
        .await
        .unwrap();
    AdminServiceClient::new(channel)
}

/// Runs `total` calls of `call(i)` with `concurrency` in flight; returns
/// (wall time, sorted latencies).
async fn drive<F, Fut>(total: usize, concurrency: usize, call: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (call, next) = (call.clone(), next.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return latencies;
                }
                let t = Instant::now();
                call(i).await;
                latencies.push(t.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(latencies) = tasks.join_next().await {
        all.extend(latencies.unwrap());
    }
    all.sort();
    (started.elapsed(), all)
}

async fn bench_apply(plane: &TestPlane, o: Options, run: &str) -> serde_json::Value {
    let c = client(plane).await;
    let run = run.to_string();
    let (wall, latencies) = drive(o.applies, o.concurrency, move |i| {
        let mut c = c.clone();
        let run = run.clone();
        async move {
            let request = pb::ApplyRequest {
                resource: Some(model("bench", &format!("{run}-m{i}"))),
                dry_run: false,
            };
            c.apply(request).await.unwrap();
        }
    })
    .await;
    json!({
        "applies_per_s": o.applies as f64 / wall.as_secs_f64(),
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
    })
}

async fn bench_raw_txn(store: SharedStore, o: Options, run: &str) -> serde_json::Value {
    let value = prost::Message::encode_to_vec(&model("bench", "raw"));
    let run = run.to_string();
    let (wall, latencies) = drive(o.applies, o.concurrency, move |i| {
        let (store, value, key) = (
            store.clone(),
            value.clone(),
            format!("/bench/raw/{run}/{i}"),
        );
        async move {
            store
                .txn(
                    vec![],
                    vec![Op::Put {
                        key,
                        value,
                        lease: None,
                    }],
                )
                .await
                .unwrap();
        }
    })
    .await;
    json!({
        "txns_per_s": o.applies as f64 / wall.as_secs_f64(),
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
    })
}

/// `watchers` Admin watches; `changes` sequential applies; delivery latency from
/// the start of each apply to each watcher's receipt.
async fn bench_watch(plane: &TestPlane, o: Options) -> serde_json::Value {
    let c = client(plane).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut ready = Vec::new();
    for _ in 0..o.watchers {
        let mut c = c.clone();
        let tx = tx.clone();
        let request = pb::WatchRequest {
            kind: pb::Kind::Model as i32,
            tenant: "bench".into(),
            start_revision: 0,
        };
        let mut stream = c.watch(request).await.unwrap().into_inner();
        ready.push(tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                let name = event
                    .resource
                    .and_then(|r| r.metadata)
                    .map(|m| m.name)
                    .unwrap_or_default();
                if tx.send((name, Instant::now())).is_err() {
                    return;
                }
            }
        }));
    }
    let mut c2 = c.clone();
    let mut sent = std::collections::HashMap::new();
    let started = Instant::now();
    for i in 0..o.changes {
        let name = format!("w{i}");
        // From the start of the write: a watcher may see it before the writer's reply.
        sent.insert(name.clone(), Instant::now());
        c2.apply(pb::ApplyRequest {
            resource: Some(model("bench", &name)),
            dry_run: false,
        })
        .await
        .unwrap();
    }
    fan_out_report(rx, &sent, o.watchers * o.changes, started, ready).await
}

async fn bench_raw_watch(store: SharedStore, o: Options, run: &str) -> serde_json::Value {
    let prefix = format!("/bench/watch/{run}/");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut tasks = Vec::new();
    for _ in 0..o.watchers {
        let mut stream = store
            .watch(&prefix, store.revision().await.unwrap() + 1)
            .await
            .unwrap();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(aios_control_plane::store::WatchMessage::Events(events))) =
                stream.next().await
            {
                for event in events {
                    if tx.send((event.kv.key, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    let mut sent = std::collections::HashMap::new();
    let started = Instant::now();
    for i in 0..o.changes {
        let key = format!("{prefix}{i}");
        // From the start of the write: a watcher may see it before the writer's reply.
        sent.insert(key.clone(), Instant::now());
        store
            .txn(
                vec![],
                vec![Op::Put {
                    key: key.clone(),
                    value: vec![1],
                    lease: None,
                }],
            )
            .await
            .unwrap();
    }
    fan_out_report(rx, &sent, o.watchers * o.changes, started, tasks).await
}

/// Waits until every watcher has seen every write and reports delivery
/// latency (write start to receipt) and the event rate.
async fn fan_out_report(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    sent: &std::collections::HashMap<String, Instant>,
    expected: usize,
    started: Instant,
    watchers: Vec<tokio::task::JoinHandle<()>>,
) -> serde_json::Value {
    let mut latencies = Vec::with_capacity(expected);
    while latencies.len() < expected {
        let (key, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("events keep coming")
            .unwrap();
        if let Some(sent_at) = sent.get(&key) {
            latencies.push(at.saturating_duration_since(*sent_at));
        }
    }
    let wall = started.elapsed();
    for watcher in watchers {
        watcher.abort();
    }
    latencies.sort();
    json!({
        "events_per_s": expected as f64 / wall.as_secs_f64(),
        "delivery_p50_ms": percentile(&latencies, 0.50),
        "delivery_p99_ms": percentile(&latencies, 0.99),
    })
}

async fn bench_backend(name: &str, plane: &TestPlane, o: Options) -> serde_json::Value {
    let mut c = client(plane).await;
    c.apply(pb::ApplyRequest {
        resource: Some(tenant("bench")),
        dry_run: false,
    })
    .await
    .unwrap();
    let store = plane.store().clone();
    let raw_txn = bench_raw_txn(store.clone(), o, name).await;
    let apply = bench_apply(plane, o, name).await;
    let raw_watch = bench_raw_watch(store, o, name).await;
    let watch = bench_watch(plane, o).await;
    let ratio = |a: &serde_json::Value, b: &serde_json::Value| {
        a.as_f64().unwrap_or(0.0) / b.as_f64().unwrap_or(1.0)
    };
    json!({
        "apply": apply,
        "raw_txn": raw_txn,
        "apply_vs_raw_txn": ratio(&apply["applies_per_s"], &raw_txn["txns_per_s"]),
        "watch": watch,
        "raw_watch": raw_watch,
        "watch_vs_raw_watch": ratio(&watch["events_per_s"], &raw_watch["events_per_s"]),
    })
}

#[tokio::main]
async fn main() {
    let (o, backends) = parse_args();
    let mut results = serde_json::Map::new();
    for backend in &backends {
        let result = match backend.as_str() {
            "embedded" => {
                let plane = TestPlane::embedded().await;
                let result = bench_backend("embedded", &plane, o).await;
                plane.stop().await;
                result
            }
            "etcd" => {
                let etcd = EtcdServer::start().expect("etcd (apt-get install etcd-server)");
                let plane = TestPlane::etcd(vec![etcd.endpoint()]).await;
                let result = bench_backend("etcd", &plane, o).await;
                plane.stop().await;
                result
            }
            other => exit_config(&format!("unknown backend {other}: embedded, etcd or both")),
        };
        results.insert(backend.clone(), result);
    }

    println!(
        "bench-admin: {} applies at concurrency {}; {} watchers x {} changes",
        o.applies, o.concurrency, o.watchers, o.changes
    );
    println!(
        "{:<9} {:<22} {:>12} {:>10} {:>10}",
        "backend", "measure", "rate/s", "p50 ms", "p99 ms"
    );
    for (backend, r) in &results {
        let rows = [
            (
                "Apply (gRPC)",
                &r["apply"],
                "applies_per_s",
                "p50_ms",
                "p99_ms",
            ),
            (
                "raw store txn",
                &r["raw_txn"],
                "txns_per_s",
                "p50_ms",
                "p99_ms",
            ),
            (
                "Watch fan-out (gRPC)",
                &r["watch"],
                "events_per_s",
                "delivery_p50_ms",
                "delivery_p99_ms",
            ),
            (
                "raw store watch",
                &r["raw_watch"],
                "events_per_s",
                "delivery_p50_ms",
                "delivery_p99_ms",
            ),
        ];
        for (label, v, rate, p50, p99) in rows {
            let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
            println!(
                "{backend:<9} {label:<22} {:>12.0} {:>10.2} {:>10.2}",
                f(rate),
                f(p50),
                f(p99)
            );
        }
        println!(
            "{backend:<9} ratios: Apply/raw txn = {:.2}, Watch/raw watch = {:.2}",
            r["apply_vs_raw_txn"].as_f64().unwrap_or(0.0),
            r["watch_vs_raw_watch"].as_f64().unwrap_or(0.0)
        );
    }
    let summary = json!({ "bench": "admin", "options": { "applies": o.applies, "concurrency": o.concurrency, "watchers": o.watchers, "changes": o.changes }, "results": results });
    println!("{summary}");
}
