//! Part 1, what a budget adds to a request: (a) the pipeline in process,
//! every stage on with and without the budget stage; (b) end to end over
//! gRPC at one request in flight, a tenant with a budget against the same
//! config without one, on the node that streams from the control plane.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aios_data_plane::{
    ControlPlaneUrl,
    budget::{Purse, reporter},
    pipeline::{Catalog, CatalogHandle, Pipeline, Settings, Stages},
};
use aios_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use aios_runtime::Secret;
use aios_tests::{admin::ADMIN_KEY, bench};
use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::{
    metadata::AsciiMetadataValue,
    transport::{Channel, Endpoint},
};

use crate::{
    Options,
    setup::{InstantModels, execute_in_process, execute_timed, grpc_request},
    world::{World, allowances_calls, micros, settings},
};

/// Least warm-up of the in-process part.
const IN_PROCESS_WARMUP: Duration = Duration::from_millis(1500);
/// Bounds on the handler's time whose shares are counted.
const SLOW_HANDLER: [Duration; 3] = [
    Duration::from_micros(200),
    Duration::from_micros(500),
    Duration::from_millis(1),
];

/// The in-process rows: the stages, and whose key the requests carry.
const ROWS: [(&str, bool, Tenant); 3] = [
    ("every stage but budget", false, Tenant::Budgeted),
    (
        "+ budget stage, tenant without a budget",
        true,
        Tenant::Free,
    ),
    (
        "+ budget stage, tenant budget (reserve + settle)",
        true,
        Tenant::Budgeted,
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tenant {
    Budgeted,
    Free,
}

/// Spend the bench caused in the budgeted tenant, to check the ledger by.
#[derive(Debug, Default)]
pub(crate) struct Spend {
    /// Sum of the costs of every budgeted request, micro-USD.
    pub(crate) micros: AtomicU64,
}

impl Spend {
    fn add(&self, micros: i64) {
        self.micros
            .fetch_add(u64::try_from(micros).unwrap_or(0), Ordering::Relaxed);
    }
}

fn key(world: &World, tenant: Tenant) -> Result<AsciiMetadataValue> {
    let secret = match tenant {
        Tenant::Budgeted => &world.keys.budgeted,
        Tenant::Free => &world.keys.free,
    };
    AsciiMetadataValue::try_from(secret.as_str()).map_err(|e| anyhow!("key: {e}"))
}

fn summary(samples: &mut [Duration]) -> Value {
    samples.sort();
    let n = samples.len().max(1) as f64;
    json!({
        "n": samples.len(),
        "p50_us": bench::us(bench::percentile(samples, 0.50)),
        "p99_us": bench::us(bench::percentile(samples, 0.99)),
        "p999_us": bench::us(bench::percentile(samples, 0.999)),
        "mean_us": bench::us(samples.iter().sum::<Duration>()) / n,
    })
}

pub(crate) fn field(value: &Value, key: &str) -> f64 {
    value.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

// === (a) In process ===

/// The pipeline called in process (no gRPC), in batches that rotate over
/// the rows. The budgeted rows reserve from their own [`Purse`], whose
/// reporter leases from the control plane as a node's does.
pub(crate) async fn in_process(
    options: &Options,
    world: &World,
    counter: &AtomicU64,
    spend: &Spend,
) -> Result<Value> {
    let catalog = CatalogHandle::fixed(Catalog::build(world.node()?.node_config().current()));
    let purse = Purse::new();
    let stop = CancellationToken::new();
    let reporter = tokio::spawn(reporter::run(
        purse.clone(),
        reporter::ReporterSettings {
            urls: vec![ControlPlaneUrl(world.url.clone())],
            node_key: Some(Secret::new(ADMIN_KEY.into()).map_err(|e| anyhow!("{e}"))?),
            node_id: "bench-in-process".into(),
        },
        stop.clone(),
    ));
    let pipelines: Vec<(Pipeline, AsciiMetadataValue)> = ROWS
        .iter()
        .map(|(_, budget, tenant)| {
            let stages = Stages {
                budget: *budget,
                ..Stages::ALL
            };
            let settings = Settings {
                purse: purse.clone(),
                ..settings(stages)
            };
            let pipeline =
                Pipeline::new(catalog.clone(), Arc::new(InstantModels::INSTANT), settings);
            Ok((pipeline, key(world, *tenant)?))
        })
        .collect::<Result<_>>()?;
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); ROWS.len()];
    let batch = 250;
    let measured_rounds = options.in_process.div_ceil(batch);
    let calls_before = allowances_calls();
    let writes_before = world.ledger_writes().await?;
    let mut budgeted = 0u64;
    let started = Instant::now();
    let (mut round, mut warm_rounds) = (0, None);
    loop {
        // Warm-up: two rounds, and long enough for the purse's estimate of
        // the spending rate (updated at most every 250 ms) to settle; until
        // then calls wait for allowance from the control plane.
        if warm_rounds.is_none() && round >= 2 && started.elapsed() >= IN_PROCESS_WARMUP {
            warm_rounds = Some(round);
        }
        let measured = warm_rounds.is_some();
        if warm_rounds.is_some_and(|warm| round >= warm + measured_rounds) {
            break;
        }
        round += 1;
        for (row, (pipeline, key)) in pipelines.iter().enumerate() {
            for _ in 0..batch {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (took, outcome) = execute_in_process(pipeline, key, n).await?;
                if row == 2 {
                    spend.add(outcome.cost.micros());
                    budgeted += 1;
                }
                if measured {
                    samples[row].push(took);
                }
            }
            // Let the reporter run between batches, as a node's would
            // between requests.
            tokio::task::yield_now().await;
        }
    }
    let calls = allowances_calls() - calls_before;
    let writes = world.ledger_writes().await? - writes_before;
    stop.cancel();
    reporter.await?;
    let mut rows = Vec::new();
    let mut base = 0.0;
    for ((name, ..), mut row) in ROWS.iter().zip(samples) {
        let mut value = summary(&mut row);
        if rows.is_empty() {
            base = field(&value, "p50_us");
        }
        value["added_p50_us"] = (field(&value, "p50_us") - base).into();
        value["row"] = (*name).into();
        rows.push(value);
    }
    let base_p99 = field(&rows[0], "p99_us");
    for row in &mut rows {
        row["added_p99_us"] = (field(row, "p99_us") - base_p99).into();
    }
    Ok(json!({
        "rows": rows,
        "budgeted_requests": budgeted,
        "warmup_rounds": warm_rounds,
        "allowances_calls": calls,
        "allowances_per_request": calls / budgeted.max(1) as f64,
        "ledger_writes": writes,
    }))
}

// === (b) End to end ===

async fn connect(addr: std::net::SocketAddr) -> Result<AgentServiceClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to the node at {addr}"))?;
    Ok(AgentServiceClient::new(channel))
}

