//! The innermost service: runs the agent.
//!
//! A conversation goes to the routed models through the reliability layer
//! (retries, breakers, fallbacks), offering the agent's tools. While the
//! model answers with tool calls, the loop runs them ([`crate::tools`]),
//! appends the assistant message and one tool message per call, and asks
//! the model again; the first answer without tool calls is the output
//! (after the output guardrails). An action request runs its one tool
//! directly, with no model, and its result JSON is the output.
//!
//! **Steps.** Every model call and every tool call is one step, recorded
//! in order (a forensic skip and a failed call included) and streamed as
//! it finishes. `max_steps` bounds them all: before running a batch of
//! tool calls the loop checks that the batch *and* the model call that
//! reads its results fit; if not, it ends FAILED `MAX_STEPS` without
//! running them (a tool whose result no model would ever read is a side
//! effect for nothing).
//!
//! **Concurrency.** The tool calls of one model turn run concurrently (at
//! most [`MAX_CONCURRENT_TOOL_CALLS`] at a time; a model that asks for
//! several calls in one turn declares them independent), and their
//! results go back in the order the model asked for them.
//!
//! **Failures.** A tool failure is a result the model reads. A model
//! failure before any tool ran keeps the request's plain mapping (an error
//! status such as UNAVAILABLE or DEADLINE_EXCEEDED, which a client may
//! retry). Once a tool has run, the request ends as an outcome instead
//! (FAILED with `DEADLINE_EXCEEDED` or `MODEL_UNAVAILABLE`) so the caller
//! sees which tools ran and is not invited to retry side effects blindly.
//!
//! **Approvals.** A request that executes an approval (`call.claim`, set
//! by policy) claims it right before it runs: an action before its tool, a
//! conversation before its first model call (once that call's budget is
//! reserved). A refused claim ends the request with its error before
//! anything ran; later calls of the same run do not claim again.
//!
//! Usage and cost add up over the model calls; `messages` holds every
//! assistant and tool message produced, redacted by the output guardrails
//! like the output (the model itself reads tool results unredacted).

mod model;

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use aios_model::{Agent, Model, OutputGuardrails};
use futures::{StreamExt, future::BoxFuture};
use tokio::time::Instant;
use tower::Service;

use self::model::{affordable_output, call_bounds, candidates, failure, forward, redact, redacted};
use super::{
    backends::Backends,
    call::{Call, Event, Input, Outcome, RouteInfo, Status, Step, StepKind},
    error::ExecError,
    stage::Ran,
};
use crate::{
    backend::{ChatMessage, ChatRequest, ChatResponse, Role, ToolCall, Usage},
    reliability::{CallError, Candidate, ChainReport, Reliability},
    router,
    telemetry::{self, TraceContext},
    tools::{self, ToolRun, Tools},
};

/// Most tool calls of one model turn running at once.
pub const MAX_CONCURRENT_TOOL_CALLS: usize = 8;

/// The agent loop, as a service.
#[derive(Clone, Debug)]
pub struct AgentLoop {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    backends: Backends,
    reliability: Reliability,
    tools: Tools,
    /// Apply output guardrails (off only to measure the pipeline).
    guardrails: bool,
    /// Tenant of unauthenticated requests (only when authentication is
    /// switched off, to measure the pipeline).
    unauthenticated_tenant: Option<String>,
}

impl AgentLoop {
    /// A loop calling models from `backends` through `reliability`, and
    /// tools with a fresh [`Tools`].
    pub fn new(
        backends: Backends,
        reliability: Reliability,
        guardrails: bool,
        unauthenticated_tenant: Option<String>,
    ) -> Self {
        Self::with_tools(
            backends,
            reliability,
            Tools::new(),
            guardrails,
            unauthenticated_tenant,
        )
    }

