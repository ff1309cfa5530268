//! The process-wide Prometheus recorder behind `/metrics`, and the list of
//! series each plane exports.
//!
//! A process has one `metrics` recorder; when both planes run in one process
//! (`aiosctl dev`, tests) they share it, and a series either plane may
//! export carries a `plane` label to tell them apart.
//!
//! Every series is declared once in a [`Series`] list ([`SERIES`] here, the
//! planes' own next to their code): its name, type, labels and help text.
//! [`describe`] turns the list into `# HELP` lines, and the end-to-end
//! metrics test holds the scraped output, the alert rules and the Grafana
//! dashboard in `deploy/` to it. Labels are low-cardinality by rule: no
//! tenant, user, API key, trace or request ids (those live in spans).

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Bucket bounds (seconds) of every `*_seconds` histogram: 5 ms to 60 s
/// (a request's default deadline), with 1 s exact for the p95 alert.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (a scrape folds them too); bounds the memory they hold.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Returns the handle that renders the exposition text, installing the
/// recorder on first use. `None` if another recorder was installed first.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

/// Installs the recorder now, if no one has. A plane calls this first
/// thing when it starts: a handle made before the recorder exists (the
/// counters a stage keeps, series shown as 0 from the start) belongs to no
/// recorder and counts nothing, ever.
pub fn install() {
    let _ = handle();
}

/// Folds histogram samples into buckets every [`UPKEEP_INTERVAL`] until
/// `stop`: the recorder keeps each raw sample until then.
pub async fn upkeep(handle: PrometheusHandle, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(UPKEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

/// Records `aios_build_info{plane, version} 1`.
pub fn record_build_info(plane: &'static str) {
    metrics::gauge!("aios_build_info", "plane" => plane, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
}

// === the series list ===

/// A Prometheus metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; named `*_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in [`LATENCY_BUCKETS`] (`*_bucket`, `*_sum`, `*_count`).
    Histogram,
}

impl Kind {
    /// The name in `# TYPE` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported series: what `/metrics` may hold under `name`.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    /// Metric name (base units: `_seconds`, `_bytes`, `_micro_usd`).
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Every label it may carry; each one's values are a small, bounded set.
    pub labels: &'static [&'static str],
    /// The `# HELP` text.
    pub help: &'static str,
}

/// The series of both planes' shared machinery (readiness, build, gRPC).
pub const SERIES: &[Series] = &[
    Series {
        name: "aios_build_info",
        kind: Kind::Gauge,
        labels: &["plane", "version"],
        help: "Always 1; the labels name the plane and its version.",
    },
    Series {
        name: "aios_ready",
        kind: Kind::Gauge,
        labels: &["plane"],
        help: "1 while every readiness gate is open and the plane is not draining.",
    },
    Series {
        name: crate::grpc_metrics::HANDLED,
        kind: Kind::Counter,
        labels: &["plane", "service", "method", "code"],
        help: "gRPC calls that ended, by method and status code (UPPER_SNAKE, e.g. OK, \
               UNAUTHENTICATED); unknown methods count as service and method \"unknown\".",
    },
    Series {
        name: "aios_telemetry_batches_total",
        kind: Kind::Counter,
        labels: &["plane", "outcome"],
        help: "Span batches: on a data plane, cut for sending; on the control plane, received \
               from nodes, by outcome (written; duplicate: already taken, dropped).",
    },
];

/// Gives every series in `series` its `# HELP` line (once per process).
pub fn describe(series: &[Series]) {
    for s in series {
        match s.kind {
            Kind::Counter => metrics::describe_counter!(s.name, s.help),
            Kind::Gauge => metrics::describe_gauge!(s.name, s.help),
            Kind::Histogram => metrics::describe_histogram!(s.name, s.help),
        }
    }
}
