//! OpenAI and OpenAI-compatible chat completions over HTTP
//! (`POST {base}/chat/completions`), whole or streamed as server-sent events
//! with `stream_options.include_usage`.
//!
//! OpenAI-compatible servers (vLLM, llama.cpp, Ollama, LiteLLM, …) follow the
//! same shape with gaps: some send no usage, some omit a tool call's `index`,
//! some know only `max_tokens`. The parser takes what is there.

use std::{collections::BTreeMap, fmt, time::Duration};

use aios_model::{Model, ModelProvider};
use http::{HeaderMap, HeaderValue, Uri, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Backend, BackendError, ChatEvent, ChatRequest, ChatResponse, ChatStream, ErrorKind,
    FinishReason, Role, ToolCall, Usage,
    http::{
        ConfigError, DEFAULT_CONNECT_TIMEOUT, Flow, HttpClient, ProviderKey, SseDecoder, SseEvent,
        WireError, base_headers, check_status, conclude, endpoint, f32_json, insert_header,
        protocol_error, sse_stream, success_body, with_deadline,
    },
};

/// OpenAI's public API.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

const PROVIDER: &str = "openai";

/// The request field that carries the output-token limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenLimitField {
    /// `max_tokens`: what every OpenAI-compatible server understands; OpenAI
    /// deprecated it and its reasoning models refuse it.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: what OpenAI itself wants now.
    MaxCompletionTokens,
}

/// How to reach one OpenAI or OpenAI-compatible model.
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// Base URL, up to and including the version (`…/v1`).
    pub base_url: String,
    /// The model id at the provider.
    pub model: String,
    /// Sent as `Authorization: Bearer …`; `None` for servers without auth.
    pub api_key: Option<ProviderKey>,
    /// Extra headers on every call (`OpenAI-Organization`, a gateway's own).
    pub headers: Vec<(String, String)>,
    /// Which field carries `max_tokens`.
    pub token_limit_field: TokenLimitField,
    /// TCP connect timeout, for clients this backend builds itself.
    pub connect_timeout: Duration,
}