    /// [`AgentLoop::new`] with the tool runner `tools`.
    pub fn with_tools(
        backends: Backends,
        reliability: Reliability,
        tools: Tools,
        guardrails: bool,
        unauthenticated_tenant: Option<String>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                backends,
                reliability,
                tools,
                guardrails,
                unauthenticated_tenant,
            }),
        }
    }
}

impl Service<Box<Call>> for AgentLoop {
    type Response = Ran;
    type Error = ExecError;
    type Future = BoxFuture<'static, Result<Ran, ExecError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ExecError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Box<Call>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let outcome = run(&shared, &call).await?;
            Ok(Ran { call, outcome })
        })
    }
}

async fn run(shared: &Shared, call: &Call) -> Result<Outcome, ExecError> {
    let tenant = match (&call.caller, &shared.unauthenticated_tenant) {
        (Some(caller), _) => caller.tenant.as_str(),
        (None, Some(tenant)) => tenant.as_str(),
        (None, None) => return Err(ExecError::Unauthenticated("no caller".into())),
    };
    let agent = call
        .catalog
        .agent(tenant, &call.request.agent)
        .ok_or_else(|| ExecError::NotFound {
            kind: "Agent",
            name: call.request.agent.clone(),
        })?;
    // Policy decides; the request's and the agent's own flags are honoured
    // too, so a pipeline without the policy stage never runs side effects
    // that were asked to be skipped.
    let forensic = call.admitted.as_ref().is_some_and(|a| a.forensic)
        || call.request.forensic
        || agent.forensic;
    let outcome = Outcome {
        forensic,
        criticality: call
            .admitted
            .as_ref()
            .map_or(aios_model::Criticality::Low, |a| a.criticality),
        ..Outcome::empty()
    };
    // The caller's deadline, else the agent's default.
    let deadline = if call.caller_deadline {
        call.deadline
    } else {
        call.received + agent.default_deadline
    };
    let execution_id = crate::telemetry::trace::hex(rand::random::<u128>(), 32);
    let tools = tools::Caller {
        catalog: &call.catalog,
        tenant,
        agent_name: &call.request.agent,
        agent,
        forensic,
        deadline,
        user: call
            .caller
            .as_ref()
            .and_then(|c| c.user.as_deref())
            .unwrap_or(&call.request.user),
        traceparent: call
            .metadata
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
        execution_id: &execution_id,
    };
    match &call.request.input {
        Input::Action {
            name,
            arguments_json,
        } => action(shared, call, &tools, outcome, name, arguments_json).await,
        Input::Messages(messages) => {
            let run = Conversation {
                shared,
                call,
                tenant,
                agent,
                tools,
                deadline,
            };
            run.run(outcome, messages).await
        }
    }
}

/// An action: its one tool, run directly (policy has checked the agent may
/// use it), once its approval, if it has one, is claimed.
async fn action(
    shared: &Shared,
    call: &Call,
    tools: &tools::Caller<'_>,
    mut outcome: Outcome,
    name: &str,
    arguments_json: &str,
) -> Result<Outcome, ExecError> {
    if let Some(claim) = &call.claim {
        claim.make().await?;
    }
    let timed = timed_run(
        &shared.tools,
        tools,
        &call.trace,
        name,
        arguments_json,
        "action",
    )
    .await;
    let step = tool_step(0, &timed);
    let run = timed.run;
    emit(call, Event::Step(step.clone())).await;
    outcome.steps.push(step);
    match run.error {
        None => outcome.output = run.content,
        Some(error) => {
            outcome.status = Status::Failed;
            outcome.error = Some((error.reason().into(), format!("action {name}: {error}")));
        }
    }
    Ok(outcome)
}

/// One conversation's run.
struct Conversation<'a> {
    shared: &'a Shared,
    call: &'a Call,
    tenant: &'a str,
    agent: &'a Agent,
    tools: tools::Caller<'a>,
    deadline: Instant,
}

