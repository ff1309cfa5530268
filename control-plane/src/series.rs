//! Every Prometheus series the control plane exports besides the shared
//! ones in [`aios_runtime::metrics::SERIES`]: names, types, labels and
//! help text, in one list (see `aios_runtime::metrics` for the rules).

use aios_runtime::metrics::{Kind, Series};

/// The control plane's series.
pub const SERIES: &[Series] = &[
    // The fleet (fleet/).
    Series {
        name: "aios_fleet_connected_nodes",
        kind: Kind::Gauge,
        labels: &[],
        help: "Data-plane nodes whose config stream is open to this replica.",
    },
    Series {
        name: "aios_fleet_pushes_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Config pushes sent to nodes.",
    },
    Series {
        name: "aios_fleet_acks_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Config push acknowledgements received from nodes.",
    },
    Series {
        name: "aios_fleet_nacks_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Resources nodes refused (NACKed) in config pushes.",
    },
    // Span ingest (telemetry/); batches are counted in the shared
    // aios_telemetry_batches_total, by outcome.
    Series {
        name: "aios_telemetry_spans_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Spans taken from nodes and written (duplicates excluded).",
    },
    Series {
        name: "aios_telemetry_subscriber_skipped_batches_total",
        kind: Kind::Counter,
        labels: &[],
        help: "Span batches a lagging Subscribe stream skipped.",
    },
    // Alert rules (telemetry/alerts.rs).
    Series {
        name: "aios_alerts_firing",
        kind: Kind::Gauge,
        labels: &[],
        help: "Alert rules firing now, as this replica evaluates them.",
    },
    // OTLP export (telemetry/otlp.rs).
    Series {
        name: "aios_otlp_spans_total",
        kind: Kind::Counter,
        labels: &["outcome"],
        help: "Spans exported over OTLP (outcome exported), refused by the collector (rejected), or dropped (dropped_queue_full, dropped_failed, dropped_shutdown).",
    },
];
