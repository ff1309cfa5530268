//! The innermost service: runs the agent. A conversation goes to the routed
//! models through the reliability layer (retries, breakers, fallbacks);
//! the answer passes the output guardrails and is priced.
//!
//! Tool calls (built-in and `ToolService`) and the model → tools → model
//! loop bounded by `max_steps` are the next piece of the execution issue;
//! until then the model is offered no tools, and an action request is
//! answered FAILED with `TOOLS_UNAVAILABLE`.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use aios_model::{Agent, Model, OutputGuardrails};
use futures::{StreamExt, future::BoxFuture};
use tokio::time::Instant;
use tower::Service;

use super::{
    backends::Backends,
    call::{Call, Event, Input, Outcome, RouteInfo, Status, Step, StepKind},
    error::ExecError,
    stage::Ran,
};
use crate::{
    backend::{ChatEvent, ChatMessage, ChatRequest, ChatResponse, ErrorKind, Role},
    guardrails,
    reliability::{CallError, Candidate, Reliability},
    router,
};

/// The agent loop, as a service.
#[derive(Clone, Debug)]
pub struct AgentLoop {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    backends: Backends,
    reliability: Reliability,
    /// Apply output guardrails (off only to measure the pipeline).
    guardrails: bool,
    /// Tenant of unauthenticated requests (only when authentication is
    /// switched off, to measure the pipeline).
    unauthenticated_tenant: Option<String>,
}

