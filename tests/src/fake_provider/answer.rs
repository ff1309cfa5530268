//! The fake's answers in both protocols, whole and as SSE events, and the
//! bodies that send them (with pauses and injected failures).

use std::{io, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde_json::{Value, json};

use super::{Protocol, Reply};

/// One answer, in either protocol.
#[derive(Debug)]
pub(super) struct Answer {
    protocol: Protocol,
    id: u64,
    model: String,
    text: String,
    tool: Option<(String, String)>,
    finish: Finish,
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    Stop,
    Length,
    Tool,
    Refusal,
}

impl Answer {
    pub(super) fn new(protocol: Protocol, id: u64, body: &Value, reply: &Reply) -> Self {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let mut input_tokens = words(&body["messages"]);
        if protocol == Protocol::Anthropic {
            input_tokens += words(&body["system"]);
        }
        let mut tool = None;
        let mut text = match (tool_result(protocol, &messages), reply) {
            (Some(result), _) => format!("tool said: {result}"),
            (None, Reply::Echo) => format!("echo: {}", last_user_text(&messages)),
            (None, Reply::Text(text)) => text.clone(),
            (
                None,
                Reply::ToolCall {
                    name,
                    arguments_json,
                },
            ) => {
                tool = Some((name.clone(), arguments_json.clone()));
                String::new()
            }
        };
        let mut finish = if tool.is_some() {
            Finish::Tool
        } else {
            Finish::Stop
        };
        let limit = body["max_tokens"]
            .as_u64()
            .or_else(|| body["max_completion_tokens"].as_u64());
        if let Some(limit) = limit
            && text.split_whitespace().count() as u64 > limit
        {
            text = text
                .split_whitespace()
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .collect::<Vec<_>>()
                .join(" ");
            finish = Finish::Length;
        }
        let output_tokens = text.split_whitespace().count() as u64
            + tool
                .as_ref()
                .map_or(0, |(_, args)| 1 + args.split_whitespace().count() as u64);
        Self {
            protocol,
            id,
            model: body["model"].as_str().unwrap_or_default().to_string(),
            text,
            tool,
            finish,
            input_tokens: input_tokens.max(1),
            output_tokens,
        }
    }

    pub(super) fn refusal(mut self) -> Self {
        self.text.clear();
        self.tool = None;
        self.finish = Finish::Refusal;
        self.output_tokens = 0;
        self
    }

    pub(super) fn respond(self, stream: bool, stall: Option<Duration>) -> Response {
        if stream {
            let mut steps: Vec<Step> = Vec::new();
            for (i, event) in self.events().into_iter().enumerate() {
                // After the first text delta (event 2 in both protocols).
                if i == 3
                    && let Some(stall) = stall
                {
                    steps.push(Step::Sleep(stall));
                }
                // Each event in two chunks, cut mid-line (mid-character, even):
                // the client must reassemble them.
                let half = event.len() / 2;
                steps.push(Step::Data(event.slice(..half)));
                steps.push(Step::Data(event.slice(half..)));
            }
            sse_response(steps)
        } else {
            let body = Bytes::from(self.json().to_string());
            let mut steps = Vec::new();
            if let Some(stall) = stall {
                steps.push(Step::Sleep(stall));
            }
            steps.push(Step::Data(body));
            body_response("application/json", steps)
        }
    }

    fn finish_reason(&self) -> &'static str {
        match (self.protocol, self.finish) {
            (Protocol::OpenAi, Finish::Stop) => "stop",
            (Protocol::OpenAi, Finish::Length) => "length",
            (Protocol::OpenAi, Finish::Tool) => "tool_calls",
            (Protocol::OpenAi, Finish::Refusal) => "content_filter",
            (Protocol::Anthropic, Finish::Stop) => "end_turn",
            (Protocol::Anthropic, Finish::Length) => "max_tokens",
            (Protocol::Anthropic, Finish::Tool) => "tool_use",
            (Protocol::Anthropic, Finish::Refusal) => "refusal",
        }
    }

    fn tool_id(&self) -> String {
        match self.protocol {
            Protocol::OpenAi => format!("call_fake_{}", self.id),
            Protocol::Anthropic => format!("toolu_fake_{}", self.id),
        }
    }

    /// The non-streamed body.
    pub(super) fn json(&self) -> Value {
        match self.protocol {
            Protocol::OpenAi => {
                let content = if self.tool.is_some() && self.text.is_empty() {
                    Value::Null
                } else {
                    json!(self.text)
                };
                let mut message =
                    json!({ "role": "assistant", "content": content, "refusal": null });
                if let Some((name, args)) = &self.tool {
                    message["tool_calls"] = json!([{
                        "id": self.tool_id(), "type": "function",
                        "function": { "name": name, "arguments": args },
                    }]);
                }
                json!({
                    "id": format!("chatcmpl-fake-{}", self.id),
                    "object": "chat.completion",
                    "created": 1_700_000_000,
                    "model": self.model,
                    "choices": [{
                        "index": 0,
                        "message": message,
                        "logprobs": null,
                        "finish_reason": self.finish_reason(),
                    }],
                    "usage": self.openai_usage(),
                })
            }
            Protocol::Anthropic => {
                let mut content = Vec::new();
                if !self.text.is_empty() {
                    content.push(json!({ "type": "text", "text": self.text }));
                }
                if let Some((name, args)) = &self.tool {
                    let input: Value = serde_json::from_str(args).unwrap_or(json!({}));
                    content.push(json!({
                        "type": "tool_use",
                        "id": self.tool_id(),
                        "name": name,
                        "input": input,
                    }));
                }
                json!({
                    "id": format!("msg_fake_{}", self.id),
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": content,
                    "stop_reason": self.finish_reason(),
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": self.input_tokens,
                        "output_tokens": self.output_tokens,
                    },
                })
            }
        }
    }

    fn openai_usage(&self) -> Value {
        json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        })
    }

    /// The streamed body, one SSE event each.
    pub(super) fn events(&self) -> Vec<Bytes> {
        match self.protocol {
            Protocol::OpenAi => self.openai_events(),
            Protocol::Anthropic => self.anthropic_events(),
        }
    }

    /// The text as streamed: word by word, spaces kept.
    fn pieces(&self) -> impl Iterator<Item = &str> {
        self.text.split_inclusive(' ')
    }

    fn openai_events(&self) -> Vec<Bytes> {
        let chunk = |delta: Value, finish: Value| {
            let chunk = json!({
                "id": format!("chatcmpl-fake-{}", self.id),
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish,
                }],
            });
            Bytes::from(format!("data: {chunk}\n\n"))
        };
        // A comment first, as some providers send while they queue.
        let mut events = vec![
            Bytes::from_static(b": PROCESSING\n\n"),
            chunk(json!({ "role": "assistant", "content": "" }), Value::Null),
        ];
        events.extend(
            self.pieces()
                .map(|p| chunk(json!({ "content": p }), Value::Null)),
        );
        if let Some((name, args)) = &self.tool {
            let start = json!({ "tool_calls": [{
                "index": 0,
                "id": self.tool_id(),
                "type": "function",
                "function": { "name": name, "arguments": "" },
            }] });
            events.push(chunk(start, Value::Null));
            let (a, b) = halves(args);
            for part in [a, b] {
                let more =
                    json!({ "tool_calls": [{ "index": 0, "function": { "arguments": part } }] });
                events.push(chunk(more, Value::Null));
            }
        }
        events.push(chunk(json!({}), json!(self.finish_reason())));
        let usage = json!({
            "id": format!("chatcmpl-fake-{}", self.id),
            "object": "chat.completion.chunk",
            "model": self.model,
            "choices": [],
            "usage": self.openai_usage(),
        });
        events.push(Bytes::from(format!("data: {usage}\n\n")));
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }

    fn anthropic_events(&self) -> Vec<Bytes> {
        let event = |data: Value| {
            let name = data["type"].as_str().unwrap_or_default().to_string();
            Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
        };
        let message = json!({
            "id": format!("msg_fake_{}", self.id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": { "input_tokens": self.input_tokens, "output_tokens": 1 },
        });
        let mut events = vec![
            event(json!({ "type": "message_start", "message": message })),
            event(json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": { "type": "text", "text": "" },
            })),
        ];
        events.extend(self.pieces().map(|text| {
            event(json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": { "type": "text_delta", "text": text },
            }))
        }));
        events.push(event(json!({ "type": "ping" })));
        events.push(event(json!({ "type": "content_block_stop", "index": 0 })));
        if let Some((name, args)) = &self.tool {
            events.push(event(json!({
                "type": "content_block_start",
                "index": 1,
                "content_block": { "type": "tool_use", "id": self.tool_id(), "name": name, "input": {} },
            })));
            let (a, b) = halves(args);
            for part in [a, b] {
                events.push(event(json!({
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": { "type": "input_json_delta", "partial_json": part },
                })));
            }
            events.push(event(json!({ "type": "content_block_stop", "index": 1 })));
        }
        events.push(event(json!({
            "type": "message_delta",
            "delta": { "stop_reason": self.finish_reason(), "stop_sequence": null },
            "usage": { "output_tokens": self.output_tokens },
        })));
        events.push(event(json!({ "type": "message_stop" })));
        events
    }
}

