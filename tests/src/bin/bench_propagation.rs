//! bench-propagation: how fast a change reaches every connected node, and
//! what each connected node costs the control plane in memory.
//!
//! For each N, a fresh `aios-control-plane` process (so its RSS can be read
//! from /proc) gets N simulated nodes: real `StreamConfig` streams, at most
//! 50 per HTTP/2 connection, that say hello and ACK every push at once.
//! Each round applies a change to one Budget through the Admin API and
//! times, per node, from just before the Apply is sent to when the node
//! sends its ACK of the push carrying the new version.
//!
//! cargo build --release -p aios-control-plane -p aios-tests --bins
//! cargo run --release -p aios-tests --bin bench-propagation -- [--nodes 10,100,1000] [--rounds N] [--store embedded|etcd://HOST:PORT] [--json]
//!
//! The control-plane binary is taken from next to this one (same profile):
//! build it first, as above, or the numbers are for a stale binary.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark program: printing is its job

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use aios_client::{AdminClient, AuthChannel, kind::kind_of};
use aios_proto::v1::{
    self as pb, config_message, fleet_service_client::FleetServiceClient, node_message,
    resource::Spec,
};
use aios_runtime::cli::{EXIT_FAILURE, exit_config, exit_with};
use aios_tests::{
    admin::{ADMIN_KEY, budget, tenant},
    bench::{self, Args, Machine, ms, plane::PlaneProcess, positive, positive_list},
};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use tokio::{sync::mpsc, task::JoinSet};

/// Streams sharing one HTTP/2 connection (servers commonly cap concurrent
/// streams per connection at ~100-200; real nodes each have their own).
const STREAMS_PER_CONNECTION: usize = 50;
/// Tenant and Budget every round changes.
const TENANT: &str = "bench";
const BUDGET: &str = "propagation";
/// A simulated node's region.
const REGION: &str = "bench";
/// How often an idle simulated node sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Waits, each with its own error.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole run, whatever happens.
const RUN_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Let the control plane settle (allocator, registry writes) before reading RSS.
const SETTLE: Duration = Duration::from_secs(1);

// === Options ===

#[derive(Clone, Debug)]
struct Options {
    nodes: Vec<usize>,
    rounds: usize,
    /// `embedded` (a fresh temp store per N) or an `etcd://` URL.
    store: String,
    json: bool,
}

fn parse_args() -> Options {
    let mut options = Options {
        nodes: vec![10, 100, 1000],
        rounds: 20,
        store: "embedded".into(),
        json: false,
    };
    let mut args = Args::from_env();
    while let Some(arg) = args.next() {
        let mut value = || args.value(&arg);
        match arg.as_str() {
            "--nodes" => {
                options.nodes = positive_list(&arg, &value(), "positive numbers, e.g. 10,100,1000");
            }
            "--rounds" => options.rounds = positive(&arg, &value()),
            "--store" => {
                let store = value();
                if store != "embedded" && !store.starts_with("etcd://") {
                    exit_config(&format!(
                        "--store {store}: expected embedded or etcd://HOST:PORT"
                    ));
                }
                options.store = store;
            }
            "--json" => options.json = true,
            other => exit_config(&format!(
                "unknown option {other}; see the header of tests/src/bin/bench_propagation.rs"
            )),
        }
    }
    options
}

// === Simulated nodes ===

/// What a simulated node tells the bench.
#[derive(Debug)]
enum Event {
    /// It is about to send the ACK of a push: every update and removal
    /// accepted, with the versions it ACKs.
    Acked {
        node: usize,
        initial: bool,
        /// (kind, tenant, name, version) of each update.
        updates: Vec<(i32, String, String, i64)>,
        at: Instant,
    },
    /// Its stream failed or ended.
    Failed { node: usize, error: String },
}

/// One simulated data-plane node: a real `StreamConfig` stream that sends
/// its hello, ACKs every push immediately (accepting every update and
/// removal), and heartbeats while idle.
struct SimNode {
    index: usize,
    /// What it holds: (kind, tenant, name) → version, for removals' ACKs.
    held: HashMap<(i32, String, String), i64>,
    events: mpsc::UnboundedSender<Event>,
}

impl SimNode {
    fn new(index: usize, events: mpsc::UnboundedSender<Event>) -> Self {
        Self {
            index,
            held: HashMap::new(),
            events,
        }
    }