impl AgentLoop {
    /// A loop calling models from `backends` through `reliability`.
    pub fn new(
        backends: Backends,
        reliability: Reliability,
        guardrails: bool,
        unauthenticated_tenant: Option<String>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                backends,
                reliability,
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
    let forensic = call.admitted.as_ref().is_some_and(|a| a.forensic);
    let mut outcome = Outcome {
        forensic,
        criticality: call
            .admitted
            .as_ref()
            .map_or(aios_model::Criticality::Low, |a| a.criticality),
        ..Outcome::empty()
    };
    let messages = match &call.request.input {
        Input::Messages(messages) => messages,
        Input::Action { name, .. } => {
            outcome.status = Status::Failed;
            outcome.error = Some((
                "TOOLS_UNAVAILABLE".into(),
                format!("action {name}: this node does not run tools yet"),
            ));
            return Ok(outcome);
        }
    };
    let output_rules = agent
        .policy
        .as_deref()
        .and_then(|name| call.catalog.policy(tenant, name))
        .map(|policy| policy.output.clone())
        .filter(|_| shared.guardrails);
    let candidates = candidates(shared, call, tenant, agent)?;
    let mut conversation = Vec::with_capacity(messages.len() + 1);
    if !agent.system_prompt.is_empty() {
        conversation.push(ChatMessage::text(Role::System, &agent.system_prompt));
    }
    conversation.extend(messages.iter().cloned());
    let params = &call.request.params;
    let first_model = &candidates[0].1;
    let request = ChatRequest {
        messages: conversation,
        tools: Vec::new(),
        max_tokens: params
            .max_tokens
            .or(first_model.max_output_tokens.map(|n| n.get())),
        temperature: params.temperature,
        top_p: params.top_p,
        stop: params.stop.clone(),
        seed: params.seed,
        // The caller's deadline, else the agent's default.
        deadline: if call.caller_deadline {
            call.deadline
        } else {
            call.received + agent.default_deadline
        },
    };
    let chain: Vec<Candidate> = candidates
        .iter()
        .map(|(name, model, backend)| {
            Candidate::new(name.clone(), backend.clone()).with_attempt_timeout(model.timeout)
        })
        .collect();
    let started = Instant::now();
    let (response, report) = match &call.events {
        None => {
            let chained = shared.reliability.chat(&chain, &request).await;
            (chained.result, chained.report)
        }
        Some(events) => {
            let chained = shared.reliability.chat_stream(&chain, &request).await;
            let result = match chained.result {
                Ok(stream) => forward(stream, events, output_rules.as_ref()).await,
                Err(error) => Err(error),
            };
            (result, chained.report)
        }
    };
    let response = match response {
        Ok(response) => response,
        Err(error) => return failure(outcome, error),
    };
    let served = report.served_by.clone().unwrap_or_default();
    let model = candidates
        .iter()
        .find(|(name, ..)| *name == served)
        .map(|(_, model, _)| model)
        .unwrap_or(first_model);
    let cost = router::cost(
        model,
        response.usage.input_tokens,
        response.usage.output_tokens,
    );
    let content = match &output_rules {
        Some(rules) => redact(rules, &response.content),
        None => response.content.clone(),
    };
    let step = Step {
        index: 0,
        kind: StepKind::Model,
        name: served.clone(),
        skipped_forensic: false,
        latency: started.elapsed(),
        error: None,
        usage: response.usage,
        cost,
    };
    if let Some(events) = &call.events {
        let _ = events.send(Event::Step(step.clone())).await;
    }
    outcome.route = call.route.as_ref().map(|route| {
        let table = call.catalog.routing_table(tenant, &agent.routing_table);
        let models = |name: &str| call.catalog.model(tenant, name);
        RouteInfo {
            tier: route.tier.clone(),
            model: served.clone(),
            complexity: route.complexity,
            explanation: route.explanation.clone(),
            failed_models: report.failed_models(),
            baseline_cost: table
                .and_then(|table| router::savings(table, &models, model, response.usage).baseline),
        }
    });
    outcome.messages = vec![ChatMessage::text(Role::Assistant, content.clone())];
    outcome.output = content;
    outcome.model = served;
    outcome.usage = response.usage;
    outcome.cost = cost;
    outcome.steps = vec![step];
    Ok(outcome)
}

/// A candidate model: its name, settings and backend.
type Resolved = (String, Model, Arc<dyn crate::backend::Backend>);

/// The routed models, resolved to backends; without a route (routing
/// switched off) the first target of the agent's table.
fn candidates(
    shared: &Shared,
    call: &Call,
    tenant: &str,
    agent: &Agent,
) -> Result<Vec<Resolved>, ExecError> {
    let names: Vec<String> = match &call.route {
        Some(route) => route.candidates.clone(),
        None => call
            .catalog
            .routing_table(tenant, &agent.routing_table)
            .and_then(|t| t.tiers.first())
            .and_then(|tier| tier.targets.first())
            .map(|target| vec![target.model.clone()])
            .unwrap_or_default(),
    };
    if names.is_empty() {
        return Err(ExecError::Unavailable(format!(
            "agent {} has no model to call",
            call.request.agent
        )));
    }
    let mut resolved = Vec::with_capacity(names.len());
    let mut unavailable = Vec::new();
    for name in names {
        match shared.backends.get(&call.catalog, tenant, &name) {
            Ok((backend, model)) => resolved.push((name, model, backend)),
            Err(error) => unavailable.push(error.to_string()),
        }
    }
    if resolved.is_empty() {
        return Err(ExecError::Unavailable(unavailable.join("; ")));
    }
    Ok(resolved)
}

/// Forwards a streamed answer's text to the caller (redacted when output
/// guardrails apply: a whole answer is redacted at the end, so streamed
/// text is held back until then) and returns the whole response.
async fn forward(
    mut stream: crate::backend::ChatStream,
    events: &tokio::sync::mpsc::Sender<Event>,
    rules: Option<&OutputGuardrails>,
) -> Result<ChatResponse, CallError> {
    let redacting = rules.is_some_and(|r| !guardrails::output_kinds(r).is_empty());
    while let Some(event) = stream.next().await {
        match event {
            Ok(ChatEvent::Delta(text)) if !redacting => {
                let _ = events.send(Event::Token { text, index: 0 }).await;
            }
            Ok(ChatEvent::Delta(_)) => {}
            Ok(ChatEvent::Done(response)) => {
                if redacting && let Some(rules) = rules {
                    let text = redact(rules, &response.content);
                    let _ = events.send(Event::Token { text, index: 0 }).await;
                }
                return Ok(response);
            }
            Err(error) => {
                return Err(CallError::Backend {
                    model: String::new(),
                    error,
                });
            }
        }
    }
    Err(CallError::Backend {
        model: String::new(),
        error: crate::backend::BackendError::new(
            ErrorKind::Connection,
            "the stream ended without a final response",
        ),
    })
}

fn redact(rules: &OutputGuardrails, text: &str) -> String {
    guardrails::redact_output(rules, text).0.into_owned()
}

/// A failed model call: permanent refusals are outcomes, the rest errors.
fn failure(mut outcome: Outcome, error: CallError) -> Result<Outcome, ExecError> {
    match error {
        CallError::Backend { model, error } => match error.kind {
            ErrorKind::ContentPolicy => {
                outcome.status = Status::Blocked;
                outcome.error = Some((
                    "CONTENT_POLICY".into(),
                    format!("model {model} refused the content: {}", error.message),
                ));
                Ok(outcome)
            }
            ErrorKind::InvalidRequest => {
                outcome.status = Status::Failed;
                outcome.error = Some((
                    "MODEL_REJECTED_REQUEST".into(),
                    format!("model {model} rejected the request: {}", error.message),
                ));
                Ok(outcome)
            }
            _ => Err(ExecError::Unavailable(format!(
                "no model could serve the request; last error from {model}: {error}"
            ))),
        },
        CallError::CircuitOpen { model, retry_in } => Err(ExecError::Unavailable(format!(
            "every model is shedding load (circuit open on {model}; retry in {}ms)",
            retry_in.as_millis()
        ))),
        CallError::DeadlineExceeded => Err(ExecError::DeadlineExceeded(
            "the deadline passed before a model answered".into(),
        )),
        CallError::NoModels => Err(ExecError::Unavailable("no model to call".into())),
    }
}
