//! Anthropic Messages over HTTP (`POST {base}/v1/messages`, API version
//! `2023-06-01`), whole or streamed as server-sent events.
//!
//! The neutral request maps onto Messages like this: system messages, from
//! anywhere in the conversation, join into the top-level `system` field;
//! assistant tool calls become `tool_use` blocks and tool results
//! `tool_result` blocks in a user turn; consecutive turns of one role merge
//! into one (tool results answering one assistant turn must share a turn);
//! `seed` is dropped (Messages has none). `max_tokens` is required by
//! Anthropic: the request's, else the config's default
//! ([`DEFAULT_MAX_TOKENS`] unless the catalog model sets `max_output_tokens`).

use std::{collections::BTreeMap, fmt, time::Duration};

use aios_model::Model;
use http::{HeaderMap, HeaderValue, Uri, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Backend, BackendError, ChatEvent, ChatMessage, ChatRequest, ChatResponse, ChatStream,
    ErrorKind, FinishReason, Role, ToolCall, Usage,
    http::{
        ConfigError, DEFAULT_CONNECT_TIMEOUT, Flow, HttpClient, ProviderKey, SseDecoder, SseEvent,
        WireError, base_headers, check_status, conclude, endpoint, f32_json, insert_header,
        protocol_error, sse_stream, success_body, with_deadline,
    },
};

/// Anthropic's public API (without the `/v1`).
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// The `anthropic-version` this module speaks.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when neither the request nor the config sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

const PROVIDER: &str = "anthropic";

/// How to reach one Anthropic model.
#[derive(Clone, Debug)]
pub struct AnthropicConfig {
    /// Base URL, without `/v1`.
    pub base_url: String,
    /// The model id at Anthropic.
    pub model: String,
    /// Sent as `x-api-key`; `None` only behind a proxy that adds it.
    pub api_key: Option<ProviderKey>,
    /// Extra headers on every call (`anthropic-beta`, a gateway's own).
    pub headers: Vec<(String, String)>,
    /// `max_tokens` for requests that set none.
    pub default_max_tokens: u32,
    /// TCP connect timeout, for clients this backend builds itself.
    pub connect_timeout: Duration,
}

impl AnthropicConfig {
    /// `model` at Anthropic's public API with `api_key`.
    pub fn new(model: impl Into<String>, api_key: Option<ProviderKey>) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_string(),
            model: model.into(),
            api_key,
            headers: Vec::new(),
            default_max_tokens: DEFAULT_MAX_TOKENS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The config of a catalog model, with the key the caller read from
    /// the model's `api_key_env`.
    pub fn from_model(model: &Model, api_key: Option<ProviderKey>) -> Self {
        Self {
            base_url: model
                .endpoint
                .clone()
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_string()),
            default_max_tokens: model
                .max_output_tokens
                .map_or(DEFAULT_MAX_TOKENS, |n| n.get()),
            ..Self::new(model.provider_model.clone(), api_key)
        }
    }
}

/// One Anthropic model.
pub struct AnthropicBackend {
    client: HttpClient,
    uri: Uri,
    headers: HeaderMap,
    model: String,
    default_max_tokens: u32,
    api_key: Option<ProviderKey>,
}