    fn hello(&self) -> pb::NodeMessage {
        pb::NodeMessage {
            msg: Some(node_message::Msg::Hello(pb::NodeHello {
                node_id: format!("sim-{}", self.index),
                region: REGION.into(),
                zone: String::new(),
                labels: HashMap::from([("bench".to_string(), "propagation".to_string())]),
                capabilities: Some(pb::NodeCapabilities {
                    cpu_cores: 1,
                    ..Default::default()
                }),
                held: Vec::new(),
                agent_version: "bench-propagation".into(),
            })),
        }
    }

    /// Runs until the stream ends; reports how it ended unless the bench
    /// itself stopped it (by aborting the task).
    async fn run(mut self, channel: AuthChannel) {
        let error = match self.stream(channel).await {
            Ok(()) => "the server closed the stream".to_string(),
            Err(error) => format!("{error:#}"),
        };
        let _ = self.events.send(Event::Failed {
            node: self.index,
            error,
        });
    }

    async fn stream(&mut self, channel: AuthChannel) -> Result<()> {
        let (tx, rx) = mpsc::channel::<pb::NodeMessage>(4);
        // The hello must be on its way before the call: the server reads it
        // before it answers.
        tx.send(self.hello()).await?;
        let mut inbound = FleetServiceClient::new(channel)
            .stream_config(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|status| anyhow!("{}", aios_client::describe_status(&status)))?
            .into_inner();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            let message = tokio::select! {
                message = inbound.message() => message
                    .map_err(|status| anyhow!("{}", aios_client::describe_status(&status)))?,
                _ = heartbeat.tick() => {
                    let beat = pb::NodeMessage {
                        msg: Some(node_message::Msg::Heartbeat(pb::NodeHeartbeat::default())),
                    };
                    tx.send(beat).await?;
                    continue;
                }
            };
            let Some(message) = message else {
                return Ok(());
            };
            let Some(config_message::Msg::Push(push)) = message.msg else {
                continue;
            };
            let (ack, updates) = self.accept(&push);
            let at = Instant::now();
            let _ = self.events.send(Event::Acked {
                node: self.index,
                initial: push.initial,
                updates,
                at,
            });
            tx.send(pb::NodeMessage {
                msg: Some(node_message::Msg::Ack(ack)),
            })
            .await?;
            heartbeat.reset();
        }
    }

    /// Accepts everything in `push`: one ResourceAck per update (its
    /// resource_version) and per removal (the version held).
    fn accept(
        &mut self,
        push: &pb::ConfigPush,
    ) -> (pb::ConfigAck, Vec<(i32, String, String, i64)>) {
        let mut results = Vec::with_capacity(push.updates.len() + push.removals.len());
        let mut updates = Vec::with_capacity(push.updates.len());
        for resource in &push.updates {
            let meta = resource.metadata.clone().unwrap_or_default();
            let kind = kind_of(resource) as i32;
            let key = (kind, meta.tenant, meta.name);
            self.held.insert(key.clone(), meta.resource_version);
            results.push(pb::ResourceAck {
                resource: Some(pb::ResourceRef {
                    kind,
                    tenant: key.1.clone(),
                    name: key.2.clone(),
                }),
                version: meta.resource_version,
                accepted: true,
                error: String::new(),
            });
            updates.push((key.0, key.1, key.2, meta.resource_version));
        }
        for removal in &push.removals {
            let key = (removal.kind, removal.tenant.clone(), removal.name.clone());
            let version = self.held.remove(&key).unwrap_or_default();
            results.push(pb::ResourceAck {
                resource: Some(removal.clone()),
                version,
                accepted: true,
                error: String::new(),
            });
        }
        let ack = pb::ConfigAck {
            nonce: push.nonce.clone(),
            results,
        };
        (ack, updates)
    }
}

