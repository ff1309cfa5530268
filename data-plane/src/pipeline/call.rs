//! What flows through the pipeline: the request in domain form, the
//! context stages fill in as it passes ([`Call`]), and the result
//! ([`Outcome`]).

use std::{sync::Arc, time::Duration};

use aios_model::{Complexity, Criticality, RouteConstraints, Usd};
use tokio::{sync::mpsc, time::Instant};
use tonic::metadata::MetadataMap;

use super::{authn::Caller, cache::CacheKey, catalog::Catalog};
use crate::{
    backend::{ChatMessage, Usage},
    reliability::Attempted,
    router::Route,
    telemetry::TraceContext,
};

/// Sampling parameters of the request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    /// Most output tokens per model call; `None` = the model's limit.
    pub max_tokens: Option<u32>,
    /// Temperature, 0-2.
    pub temperature: Option<f32>,
    /// Nucleus mass, (0, 1].
    pub top_p: Option<f32>,
    /// Stop sequences, at most 4.
    pub stop: Vec<String>,
    /// Sampling seed.
    pub seed: Option<u64>,
}

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A conversation for the agent to answer (action `chat`).
    Messages(Vec<ChatMessage>),
    /// One named action (a tool of the agent) with JSON arguments.
    Action {
        /// Tool name.
        name: String,
        /// Arguments, a JSON object.
        arguments_json: String,
    },
}

/// A validated `ExecuteRequest`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecRequest {
    /// Agent name.
    pub agent: String,
    /// What to run.
    pub input: Input,
    /// Sampling parameters.
    pub params: Params,
    /// End user named by the request (the key's own user wins).
    pub user: String,
    /// Routing constraints (only ever tighten the table's).
    pub constraints: RouteConstraints,
    /// Forensic (dry-run) mode requested.
    pub forensic: bool,
    /// The caller's idempotency key (empty = none).
    pub idempotency_key: String,
}

/// Something an `ExecuteStream` caller sees while the request runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Generated text of model call `index`.
    Token {
        /// The text.
        text: String,
        /// Step index of the model call.
        index: u32,
    },
    /// A step finished.
    Step(Step),
}

/// One request on its way through the stages.
#[derive(Debug)]
pub struct Call {
    /// The config snapshot and its indexes, taken once for the request.
    pub catalog: Arc<Catalog>,
    /// gRPC metadata (the API key, `traceparent`).
    pub metadata: MetadataMap,
    /// The request's trace and its own span.
    pub trace: TraceContext,
    /// The request.
    pub request: ExecRequest,
    /// When the node received it.
    pub received: Instant,
    /// When it must be done.
    pub deadline: Instant,
    /// Whether the caller set the deadline (else the agent's default applies).
    pub caller_deadline: bool,
    /// Set by authentication.
    pub caller: Option<Caller>,
    /// Set by policy.
    pub admitted: Option<super::policy::Admitted>,
    /// Set by policy: the approval this request executes, claimed right
    /// before it runs (by the agent loop).
    pub claim: Option<crate::approvals::Claim>,
    /// Set by the budget stage: the money this request reserves and
    /// spends (`None` = no budget counts it).
    pub budget: Option<Arc<super::budget::Hold>>,
    /// Set by the budget stage: a DEGRADE budget is spent, so routing uses
    /// this cheaper table instead of the agent's.
    pub degraded_to: Option<String>,
    /// Set by routing (conversations only).
    pub route: Option<Route>,
    /// Set by the cache on a miss, for storing the answer.
    pub cache_key: Option<CacheKey>,
    /// Guardrail flags (`PROMPT_INJECTION`, `PII`), for the span.
    pub flags: Vec<&'static str>,
    /// Where streamed events go (`ExecuteStream`); `None` for `Execute`.
    pub events: Option<mpsc::Sender<Event>>,
}

impl Call {
    /// The authenticated caller's tenant ("" before authentication).
    pub fn tenant(&self) -> &str {
        self.caller.as_ref().map_or("", |c| c.tenant.as_str())
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// It completed.
    Succeeded,
    /// Policy or a guardrail refused it.
    Blocked,
    /// It ran but could not finish (a tool failed, max_steps reached).
    Failed,
}

/// Kinds of steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A model call.
    Model,
    /// A tool call.
    Tool,
}

/// One step of an execution.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Position, from 0.
    pub index: u32,
    /// Model or tool call.
    pub kind: StepKind,
    /// Model or tool name.
    pub name: String,
    /// A side-effecting tool skipped in forensic mode.
    pub skipped_forensic: bool,
    /// When it started.
    pub started: Instant,
    /// How long it took.
    pub latency: Duration,
    /// Its error; `None` = succeeded.
    pub error: Option<String>,
    /// Its error's class (the span's `error.type`); `None` = succeeded.
    pub error_type: Option<&'static str>,
    /// Tokens of a model call.
    pub usage: Usage,
    /// Cost of a model call.
    pub cost: Usd,
    /// What the routing table's baseline model would have cost for the
    /// same tokens; `None` without a baseline (and for tools).
    pub baseline_cost: Option<Usd>,
    /// A model call's calls to backends, retries and fallbacks included
    /// (empty for tools, and when no model could be called).
    pub attempts: Vec<Attempted>,
    /// A tool call's span id, sent to the tool in its `traceparent`.
    pub span_id: Option<u64>,
}

/// How the model was chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteInfo {
    /// Tier name.
    pub tier: String,
    /// Model that served the (last) call.
    pub model: String,
    /// The request's complexity.
    pub complexity: Complexity,
    /// Why, in one line.
    pub explanation: String,
    /// Models that failed first, in order.
    pub failed_models: Vec<String>,
    /// What the baseline model would have cost; `None` without a baseline.
    pub baseline_cost: Option<Usd>,
    /// A spent DEGRADE budget routed it through a cheaper table.
    pub degraded: bool,
}

/// The result of a request that ran (or was refused by policy).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// Final answer (or the action's result JSON).
    pub output: String,
    /// Messages produced (assistant and tool), oldest first.
    pub messages: Vec<ChatMessage>,
    /// Model that produced the final answer ("" if none ran).
    pub model: String,
    /// Tokens over all model calls.
    pub usage: Usage,
    /// Cost over all model calls.
    pub cost: Usd,
    /// The answer came from the cache.
    pub cache_hit: bool,
    /// Routing of the last model call.
    pub route: Option<RouteInfo>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Ran in forensic mode.
    pub forensic: bool,
    /// Criticality policy assigned.
    pub criticality: Criticality,
    /// Why it did not succeed: (UPPER_SNAKE reason, message).
    pub error: Option<(String, String)>,
}

impl Outcome {
    /// A refusal with a stable reason.
    pub fn blocked(reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: Status::Blocked,
            error: Some((reason.to_string(), message.into())),
            ..Self::empty()
        }
    }

    /// Nothing ran yet.
    pub fn empty() -> Self {
        Self {
            status: Status::Succeeded,
            output: String::new(),
            messages: Vec::new(),
            model: String::new(),
            usage: Usage::default(),
            cost: Usd::ZERO,
            cache_hit: false,
            route: None,
            steps: Vec::new(),
            forensic: false,
            criticality: Criticality::Low,
            error: None,
        }
    }
}
