//! The OpenAI wire shapes the HTTP edge reads and writes. Responses are
//! typed and borrow from the outcome: serialising one writes the JSON once,
//! with no intermediate `Value` tree (this runs on every request).

use serde::{Deserialize, Serialize};

/// OpenAI's list envelope.
#[derive(Serialize)]
pub(super) struct List<T> {
    pub(super) object: &'static str,
    pub(super) data: Vec<T>,
}

impl<T> List<T> {
    pub(super) fn new(data: Vec<T>) -> Self {
        Self {
            object: "list",
            data,
        }
    }
}

#[derive(Serialize)]
pub(super) struct ModelEntry<'a> {
    pub(super) id: &'a str,
    pub(super) object: &'static str,
    pub(super) created: u64,
    pub(super) owned_by: &'static str,
    pub(super) aios: ModelKind,
}

#[derive(Serialize)]
pub(super) struct ModelKind {
    pub(super) kind: &'static str,
}

#[derive(Debug, Deserialize)]
pub(super) struct EmbeddingsRequest {
    pub(super) model: String,
    pub(super) input: EmbeddingInput,
    #[serde(default)]
    pub(super) encoding_format: Option<String>,
    #[serde(default)]
    pub(super) user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Serialize)]
pub(super) struct EmbeddingsBody<'a> {
    #[serde(flatten)]
    pub(super) list: List<EmbeddingEntry<'a>>,
    pub(super) model: &'a str,
    pub(super) usage: EmbeddingsUsage,
    pub(super) aios: EmbeddingsAios<'a>,
}

#[derive(Serialize)]
pub(super) struct EmbeddingEntry<'a> {
    pub(super) object: &'static str,
    pub(super) index: usize,
    pub(super) embedding: Embedding<'a>,
}

/// A vector as floats, or as base64 of its little-endian bytes.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Embedding<'a> {
    Float(&'a [f32]),
    Base64(String),
}

#[derive(Serialize)]
pub(super) struct EmbeddingsUsage {
    pub(super) prompt_tokens: u64,
    pub(super) total_tokens: u64,
}

#[derive(Serialize)]
pub(super) struct EmbeddingsAios<'a> {
    pub(super) cost_usd: f64,
    pub(super) truncated: &'a [usize],
}

/// `{"error": {...}}`, as OpenAI's SDKs parse it.
#[derive(Serialize)]
pub(super) struct ErrorBody<'a> {
    pub(super) error: ErrorFields<'a>,
}

#[derive(Serialize)]
pub(super) struct ErrorFields<'a> {
    pub(super) message: String,
    #[serde(rename = "type")]
    pub(super) kind: &'a str,
    pub(super) param: Option<&'a str>,
    pub(super) code: &'a str,
}

impl<'a> ErrorBody<'a> {
    pub(super) fn new(kind: &'a str, code: &'a str, message: String) -> Self {
        Self {
            error: ErrorFields {
                message,
                kind,
                param: None,
                code,
            },
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ChatCompletionRequest {
    pub(super) model: String,
    pub(super) messages: Vec<WireMessage>,
    #[serde(default)]
    pub(super) max_tokens: Option<u32>,
    #[serde(default)]
    pub(super) max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub(super) temperature: Option<f32>,
    #[serde(default)]
    pub(super) top_p: Option<f32>,
    #[serde(default)]
    pub(super) stop: Option<Stop>,
    #[serde(default)]
    pub(super) seed: Option<u64>,
    #[serde(default)]
    pub(super) stream: bool,
    #[serde(default)]
    pub(super) user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub(super) struct WireMessage {
    pub(super) role: String,
    #[serde(default)]
    pub(super) content: Option<Content>,
    #[serde(default)]
    pub(super) tool_call_id: Option<String>,
    #[serde(default)]
    pub(super) tool_calls: Vec<WireToolCall>,
}

/// A content part; only text parts carry text.
#[derive(Debug, Deserialize)]
pub(super) struct ContentPart {
    #[serde(default)]
    pub(super) text: Option<String>,
}

/// Text, or content parts of which the text ones are used.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub(super) struct WireToolCall {
    pub(super) id: String,
    pub(super) function: WireFunction,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireFunction {
    pub(super) name: String,
    #[serde(default)]
    pub(super) arguments: String,
}

/// OpenAI's `usage` object.
#[derive(Serialize)]
pub(super) struct WireUsage {
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
    pub(super) total_tokens: u64,
}

#[derive(Serialize)]
pub(super) struct ChunkBody<'a> {
    pub(super) id: &'a str,
    pub(super) object: &'static str,
    pub(super) created: u64,
    pub(super) model: &'a str,
    pub(super) choices: [ChunkChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) usage: Option<WireUsage>,
}

#[derive(Serialize)]
pub(super) struct ChunkChoice<'a> {
    pub(super) index: u32,
    pub(super) delta: Delta<'a>,
    pub(super) finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
pub(super) struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) content: Option<&'a str>,
}

#[derive(Serialize)]
pub(super) struct CompletionBody<'a> {
    pub(super) id: &'a str,
    pub(super) object: &'static str,
    pub(super) created: u64,
    pub(super) model: &'a str,
    pub(super) choices: [CompletionChoice<'a>; 1],
    pub(super) usage: WireUsage,
    pub(super) aios: AiosFields<'a>,
}

#[derive(Serialize)]
pub(super) struct CompletionChoice<'a> {
    pub(super) index: u32,
    pub(super) message: AssistantMessage<'a>,
    pub(super) finish_reason: &'static str,
}

#[derive(Serialize)]
pub(super) struct AssistantMessage<'a> {
    pub(super) role: &'static str,
    pub(super) content: &'a str,
}

/// What aios adds to a completion: cost, cache hit, the routing decision.
#[derive(Serialize)]
pub(super) struct AiosFields<'a> {
    pub(super) cost_usd: f64,
    pub(super) cache_hit: bool,
    pub(super) route: Option<RouteFields<'a>>,
}

#[derive(Serialize)]
pub(super) struct RouteFields<'a> {
    pub(super) tier: &'a str,
    pub(super) complexity: &'static str,
    pub(super) explanation: &'a str,
    pub(super) failed_models: &'a [String],
}
