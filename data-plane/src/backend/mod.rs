//! Model backends behind one trait: remote providers over their real HTTP
//! protocols (`openai.rs`: OpenAI and OpenAI-compatible; `anthropic.rs`:
//! Anthropic Messages) and local candle models (`crate::local`).
//!
//! A backend serves one model. It knows nothing of tenants, policy, routing
//! or retries: the pipeline decides what to call, and `reliability` decides
//! whether to call again, using [`ErrorKind::is_retryable`].

pub mod anthropic;
pub mod http;
pub mod openai;

use std::{fmt, time::Duration};

use futures::stream::BoxStream;
use tokio::time::Instant;

/// Who wrote a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Instructions.
    System,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

/// A tool call the model asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// Id unique within the conversation; the tool message answers it.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments as a JSON object (text, as the model wrote it).
    pub arguments_json: String,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// Author.
    pub role: Role,
    /// Text.
    pub content: String,
    /// For [`Role::Tool`]: the call this answers.
    pub tool_call_id: Option<String>,
    /// For [`Role::Assistant`]: calls the model asked for.
    pub tool_calls: Vec<ToolCall>,
}

impl ChatMessage {
    /// A plain text message.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_call_id: None,
            tool_calls: Vec::new(),
        }
    }
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolSpec {
    /// Name the model uses.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its arguments (an object schema), as text.
    pub parameters_json_schema: String,
}

/// One chat-completion call, provider-neutral.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    /// Conversation, oldest first, system prompt included.
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call. Empty = none.
    pub tools: Vec<ToolSpec>,
    /// Most output tokens. `None` = the model's limit.
    pub max_tokens: Option<u32>,
    /// Sampling temperature; `None` = the provider's default.
    pub temperature: Option<f32>,
    /// Nucleus mass; `None` = the provider's default.
    pub top_p: Option<f32>,
    /// Stop sequences (at most 4).
    pub stop: Vec<String>,
    /// Sampling seed, where the provider supports one.
    pub seed: Option<u64>,
    /// The call must finish by then (the smaller of the caller's deadline
    /// and the model's per-attempt timeout).
    pub deadline: Instant,
}

/// Token counts of one call, as the provider reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model asked for tool calls.
    ToolCalls,
    /// The provider's content filter cut the answer.
    ContentFilter,
}

/// A finished call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatResponse {
    /// Generated text.
    pub content: String,
    /// Tool calls the model asked for.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens used.
    pub usage: Usage,
    /// Why it stopped.
    pub finish: FinishReason,
    /// What the call cost in device time, for a model run on this node's
    /// hardware (LOCAL: the device's price per hour over the model's
    /// measured throughput); `None` = priced from the model's list prices.
    pub device_cost: Option<aios_model::Usd>,
}

/// One event of a streamed call: text as it arrives, then the whole
/// response (with usage) exactly once, last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatEvent {
    /// Text to append.
    Delta(String),
    /// The call finished.
    Done(ChatResponse),
}

/// What kind of failure a call had; decides retries and breakers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The provider throttled us (HTTP 429). Retryable.
    RateLimited,
    /// The provider failed or is overloaded (HTTP 5xx, 529). Retryable.
    Unavailable,
    /// No answer before the deadline or the per-attempt timeout. Retryable.
    Timeout,
    /// The connection failed, was reset, or a stream was cut. Retryable.
    Connection,
    /// The request itself is wrong (HTTP 400, 404, 413, 422). Permanent.
    InvalidRequest,
    /// Our provider credentials were refused (HTTP 401, 403). Permanent.
    Auth,
    /// The provider refused the content. Permanent.
    ContentPolicy,
    /// The provider answered something we cannot parse. Permanent.
    Protocol,
}

impl ErrorKind {
    /// Whether the same call may succeed if tried again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Unavailable | Self::Timeout | Self::Connection
        )
    }

    /// Stable UPPER_SNAKE name, for errors, spans and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "RATE_LIMITED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Timeout => "TIMEOUT",
            Self::Connection => "CONNECTION",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::Auth => "AUTH",
            Self::ContentPolicy => "CONTENT_POLICY",
            Self::Protocol => "PROTOCOL",
        }
    }

    /// The class of an HTTP status from a provider, `None` for success.
    pub fn from_http_status(status: u16) -> Option<Self> {
        Some(match status {
            200..=299 => return None,
            429 => Self::RateLimited,
            401 | 403 => Self::Auth,
            408 => Self::Timeout,
            400 | 404 | 409 | 413 | 415 | 422 => Self::InvalidRequest,
            // 529: Anthropic's "overloaded".
            500..=599 => Self::Unavailable,
            _ => Self::Protocol,
        })
    }
}

/// A failed call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct BackendError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, for logs and the caller (never contains credentials).
    pub message: String,
    /// The provider's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

impl BackendError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// A stream of [`ChatEvent`]s.
pub type ChatStream = BoxStream<'static, Result<ChatEvent, BackendError>>;

/// A model that answers chat requests.
#[tonic::async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Runs one call to completion.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError>;

    /// Runs one call, streaming text. The default calls [`Backend::chat`]
    /// and sends its text as one delta.
    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, BackendError> {
        let response = self.chat(request).await?;
        let events = vec![
            Ok(ChatEvent::Delta(response.content.clone())),
            Ok(ChatEvent::Done(response)),
        ];
        Ok(Box::pin(futures::stream::iter(events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds_are_exactly_the_transient_ones() {
        let retryable = [
            ErrorKind::RateLimited,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Connection,
        ];
        let permanent = [
            ErrorKind::InvalidRequest,
            ErrorKind::Auth,
            ErrorKind::ContentPolicy,
            ErrorKind::Protocol,
        ];
        assert!(retryable.iter().all(|k| k.is_retryable()));
        assert!(permanent.iter().all(|k| !k.is_retryable()));
    }

    #[test]
    fn http_statuses_classify() {
        assert_eq!(ErrorKind::from_http_status(200), None);
        assert_eq!(
            ErrorKind::from_http_status(429),
            Some(ErrorKind::RateLimited)
        );
        assert_eq!(
            ErrorKind::from_http_status(503),
            Some(ErrorKind::Unavailable)
        );
        assert_eq!(
            ErrorKind::from_http_status(529),
            Some(ErrorKind::Unavailable)
        );
        assert_eq!(ErrorKind::from_http_status(401), Some(ErrorKind::Auth));
        assert_eq!(
            ErrorKind::from_http_status(400),
            Some(ErrorKind::InvalidRequest)
        );
        assert_eq!(ErrorKind::from_http_status(408), Some(ErrorKind::Timeout));
    }
}