/// Connects `n` simulated nodes, [`STREAMS_PER_CONNECTION`] per HTTP/2
/// connection.
async fn connect_nodes(
    url: &str,
    n: usize,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<JoinSet<()>> {
    let mut nodes = JoinSet::new();
    let mut channel = None;
    for index in 0..n {
        if index % STREAMS_PER_CONNECTION == 0 {
            channel = Some(
                aios_client::connect(url, Some(ADMIN_KEY), CALL_TIMEOUT)
                    .await
                    .context("connect a node connection")?,
            );
        }
        let channel = channel.clone().context("a connection")?;
        nodes.spawn(SimNode::new(index, events.clone()).run(channel));
    }
    Ok(nodes)
}

/// Waits until `done` says every node is done, feeding it each ACK; fails
/// on a node's failure or after `timeout`.
async fn wait_for_nodes(
    events: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(bool, &[(i32, String, String, i64)], Instant) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut finished = vec![false; n];
    let mut left = n;
    while left > 0 {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| anyhow!("{what}: {left} of {n} nodes still waiting after {timeout:?}"))?
            .context("every node task is gone")?;
        match event {
            Event::Acked {
                node,
                initial,
                updates,
                at,
            } => {
                if !finished[node] && done(initial, &updates, at) {
                    finished[node] = true;
                    left -= 1;
                }
            }
            Event::Failed { node, error } => bail!("{what}: sim-{node}: {error}"),
        }
    }
    Ok(())
}

// === One N ===

/// What one N measured.
#[derive(Debug)]
struct Outcome {
    nodes: usize,
    connect: Duration,
    rss_idle_kib: u64,
    rss_connected_kib: u64,
    /// Every (node, round): apply start → that node's ACK.
    acks: Vec<Duration>,
    /// Every round: apply start → the last node's ACK.
    lasts: Vec<Duration>,
}

impl Outcome {
    fn rss_per_node_kib(&self) -> f64 {
        (self.rss_connected_kib as f64 - self.rss_idle_kib as f64) / self.nodes as f64
    }

    fn json(&self, options: &Options, machine: &Machine) -> serde_json::Value {
        json!({
            "bench": "propagation",
            "nodes": self.nodes,
            "rounds": self.lasts.len(),
            "store": if options.store == "embedded" { "embedded" } else { "etcd" },
            "connect_ms": ms(self.connect),
            "rss_idle_kib": self.rss_idle_kib,
            "rss_connected_kib": self.rss_connected_kib,
            "rss_per_node_kib": self.rss_per_node_kib(),
            "ack_p50_ms": percentile(&self.acks, 0.50),
            "ack_p99_ms": percentile(&self.acks, 0.99),
            "ack_max_ms": percentile(&self.acks, 1.0),
            "last_p50_ms": percentile(&self.lasts, 0.50),
            "last_p99_ms": percentile(&self.lasts, 0.99),
            "last_max_ms": percentile(&self.lasts, 1.0),
            "nproc": machine.nproc,
            "cpu": machine.cpu,
        })
    }
}

async fn bench_n(program: &Path, n: usize, options: &Options) -> Result<Outcome> {
    let plane = PlaneProcess::start(program, &options.store).await?;
    let url = plane.url();
    let mut admin = AdminClient::connect(&url, Some(ADMIN_KEY), CALL_TIMEOUT).await?;
    let apply = |resource| pb::ApplyRequest {
        resource: Some(resource),
        dry_run: false,
    };
    admin
        .apply(apply(tenant(TENANT)))
        .await
        .context("apply the bench tenant")?;
    admin
        .apply(apply(budget_round(0)))
        .await
        .context("apply the bench budget")?;
    tokio::time::sleep(SETTLE).await;
    let rss_idle_kib = plane.rss_kib()?;
    eprintln!(
        "N={n}: control plane pid {} serving on {url}, RSS {rss_idle_kib} KiB idle; connecting {n} nodes",
        plane.pid()
    );

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut nodes = connect_nodes(&url, n, &events_tx).await?;
    drop(events_tx);
    let connect_timeout = START_TIMEOUT + Duration::from_millis(50) * n as u32;
    wait_for_nodes(
        &mut events,
        n,
        connect_timeout,
        "initial push",
        |initial, _, _| initial,
    )
    .await
    .map_err(|e| anyhow!("{e:#}\ncontrol plane {}", plane.stderr_text()))?;
    let connect = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let rss_connected_kib = plane.rss_kib()?;
    eprintln!(
        "N={n}: all initial pushes ACKed in {:.1} ms; RSS {rss_connected_kib} KiB",
        ms(connect)
    );

    let mut acks = Vec::with_capacity(n * options.rounds);
    let mut lasts = Vec::with_capacity(options.rounds);
    for round in 1..=options.rounds {
        let t0 = Instant::now();
        let response = tokio::time::timeout(CALL_TIMEOUT, admin.apply(apply(budget_round(round))))
            .await
            .map_err(|_| anyhow!("round {round}: Apply took over {CALL_TIMEOUT:?}"))??;
        let version = response
            .resource
            .and_then(|r| r.metadata)
            .map(|m| m.resource_version)
            .context("Apply answered without the stored resource")?;
        if response.unchanged {
            bail!("round {round}: Apply changed nothing; the bench needs a change per round");
        }
        let mut last = Duration::ZERO;
        wait_for_nodes(
            &mut events,
            n,
            ROUND_TIMEOUT,
            &format!("round {round} (budget version {version})"),
            |_, updates, at| {
                let carries = updates.iter().any(|(kind, tenant, name, v)| {
                    *kind == pb::Kind::Budget as i32
                        && tenant == TENANT
                        && name == BUDGET
                        && *v >= version
                });
                if carries {
                    let took = at.saturating_duration_since(t0);
                    acks.push(took);
                    last = last.max(took);
                }
                carries
            },
        )
        .await?;
        lasts.push(last);
    }
    nodes.abort_all();
    while nodes.join_next().await.is_some() {}
    drop(plane);
    acks.sort();
    lasts.sort();
    Ok(Outcome {
        nodes: n,
        connect,
        rss_idle_kib,
        rss_connected_kib,
        acks,
        lasts,
    })
}

