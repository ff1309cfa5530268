//! The data plane's gRPC edge. Wire types stop here: requests become
//! domain calls into the execution pipeline, outcomes become responses,
//! and errors become `tonic::Status` with `google.rpc` details.

use std::time::Duration;

use aios_model::RouteConstraints;
use aios_proto::v1::{
    self as pb,
    agent_service_server::{AgentService, AgentServiceServer},
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, codegen::BoxStream, service::Routes};

use crate::{
    approvals::{ApprovalAsk, Approvals, Gated},
    backend::{ChatMessage, Role, ToolCall},
    pipeline::{
        Event, ExecError, ExecRequest, Input, Outcome, Params, Pipeline,
        call::{Step, StepKind},
        embed::EmbedRequest,
    },
    telemetry::TraceContext,
};

/// Largest idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Most stop sequences.
const MAX_STOP: usize = 4;

/// Agent execution and embeddings.
#[derive(Debug, Clone)]
pub struct AgentApi {
    pipeline: Pipeline,
    /// HIGH and CRITICAL requests pass the approval gate.
    approvals: Approvals,
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let received = std::time::Instant::now();
        let timeout = grpc_timeout(request.metadata());
        let (mut metadata, _, request) = request.into_parts();
        let trace = TraceContext::join_metadata(&mut metadata);
        let ask = approval_ask(&request);
        let request = exec_request(request)?;
        let gated = self
            .approvals
            .execute(&self.pipeline, trace, metadata, request, ask, timeout, None)
            .await?;
        let mut body = gated_response(gated);
        body.latency = Some(duration(received.elapsed()));
        body.trace_id = trace.trace_id_hex();
        let mut response = Response::new(body);
        trace.answer(response.metadata_mut());
        Ok(response)
    }

    async fn execute_stream(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<BoxStream<pb::ExecuteEvent>>, Status> {
        let received = std::time::Instant::now();
        let timeout = grpc_timeout(request.metadata());
        let (mut metadata, _, request) = request.into_parts();
        let trace = TraceContext::join_metadata(&mut metadata);
        let trace_id = trace.trace_id_hex();
        let ask = approval_ask(&request);
        let request = exec_request(request)?;
        let (events_tx, mut events_rx) = mpsc::channel::<Event>(64);
        let (out_tx, out_rx) = mpsc::channel::<Result<pb::ExecuteEvent, Status>>(64);
        let pipeline = self.pipeline.clone();
        let approvals = self.approvals.clone();
        tokio::spawn(async move {
            let run = approvals.execute(
                &pipeline,
                trace,
                metadata,
                request,
                ask,
                timeout,
                Some(events_tx),
            );
            tokio::pin!(run);
            let result = loop {
                tokio::select! {
                    result = &mut run => break result,
                    Some(event) = events_rx.recv() => {
                        if out_tx.send(Ok(event_message(event))).await.is_err() {
                            // The caller went away: dropping `run` cancels the work.
                            return;
                        }
                    }
                }
            };
            while let Ok(event) = events_rx.try_recv() {
                let _ = out_tx.send(Ok(event_message(event))).await;
            }
            let last = result.map(|gated| {
                let mut done = gated_response(gated);
                done.latency = Some(duration(received.elapsed()));
                done.trace_id = trace_id;
                pb::ExecuteEvent {
                    event: Some(pb::execute_event::Event::Done(done)),
                }
            });
            let _ = out_tx.send(last.map_err(Status::from)).await;
        });
        let mut response = Response::new(ReceiverStream::new(out_rx).boxed());
        trace.answer(response.metadata_mut());
        Ok(response)
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let (mut metadata, _, request) = request.into_parts();
        let trace = TraceContext::join_metadata(&mut metadata);
        let embedded = self
            .pipeline
            .embed_traced(
                trace,
                &metadata,
                EmbedRequest {
                    model: request.model,
                    inputs: request.inputs,
                    user: request.user,
                },
                timeout,
            )
            .await?;
        let mut response = Response::new(pb::EmbedResponse {
            embeddings: embedded
                .vectors
                .into_iter()
                .map(|values| pb::Embedding { values })
                .collect(),
            model: embedded.model,
            usage: Some(pb::Usage {
                input_tokens: embedded.input_tokens,
                output_tokens: 0,
            }),
            cost_usd: embedded.cost.to_f64(),
        });
        trace.answer(response.metadata_mut());
        Ok(response)
    }
}

/// Every data-plane gRPC service, ready to serve.
pub fn routes(pipeline: Pipeline, approvals: Approvals) -> Routes {
    Routes::new(AgentServiceServer::new(AgentApi {
        pipeline,
        approvals,
    }))
}

/// The caller's deadline from `grpc-timeout` (`<digits><H|M|S|m|u|n>`).
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

// === request ===