impl fmt::Debug for AnthropicBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicBackend")
            .field("uri", &self.uri)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl AnthropicBackend {
    /// A backend with its own connection pool.
    pub fn new(config: AnthropicConfig) -> Result<Self, ConfigError> {
        let client = HttpClient::new(config.connect_timeout)?;
        Self::with_client(config, client)
    }

    /// A backend on a shared connection pool.
    pub fn with_client(config: AnthropicConfig, client: HttpClient) -> Result<Self, ConfigError> {
        let uri = endpoint(&config.base_url, "/v1/messages")?;
        let mut headers = base_headers(&config.headers)?;
        insert_header(&mut headers, "anthropic-version", API_VERSION, false)?;
        if let Some(key) = &config.api_key {
            insert_header(&mut headers, "x-api-key", key.expose(), true)?;
        }
        Ok(Self {
            client,
            uri,
            headers,
            model: config.model,
            default_max_tokens: config.default_max_tokens,
            api_key: config.api_key,
        })
    }

    async fn send(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<http::Response<hyper::body::Incoming>, BackendError> {
        let body = request_body(&self.model, self.default_max_tokens, request, stream)?;
        let mut headers = self.headers.clone();
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        let bytes = serde_json::to_vec(&body).map_err(|e| {
            BackendError::new(ErrorKind::InvalidRequest, format!("{PROVIDER}: {e}"))
        })?;
        self.client.post(PROVIDER, &self.uri, &headers, bytes).await
    }
}

#[tonic::async_trait]
impl Backend for AnthropicBackend {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        with_deadline(PROVIDER, request.deadline, async {
            let response = self.send(request, false).await?;
            let body = success_body(PROVIDER, self.api_key.as_ref(), response).await?;
            parse_message(&body)
        })
        .await
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, BackendError> {
        let response = with_deadline(PROVIDER, request.deadline, async {
            let response = self.send(request, true).await?;
            check_status(PROVIDER, self.api_key.as_ref(), response).await
        })
        .await?;
        let decoder = StreamDecoder {
            api_key: self.api_key.clone(),
            ..StreamDecoder::default()
        };
        Ok(sse_stream(
            PROVIDER,
            response.into_body(),
            request.deadline,
            decoder,
        ))
    }
}

// === Request ===

fn invalid(message: String) -> BackendError {
    BackendError::new(ErrorKind::InvalidRequest, message)
}

/// The JSON body of a Messages call.
fn request_body(
    model: &str,
    default_max_tokens: u32,
    request: &ChatRequest,
    stream: bool,
) -> Result<Value, BackendError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        let (role, blocks) = match message.role {
            Role::System => {
                system.push(message.content.as_str());
                continue;
            }
            Role::User => ("user", text_block(&message.content)),
            Role::Assistant => ("assistant", assistant_blocks(message)?),
            Role::Tool => ("user", vec![tool_result_block(message)?]),
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();

    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(default_max_tokens)),
    );
    let system = system.join("\n\n");
    if !system.is_empty() {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                let schema: Value =
                    serde_json::from_str(&tool.parameters_json_schema).map_err(|e| {
                        invalid(format!(
                            "tool {:?}: parameters are not JSON: {e}",
                            tool.name
                        ))
                    })?;
                Ok(json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": schema,
                }))
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), f32_json(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), f32_json(p));
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

/// Anthropic refuses empty text blocks, so empty text is no block.
fn text_block(text: &str) -> Vec<Value> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "type": "text", "text": text })]
    }
}

fn assistant_blocks(message: &ChatMessage) -> Result<Vec<Value>, BackendError> {
    let mut blocks = text_block(&message.content);
    for call in &message.tool_calls {
        let input: Value = if call.arguments_json.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(&call.arguments_json).map_err(|e| {
                invalid(format!(
                    "tool call {:?}: arguments are not JSON: {e}",
                    call.id
                ))
            })?
        };
        blocks.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": input,
        }));
    }
    Ok(blocks)
}

fn tool_result_block(message: &ChatMessage) -> Result<Value, BackendError> {
    let Some(id) = &message.tool_call_id else {
        return Err(invalid("a tool message has no tool_call_id".to_string()));
    };
    Ok(json!({ "type": "tool_result", "tool_use_id": id, "content": message.content }))
}

// === Response ===

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    content: Vec<Block>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Option<Value>,
    },
    /// Thinking, citations, server tools: not part of the neutral response.
    #[serde(other)]
    Other,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// All prompt tokens: `input_tokens` counts only those after the last
    /// cache breakpoint.
    fn input(&self) -> Option<u64> {
        let parts = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ];
        parts
            .iter()
            .any(Option::is_some)
            .then(|| parts.iter().flatten().sum())
    }
}

fn finish_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn, and anything newer.
        _ => FinishReason::Stop,
    }
}

