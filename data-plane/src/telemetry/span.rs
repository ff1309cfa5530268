//! Spans of one request, built once it has ended (see ARCHITECTURE.md,
//! "Telemetry").
//!
//! The *request span* is `invoke_agent {agent}` (or `embeddings {model}`):
//! exactly the trace id and span id the edge returned in `traceparent`,
//! its parent the caller's span. Its children come from the outcome's
//! steps: one `chat {model}` per call to a model's backend (each retry its
//! own child with `aios.attempt`; a fallback model's with `aios.fallback`)
//! and one `execute_tool {tool}` per tool call, with the span id the tool
//! saw as its parent.
//!
//! **Cost.** Every span carries its own tokens and cost, excluding its
//! children, so the spans of a request add up to exactly what the response
//! said it cost: the served call of each model step carries that step's
//! tokens and cost, and the request span keeps whatever the steps do not
//! account for (nothing, unless it answered without children). A cache hit
//! costs nothing and says `cache_hit`; an idempotent replay costs nothing
//! (its first run was reported when it ran).
//!
//! Building happens after the response is ready, on the request's task,
//! and ends in one non-blocking [`Outbox::send`] of the spans encoded,
//! after the node's request metrics have counted them ([`RequestMetrics`]).

use std::{
    borrow::Cow,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use aios_model::Usd;
use aios_proto::v1 as pb;
use tokio::time::Instant;

use super::{
    metrics::RequestMetrics,
    outbox::{Encoded, Outbox},
    record::{Record, Shared, Status as SpanStatus, Value},
    trace::{TraceContext, new_span_id},
};
use crate::{
    backend::{ErrorKind, Usage},
    pipeline::{
        ExecError, Outcome, Status,
        call::{Step, StepKind},
    },
    reliability::{Attempted, CallError},
    tools::ToolError,
};

/// `gen_ai.operation.name` of an agent execution.
pub const OP_INVOKE_AGENT: &str = "invoke_agent";
/// `gen_ai.operation.name` of a model call.
pub const OP_CHAT: &str = "chat";
/// `gen_ai.operation.name` of a tool call.
pub const OP_EXECUTE_TOOL: &str = "execute_tool";
/// `gen_ai.operation.name` of an embeddings request.
pub const OP_EMBEDDINGS: &str = "embeddings";

/// Attribute names (OpenTelemetry GenAI semantic conventions where one
/// exists, `aios.*` otherwise).
pub mod attr {
    /// The operation.
    pub const OPERATION: &str = "gen_ai.operation.name";
    /// The model asked for.
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    /// The model that answered.
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// Input tokens of this span.
    pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// Output tokens of this span.
    pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// The agent.
    pub const AGENT_NAME: &str = "gen_ai.agent.name";
    /// The tool.
    pub const TOOL_NAME: &str = "gen_ai.tool.name";
    /// Requested temperature.
    pub const TEMPERATURE: &str = "gen_ai.request.temperature";
    /// Requested output-token limit.
    pub const MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    /// Low-cardinality error class.
    pub const ERROR_TYPE: &str = "error.type";
    /// 1 for a model's first call, 2 for its first retry, …
    pub const ATTEMPT: &str = "aios.attempt";
    /// `true` on a fallback model's call.
    pub const FALLBACK: &str = "aios.fallback";
    /// Calls to backends of a model step that made none (`0`).
    pub const ATTEMPTS: &str = "aios.attempts";
    /// `true` on a request answered again for a repeated idempotency key.
    pub const REPLAY: &str = "aios.replay";
    /// Guardrail flags raised on the input, comma-separated.
    pub const GUARDRAIL_FLAGS: &str = "aios.guardrails.flags";
    /// `true` on a side-effecting tool skipped in forensic mode.
    pub const SKIPPED_FORENSIC: &str = "aios.skipped_forensic";
}

// === SpanSink ===

/// Where finished requests' spans go: the node's [`Outbox`], stamped with
/// the node's id and region, and its request metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanSink {
    outbox: Outbox,
    metrics: Arc<RequestMetrics>,
    node: Arc<str>,
    region: Arc<str>,
}

