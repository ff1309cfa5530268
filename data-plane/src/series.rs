//! Every Prometheus series a data-plane node exports besides the shared
//! ones in [`aios_runtime::metrics::SERIES`]: names, types, labels and
//! help text, in one list (see `aios_runtime::metrics` for the rules).

use aios_runtime::metrics::{Kind, Series};

use crate::telemetry::metrics as request;

/// The data plane's series.
pub const SERIES: &[Series] = &[
    // Requests (recorded from their spans: telemetry/metrics.rs).
    Series {
        name: request::REQUESTS,
        kind: Kind::Counter,
        labels: &["plane", "operation", "status"],
        help: "Requests that ended, by operation (invoke_agent, embeddings) and status (ok or \
               the request span's error.type). Requests refused before their key is known are \
               not counted (see aios_grpc_server_handled_total).",
    },
    Series {
        name: request::REQUEST_DURATION,
        kind: Kind::Histogram,
        labels: &["plane", "operation"],
        help: "Latency of requests that ended, from arrival to the response.",
    },
    Series {
        name: request::MODEL_CALLS,
        kind: Kind::Counter,
        labels: &["model", "outcome"],
        help: "Calls to models' backends, retries and fallbacks included, by catalog model \
               and outcome (ok or the call's error.type).",
    },
    Series {
        name: request::TOKENS,
        kind: Kind::Counter,
        labels: &["model", "direction"],
        help: "Tokens of model calls and embeddings, by catalog model and direction \
               (input, output).",
    },
    Series {
        name: request::COST,
        kind: Kind::Counter,
        labels: &["model"],
        help: "What requests cost, in micro-USD, by catalog model; adds up to the responses' \
               cost_usd.",
    },
    // Caches (pipeline/cache.rs, pipeline/semantic.rs).
    Series {
        name: "aios_cache_lookups_total",
        kind: Kind::Counter,
        labels: &["result"],
        help: "Exact response-cache lookups, by result (hit, miss).",
    },
    Series {
        name: "aios_semantic_cache_lookups_total",
        kind: Kind::Counter,
        labels: &["result"],
        help: "Semantic-cache lookups, by result (hit, miss).",
    },
    Series {
        name: "aios_cache_saved_micro_usd_total",
        kind: Kind::Counter,
        labels: &[],
        help: "What cache hits (exact and semantic) saved: the first run's cost, in micro-USD.",
    },
    Series {
        name: "aios_idempotent_replays_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Requests answered again for a repeated idempotency key.",
    },
    // Reliability (reliability/breaker.rs).
    Series {
        name: crate::reliability::breaker::STATE_GAUGE,
        kind: Kind::Gauge,
        labels: &["model"],
        help: "Circuit breaker state per catalog model: 0 closed, 1 half-open, 2 open.",
    },
    // Config from the control plane (fleet/agent.rs).
    Series {
        name: "aios_config_connected",
        kind: Kind::Gauge,
        labels: &[],
        help: "1 while the config stream to a control plane is open.",
    },
    Series {
        name: "aios_config_pushes_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Config pushes applied.",
    },
    Series {
        name: "aios_config_nacks_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Resources refused (NACKed) in config pushes.",
    },
    Series {
        name: "aios_config_revision",
        kind: Kind::Gauge,
        labels: &[],
        help: "Store revision of the last config push applied.",
    },
    Series {
        name: "aios_config_resources",
        kind: Kind::Gauge,
        labels: &[],
        help: "Resources in the node's config.",
    },
    // Spans on their way out (telemetry/{outbox,reporter,spill}.rs).
    Series {
        name: "aios_telemetry_connected",
        kind: Kind::Gauge,
        labels: &[],
        help: "1 while the span report stream to a control plane is open.",
    },
    Series {
        name: "aios_telemetry_batches_spilled_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Unacknowledged span batches written to disk.",
    },
    Series {
        name: "aios_telemetry_spans_dropped_total",
        kind: Kind::Counter,
        labels: &["where"],
        help: "Spans lost before the control plane took them, by where (outbox: full; \
               buffer: memory and disk limits reached).",
    },
    Series {
        name: "aios_telemetry_unacked_bytes",
        kind: Kind::Gauge,
        labels: &["where"],
        help: "Bytes of span batches not yet acknowledged, by where (memory, disk).",
    },
];