impl OpenAiConfig {
    /// `model` at OpenAI's public API with `api_key`.
    pub fn new(model: impl Into<String>, api_key: Option<ProviderKey>) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_string(),
            model: model.into(),
            api_key,
            headers: Vec::new(),
            token_limit_field: TokenLimitField::MaxCompletionTokens,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The config of a catalog model (OPENAI or OPENAI_COMPATIBLE), with
    /// the key the caller read from the model's `api_key_env`. OpenAI gets
    /// `max_completion_tokens`, compatible servers `max_tokens`.
    pub fn from_model(model: &Model, api_key: Option<ProviderKey>) -> Self {
        let token_limit_field = match model.provider {
            ModelProvider::Openai => TokenLimitField::MaxCompletionTokens,
            _ => TokenLimitField::MaxTokens,
        };
        Self {
            base_url: model
                .endpoint
                .clone()
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_string()),
            model: model.provider_model.clone(),
            api_key,
            headers: Vec::new(),
            token_limit_field,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// One OpenAI(-compatible) model.
pub struct OpenAiBackend {
    client: HttpClient,
    uri: Uri,
    headers: HeaderMap,
    model: String,
    token_limit_field: TokenLimitField,
    api_key: Option<ProviderKey>,
}

impl fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiBackend")
            .field("uri", &self.uri)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl OpenAiBackend {
    /// A backend with its own connection pool.
    pub fn new(config: OpenAiConfig) -> Result<Self, ConfigError> {
        let client = HttpClient::new(config.connect_timeout)?;
        Self::with_client(config, client)
    }

    /// A backend on a shared connection pool.
    pub fn with_client(config: OpenAiConfig, client: HttpClient) -> Result<Self, ConfigError> {
        let uri = endpoint(&config.base_url, "/chat/completions")?;
        let mut headers = base_headers(&config.headers)?;
        if let Some(key) = &config.api_key {
            let bearer = format!("Bearer {}", key.expose());
            insert_header(&mut headers, "authorization", &bearer, true)?;
        }
        Ok(Self {
            client,
            uri,
            headers,
            model: config.model,
            token_limit_field: config.token_limit_field,
            api_key: config.api_key,
        })
    }

    async fn send(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<http::Response<hyper::body::Incoming>, BackendError> {
        let bytes = request_body(&self.model, self.token_limit_field, request, stream)?;
        let mut headers = self.headers.clone();
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        self.client.post(PROVIDER, &self.uri, &headers, bytes).await
    }
}

#[tonic::async_trait]
impl Backend for OpenAiBackend {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        with_deadline(PROVIDER, request.deadline, async {
            let response = self.send(request, false).await?;
            let body = success_body(PROVIDER, self.api_key.as_ref(), response).await?;
            parse_completion(&body)
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

/// The JSON body of a chat-completions call, serialised straight from the
/// request (no intermediate `Value` tree: this runs on every remote call).
fn request_body(
    model: &str,
    token_limit_field: TokenLimitField,
    request: &ChatRequest,
    stream: bool,
) -> Result<Vec<u8>, BackendError> {
    let tools = request
        .tools
        .iter()
        .map(|tool| {
            let parameters: Value =
                serde_json::from_str(&tool.parameters_json_schema).map_err(|e| {
                    BackendError::new(
                        ErrorKind::InvalidRequest,
                        format!("tool {:?}: parameters are not JSON: {e}", tool.name),
                    )
                })?;
            Ok(OutTool {
                kind: "function",
                function: OutFunction {
                    name: &tool.name,
                    description: &tool.description,
                    parameters,
                },
            })
        })
        .collect::<Result<Vec<_>, BackendError>>()?;
    let (max_tokens, max_completion_tokens) = match token_limit_field {
        TokenLimitField::MaxTokens => (request.max_tokens, None),
        TokenLimitField::MaxCompletionTokens => (None, request.max_tokens),
    };
    let body = OutRequest {
        model,
        messages: request.messages.iter().map(OutMessage::from).collect(),
        tools,
        max_tokens,
        max_completion_tokens,
        temperature: request.temperature.map(f32_json),
        top_p: request.top_p.map(f32_json),
        stop: &request.stop,
        seed: request.seed,
        stream: stream.then_some(true),
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
    };
    // Sized for the messages and the fields around them: `to_vec` starts at
    // 128 bytes and grows a prompt's body three or four times.
    let text: usize = request.messages.iter().map(|m| m.content.len()).sum();
    let mut out = Vec::with_capacity(text + BODY_OVERHEAD);
    serde_json::to_writer(&mut out, &body)
        .map_err(|e| BackendError::new(ErrorKind::InvalidRequest, format!("{PROVIDER}: {e}")))?;
    Ok(out)
}

/// Bytes of a request body besides its messages' text (keys, model,
/// parameters), for sizing it up front.
const BODY_OVERHEAD: usize = 256;

#[derive(Serialize)]
struct OutRequest<'a> {
    model: &'a str,
    messages: Vec<OutMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<Value>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct OutTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunction<'a>,
}

#[derive(Serialize)]
struct OutFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: Value,
}

/// One message as OpenAI takes it: an assistant turn with tool calls has
/// `content: null` when it said nothing; a tool result names its call.
#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolCall<'a>>,
}

#[derive(Serialize)]
struct OutToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutCall<'a>,
}

#[derive(Serialize)]
struct OutCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

impl<'a> From<&'a super::ChatMessage> for OutMessage<'a> {
    fn from(message: &'a super::ChatMessage) -> Self {
        let content = Some(message.content.as_str());
        let (role, tool_call_id) = match message.role {
            Role::System => ("system", None),
            Role::User => ("user", None),
            Role::Tool => (
                "tool",
                Some(message.tool_call_id.as_deref().unwrap_or_default()),
            ),
            Role::Assistant => ("assistant", None),
        };
        let tool_calls: Vec<OutToolCall<'a>> = match message.role {
            Role::Assistant => message
                .tool_calls
                .iter()
                .map(|call| OutToolCall {
                    id: &call.id,
                    kind: "function",
                    function: OutCall {
                        name: &call.name,
                        arguments: &call.arguments_json,
                    },
                })
                .collect(),
            _ => Vec::new(),
        };
        let content = match tool_calls.is_empty() {
            false if message.content.is_empty() => None,
            _ => content,
        };
        Self {
            role,
            tool_call_id,
            content,
            tool_calls,
        }
    }
}

// === Response ===

#[derive(Debug, Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: WireMessage,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    content: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
    refusal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Clone, Copy, Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
}

fn finish_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("content_filter") => FinishReason::ContentFilter,
        // "stop", and servers that send nothing or something of their own.
        _ => FinishReason::Stop,
    }
}