/// What the request span needs to know of a request, taken when it
/// enters the pipeline (after authentication: a request rejected before
/// its tenant is known gets no span, as there is no tenant to bill).
#[derive(Clone, Debug)]
pub struct RequestInfo {
    /// The request's trace and its own span.
    pub trace: TraceContext,
    /// When it was received, on both clocks.
    pub clock: Clock,
    /// Tenant of the caller.
    pub tenant: String,
    /// Agent name ("" for embeddings).
    pub agent: String,
    /// `chat` for a conversation, the tool name for an action.
    pub action: String,
    /// Requested temperature.
    pub temperature: Option<f32>,
    /// Requested output-token limit.
    pub max_tokens: Option<u32>,
}

/// How a request ended, as its spans need it.
#[derive(Clone, Copy, Debug)]
pub enum Ended<'a> {
    /// It ran (or policy refused it): its outcome, and the guardrail flags
    /// raised on its input.
    Outcome(&'a Outcome, &'a [&'static str]),
    /// It failed.
    Error(&'a ExecError),
}

impl SpanSink {
    /// Spans of node `node` in `region`, handed to `outbox`.
    pub fn new(outbox: Outbox, node: &str, region: &str) -> Self {
        Self {
            outbox,
            metrics: Arc::new(RequestMetrics::new(crate::PLANE)),
            node: node.into(),
            region: region.into(),
        }
    }

    /// Builds, counts and hands off the spans of an execution that ended now.
    pub fn execution(&self, info: &RequestInfo, ended: Ended<'_>) {
        let records = execution_records(info, ended, Instant::now());
        self.hand_off(info, &records);
    }

    /// Builds, counts and hands off the span of an embeddings request of
    /// `model` that ended now: its tokens and cost, or its error.
    pub fn embedding(
        &self,
        info: &RequestInfo,
        model: &str,
        result: Result<(u64, Usd), &ExecError>,
    ) {
        let mut span = Record::new(info.trace.span_id, info.trace.parent, OP_EMBEDDINGS, model);
        span.start = info.clock.start();
        span.end = info.clock.unix_nanos(Instant::now());
        span.action = &info.action;
        span.model = model;
        span.set(attr::OPERATION, OP_EMBEDDINGS);
        span.set(attr::REQUEST_MODEL, model);
        match result {
            Ok((input_tokens, cost)) => {
                span.set(attr::RESPONSE_MODEL, model);
                own(
                    &mut span,
                    Usage {
                        input_tokens,
                        output_tokens: 0,
                    },
                    cost,
                );
                span.status = Some(SpanStatus::OK);
            }
            Err(error) => fail(&mut span, exec_error_type(error), error.to_string()),
        }
        self.hand_off(info, &[span]);
    }

    /// Counts `records` and hands them to the outbox encoded (see
    /// [`super::outbox`]).
    fn hand_off(&self, info: &RequestInfo, records: &[Record<'_>]) {
        self.metrics.record(records);
        self.outbox
            .send(Encoded::from_records(&self.shared(info), records));
    }

    /// What every span of `info`'s request shares.
    fn shared<'a>(&'a self, info: &'a RequestInfo) -> Shared<'a> {
        Shared {
            trace_id: info.trace.trace_id.to_be_bytes(),
            tenant: &info.tenant,
            agent: &info.agent,
            node: &self.node,
            region: &self.region,
        }
    }
}

// === Clock ===

/// A moment on both clocks, so monotonic step times become Unix times.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    unix_nanos: u64,
    at: Instant,
}

impl Clock {
    /// `at` (a moment in the recent past) on the wall clock.
    pub fn at(at: Instant) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let ago = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Self {
            unix_nanos: now.saturating_sub(ago),
            at,
        }
    }

    /// The clock's own moment, in Unix nanoseconds.
    pub fn start(&self) -> u64 {
        self.unix_nanos
    }

    /// `t` in Unix nanoseconds.
    pub fn unix_nanos(&self, t: Instant) -> u64 {
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        match t.checked_duration_since(self.at) {
            Some(after) => self.unix_nanos.saturating_add(nanos(after)),
            None => self.unix_nanos.saturating_sub(nanos(self.at - t)),
        }
    }
}

// === building ===

/// Every span of an execution that ended at `ended_at`, as the outbox
/// receives them (decoded): the request span first, then its children in
/// step order. For tests and tools; the request path encodes the records.
pub fn execution_spans(
    sink: &SpanSink,
    info: &RequestInfo,
    ended: Ended<'_>,
    ended_at: Instant,
) -> Vec<pb::Span> {
    let records = execution_records(info, ended, ended_at);
    Encoded::from_records(&sink.shared(info), &records)
        .decode()
        .unwrap_or_default()
}

/// The records of [`execution_spans`].
fn execution_records<'a>(
    info: &'a RequestInfo,
    ended: Ended<'a>,
    ended_at: Instant,
) -> Vec<Record<'a>> {
    let builder = Builder { info };
    let mut request = Record::new(
        info.trace.span_id,
        info.trace.parent,
        OP_INVOKE_AGENT,
        &info.agent,
    );
    request.action = &info.action;
    request.start = info.clock.start();
    request.end = info.clock.unix_nanos(ended_at);
    request.set(attr::OPERATION, OP_INVOKE_AGENT);
    request.set(attr::AGENT_NAME, info.agent.as_str());
    builder.params(&mut request);
    let (outcome, flags) = match ended {
        Ended::Error(error) => {
            fail(&mut request, exec_error_type(error), error.to_string());
            return vec![request];
        }
        Ended::Outcome(outcome, flags) => (outcome, flags),
    };
    if !flags.is_empty() {
        request.set(attr::GUARDRAIL_FLAGS, flags.join(","));
    }
    // An idempotent replay hands back the first run's outcome, steps and
    // all; those steps started before this request and were reported then.
    let replay = outcome
        .steps
        .first()
        .is_some_and(|s| s.started < info.clock.at);
    let mut spans = Vec::with_capacity(outcome.steps.len() + 2);
    if !replay && !outcome.cache_hit {
        for step in &outcome.steps {
            builder.children(step, &mut spans);
        }
    }
    let (mut usage, mut cost) = (Usage::default(), Usd::ZERO);
    for child in &spans {
        usage.input_tokens = usage.input_tokens.saturating_add(child.input_tokens);
        usage.output_tokens = usage.output_tokens.saturating_add(child.output_tokens);
    }
    for step in outcome
        .steps
        .iter()
        .filter(|_| !replay && !outcome.cache_hit)
    {
        cost = cost.saturating_add(step.cost);
    }
    request.model = &outcome.model;
    if let Some(first) = first_model(outcome) {
        request.set(attr::REQUEST_MODEL, first);
    }
    if !outcome.model.is_empty() {
        request.set(attr::RESPONSE_MODEL, outcome.model.as_str());
    }
    request.cache_hit = outcome.cache_hit;
    if replay {
        request.set(attr::REPLAY, "true");
    } else if !outcome.cache_hit {
        // What the children do not account for is the request span's own.
        let rest = Usage {
            input_tokens: outcome
                .usage
                .input_tokens
                .saturating_sub(usage.input_tokens),
            output_tokens: outcome
                .usage
                .output_tokens
                .saturating_sub(usage.output_tokens),
        };
        own(&mut request, rest, outcome.cost.saturating_sub(cost));
    }
    let (reason, message) = outcome
        .error
        .as_ref()
        .map_or(("", ""), |(r, m)| (r.as_str(), m.as_str()));
    match outcome.status {
        Status::Succeeded => request.status = Some(SpanStatus::OK),
        Status::Blocked => fail(&mut request, "blocked", format!("{reason}: {message}")),
        // Failure reasons are the pipeline's own UPPER_SNAKE constants
        // (`MAX_STEPS`, `TOOL_FAILED`, …): few, so fine as a class.
        Status::Failed => fail(
            &mut request,
            reason.to_ascii_lowercase(),
            format!("{reason}: {message}"),
        ),
    }
    spans.insert(0, request);
    spans
}