/// The bench Budget with a limit that differs every round.
fn budget_round(round: usize) -> pb::Resource {
    let mut resource = budget(TENANT, BUDGET);
    if let Some(Spec::Budget(spec)) = &mut resource.spec {
        spec.limit_usd = 10.0 + round as f64;
    }
    resource
}

// === Report ===

/// Nearest-rank percentile of sorted samples, in ms (`p` = 1.0: the max).
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    ms(bench::percentile(sorted, p))
}

fn report(outcomes: &[Outcome], options: &Options, machine: &Machine) {
    println!(
        "bench-propagation: {} rounds per N, store {}, {} nodes per HTTP/2 connection",
        options.rounds, options.store, STREAMS_PER_CONNECTION
    );
    println!("machine: {} CPUs, {}", machine.nproc, machine.cpu);
    println!(
        "{:>6} {:>11} {:>10} {:>10} {:>10} | {:>9} {:>9} {:>9} | {:>10} {:>10}",
        "nodes",
        "connect ms",
        "idle MiB",
        "conn MiB",
        "KiB/node",
        "ack p50",
        "ack p99",
        "ack max",
        "last p50",
        "last p99"
    );
    for o in outcomes {
        println!(
            "{:>6} {:>11.1} {:>10.1} {:>10.1} {:>10.1} | {:>9.2} {:>9.2} {:>9.2} | {:>10.2} {:>10.2}",
            o.nodes,
            ms(o.connect),
            o.rss_idle_kib as f64 / 1024.0,
            o.rss_connected_kib as f64 / 1024.0,
            o.rss_per_node_kib(),
            percentile(&o.acks, 0.50),
            percentile(&o.acks, 0.99),
            percentile(&o.acks, 1.0),
            percentile(&o.lasts, 0.50),
            percentile(&o.lasts, 0.99),
        );
    }
    println!(
        "ack: apply start -> a node's ACK, over every (node, round); last: apply start -> the last node's ACK, over rounds (ms)"
    );
    if options.json {
        for o in outcomes {
            println!("{}", o.json(options, machine));
        }
    }
}

async fn run(options: &Options, machine: &Machine) -> Result<()> {
    let program = PlaneProcess::program()?;
    let mut outcomes = Vec::new();
    for &n in &options.nodes {
        match bench_n(&program, n, options).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => {
                if !outcomes.is_empty() {
                    report(&outcomes, options, machine);
                }
                return Err(error.context(format!("N={n}")));
            }
        }
    }
    report(&outcomes, options, machine);
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let options = parse_args();
    let machine = Machine::read();
    let result = tokio::time::timeout(RUN_TIMEOUT, run(&options, &machine))
        .await
        .unwrap_or_else(|_| Err(anyhow!("the run took over {RUN_TIMEOUT:?}")));
    if let Err(error) = result {
        exit_with(EXIT_FAILURE, &format!("{error:#}"));
    }
}
