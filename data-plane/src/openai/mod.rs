//! The OpenAI-compatible HTTP edge (`--http-listen`), so existing OpenAI
//! SDKs can call aios unchanged: `POST /v1/chat/completions` (with SSE
//! streaming) runs through the same pipeline as `AgentService.Execute`.
//!
//! Mapping: the request's `model` names the **agent**; the key goes in
//! `Authorization: Bearer`. The response's `model` is the model that
//! answered, and an `aios` object adds cost, cache hit and the routing
//! decision. Errors use OpenAI's JSON error shape, which those SDKs parse;
//! a policy refusal is HTTP 403 with the aios reason as `code`.
//!
//! `POST /v1/embeddings` runs `AgentService.Embed` (there `model` names an
//! embedding Model); `GET /v1/models` lists what the key can name: its
//! agents and its tenant's embedding models.

mod wire;

use std::{
    convert::Infallible,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, Sse},
    },
    routing::{get, post},
};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};

use aios_model::Complexity;
use wire::{
    AiosFields, AssistantMessage, ChatCompletionRequest, ChunkBody, ChunkChoice, CompletionBody,
    CompletionChoice, Content, Delta, Embedding, EmbeddingEntry, EmbeddingInput, EmbeddingsAios,
    EmbeddingsBody, EmbeddingsRequest, EmbeddingsUsage, ErrorBody, List, ModelEntry, ModelKind,
    RouteFields, Stop, WireUsage,
};

use crate::{
    backend::{ChatMessage, Role, ToolCall},
    pipeline::{
        Event, ExecError, ExecRequest, Input, Outcome, Params, Pipeline, Status,
        embed::EmbedRequest,
    },
    telemetry::{TRACEPARENT, TraceContext},
};

/// The HTTP router over `pipeline`.
pub fn router(pipeline: Pipeline) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
                "no such endpoint on this node",
            )
        })
        .with_state(pipeline)
}

async fn list_models(State(pipeline): State<Pipeline>, headers: HeaderMap) -> Response {
    let listed = match pipeline.served(&metadata(&headers)) {
        Ok(listed) => listed,
        Err(e) => return exec_error(e),
    };
    let data: Vec<ModelEntry<'_>> = listed
        .iter()
        .map(|l| ModelEntry {
            id: &l.id,
            object: "model",
            created: 0,
            owned_by: "aios",
            aios: ModelKind { kind: l.kind },
        })
        .collect();
    json_response(StatusCode::OK, &List::new(data))
}

async fn embeddings(
    State(pipeline): State<Pipeline>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: EmbeddingsRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                &format!(
                    "the body is not a valid embeddings request (input must be a string or an array of strings): {e}"
                ),
            );
        }
    };
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_encoding_format",
                &format!("encoding_format {other:?}: expected \"float\" or \"base64\""),
            );
        }
    };
    let inputs = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
    };
    let embed = EmbedRequest {
        model: request.model,
        inputs,
        user: request.user.unwrap_or_default(),
    };
    let mut metadata = metadata(&headers);
    let trace = TraceContext::join_metadata(&mut metadata);
    let embedded = match pipeline.embed_traced(trace, &metadata, embed, None).await {
        Ok(embedded) => embedded,
        Err(e) => return exec_error(e),
    };
    let data: Vec<EmbeddingEntry<'_>> = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingEntry {
            object: "embedding",
            index,
            embedding: match base64 {
                // Little-endian f32s, as OpenAI sends them.
                true => Embedding::Base64(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    vector
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect::<Vec<u8>>(),
                )),
                false => Embedding::Float(vector),
            },
        })
        .collect();
    let tokens = embedded.input_tokens;
    let body = EmbeddingsBody {
        list: List::new(data),
        model: &embedded.model,
        usage: EmbeddingsUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
        aios: EmbeddingsAios {
            cost_usd: embedded.cost.to_f64(),
            truncated: &embedded.truncated,
        },
    };
    traced(json_response(StatusCode::OK, &body), &trace)
}

/// An error in OpenAI's JSON shape.
pub fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    json_response(status, &ErrorBody::new(kind, code, message.to_string()))
}

// === request ===

fn exec_request(request: ChatCompletionRequest) -> Result<(ExecRequest, bool), ExecError> {
    let mut bad = Vec::new();
    if request.model.is_empty() {
        bad.push((
            "model".to_string(),
            "required: the agent to run".to_string(),
        ));
    }
    if request.messages.is_empty() {
        bad.push(("messages".to_string(), "at least one message".to_string()));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, m) in request.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                bad.push((
                    format!("messages[{i}].role"),
                    format!("unknown role '{other}'"),
                ));
                continue;
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        messages.push(ChatMessage {
            role,
            content,
            tool_call_id: m.tool_call_id,
            tool_calls: m
                .tool_calls
                .into_iter()
                .map(|c| ToolCall {
                    id: c.id,
                    name: c.function.name,
                    arguments_json: c.function.arguments,
                })
                .collect(),
        });
    }
    let stop = match request.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 {
        bad.push(("stop".to_string(), "at most 4 stop sequences".to_string()));
    }
    if request
        .temperature
        .is_some_and(|t| !(0.0..=2.0).contains(&t))
    {
        bad.push((
            "temperature".to_string(),
            "must be between 0 and 2".to_string(),
        ));
    }
    if !bad.is_empty() {
        return Err(ExecError::Invalid(bad));
    }
    Ok((
        ExecRequest {
            agent: request.model,
            input: Input::Messages(messages),
            params: Params {
                max_tokens: request.max_completion_tokens.or(request.max_tokens),
                temperature: request.temperature,
                top_p: request.top_p,
                stop,
                seed: request.seed,
            },
            user: request.user.unwrap_or_default(),
            constraints: Default::default(),
            forensic: false,
            idempotency_key: String::new(),
        },
        request.stream,
    ))
}