/// `text` in two, at a character boundary near the middle.
fn halves(text: &str) -> (&str, &str) {
    let middle = (0..=text.len() / 2)
        .rev()
        .find(|&at| text.is_char_boundary(at))
        .unwrap_or(0);
    text.split_at(middle)
}

/// Rough token count: words in every string of `value`, less the structure
/// (roles, types, ids).
fn words(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(items) => items.iter().map(words).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "role" | "type" | "id" | "tool_call_id" | "tool_use_id"
                )
            })
            .map(|(_, v)| words(v))
            .sum(),
        _ => 0,
    }
}

/// The text of a message's content: a string, or text parts / blocks.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str().or_else(|| p["content"].as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn last_user_text(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default()
}

/// The tool result the conversation ends with, if it does.
fn tool_result(protocol: Protocol, messages: &[Value]) -> Option<String> {
    let last = messages.last()?;
    match protocol {
        Protocol::OpenAi => (last["role"] == "tool").then(|| content_text(&last["content"])),
        Protocol::Anthropic => {
            let results: Vec<String> = last["content"]
                .as_array()?
                .iter()
                .filter(|b| b["type"] == "tool_result")
                .map(|b| content_text(&b["content"]))
                .collect();
            (!results.is_empty()).then(|| results.join(" "))
        }
    }
}

// === Bodies ===

/// One step of a body being sent.
#[derive(Debug)]
pub(super) enum Step {
    Data(Bytes),
    Sleep(Duration),
    /// Fails the body: hyper resets the connection mid-answer.
    Fail,
}

pub(super) fn sse_response(steps: Vec<Step>) -> Response {
    body_response("text/event-stream", steps)
}

pub(super) fn body_response(content_type: &'static str, steps: Vec<Step>) -> Response {
    let stream = futures::stream::iter(steps).filter_map(|step| async move {
        match step {
            Step::Data(bytes) => Some(Ok(bytes)),
            Step::Sleep(delay) => {
                tokio::time::sleep(delay).await;
                None
            }
            Step::Fail => Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fault injected: stream cut",
            ))),
        }
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}