fn exec_request(request: pb::ExecuteRequest) -> Result<ExecRequest, ExecError> {
    let mut bad: Vec<(String, String)> = Vec::new();
    let mut violation = |field: &str, why: &str| bad.push((field.into(), why.into()));
    if request.agent.is_empty() {
        violation("agent", "required");
    }
    if request.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
        violation("idempotency_key", "at most 128 bytes");
    }
    if !request.approval_id.is_empty() && !valid_approval_id(&request.approval_id) {
        violation(
            "approval_id",
            "not an approval id (apr_ and 32 lowercase hex characters)",
        );
    }
    let input = match request.input {
        None => {
            violation("input", "required: set messages or action");
            None
        }
        Some(pb::execute_request::Input::Messages(m)) => {
            if m.messages.is_empty() {
                violation("messages.messages", "at least one message");
            }
            let mut messages = Vec::with_capacity(m.messages.len());
            for (i, message) in m.messages.into_iter().enumerate() {
                let role = match pb::MessageRole::try_from(message.role) {
                    Ok(pb::MessageRole::System) => Some(Role::System),
                    Ok(pb::MessageRole::User) => Some(Role::User),
                    Ok(pb::MessageRole::Assistant) => Some(Role::Assistant),
                    Ok(pb::MessageRole::Tool) => Some(Role::Tool),
                    _ => None,
                };
                let Some(role) = role else {
                    violation(&format!("messages.messages[{i}].role"), "required");
                    continue;
                };
                if role == Role::Tool && message.tool_call_id.is_empty() {
                    violation(
                        &format!("messages.messages[{i}].tool_call_id"),
                        "required for TOOL messages",
                    );
                }
                messages.push(ChatMessage {
                    role,
                    content: message.content,
                    tool_call_id: (!message.tool_call_id.is_empty())
                        .then_some(message.tool_call_id),
                    tool_calls: message
                        .tool_calls
                        .into_iter()
                        .map(|c| ToolCall {
                            id: c.id,
                            name: c.name,
                            arguments_json: c.arguments_json,
                        })
                        .collect(),
                });
            }
            Some(Input::Messages(messages))
        }
        Some(pb::execute_request::Input::Action(action)) => {
            if action.action.is_empty() {
                violation("action.action", "required");
            }
            let arguments_json = if action.arguments_json.trim().is_empty() {
                "{}".to_string()
            } else {
                action.arguments_json
            };
            if !matches!(
                serde_json::from_str::<serde_json::Value>(&arguments_json),
                Ok(serde_json::Value::Object(_))
            ) {
                violation("action.arguments_json", "must be a JSON object");
            }
            Some(Input::Action {
                name: action.action,
                arguments_json,
            })
        }
    };
    let params = request.params.unwrap_or_default();
    if params
        .temperature
        .is_some_and(|t| !(0.0..=2.0).contains(&t))
    {
        violation("params.temperature", "must be between 0 and 2");
    }
    if params.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        violation("params.top_p", "must be in (0, 1]");
    }
    if params.stop.len() > MAX_STOP {
        violation("params.stop", "at most 4 stop sequences");
    }
    let constraints = match request.constraints {
        None => RouteConstraints::default(),
        Some(c) => match RouteConstraints::from_proto(&c, "constraints") {
            Ok(c) => c,
            Err(violations) => {
                for v in violations {
                    bad.push((v.field, v.description));
                }
                RouteConstraints::default()
            }
        },
    };
    match input {
        Some(input) if bad.is_empty() => Ok(ExecRequest {
            agent: request.agent,
            input,
            params: Params {
                max_tokens: (params.max_tokens > 0).then_some(params.max_tokens),
                temperature: params.temperature,
                top_p: params.top_p,
                stop: params.stop,
                seed: params.seed,
            },
            user: request.user,
            constraints,
            forensic: request.forensic,
            idempotency_key: request.idempotency_key,
        }),
        _ => Err(ExecError::Invalid(bad)),
    }
}

/// What the request says about approvals.
fn approval_ask(request: &pb::ExecuteRequest) -> ApprovalAsk {
    ApprovalAsk {
        approval_id: request.approval_id.clone(),
        wait: request.wait_for_approval,
    }
}

