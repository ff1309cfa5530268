//! The model side of the loop: which models to call, streaming their text
//! to the caller, output redaction, and what a failed model call becomes.

use std::{sync::Arc, time::Duration};

use aios_model::{Agent, Model, OutputGuardrails, Usd};
use futures::StreamExt;

use super::Shared;
use crate::{
    backend::{ChatEvent, ChatMessage, ChatRequest, ChatResponse, ErrorKind},
    guardrails,
    pipeline::{
        call::{Call, Event, Outcome, Status},
        error::ExecError,
    },
    reliability::CallError,
};

/// A candidate model: its name, settings and backend.
pub(super) type Resolved = (String, Arc<Model>, Arc<dyn crate::backend::Backend>);

/// The routed models, resolved to backends; without a route (routing
/// switched off) the first target of the agent's table.
pub(super) fn candidates(
    shared: &Shared,
    call: &Call,
    tenant: &str,
    agent: &Agent,
) -> Result<Vec<Resolved>, ExecError> {
    let first_target;
    let names: &[String] = match &call.route {
        Some(route) => &route.candidates,
        None => {
            first_target = call
                .catalog
                .routing_table(tenant, &agent.routing_table)
                .and_then(|t| t.tiers.first())
                .and_then(|tier| tier.targets.first())
                .map(|target| target.model.clone());
            first_target.as_slice()
        }
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
        match shared.backends.get(&call.catalog, tenant, name) {
            Ok((backend, model)) => resolved.push((name.clone(), model, backend)),
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
pub(super) async fn forward(
    mut stream: crate::backend::ChatStream,
    events: &tokio::sync::mpsc::Sender<Event>,
    rules: Option<&OutputGuardrails>,
    index: u32,
) -> Result<ChatResponse, CallError> {
    let redacting = rules.is_some_and(|r| !guardrails::output_kinds(r).is_empty());
    while let Some(event) = stream.next().await {
        match event {
            Ok(ChatEvent::Delta(text)) if !redacting => {
                let _ = events.send(Event::Token { text, index }).await;
            }
            Ok(ChatEvent::Delta(_)) => {}
            Ok(ChatEvent::Done(response)) => {
                if redacting && !response.content.is_empty() {
                    let text = redact(rules, &response.content);
                    let _ = events.send(Event::Token { text, index }).await;
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

pub(super) fn redact(rules: Option<&OutputGuardrails>, text: &str) -> String {
    match rules {
        Some(rules) => guardrails::redact_output(rules, text).0.into_owned(),
        None => text.to_string(),
    }
}

/// `message` as the caller sees it.
pub(super) fn redacted(rules: Option<&OutputGuardrails>, message: &ChatMessage) -> ChatMessage {
    ChatMessage {
        content: redact(rules, &message.content),
        ..message.clone()
    }
}

/// A failed model call. Permanent refusals are outcomes; the rest are
/// errors, unless a tool has run (see the module documentation):
/// `after_tools` is then `Some(whether the deadline has passed)`.
pub(super) fn failure(
    mut outcome: Outcome,
    error: CallError,
    after_tools: Option<bool>,
) -> Result<Outcome, ExecError> {
    let error = match error {
        CallError::Backend { model, error } => match error.kind {
            ErrorKind::ContentPolicy => {
                outcome.status = Status::Blocked;
                outcome.error = Some((
                    "CONTENT_POLICY".into(),
                    format!("model {model} refused the content: {}", error.message),
                ));
                return Ok(outcome);
            }
            ErrorKind::InvalidRequest => {
                outcome.status = Status::Failed;
                outcome.error = Some((
                    "MODEL_REJECTED_REQUEST".into(),
                    format!("model {model} rejected the request: {}", error.message),
                ));
                return Ok(outcome);
            }
            // Every model is at capacity (a provider's 429, a local engine's
            // full queue): the caller should back off, not fail over.
            ErrorKind::RateLimited => ExecError::RateLimited {
                subject: format!("model:{model}"),
                description: format!("no model had capacity; last error from {model}: {error}"),
                retry_after: error.retry_after.unwrap_or(Duration::from_secs(1)),
            },
            _ => ExecError::Unavailable(format!(
                "no model could serve the request; last error from {model}: {error}"
            )),
        },
        CallError::CircuitOpen { model, retry_in } => ExecError::Unavailable(format!(
            "every model is shedding load (circuit open on {model}; retry in {}ms)",
            retry_in.as_millis()
        )),
        CallError::DeadlineExceeded => {
            ExecError::DeadlineExceeded("the deadline passed before a model answered".into())
        }
        CallError::NoModels => ExecError::Unavailable("no model to call".into()),
    };
    let Some(late) = after_tools else {
        return Err(error);
    };
    let reason = match &error {
        ExecError::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
        // A model cut off by the deadline reports a timeout.
        _ if late => "DEADLINE_EXCEEDED",
        _ => "MODEL_UNAVAILABLE",
    };
    outcome.status = Status::Failed;
    outcome.error = Some((reason.into(), format!("after tool calls: {error}")));
    Ok(outcome)
}

// === Budgets ===

/// Tokens a chat template adds around each message, at most (role markers,
/// separators), for the input bound.
const TEMPLATE_TOKENS_PER_MESSAGE: u64 = 16;

/// An upper bound on the input tokens of `request`: one per byte of text
/// (no tokenizer in use makes a token of less than a byte, in practice)
/// plus the template's markers per message.
pub(super) fn input_bound(request: &ChatRequest) -> u64 {
    let messages: u64 = request
        .messages
        .iter()
        .map(|m| {
            let calls: usize = m
                .tool_calls
                .iter()
                .map(|c| c.name.len() + c.arguments_json.len() + c.id.len())
                .sum();
            (m.content.len() + calls) as u64 + TEMPLATE_TOKENS_PER_MESSAGE
        })
        .sum();
    let tools: u64 = request
        .tools
        .iter()
        .map(|t| (t.name.len() + t.description.len() + t.parameters_json_schema.len()) as u64)
        .sum();
    messages + tools
}

/// Output tokens `model` may produce for `request`.
fn output_tokens(request: &ChatRequest, model: &Model) -> u32 {
    let limit = model
        .max_output_tokens
        .map_or(crate::router::ASSUMED_OUTPUT_TOKENS, |n| n.get());
    request.max_tokens.map_or(limit, |n| n.min(limit))
}

/// The most one call of `request` can cost on any of `candidates` (its
/// worst case, which it reserves), and the least that lets it run at all
/// (its input and one output token).
pub(super) fn call_bounds(candidates: &[Resolved], request: &ChatRequest) -> (Usd, Usd) {
    let input = input_bound(request);
    let mut bound = Usd::ZERO;
    let mut min = Usd::ZERO;
    for (_, model, _) in candidates {
        let output = u64::from(output_tokens(request, model));
        bound = bound.max(crate::router::cost(model, input, output));
        min = min.max(crate::router::cost(model, input, 1));
    }
    (bound, min)
}

/// The output tokens `amount` pays for on every candidate, given the
/// input bound; at least 1 (the reservation covered input and one token).
pub(super) fn affordable_output(
    candidates: &[Resolved],
    request: &ChatRequest,
    amount: Usd,
) -> u32 {
    let input = input_bound(request);
    let mut tokens = candidates
        .iter()
        .map(|(_, model, _)| output_tokens(request, model))
        .max()
        .unwrap_or(1);
    for (_, model, _) in candidates {
        let price = model.output_price_per_mtok.micros();
        if price <= 0 {
            continue;
        }
        let left = amount.micros() - crate::router::cost(model, input, 0).micros();
        // floor(left × 1e6 / price), then down while rounding says too much.
        let mut n = u32::try_from((i128::from(left.max(0)) * 1_000_000 / i128::from(price)).max(1))
            .unwrap_or(u32::MAX);
        while n > 1 && crate::router::cost(model, input, u64::from(n)) > amount {
            n -= 1;
        }
        tokens = tokens.min(n);
    }
    tokens.max(1)
}