/// A refusal (structured outputs' `refusal` field) with no content.
fn refused(refusal: &str) -> BackendError {
    BackendError::new(
        ErrorKind::ContentPolicy,
        format!("{PROVIDER}: the model refused: {refusal}"),
    )
}

/// A non-streamed answer.
fn parse_completion(body: &[u8]) -> Result<ChatResponse, BackendError> {
    let completion: Completion =
        serde_json::from_slice(body).map_err(|e| protocol_error(PROVIDER, "answer", e))?;
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err(protocol_error(PROVIDER, "answer", "no choices"));
    };
    let content = choice.message.content.unwrap_or_default();
    let tool_calls: Vec<ToolCall> = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|call| ToolCall {
            id: call.id,
            name: call.function.name,
            arguments_json: call.function.arguments,
        })
        .collect();
    if let Some(refusal) = choice.message.refusal.filter(|r| !r.is_empty())
        && content.is_empty()
        && tool_calls.is_empty()
    {
        return Err(refused(&refusal));
    }
    conclude(
        PROVIDER,
        content,
        tool_calls,
        completion.usage.map(Usage::from).unwrap_or_default(),
        finish_reason(choice.finish_reason.as_deref()),
    )
}

// === Streaming ===

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    content: Option<String>,
    tool_calls: Option<Vec<DeltaToolCall>>,
    refusal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeltaToolCall {
    index: Option<u32>,
    id: Option<String>,
    function: Option<DeltaFunction>,
}

#[derive(Debug, Deserialize)]
struct DeltaFunction {
    name: Option<String>,
    arguments: Option<String>,
}

/// A tool call being assembled from deltas.
#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Chat-completion chunks to [`ChatEvent`]s: text deltas as they come, tool
/// calls assembled by index, usage from the last chunk, done at `[DONE]`.
#[derive(Debug, Default)]
struct StreamDecoder {
    api_key: Option<ProviderKey>,
    content: String,
    refusal: String,
    calls: BTreeMap<u32, PartialCall>,
    usage: Option<Usage>,
    finish: Option<String>,
}

impl StreamDecoder {
    fn tool_call_delta(&mut self, delta: DeltaToolCall) {
        // Servers that omit `index` start a new call with each new id.
        let last = self.calls.keys().next_back().copied();
        let index = match (delta.index, &delta.id, last) {
            (Some(index), _, _) => index,
            (None, Some(id), Some(last)) if self.calls.get(&last).is_some_and(|c| &c.id == id) => {
                last
            }
            (None, Some(_), Some(last)) => last + 1,
            (None, _, last) => last.unwrap_or(0),
        };
        let call = self.calls.entry(index).or_default();
        if let Some(id) = delta.id {
            call.id = id;
        }
        if let Some(function) = delta.function {
            if let Some(name) = function.name {
                call.name.push_str(&name);
            }
            if let Some(arguments) = function.arguments {
                call.arguments.push_str(&arguments);
            }
        }
    }

    fn done(&mut self) -> Result<ChatResponse, BackendError> {
        let content = std::mem::take(&mut self.content);
        let tool_calls: Vec<ToolCall> = std::mem::take(&mut self.calls)
            .into_values()
            .map(|call| ToolCall {
                id: call.id,
                name: call.name,
                arguments_json: call.arguments,
            })
            .collect();
        if !self.refusal.is_empty() && content.is_empty() && tool_calls.is_empty() {
            return Err(refused(&self.refusal));
        }
        conclude(
            PROVIDER,
            content,
            tool_calls,
            self.usage.unwrap_or_default(),
            finish_reason(self.finish.as_deref()),
        )
    }
}

impl SseDecoder for StreamDecoder {
    fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut Vec<ChatEvent>,
    ) -> Result<Flow, BackendError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            out.push(ChatEvent::Done(self.done()?));
            return Ok(Flow::Complete);
        }
        if data.is_empty() {
            return Ok(Flow::Continue);
        }
        let chunk: Chunk =
            serde_json::from_str(data).map_err(|e| protocol_error(PROVIDER, "stream chunk", e))?;
        if let Some(error) = chunk.error {
            return Err(error.into_stream_error(PROVIDER, self.api_key.as_ref()));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        // One choice is asked for (no `n`); others would be ignored.
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    self.content.push_str(&text);
                    out.push(ChatEvent::Delta(text));
                }
                if let Some(refusal) = delta.refusal {
                    self.refusal.push_str(&refusal);
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    self.tool_call_delta(call);
                }
            }
            if choice.finish_reason.is_some() {
                self.finish = choice.finish_reason;
            }
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