/// A non-streamed answer.
fn parse_message(body: &[u8]) -> Result<ChatResponse, BackendError> {
    let message: Message =
        serde_json::from_slice(body).map_err(|e| protocol_error(PROVIDER, "answer", e))?;
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            Block::Text { text } => content.push_str(&text),
            Block::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                name,
                arguments_json: input.map_or_else(|| "{}".to_string(), |v| v.to_string()),
            }),
            Block::Other => {}
        }
    }
    let usage = Usage {
        input_tokens: message.usage.input().unwrap_or(0),
        output_tokens: message.usage.output_tokens.unwrap_or(0),
    };
    conclude(
        PROVIDER,
        content,
        tool_calls,
        usage,
        finish_reason(message.stop_reason.as_deref()),
    )
}

// === Streaming ===

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: Block,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: WireUsage,
    },
    MessageStop,
    Error {
        error: WireError,
    },
    /// `ping`, `content_block_stop`, and event types added later.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// Thinking, signatures, citations.
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct MessageDeltaBody {
    stop_reason: Option<String>,
}

/// A tool_use block being assembled from `input_json_delta`s.
#[derive(Debug, Default)]
struct PartialTool {
    id: String,
    name: String,
    json: String,
}

/// Messages stream events to [`ChatEvent`]s.
#[derive(Debug, Default)]
struct StreamDecoder {
    api_key: Option<ProviderKey>,
    content: String,
    tools: BTreeMap<u32, PartialTool>,
    usage: Usage,
    stop_reason: Option<String>,
}

impl StreamDecoder {
    fn text(&mut self, text: String, out: &mut Vec<ChatEvent>) {
        if !text.is_empty() {
            self.content.push_str(&text);
            out.push(ChatEvent::Delta(text));
        }
    }

    fn done(&mut self) -> Result<ChatResponse, BackendError> {
        let tool_calls = std::mem::take(&mut self.tools)
            .into_values()
            .map(|tool| ToolCall {
                id: tool.id,
                name: tool.name,
                arguments_json: if tool.json.trim().is_empty() {
                    "{}".to_string()
                } else {
                    tool.json
                },
            })
            .collect();
        conclude(
            PROVIDER,
            std::mem::take(&mut self.content),
            tool_calls,
            self.usage,
            finish_reason(self.stop_reason.as_deref()),
        )
    }
}

impl SseDecoder for StreamDecoder {
    fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut Vec<ChatEvent>,
    ) -> Result<Flow, BackendError> {
        if event.data.trim().is_empty() {
            return Ok(Flow::Continue);
        }
        let parsed: StreamEvent = serde_json::from_str(&event.data)
            .map_err(|e| protocol_error(PROVIDER, "stream event", e))?;
        match parsed {
            StreamEvent::MessageStart { message } => {
                self.usage.input_tokens = message.usage.input().unwrap_or(0);
                self.usage.output_tokens = message.usage.output_tokens.unwrap_or(0);
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                Block::Text { text } => self.text(text, out),
                Block::ToolUse { id, name, .. } => {
                    // The start block's `input` is always `{}`; the real
                    // input arrives as input_json_delta.
                    self.tools.insert(
                        index,
                        PartialTool {
                            id,
                            name,
                            json: String::new(),
                        },
                    );
                }
                Block::Other => {}
            },
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => self.text(text, out),
                BlockDelta::InputJsonDelta { partial_json } => {
                    let Some(tool) = self.tools.get_mut(&index) else {
                        return Err(protocol_error(
                            PROVIDER,
                            "stream",
                            format!("input_json_delta for block {index}, which is no tool_use"),
                        ));
                    };
                    tool.json.push_str(&partial_json);
                }
                BlockDelta::Other => {}
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                }
                // Counts here are cumulative.
                if let Some(output) = usage.output_tokens {
                    self.usage.output_tokens = output;
                }
                if let Some(input) = usage.input() {
                    self.usage.input_tokens = input;
                }
            }
            StreamEvent::MessageStop => {
                out.push(ChatEvent::Done(self.done()?));
                return Ok(Flow::Complete);
            }
            StreamEvent::Error { error } => {
                return Err(error.into_stream_error(PROVIDER, self.api_key.as_ref()));
            }
            StreamEvent::Other => {}
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
#[path = "anthropic_tests.rs"]
mod tests;