/// The headers a pipeline call reads (the API key, `traceparent`).
fn metadata(headers: &HeaderMap) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for name in ["authorization", "x-api-key", "traceparent"] {
        if let Some(value) = headers
            .get(name)
            .and_then(|v| MetadataValue::try_from(v.as_bytes()).ok())
        {
            metadata.insert(name, value);
        }
    }
    metadata
}

// === handler ===

async fn chat_completions(
    State(pipeline): State<Pipeline>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: ChatCompletionRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                &format!("the body is not a valid chat completion request: {e}"),
            );
        }
    };
    let (request, stream) = match exec_request(request) {
        Ok(parsed) => parsed,
        Err(e) => return exec_error(e),
    };
    let mut metadata = metadata(&headers);
    let trace = TraceContext::join_metadata(&mut metadata);
    let id = [
        "chatcmpl-",
        &crate::telemetry::trace::hex(u128::from(rand::random::<u64>()), 16),
    ]
    .concat();
    let response = if stream {
        Sse::new(streamed(pipeline, trace, metadata, request, id)).into_response()
    } else {
        match pipeline
            .execute_traced(trace, metadata, request, None, None)
            .await
        {
            Ok(outcome) => completion(&id, outcome),
            Err(e) => exec_error(e),
        }
    };
    traced(response, &trace)
}

/// `response` with the request's `traceparent` header.
fn traced(mut response: Response, trace: &TraceContext) -> Response {
    if let Ok(value) = HeaderValue::from_str(&trace.traceparent()) {
        response.headers_mut().insert(TRACEPARENT, value);
    }
    response
}

/// Runs the request, turning its events into OpenAI chunks; the last chunk
/// carries the finish reason and usage, then `[DONE]`.
fn streamed(
    pipeline: Pipeline,
    trace: TraceContext,
    metadata: MetadataMap,
    request: ExecRequest,
    id: String,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let (events_tx, mut events_rx) = mpsc::channel::<Event>(64);
    let (out_tx, out_rx) = mpsc::channel::<SseEvent>(64);
    let created = now();
    tokio::spawn(async move {
        let run = pipeline.execute_traced(trace, metadata, request, None, Some(events_tx));
        tokio::pin!(run);
        let chunk =
            |delta: Delta<'_>, finish_reason: Option<&'static str>, usage: Option<WireUsage>| {
                let body = ChunkBody {
                    id: &id,
                    object: "chat.completion.chunk",
                    created,
                    model: "",
                    choices: [ChunkChoice {
                        index: 0,
                        delta,
                        finish_reason,
                    }],
                    usage,
                };
                SseEvent::default().data(serde_json::to_string(&body).unwrap_or_default())
            };
        let token = |text: &str| {
            chunk(
                Delta {
                    role: None,
                    content: Some(text),
                },
                None,
                None,
            )
        };
        let first = chunk(
            Delta {
                role: Some("assistant"),
                content: Some(""),
            },
            None,
            None,
        );
        if out_tx.send(first).await.is_err() {
            return;
        }
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                Some(event) = events_rx.recv() => {
                    if let Event::Token { text, .. } = event
                        && out_tx.send(token(&text)).await.is_err()
                    {
                        return; // the caller went away: dropping `run` cancels it
                    }
                }
            }
        };
        while let Ok(event) = events_rx.try_recv() {
            if let Event::Token { text, .. } = event {
                let _ = out_tx.send(token(&text)).await;
            }
        }
        let last = match result {
            Ok(outcome) => chunk(
                Delta {
                    role: None,
                    content: None,
                },
                Some(finish_reason(&outcome)),
                Some(usage(&outcome)),
            ),
            Err(e) => {
                let (_, body) = error_body(&e);
                SseEvent::default().data(serde_json::to_string(&body).unwrap_or_default())
            }
        };
        let _ = out_tx.send(last).await;
        let _ = out_tx.send(SseEvent::default().data("[DONE]")).await;
    });
    ReceiverStream::new(out_rx).map(Ok)
}

// === response ===

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn usage(outcome: &Outcome) -> WireUsage {
    let (input, output) = (outcome.usage.input_tokens, outcome.usage.output_tokens);
    WireUsage {
        prompt_tokens: input,
        completion_tokens: output,
        total_tokens: input + output,
    }
}