impl Conversation<'_> {
    async fn run(
        &self,
        mut outcome: Outcome,
        messages: &[ChatMessage],
    ) -> Result<Outcome, ExecError> {
        let (shared, call, agent) = (self.shared, self.call, self.agent);
        let rules = agent
            .policy
            .as_deref()
            .and_then(|name| call.catalog.policy(self.tenant, name))
            .map(|policy| &policy.output)
            .filter(|_| shared.guardrails);
        let candidates = candidates(shared, call, self.tenant, agent)?;
        let mut conversation = Vec::with_capacity(messages.len() + 1);
        if !agent.system_prompt.is_empty() {
            conversation.push(ChatMessage::text(Role::System, &agent.system_prompt));
        }
        conversation.extend(messages.iter().cloned());
        let params = &call.request.params;
        let first_model = &candidates[0].1;
        let mut request = ChatRequest {
            messages: conversation,
            tools: shared.tools.offered(&self.tools),
            max_tokens: params
                .max_tokens
                .or(first_model.max_output_tokens.map(|n| n.get())),
            temperature: params.temperature,
            top_p: params.top_p,
            stop: params.stop.clone(),
            seed: params.seed,
            deadline: self.deadline,
        };
        let chain: Vec<Candidate> = candidates
            .iter()
            .map(|(name, model, backend)| {
                Candidate::new(name.clone(), backend.clone()).with_attempt_timeout(model.timeout)
            })
            .collect();
        let max_steps = usize::try_from(agent.max_steps.get()).unwrap_or(usize::MAX);
        let max_tokens = request.max_tokens;
        let mut tools_ran = false;
        loop {
            let index = step_index(outcome.steps.len());
            let started = Instant::now();
            // Budgets: reserve this call's worst case (or what is left, with
            // the output capped to what it pays for) before it runs.
            request.max_tokens = max_tokens;
            let grant = match &call.budget {
                None => None,
                Some(hold) => {
                    let (bound, min) = call_bounds(&candidates, &request);
                    match hold.reserve(bound, min, self.deadline).await {
                        Ok(grant) => {
                            if grant.amount < bound.micros() {
                                let amount = aios_model::Usd::from_micros(grant.amount);
                                request.max_tokens =
                                    Some(affordable_output(&candidates, &request, amount));
                            }
                            Some((hold, grant))
                        }
                        Err(error) if !tools_ran => return Err(error),
                        Err(error) => {
                            outcome.status = Status::Failed;
                            outcome.error = Some((
                                "BUDGET_EXHAUSTED".into(),
                                format!("after tool calls: {error}"),
                            ));
                            return Ok(outcome);
                        }
                    }
                }
            };
            // An approval is claimed once its first call can run.
            if let (Some(claim), true) = (&call.claim, outcome.steps.is_empty())
                && let Err(error) = claim.make().await
            {
                if let Some((hold, grant)) = grant {
                    hold.settle(grant, aios_model::Usd::ZERO);
                }
                return Err(error);
            }
            let (result, report) = self.model_call(&chain, &request, rules, index).await;
            let response = match result {
                Ok(response) => response,
                Err(error) => {
                    if let Some((hold, grant)) = grant {
                        hold.settle(grant, aios_model::Usd::ZERO);
                    }
                    let model = report.tries.last().map(|t| t.model.clone());
                    outcome.steps.push(Step {
                        index,
                        kind: StepKind::Model,
                        name: model.unwrap_or_default(),
                        skipped_forensic: false,
                        started,
                        latency: started.elapsed(),
                        error: Some(error.to_string()),
                        error_type: Some(telemetry::call_error_type(&error)),
                        usage: Usage::default(),
                        cost: aios_model::Usd::ZERO,
                        baseline_cost: None,
                        attempts: report.calls,
                        span_id: None,
                    });
                    let late = Instant::now() >= self.deadline;
                    return failure(outcome, error, tools_ran.then_some(late));
                }
            };
            let served = report.served_by.clone().unwrap_or_default();
            let model = candidates
                .iter()
                .find(|(name, ..)| *name == served)
                .map_or(first_model, |(_, model, _)| model);
            let usage = response.usage;
            // A model on this node's hardware costs its device time, unless
            // the operator gave it list prices.
            let listed =
                !(model.input_price_per_mtok.is_zero() && model.output_price_per_mtok.is_zero());
            let cost = match response.device_cost {
                Some(cost) if !listed => cost,
                _ => router::cost(model, usage.input_tokens, usage.output_tokens),
            };
            outcome.usage.input_tokens = outcome
                .usage
                .input_tokens
                .saturating_add(usage.input_tokens);
            outcome.usage.output_tokens = outcome
                .usage
                .output_tokens
                .saturating_add(usage.output_tokens);
            outcome.cost = outcome.cost.saturating_add(cost);
            if let Some((hold, grant)) = grant {
                hold.settle(grant, cost);
            }
            outcome.route = self.route_info(&report, &served, model, outcome.usage);
            let step = Step {
                index,
                kind: StepKind::Model,
                name: served.clone(),
                skipped_forensic: false,
                started,
                latency: started.elapsed(),
                error: None,
                error_type: None,
                usage,
                cost,
                baseline_cost: self.baseline_cost(model, usage),
                attempts: report.calls,
                span_id: None,
            };
            emit(call, Event::Step(step.clone())).await;
            outcome.steps.push(step);
            outcome.model = served;

            let ChatResponse {
                content,
                tool_calls,
                ..
            } = response;
            if tool_calls.is_empty() {
                let content = redact(rules, &content);
                outcome
                    .messages
                    .push(ChatMessage::text(Role::Assistant, content.clone()));
                outcome.output = content;
                return Ok(outcome);
            }

            // The model asked for tools.
            let first = outcome.steps.len();
            let calls: Vec<ToolCall> = tool_calls
                .into_iter()
                .enumerate()
                .map(|(i, mut c)| {
                    if c.id.is_empty() {
                        c.id = format!("call_{}", first + i);
                    }
                    c
                })
                .collect();
            let assistant = ChatMessage {
                role: Role::Assistant,
                content,
                tool_call_id: None,
                tool_calls: calls.clone(),
            };
            outcome.messages.push(redacted(rules, &assistant));
            if first + calls.len() + 1 > max_steps {
                outcome.status = Status::Failed;
                outcome.error = Some((
                    "MAX_STEPS".into(),
                    format!(
                        "the model asked for {} tool call(s) after {first} step(s); max_steps {max_steps} \
                         leaves no room for them and the model call that reads their results",
                        calls.len()
                    ),
                ));
                return Ok(outcome);
            }
            request.messages.push(assistant);
            let runs = self.run_tools(&calls).await;
            tools_ran = true;
            for (i, (tool_call, timed)) in calls.iter().zip(runs).enumerate() {
                let step = tool_step(step_index(first + i), &timed);
                emit(call, Event::Step(step.clone())).await;
                outcome.steps.push(step);
                let message = ChatMessage {
                    role: Role::Tool,
                    content: timed.run.content,
                    tool_call_id: Some(tool_call.id.clone()),
                    tool_calls: Vec::new(),
                };
                outcome.messages.push(redacted(rules, &message));
                request.messages.push(message);
            }
        }
    }

    /// One model call (streamed when the caller streams): the response or
    /// why none, and what the chain did.
    async fn model_call(
        &self,
        chain: &[Candidate],
        request: &ChatRequest,
        rules: Option<&OutputGuardrails>,
        index: u32,
    ) -> (Result<ChatResponse, CallError>, ChainReport) {
        let reliability = &self.shared.reliability;
        match &self.call.events {
            None => {
                let chained = reliability.chat(chain, request).await;
                (chained.result, chained.report)
            }
            Some(events) => {
                let chained = reliability.chat_stream(chain, request).await;
                let result = match chained.result {
                    Ok(stream) => forward(stream, events, rules, index).await,
                    Err(error) => Err(error),
                };
                (result, chained.report)
            }
        }
    }

    /// Runs one turn's tool calls, concurrently; results in the calls' order.
    async fn run_tools(&self, calls: &[ToolCall]) -> Vec<TimedRun> {
        let trace = &self.call.trace;
        let runs: Vec<_> = calls
            .iter()
            .map(|c| {
                timed_run(
                    &self.shared.tools,
                    &self.tools,
                    trace,
                    &c.name,
                    &c.arguments_json,
                    &c.id,
                )
            })
            .collect();
        futures::stream::iter(runs)
            .buffered(MAX_CONCURRENT_TOOL_CALLS)
            .collect()
            .await
    }

    /// What one model call's tokens would have cost on the routing table's
    /// baseline model (routed conversations only).
    fn baseline_cost(&self, model: &Model, usage: Usage) -> Option<aios_model::Usd> {
        let (call, tenant) = (self.call, self.tenant);
        call.route.as_ref()?;
        let table = call
            .catalog
            .routing_table(tenant, &self.agent.routing_table)?;
        let models = |name: &str| call.catalog.model(tenant, name);
        router::savings(table, &models, model, usage).baseline
    }

    /// Routing of the last model call; the baseline prices all the tokens.
    fn route_info(
        &self,
        report: &ChainReport,
        served: &str,
        model: &Model,
        usage: Usage,
    ) -> Option<RouteInfo> {
        let (call, tenant) = (self.call, self.tenant);
        call.route.as_ref().map(|route| {
            let table = call
                .catalog
                .routing_table(tenant, &self.agent.routing_table);
            let models = |name: &str| call.catalog.model(tenant, name);
            RouteInfo {
                tier: route.tier.clone(),
                model: served.to_string(),
                complexity: route.complexity,
                explanation: route.explanation.clone(),
                failed_models: report.failed_models(),
                baseline_cost: table
                    .and_then(|table| router::savings(table, &models, model, usage).baseline),
                degraded: call.degraded_to.is_some(),
            }
        })
    }
}

