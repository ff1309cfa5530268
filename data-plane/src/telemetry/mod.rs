//! Telemetry, this node's side (see ARCHITECTURE.md, "Telemetry"): every
//! request's spans, built when it ends ([`span`]) by the span stage
//! ([`stage`]) in the W3C trace the edge joined ([`trace`]), handed to an
//! [`Outbox`] without waiting, and streamed to the control plane in
//! numbered batches by the [`reporter`], which keeps every batch until it
//! is acknowledged: in memory, then on disk ([`spill`]). The same spans
//! feed the node's Prometheus request metrics ([`metrics`]).

pub mod metrics;
pub mod outbox;
pub mod record;
pub mod reporter;
pub mod span;
pub mod spill;
pub mod stage;
pub mod trace;

pub use outbox::{Encoded, Outbox, OutboxReceiver, outbox};
pub use reporter::{Reporter, ReporterSettings};
pub use span::{
    Clock, Ended, RequestInfo, SpanSink, backend_error_type, call_error_type, exec_error_type,
    tool_error_type,
};
pub use stage::SpanStage;
pub use trace::{TRACEPARENT, TraceContext, new_span_id};