/// The model the request asked for first: its first model call's.
fn first_model(outcome: &Outcome) -> Option<&str> {
    let step = outcome.steps.iter().find(|s| s.kind == StepKind::Model)?;
    Some(
        step.attempts
            .first()
            .map_or(step.name.as_str(), |a| a.model.as_str()),
    )
}

/// What every span of one request shares, for building its children.
struct Builder<'a> {
    info: &'a RequestInfo,
}

impl<'a> Builder<'a> {
    /// A child of the request span.
    fn child(&self, id: u64, operation: &'static str, subject: &'a str) -> Record<'a> {
        let mut span = Record::new(id, Some(self.info.trace.span_id), operation, subject);
        span.action = &self.info.action;
        span.set(attr::OPERATION, operation);
        span
    }

    /// The request's sampling parameters, as attributes.
    fn params(&self, span: &mut Record<'a>) {
        if let Some(t) = self.info.temperature {
            span.set(attr::TEMPERATURE, t.to_string());
        }
        if let Some(n) = self.info.max_tokens {
            span.set(attr::MAX_TOKENS, u64::from(n));
        }
    }

    /// The spans of one step, pushed onto `spans`.
    fn children(&self, step: &'a Step, spans: &mut Vec<Record<'a>>) {
        let clock = &self.info.clock;
        let end = clock.unix_nanos(step.started + step.latency);
        match step.kind {
            StepKind::Tool => {
                let id = step.span_id.unwrap_or_else(new_span_id);
                let mut span = self.child(id, OP_EXECUTE_TOOL, &step.name);
                span.action = &step.name;
                span.start = clock.unix_nanos(step.started);
                span.end = end;
                span.set(attr::TOOL_NAME, step.name.as_str());
                if step.skipped_forensic {
                    span.set(attr::SKIPPED_FORENSIC, "true");
                }
                outcome_of(&mut span, step.error_type, step.error.as_deref());
                spans.push(span);
            }
            StepKind::Model if step.attempts.is_empty() => {
                // No backend was called (every breaker open, no time left).
                let mut span = self.chat(&step.name);
                span.start = clock.unix_nanos(step.started);
                span.end = end;
                span.set(attr::ATTEMPTS, 0_u64);
                served(&mut span, step);
                outcome_of(&mut span, step.error_type, step.error.as_deref());
                spans.push(span);
            }
            StepKind::Model => {
                let last = step.attempts.len() - 1;
                for (i, attempt) in step.attempts.iter().enumerate() {
                    let mut span = self.attempt(attempt);
                    if i == last {
                        // The call that ended the step: it carries the step's
                        // tokens and cost, and a stream ends with the step.
                        served(&mut span, step);
                        if attempt.error.is_none() {
                            span.end = end;
                            outcome_of(&mut span, step.error_type, step.error.as_deref());
                        }
                    }
                    spans.push(span);
                }
            }
        }
    }

    fn chat(&self, model: &'a str) -> Record<'a> {
        let mut span = self.child(new_span_id(), OP_CHAT, model);
        span.action = OP_CHAT;
        span.model = model;
        span.set(attr::REQUEST_MODEL, model);
        self.params(&mut span);
        span
    }

    /// One call to a backend.
    fn attempt(&self, attempt: &'a Attempted) -> Record<'a> {
        let clock = &self.info.clock;
        let mut span = self.chat(&attempt.model);
        span.start = clock.unix_nanos(attempt.started);
        span.end = clock.unix_nanos(attempt.started + attempt.latency);
        span.set(attr::ATTEMPT, u64::from(attempt.attempt));
        if attempt.fallback {
            span.set(attr::FALLBACK, "true");
        }
        match attempt.error {
            None => {
                span.set(attr::RESPONSE_MODEL, attempt.model.as_str());
                span.status = Some(SpanStatus::OK);
            }
            Some(kind) => fail(&mut span, backend_error_type(kind), kind.as_str()),
        }
        span
    }
}

/// The step's tokens, cost and baseline on `span`.
fn served(span: &mut Record<'_>, step: &Step) {
    own(span, step.usage, step.cost);
    span.baseline_cost_usd = step.baseline_cost.map_or(0.0, Usd::to_f64);
}

/// Sets the span's own tokens and cost.
fn own(span: &mut Record<'_>, usage: Usage, cost: Usd) {
    span.input_tokens = usage.input_tokens;
    span.output_tokens = usage.output_tokens;
    span.cost_usd = cost.to_f64();
    if usage.input_tokens > 0 || usage.output_tokens > 0 {
        span.set(attr::INPUT_TOKENS, usage.input_tokens);
        span.set(attr::OUTPUT_TOKENS, usage.output_tokens);
    }
}

fn fail<'a>(
    span: &mut Record<'a>,
    error_type: impl Into<Cow<'a, str>>,
    message: impl Into<Cow<'a, str>>,
) {
    let error_type = error_type.into();
    span.set(attr::ERROR_TYPE, Value::Text(error_type.clone()));
    span.status = Some(SpanStatus {
        code: pb::SpanStatusCode::Error,
        error_type,
        message: message.into(),
    });
}