/// One request: its client-side and handler durations and its cost in
/// micro-USD.
async fn call(
    client: &mut AgentServiceClient<Channel>,
    request: tonic::Request<pb::ExecuteRequest>,
) -> Result<(Duration, Duration, i64)> {
    let (took, handler, response) = execute_timed(client, request).await?;
    Ok((took, handler, micros(response.cost_usd)))
}

/// The same requests to the node with one tenant's key and the other's,
/// alternating in blocks (which goes first alternates too), the client on
/// the node's thread (this runtime).
pub(crate) async fn end_to_end(
    options: &Options,
    world: &World,
    counter: &AtomicU64,
    spend: &Spend,
) -> Result<Value> {
    let mut client = connect(world.node()?.grpc_addr()).await?;
    let keys = [key(world, Tenant::Budgeted)?, key(world, Tenant::Free)?];
    // samples[tenant]: (client, handler).
    let mut samples: [Vec<(Duration, Duration)>; 2] = Default::default();
    let total = options.warmup + options.requests;
    let (mut done, mut block) = (0, 0);
    let mut before = None;
    while done < total {
        if done >= options.warmup && before.is_none() {
            before = Some((
                allowances_calls(),
                world.ledger_writes().await?,
                Instant::now(),
            ));
        }
        let size = options.block.min(total - done);
        let first = counter.fetch_add(size as u64, Ordering::Relaxed);
        let order = if block % 2 == 0 { [0, 1] } else { [1, 0] };
        for tenant in order {
            for n in first..first + size as u64 {
                let (took, handler, cost) =
                    call(&mut client, grpc_request(n, &keys[tenant])).await?;
                if tenant == 0 {
                    spend.add(cost);
                }
                if done >= options.warmup {
                    samples[tenant].push((took, handler));
                }
            }
        }
        done += size;
        block += 1;
    }
    let (calls_before, writes_before, measured_from) = before.context("no measured block")?;
    let calls = allowances_calls() - calls_before;
    let writes = world.ledger_writes().await? - writes_before;
    let seconds = measured_from.elapsed().as_secs_f64();
    let paced = paced(options, &mut client, &keys, counter, spend).await?;
    let side = |samples: &[(Duration, Duration)], handler: bool| {
        let mut d: Vec<Duration> = samples
            .iter()
            .map(|(c, h)| if handler { *h } else { *c })
            .collect();
        summary(&mut d)
    };
    let (with, without) = (&samples[0], &samples[1]);
    let (with_c, without_c) = (side(with, false), side(without, false));
    let (with_h, without_h) = (side(with, true), side(without, true));
    let added = |key: &str, a: &Value, b: &Value| field(a, key) - field(b, key);
    // Share of handlers over each bound: a call that waited for allowance
    // waited at least one round trip to the control plane.
    let slow = |samples: &[(Duration, Duration)]| -> Value {
        SLOW_HANDLER
            .iter()
            .map(|bound| {
                let over = samples.iter().filter(|(_, h)| h > bound).count();
                json!({
                    "over_us": bench::us(*bound),
                    "share": over as f64 / samples.len().max(1) as f64,
                })
            })
            .collect()
    };
    Ok(json!({
        "handlers_over_budget": slow(with),
        "handlers_over_no_budget": slow(without),
        "seconds": seconds,
        "allowances_per_second": calls / seconds.max(1e-9),
        "paced": paced,
        "budget": { "client": with_c, "handler": with_h },
        "no_budget": { "client": without_c, "handler": without_h },
        "added_p50_us": added("p50_us", &with_c, &without_c),
        "added_p99_us": added("p99_us", &with_c, &without_c),
        "added_handler_p50_us": added("p50_us", &with_h, &without_h),
        "added_handler_p99_us": added("p99_us", &with_h, &without_h),
        "budgeted_requests": with.len(),
        "allowances_calls": calls,
        "allowances_per_request": calls / with.len().max(1) as f64,
        "ledger_writes": writes,
    }))
}