/// A tool call as run, with its timing and span.
struct TimedRun {
    run: ToolRun,
    started: Instant,
    latency: Duration,
    span_id: u64,
}

/// Runs one tool call as its own span of the request's trace: the tool
/// sees that span as its parent.
async fn timed_run(
    tools: &Tools,
    caller: &tools::Caller<'_>,
    trace: &TraceContext,
    name: &str,
    arguments_json: &str,
    call_id: &str,
) -> TimedRun {
    let span_id = telemetry::new_span_id();
    let traceparent = trace.child_traceparent(span_id);
    let caller = tools::Caller {
        traceparent: Some(&traceparent),
        ..*caller
    };
    let started = Instant::now();
    let run = tools.run(&caller, name, arguments_json, call_id).await;
    TimedRun {
        run,
        started,
        latency: started.elapsed(),
        span_id,
    }
}

fn step_index(position: usize) -> u32 {
    u32::try_from(position).unwrap_or(u32::MAX)
}

fn tool_step(index: u32, timed: &TimedRun) -> Step {
    let run = &timed.run;
    Step {
        index,
        kind: StepKind::Tool,
        name: run.name.clone(),
        skipped_forensic: run.skipped_forensic,
        started: timed.started,
        latency: timed.latency,
        error: run.error.as_ref().map(ToString::to_string),
        error_type: run.error.as_ref().map(telemetry::tool_error_type),
        usage: Usage::default(),
        cost: aios_model::Usd::ZERO,
        baseline_cost: None,
        attempts: Vec::new(),
        span_id: Some(timed.span_id),
    }
}

async fn emit(call: &Call, event: Event) {
    if let Some(events) = &call.events {
        // A caller that went away cancels the request; nothing to do here.
        let _ = events.send(event).await;
    }
}

#[cfg(test)]
mod tests;