fn finish_reason(outcome: &Outcome) -> &'static str {
    match outcome.status {
        Status::Succeeded => "stop",
        Status::Blocked => "content_filter",
        Status::Failed => "stop",
    }
}

fn completion(id: &str, outcome: Outcome) -> Response {
    if outcome.status != Status::Succeeded {
        let (reason, message) = outcome
            .error
            .clone()
            .unwrap_or_else(|| ("FAILED".into(), "the agent did not finish".into()));
        let status = match outcome.status {
            Status::Blocked => StatusCode::FORBIDDEN,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        return error(status, "aios_policy_error", &reason, &message);
    }
    let route = outcome.route.as_ref().map(|r| RouteFields {
        tier: &r.tier,
        complexity: match r.complexity {
            Complexity::Simple => "simple",
            Complexity::Moderate => "moderate",
            Complexity::Complex => "complex",
        },
        explanation: &r.explanation,
        failed_models: &r.failed_models,
    });
    let body = CompletionBody {
        id,
        object: "chat.completion",
        created: now(),
        model: &outcome.model,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: &outcome.output,
            },
            finish_reason: finish_reason(&outcome),
        }],
        usage: usage(&outcome),
        aios: AiosFields {
            cost_usd: outcome.cost.to_f64(),
            cache_hit: outcome.cache_hit,
            route,
        },
    };
    let explained = outcome.route.as_ref().map_or(0, |r| r.explanation.len());
    let size = outcome.output.len() + explained + BODY_OVERHEAD;
    json_response_sized(StatusCode::OK, &body, size)
}

/// Bytes of a completion besides its text and route explanation, for sizing
/// the body up front (`to_vec` starts at 128 bytes and grows it).
const BODY_OVERHEAD: usize = 512;

/// `body` as an `application/json` response, its buffer starting at
/// 128 bytes as `serde_json::to_vec`'s does.
fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    json_response_sized(status, body, 128)
}

/// [`json_response`] into a buffer of `size` bytes to start with.
fn json_response_sized(status: StatusCode, body: &impl Serialize, size: usize) -> Response {
    let mut bytes = Vec::with_capacity(size);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => (
            status,
            [(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not serialise a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The HTTP status and OpenAI-shaped body of a pipeline error.
fn error_body(e: &ExecError) -> (StatusCode, ErrorBody<'static>) {
    let (status, kind, code) = match e {
        ExecError::Unauthenticated(_) => (
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
        ),
        ExecError::PermissionDenied { reason, .. } => {
            (StatusCode::FORBIDDEN, "permission_error", *reason)
        }
        ExecError::Invalid(_) => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
        ),
        ExecError::NotFound { .. } => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
        ),
        ExecError::RateLimited { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        // OpenAI's own answer to a spent quota.
        ExecError::BudgetExhausted { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
        ),
        ExecError::FailedPrecondition { .. } => (
            StatusCode::CONFLICT,
            "invalid_request_error",
            "failed_precondition",
        ),
        ExecError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "model_unavailable",
        ),
        ExecError::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, "server_error", "timeout"),
        ExecError::Internal(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
        ),
    };
    let message = match e {
        ExecError::Internal(_) => "internal error".to_string(),
        other => other.to_string(),
    };
    (status, ErrorBody::new(kind, code, message))
}

fn exec_error(e: ExecError) -> Response {
    if let ExecError::Internal(detail) = &e {
        tracing::error!(%detail, "internal error");
    }
    let (status, body) = error_body(&e);
    let mut response = json_response(status, &body);
    if let ExecError::RateLimited { retry_after, .. } = &e
        && let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string())
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::*;

    fn parse(body: Value) -> Result<(ExecRequest, bool), ExecError> {
        exec_request(serde_json::from_value(body).unwrap())
    }

    #[test]
    fn the_model_names_the_agent_and_parts_become_text() {
        let (request, stream) = parse(json!({
            "model": "support",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
            "max_completion_tokens": 50, "stop": "END", "stream": true, "user": "u-1",
        }))
        .unwrap();
        assert!(stream);
        assert_eq!(request.agent, "support");
        assert_eq!(request.params.max_tokens, Some(50));
        assert_eq!(request.params.stop, ["END"]);
        assert_eq!(request.user, "u-1");
        let Input::Messages(messages) = request.input else {
            panic!("not messages");
        };
        assert_eq!(messages[1].content, "Hi");
        assert_eq!(messages[0].role, Role::System);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let err = parse(json!({"model": "", "messages": [{"role": "robot", "content": "x"}]}))
            .unwrap_err();
        let ExecError::Invalid(fields) = err else {
            panic!("not invalid");
        };
        let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(names, ["model", "messages[0].role"]);
    }

    #[test]
    fn rate_limits_are_429_with_the_openai_code() {
        let (status, body) = error_body(&ExecError::RateLimited {
            subject: "api_key:acme/ci".into(),
            description: "2 requests per minute".into(),
            retry_after: Duration::from_secs(30),
        });
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body.error.code, "rate_limit_exceeded");
    }
}
