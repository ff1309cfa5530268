//! Unit tests of `openai.rs`: request JSON, answer and stream parsing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use serde_json::json;
use tokio::time::Instant;

use super::*;
use crate::backend::{ChatMessage, ToolSpec};

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::text(Role::System, "be brief"),
            ChatMessage::text(Role::User, "weather in Oslo?"),
            ChatMessage {
                role: Role::Assistant,
                content: String::new(),
                tool_call_id: None,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "weather".into(),
                    arguments_json: r#"{"city":"Oslo"}"#.into(),
                }],
            },
            ChatMessage {
                role: Role::Tool,
                content: "rain".into(),
                tool_call_id: Some("call_1".into()),
                tool_calls: Vec::new(),
            },
        ],
        tools: vec![ToolSpec {
            name: "weather".into(),
            description: "Weather now".into(),
            parameters_json_schema: r#"{"type":"object","properties":{"city":{"type":"string"}}}"#
                .into(),
        }],
        max_tokens: Some(64),
        temperature: Some(0.5),
        top_p: None,
        stop: vec!["END".into()],
        seed: Some(7),
        deadline: Instant::now(),
    }
}

fn body_json(body: Result<Vec<u8>, BackendError>) -> Value {
    serde_json::from_slice(&body.unwrap()).unwrap()
}

#[test]
fn request_body_has_the_chat_completions_shape() {
    let body = body_json(request_body(
        "gpt-x",
        TokenLimitField::MaxTokens,
        &request(),
        false,
    ));
    assert_eq!(
        body,
        json!({
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "weather in Oslo?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            ],
            "tools": [{"type": "function", "function": {
                "name": "weather",
                "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }}],
            "max_tokens": 64,
            "temperature": 0.5,
            "stop": ["END"],
            "seed": 7,
        })
    );
}

#[test]
fn streamed_requests_ask_for_usage_and_openai_gets_max_completion_tokens() {
    let body = body_json(request_body(
        "gpt-x",
        TokenLimitField::MaxCompletionTokens,
        &request(),
        true,
    ));
    assert_eq!(body["stream"], json!(true));
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["max_completion_tokens"], json!(64));
    assert!(body.get("max_tokens").is_none());
}

#[test]
fn tools_with_bad_schemas_are_invalid_requests() {
    let mut bad = request();
    bad.tools[0].parameters_json_schema = "{not json".into();
    let err = request_body("m", TokenLimitField::MaxTokens, &bad, false).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

#[test]
fn completions_parse_text_tool_calls_and_usage() {
    let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":null,
        "tool_calls":[{"id":"call_9","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}}]},
        "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
    let response = parse_completion(body).unwrap();
    assert_eq!(response.content, "");
    assert_eq!(response.finish, FinishReason::ToolCalls);
    assert_eq!(
        response.tool_calls,
        vec![ToolCall {
            id: "call_9".into(),
            name: "weather".into(),
            arguments_json: r#"{"city":"Oslo"}"#.into(),
        }]
    );
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 12,
            output_tokens: 5
        }
    );
}

#[test]
fn filtered_refused_and_broken_completions_fail() {
    let filtered = br#"{"choices":[{"message":{"content":""},"finish_reason":"content_filter"}]}"#;
    assert_eq!(
        parse_completion(filtered).unwrap_err().kind,
        ErrorKind::ContentPolicy
    );
    let refused = br#"{"choices":[{"message":{"content":null,"refusal":"I can't."},"finish_reason":"stop"}]}"#;
    assert_eq!(
        parse_completion(refused).unwrap_err().kind,
        ErrorKind::ContentPolicy
    );
    for broken in [&br#"{"choices":[]}"#[..], b"{\"choices\": [", b"<html>"] {
        assert_eq!(
            parse_completion(broken).unwrap_err().kind,
            ErrorKind::Protocol
        );
    }
}

fn decode(data: &[&str]) -> (Vec<ChatEvent>, Result<Flow, BackendError>) {
    let mut decoder = StreamDecoder::default();
    let mut out = Vec::new();
    let mut flow = Ok(Flow::Continue);
    for d in data {
        flow = decoder.on_event(
            SseEvent {
                event: String::new(),
                data: (*d).to_string(),
            },
            &mut out,
        );
        if flow.is_err() {
            break;
        }
    }
    (out, flow)
}

#[test]
fn stream_chunks_assemble_text_tool_calls_and_usage() {
    let (events, flow) = decode(&[
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"weather","arguments":""}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"time","arguments":"{}"}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Oslo\"}"}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#,
        "[DONE]",
    ]);
    assert_eq!(flow.unwrap(), Flow::Complete);
    assert_eq!(
        events[..2],
        [
            ChatEvent::Delta("Hel".into()),
            ChatEvent::Delta("lo".into())
        ]
    );
    let ChatEvent::Done(response) = &events[2] else {
        panic!("{events:?}")
    };
    assert_eq!(response.content, "Hello");
    assert_eq!(response.finish, FinishReason::ToolCalls);
    assert_eq!(response.tool_calls.len(), 2);
    assert_eq!(response.tool_calls[0].id, "call_a");
    assert_eq!(response.tool_calls[0].arguments_json, r#"{"city":"Oslo"}"#);
    assert_eq!(response.tool_calls[1].name, "time");
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 9,
            output_tokens: 4
        }
    );
}

#[test]
fn stream_errors_and_garbage_fail_the_stream() {
    let (events, flow) = decode(&[
        r#"{"choices":[{"delta":{"content":"a"}}]}"#,
        r#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
    ]);
    assert_eq!(events, vec![ChatEvent::Delta("a".into())]);
    assert_eq!(flow.unwrap_err().kind, ErrorKind::Unavailable);
    let (_, flow) = decode(&["{nope"]);
    assert_eq!(flow.unwrap_err().kind, ErrorKind::Protocol);
    let (_, flow) = decode(&[
        r#"{"choices":[{"delta":{},"finish_reason":"content_filter"}]}"#,
        "[DONE]",
    ]);
    assert_eq!(flow.unwrap_err().kind, ErrorKind::ContentPolicy);
}

#[test]
fn config_from_a_catalog_model() {
    let model = Model {
        provider: ModelProvider::OpenaiCompatible,
        provider_model: "llama".into(),
        endpoint: Some("http://vllm:8000/v1".into()),
        api_key_env: None,
        api_key_file: None,
        path: None,
        capabilities: Vec::new(),
        input_price_per_mtok: aios_model::Usd::ZERO,
        output_price_per_mtok: aios_model::Usd::ZERO,
        context_window_tokens: None,
        max_output_tokens: None,
        timeout: Duration::from_secs(5),
    };
    let config = OpenAiConfig::from_model(&model, None);
    assert_eq!(config.base_url, "http://vllm:8000/v1");
    assert_eq!(config.token_limit_field, TokenLimitField::MaxTokens);
    let backend = OpenAiBackend::new(config).unwrap();
    assert_eq!(
        backend.uri.to_string(),
        "http://vllm:8000/v1/chat/completions"
    );
    let openai = OpenAiConfig::from_model(
        &Model {
            provider: ModelProvider::Openai,
            endpoint: None,
            ..model
        },
        Some(ProviderKey::new("sk-1")),
    );
    assert_eq!(openai.base_url, DEFAULT_BASE_URL);
    assert_eq!(
        openai.token_limit_field,
        TokenLimitField::MaxCompletionTokens
    );
    let backend = OpenAiBackend::new(openai).unwrap();
    assert!(!format!("{backend:?}").contains("sk-1"));
    assert_eq!(backend.headers["authorization"], "Bearer sk-1");
}