/// OK, or ERROR with the step's error class and message.
fn outcome_of<'a>(span: &mut Record<'a>, error_type: Option<&'a str>, message: Option<&'a str>) {
    match (error_type, message) {
        (None, None) => span.status = Some(SpanStatus::OK),
        (error_type, message) => fail(
            span,
            error_type.unwrap_or("internal"),
            message.unwrap_or_default(),
        ),
    }
}

// === error.type ===

/// `error.type` of a failed request.
pub fn exec_error_type(error: &ExecError) -> &'static str {
    match error {
        ExecError::Unauthenticated(_) => "unauthenticated",
        ExecError::PermissionDenied { .. } => "permission_denied",
        ExecError::Invalid(_) => "invalid_request",
        ExecError::NotFound { .. } => "not_found",
        ExecError::RateLimited { .. } => "rate_limited",
        ExecError::BudgetExhausted { .. } => "budget_exhausted",
        ExecError::FailedPrecondition { .. } => "failed_precondition",
        ExecError::Unavailable(_) => "unavailable",
        ExecError::DeadlineExceeded(_) => "deadline_exceeded",
        ExecError::Internal(_) => "internal",
    }
}

/// `error.type` of one failed call to a model's backend.
pub fn backend_error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Connection => "connection",
        ErrorKind::InvalidRequest => "invalid_request",
        ErrorKind::Auth => "provider_auth",
        ErrorKind::ContentPolicy => "content_policy",
        ErrorKind::Protocol => "protocol",
    }
}

/// `error.type` of a model step no model answered.
pub fn call_error_type(error: &CallError) -> &'static str {
    match error {
        CallError::Backend { error, .. } => backend_error_type(error.kind),
        CallError::CircuitOpen { .. } => "circuit_open",
        CallError::DeadlineExceeded => "deadline_exceeded",
        CallError::NoModels => "unavailable",
    }
}

/// `error.type` of a failed tool call.
pub fn tool_error_type(error: &ToolError) -> &'static str {
    match error {
        ToolError::Unknown { .. } => "unknown_tool",
        ToolError::InvalidArguments(_) => "invalid_arguments",
        ToolError::Failed(_) => "tool_failed",
        ToolError::Unavailable(_) => "unavailable",
        ToolError::Timeout(_) => "timeout",
    }
}

#[cfg(test)]
#[path = "span_tests.rs"]
mod tests;