/// Approval ids are `apr_` and 32 lowercase hex characters.
fn valid_approval_id(id: &str) -> bool {
    id.strip_prefix("apr_").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

// === response ===

/// The response to a request that passed the approval gate.
fn gated_response(gated: Gated) -> pb::ExecuteResponse {
    let refused = |status: pb::ExecutionStatus, approval_id: String, reason: &str, message| {
        pb::ExecuteResponse {
            status: status as i32,
            approval_id,
            error: Some(pb::ExecutionError {
                reason: reason.to_string(),
                message,
            }),
            usage: Some(pb::Usage::default()),
            ..Default::default()
        }
    };
    match gated {
        Gated::Ran {
            outcome,
            approval_id,
        } => {
            let mut body = response(*outcome);
            body.approval_id = approval_id.unwrap_or_default();
            body
        }
        Gated::Pending {
            approval_id,
            message,
        } => refused(
            pb::ExecutionStatus::PendingApproval,
            approval_id,
            "APPROVAL_PENDING",
            message,
        ),
        Gated::Rejected {
            approval_id,
            reason,
            message,
        } => refused(pb::ExecutionStatus::Rejected, approval_id, reason, message),
    }
}

fn usage(usage: crate::backend::Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or_default()
}

fn step(step: Step) -> pb::StepSummary {
    pb::StepSummary {
        index: step.index,
        kind: match step.kind {
            StepKind::Model => pb::StepKind::ModelCall,
            StepKind::Tool => pb::StepKind::ToolCall,
        } as i32,
        name: step.name,
        skipped_forensic: step.skipped_forensic,
        latency: Some(duration(step.latency)),
        error: step.error.unwrap_or_default(),
        usage: Some(usage(step.usage)),
        cost_usd: step.cost.to_f64(),
    }
}

fn event_message(event: Event) -> pb::ExecuteEvent {
    pb::ExecuteEvent {
        event: Some(match event {
            Event::Token { text, index } => {
                pb::execute_event::Event::Token(pb::TokenDelta { text, index })
            }
            Event::Step(s) => pb::execute_event::Event::Step(step(s)),
        }),
    }
}

fn role(role: Role) -> pb::MessageRole {
    match role {
        Role::System => pb::MessageRole::System,
        Role::User => pb::MessageRole::User,
        Role::Assistant => pb::MessageRole::Assistant,
        Role::Tool => pb::MessageRole::Tool,
    }
}

fn response(outcome: Outcome) -> pb::ExecuteResponse {
    use crate::pipeline::Status as S;
    let status = match outcome.status {
        S::Succeeded => pb::ExecutionStatus::Succeeded,
        S::Blocked => pb::ExecutionStatus::Blocked,
        S::Failed => pb::ExecutionStatus::Failed,
    };
    let route = outcome.route.map(|r| {
        let savings = r.baseline_cost.map(|b| b.saturating_sub(outcome.cost));
        pb::RouteDecision {
            tier: r.tier,
            model: r.model,
            complexity: r.complexity.to_proto() as i32,
            explanation: r.explanation,
            failed_models: r.failed_models,
            degraded: r.degraded,
            baseline_cost_usd: r.baseline_cost.map(|b| b.to_f64()),
            savings_usd: savings.map(|s| s.to_f64()),
        }
    });
    pb::ExecuteResponse {
        status: status as i32,
        output: outcome.output,
        messages: outcome
            .messages
            .into_iter()
            .map(|m| pb::Message {
                role: role(m.role) as i32,
                content: m.content,
                tool_call_id: m.tool_call_id.unwrap_or_default(),
                tool_calls: m
                    .tool_calls
                    .into_iter()
                    .map(|c| pb::ToolCall {
                        id: c.id,
                        name: c.name,
                        arguments_json: c.arguments_json,
                    })
                    .collect(),
            })
            .collect(),
        model: outcome.model,
        usage: Some(usage(outcome.usage)),
        cost_usd: outcome.cost.to_f64(),
        cache_hit: outcome.cache_hit,
        latency: None,
        trace_id: String::new(),
        approval_id: String::new(),
        route,
        steps: outcome.steps.into_iter().map(step).collect(),
        forensic: outcome.forensic,
        error: outcome
            .error
            .map(|(reason, message)| pb::ExecutionError { reason, message }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&md), None);
        md.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&md), Some(Duration::from_millis(250)));
        md.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(grpc_timeout(&md), Some(Duration::from_secs(3)));
        md.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&md), None);
    }

    #[test]
    fn a_bad_request_lists_every_bad_field() {
        let err = exec_request(pb::ExecuteRequest {
            params: Some(pb::GenerationParams {
                temperature: Some(3.0),
                stop: vec!["a".into(); 5],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        let ExecError::Invalid(fields) = err else {
            panic!("not invalid");
        };
        let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            names,
            ["agent", "input", "params.temperature", "params.stop"]
        );
    }

    #[test]
    fn actions_need_object_arguments() {
        let request = |args: &str| pb::ExecuteRequest {
            agent: "bot".into(),
            input: Some(pb::execute_request::Input::Action(pb::ActionCall {
                action: "search".into(),
                arguments_json: args.into(),
            })),
            ..Default::default()
        };
        assert!(exec_request(request("")).is_ok(), "empty means {{}}");
        assert!(exec_request(request("{\"q\": 1}")).is_ok());
        assert!(exec_request(request("[1]")).is_err());
    }

    #[test]
    fn approval_ids_are_checked_at_the_edge() {
        let request = |id: &str| pb::ExecuteRequest {
            agent: "bot".into(),
            approval_id: id.into(),
            input: Some(pb::execute_request::Input::Action(pb::ActionCall {
                action: "pay".into(),
                arguments_json: "{}".into(),
            })),
            ..Default::default()
        };
        assert!(exec_request(request("apr_0123456789abcdef0123456789abcdef")).is_ok());
        let Err(ExecError::Invalid(fields)) = exec_request(request("apr_../x")) else {
            panic!("a malformed id is refused");
        };
        assert_eq!(fields[0].0, "approval_id");
    }
}
