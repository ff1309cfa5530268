//! Unit tests of `anthropic.rs`: request JSON, answer and stream parsing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use tokio::time::Instant;

use super::*;
use crate::backend::ToolSpec;

fn tool_result(id: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: Role::Tool,
        content: content.into(),
        tool_call_id: Some(id.into()),
        tool_calls: Vec::new(),
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::text(Role::System, "be brief"),
            ChatMessage::text(Role::User, "weather and time in Oslo?"),
            ChatMessage {
                role: Role::Assistant,
                content: "Checking.".into(),
                tool_call_id: None,
                tool_calls: vec![
                    ToolCall {
                        id: "toolu_1".into(),
                        name: "weather".into(),
                        arguments_json: r#"{"city":"Oslo"}"#.into(),
                    },
                    ToolCall {
                        id: "toolu_2".into(),
                        name: "time".into(),
                        arguments_json: String::new(),
                    },
                ],
            },
            tool_result("toolu_1", "rain"),
            tool_result("toolu_2", "noon"),
            ChatMessage::text(Role::System, "answer in English"),
        ],
        tools: vec![ToolSpec {
            name: "weather".into(),
            description: "Weather now".into(),
            parameters_json_schema: r#"{"type":"object"}"#.into(),
        }],
        max_tokens: None,
        temperature: Some(0.25),
        top_p: Some(0.9),
        stop: vec!["END".into()],
        seed: Some(7),
        deadline: Instant::now(),
    }
}

#[test]
fn request_body_has_the_messages_shape() {
    let body = request_body("claude-x", 321, &request(), false).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "claude-x",
            "max_tokens": 321,
            "system": "be brief\n\nanswer in English",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "weather and time in Oslo?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "noon"},
                ]},
            ],
            "tools": [{"name": "weather", "description": "Weather now", "input_schema": {"type": "object"}}],
            "temperature": 0.25,
            "top_p": 0.9,
            "stop_sequences": ["END"],
        })
    );
    let mut with_max = request();
    with_max.max_tokens = Some(50);
    let body = request_body("claude-x", 321, &with_max, true).unwrap();
    assert_eq!(body["max_tokens"], json!(50));
    assert_eq!(body["stream"], json!(true));
}

#[test]
fn bad_tool_arguments_and_orphan_results_are_invalid_requests() {
    let mut bad = request();
    bad.messages[2].tool_calls[0].arguments_json = "{city".into();
    let err = request_body("m", 1, &bad, false).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    let mut orphan = request();
    orphan.messages[3].tool_call_id = None;
    let err = request_body("m", 1, &orphan, false).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

#[test]
fn messages_parse_text_tool_use_and_usage() {
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
        "content":[{"type":"thinking","thinking":"hm","signature":"s"},{"type":"text","text":"Let me check."},
                   {"type":"tool_use","id":"toolu_9","name":"weather","input":{"city":"Oslo"}}],
        "stop_reason":"tool_use","stop_sequence":null,
        "usage":{"input_tokens":20,"cache_read_input_tokens":100,"output_tokens":7}}"#;
    let response = parse_message(body).unwrap();
    assert_eq!(response.content, "Let me check.");
    assert_eq!(response.finish, FinishReason::ToolCalls);
    assert_eq!(
        response.tool_calls,
        vec![ToolCall {
            id: "toolu_9".into(),
            name: "weather".into(),
            arguments_json: r#"{"city":"Oslo"}"#.into(),
        }]
    );
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 120,
            output_tokens: 7
        }
    );
    let max = br#"{"content":[{"type":"text","text":"a"}],"stop_reason":"max_tokens","usage":{"input_tokens":1,"output_tokens":1}}"#;
    assert_eq!(parse_message(max).unwrap().finish, FinishReason::Length);
    let refusal =
        br#"{"content":[],"stop_reason":"refusal","usage":{"input_tokens":1,"output_tokens":0}}"#;
    assert_eq!(
        parse_message(refusal).unwrap_err().kind,
        ErrorKind::ContentPolicy
    );
    assert_eq!(
        parse_message(b"{\"content\": [").unwrap_err().kind,
        ErrorKind::Protocol
    );
}

fn decode(data: &[&str]) -> (Vec<ChatEvent>, Result<Flow, BackendError>) {
    let mut decoder = StreamDecoder::default();
    let mut out = Vec::new();
    let mut flow = Ok(Flow::Continue);
    for d in data {
        let event = serde_json::from_str::<Value>(d).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_string();
        flow = decoder.on_event(
            SseEvent {
                event,
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
fn stream_events_assemble_text_tool_use_and_usage() {
    let (events, flow) = decode(&[
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"usage":{"input_tokens":25,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"weather","input":{}}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": "}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Oslo\"}"}}"#,
        r#"{"type":"content_block_stop","index":1}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        r#"{"type":"message_stop"}"#,
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
    assert_eq!(
        response.tool_calls,
        vec![ToolCall {
            id: "toolu_1".into(),
            name: "weather".into(),
            arguments_json: r#"{"city": "Oslo"}"#.into(),
        }]
    );
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 25,
            output_tokens: 15
        }
    );
}

#[test]
fn stream_error_events_classify() {
    let (events, flow) = decode(&[
        r#"{"type":"message_start","message":{"usage":{"input_tokens":3,"output_tokens":1}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}"#,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ]);
    assert_eq!(events, vec![ChatEvent::Delta("a".into())]);
    let err = flow.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("Overloaded"));
}

#[test]
fn config_sends_the_key_and_version_headers() {
    let mut config = AnthropicConfig::new("claude-x", Some(ProviderKey::new("sk-ant-1")));
    config.base_url = "http://127.0.0.1:9/".into();
    let backend = AnthropicBackend::new(config).unwrap();
    assert_eq!(backend.uri.to_string(), "http://127.0.0.1:9/v1/messages");
    assert_eq!(backend.headers["x-api-key"], "sk-ant-1");
    assert_eq!(backend.headers["anthropic-version"], API_VERSION);
    assert!(!format!("{backend:?}").contains("sk-ant-1"));
}