/// `--paced` budgeted requests at `--paced-rate` per second, each paired
/// with the same request for the tenant without a budget (which goes first
/// alternates): how many Allowances calls a lightly loaded node makes per
/// request, and what its requests wait. It starts after the node has been
/// idle long enough to give back what it held, as after a quiet spell.
async fn paced(
    options: &Options,
    client: &mut AgentServiceClient<Channel>,
    keys: &[AsciiMetadataValue; 2],
    counter: &AtomicU64,
    spend: &Spend,
) -> Result<Value> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = allowances_calls();
    let rate = options.paced_rate;
    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut handler: [Vec<Duration>; 2] = Default::default();
    for i in 0..options.paced {
        every.tick().await;
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for tenant in order {
            let (_, took, cost) = call(client, grpc_request(n, &keys[tenant])).await?;
            if tenant == 0 {
                spend.add(cost);
            }
            handler[tenant].push(took);
        }
    }
    // The last request's settle goes out one gathering later.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let calls = allowances_calls() - before;
    let [with, without] = &mut handler;
    let (with, without) = (summary(with), summary(without));
    Ok(json!({
        "requests": options.paced,
        "rate_per_second": rate,
        "allowances_calls": calls,
        "allowances_per_request": calls / options.paced.max(1) as f64,
        "added_handler_p50_us": field(&with, "p50_us") - field(&without, "p50_us"),
        "added_handler_p99_us": field(&with, "p99_us") - field(&without, "p99_us"),
        "handler": with,
        "handler_no_budget": without,
    }))
}
