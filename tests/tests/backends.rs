//! The remote model backends (OpenAI, Anthropic) against the fake provider:
//! the real HTTP protocols over loopback, streamed and not, and every fault
//! mapped to the error class the retry and breaker logic depends on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use aios_data_plane::backend::{
    Backend, BackendError, ChatEvent, ChatMessage, ChatRequest, ChatResponse, ErrorKind,
    FinishReason, Role, ToolSpec,
    anthropic::{AnthropicBackend, AnthropicConfig},
    http::ProviderKey,
    openai::{OpenAiBackend, OpenAiConfig, TokenLimitField},
};
use aios_tests::fake_provider::{FakeProvider, Fault, Protocol, Reply};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

const KEY: &str = "sk-test-5ecret-key-0123456789";

#[derive(Clone, Copy, Debug)]
enum Kind {
    OpenAi,
    Anthropic,
}

const KINDS: [Kind; 2] = [Kind::OpenAi, Kind::Anthropic];

fn backend_at(kind: Kind, base: &str, key: &str) -> Box<dyn Backend> {
    let key = Some(ProviderKey::new(key));
    match kind {
        Kind::OpenAi => {
            let mut config = OpenAiConfig::new("gpt-fake", key);
            config.base_url = format!("{base}/v1");
            config.token_limit_field = TokenLimitField::MaxTokens;
            Box::new(OpenAiBackend::new(config).unwrap())
        }
        Kind::Anthropic => {
            let mut config = AnthropicConfig::new("claude-fake", key);
            config.base_url = base.to_string();
            Box::new(AnthropicBackend::new(config).unwrap())
        }
    }
}

fn backend(kind: Kind, fake: &FakeProvider) -> Box<dyn Backend> {
    backend_at(kind, &fake.url(), KEY)
}

fn request(text: &str, within: Duration) -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::text(Role::System, "You are terse."),
            ChatMessage::text(Role::User, text),
        ],
        tools: Vec::new(),
        max_tokens: None,
        temperature: Some(0.2),
        top_p: None,
        stop: Vec::new(),
        seed: Some(1),
        deadline: Instant::now() + within,
    }
}

const SOON: Duration = Duration::from_secs(10);

/// Runs a streamed call: the deltas, then the final response or error.
async fn stream(
    backend: &dyn Backend,
    request: &ChatRequest,
) -> (Vec<String>, Result<ChatResponse, BackendError>) {
    let mut events = match backend.chat_stream(request).await {
        Ok(events) => events,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut deltas = Vec::new();
    let mut done = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(ChatEvent::Delta(text)) => {
                assert!(done.is_none(), "a delta after Done");
                deltas.push(text);
            }
            Ok(ChatEvent::Done(response)) => {
                assert!(done.is_none(), "two Done events");
                done = Some(Ok(response));
            }
            Err(e) => {
                assert!(done.is_none(), "an error after Done");
                assert!(events.next().await.is_none(), "events after an error");
                return (deltas, Err(e));
            }
        }
    }
    (
        deltas,
        done.expect("the stream ended without Done or an error"),
    )
}

// === Answers ===

#[tokio::test]
async fn plain_replies_carry_usage_and_the_right_headers() {
    for kind in KINDS {
        let fake = FakeProvider::start().await.unwrap();
        fake.expect_api_key(KEY);
        let backend = backend(kind, &fake);
        let response = backend.chat(&request("hello there", SOON)).await.unwrap();
        assert_eq!(response.content, "echo: hello there", "{kind:?}");
        assert_eq!(response.finish, FinishReason::Stop);
        assert!(response.tool_calls.is_empty());
        // Words: "You are terse." + "hello there"; "echo: hello there".
        assert_eq!(response.usage.input_tokens, 5, "{kind:?}");
        assert_eq!(response.usage.output_tokens, 3, "{kind:?}");

        let requests = fake.requests();
        assert_eq!(requests.len(), 1);
        let sent = &requests[0];
        assert_eq!(sent.header("content-type"), Some("application/json"));
        match kind {
            Kind::OpenAi => {
                assert_eq!(sent.protocol, Protocol::OpenAi);
                assert_eq!(
                    sent.header("authorization"),
                    Some(format!("Bearer {KEY}").as_str())
                );
                assert_eq!(sent.header("x-api-key"), None);
                assert_eq!(sent.body["model"], "gpt-fake");
                assert_eq!(sent.body["messages"][0]["role"], "system");
                assert_eq!(sent.body["seed"], 1);
                assert_eq!(sent.body["temperature"], json!(0.2));
            }
            Kind::Anthropic => {
                assert_eq!(sent.protocol, Protocol::Anthropic);
                assert_eq!(sent.header("x-api-key"), Some(KEY));
                assert_eq!(sent.header("authorization"), None);
                assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
                assert_eq!(sent.body["model"], "claude-fake");
                assert_eq!(sent.body["system"], "You are terse.");
                assert_eq!(sent.body["max_tokens"], 1024);
                assert_eq!(sent.body["messages"].as_array().unwrap().len(), 1);
            }
        }
    }
}

#[tokio::test]
async fn max_tokens_cuts_the_answer_and_says_so() {
    for kind in KINDS {
        let fake = FakeProvider::start().await.unwrap();
        fake.reply(Reply::Text("one two three four five".into()));
        let backend = backend(kind, &fake);
        let mut short = request("count", SOON);
        short.max_tokens = Some(2);
        let response = backend.chat(&short).await.unwrap();
        assert_eq!(response.content, "one two", "{kind:?}");
        assert_eq!(response.finish, FinishReason::Length);
        assert_eq!(response.usage.output_tokens, 2);
    }
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "weather".into(),
        description: "Current weather in a city".into(),
        parameters_json_schema:
            r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#
                .into(),
    }
}

#[tokio::test]
async fn tool_calls_round_trip() {
    for kind in KINDS {
        for streamed in [false, true] {
            let fake = FakeProvider::start().await.unwrap();
            fake.reply(Reply::ToolCall {
                name: "weather".into(),
                arguments_json: r#"{"city": "Oslo"}"#.into(),
            });
            let backend = backend(kind, &fake);
            let mut call = request("Weather in Oslo?", SOON);
            call.tools = vec![weather_tool()];

            let first = if streamed {
                stream(backend.as_ref(), &call).await.1.unwrap()
            } else {
                backend.chat(&call).await.unwrap()
            };
            assert_eq!(first.finish, FinishReason::ToolCalls, "{kind:?} {streamed}");
            assert_eq!(first.tool_calls.len(), 1);
            let tool_call = first.tool_calls[0].clone();
            assert_eq!(tool_call.name, "weather");
            assert!(!tool_call.id.is_empty());
            let arguments: Value = serde_json::from_str(&tool_call.arguments_json).unwrap();
            assert_eq!(arguments, json!({"city": "Oslo"}), "{kind:?} {streamed}");

            call.messages.push(ChatMessage {
                role: Role::Assistant,
                content: first.content.clone(),
                tool_call_id: None,
                tool_calls: vec![tool_call.clone()],
            });
            call.messages.push(ChatMessage {
                role: Role::Tool,
                content: "rain, 4 C".into(),
                tool_call_id: Some(tool_call.id.clone()),
                tool_calls: Vec::new(),
            });
            let second = if streamed {
                stream(backend.as_ref(), &call).await.1.unwrap()
            } else {
                backend.chat(&call).await.unwrap()
            };
            assert_eq!(
                second.content, "tool said: rain, 4 C",
                "{kind:?} {streamed}"
            );
            assert_eq!(second.finish, FinishReason::Stop);

            // The provider saw the tool declared, called and answered in its own shape.
            let sent = &fake.requests()[1].body;
            match kind {
                Kind::OpenAi => {
                    assert_eq!(sent["tools"][0]["type"], "function");
                    assert_eq!(sent["tools"][0]["function"]["name"], "weather");
                    assert_eq!(
                        sent["tools"][0]["function"]["parameters"]["required"][0],
                        "city"
                    );
                    assert_eq!(
                        sent["messages"][2]["tool_calls"][0]["id"],
                        json!(tool_call.id)
                    );
                    assert_eq!(sent["messages"][3]["role"], "tool");
                    assert_eq!(sent["messages"][3]["tool_call_id"], json!(tool_call.id));
                }
                Kind::Anthropic => {
                    assert_eq!(sent["tools"][0]["input_schema"]["required"][0], "city");
                    let assistant = &sent["messages"][1];
                    assert_eq!(assistant["role"], "assistant");
                    assert_eq!(assistant["content"][0]["type"], "tool_use");
                    assert_eq!(assistant["content"][0]["input"], json!({"city": "Oslo"}));
                    let result = &sent["messages"][2]["content"][0];
                    assert_eq!(result["type"], "tool_result");
                    assert_eq!(result["tool_use_id"], json!(tool_call.id));
                }
            }
        }
    }
}

#[tokio::test]
async fn streamed_deltas_reassemble_the_text_and_usage_arrives() {
    // Multi-byte characters: the fake cuts every event in two, some mid-character.
    let text = "héllo wörld 😀 — streaming ünïcode works fine";
    for kind in KINDS {
        let fake = FakeProvider::start().await.unwrap();
        fake.reply(Reply::Text(text.into()));
        let backend = backend(kind, &fake);
        let call = request("say it", SOON);
        let whole = backend.chat(&call).await.unwrap();
        let (deltas, done) = stream(backend.as_ref(), &call).await;
        let done = done.unwrap();
        assert!(deltas.len() > 3, "{kind:?}: {deltas:?}");
        assert_eq!(deltas.concat(), text, "{kind:?}");
        assert_eq!(done.content, text);
        assert_eq!(done.finish, FinishReason::Stop);
        assert_eq!(done.usage, whole.usage, "{kind:?}");
        assert!(done.usage.output_tokens > 0);

        let streamed = &fake.requests()[1];
        assert!(streamed.is_stream());
        assert_eq!(streamed.header("accept"), Some("text/event-stream"));
        if let Kind::OpenAi = kind {
            assert_eq!(streamed.body["stream_options"]["include_usage"], true);
        }
    }
}

#[tokio::test]
async fn calls_share_pooled_connections() {
    for kind in KINDS {
        let fake = FakeProvider::start().await.unwrap();
        let backend = backend(kind, &fake);
        for _ in 0..3 {
            backend.chat(&request("hi", SOON)).await.unwrap();
        }
        stream(backend.as_ref(), &request("hi", SOON))
            .await
            .1
            .unwrap();
        let peers: Vec<_> = fake.requests().iter().map(|r| r.peer).collect();
        assert!(peers.iter().all(|p| *p == peers[0]), "{kind:?}: {peers:?}");
    }
}

// === Faults ===

async fn fails_with(
    kind: Kind,
    fault: Fault,
    streamed: bool,
    within: Duration,
) -> (Vec<String>, BackendError) {
    let fake = FakeProvider::start().await.unwrap();
    fake.script(vec![fault.clone()]);
    let backend = backend(kind, &fake);
    let call = request("hello there", within);
    let (deltas, result) = if streamed {
        stream(backend.as_ref(), &call).await
    } else {
        (Vec::new(), backend.chat(&call).await)
    };
    let error = result.expect_err(&format!("{kind:?} {fault:?} streamed={streamed}"));
    assert!(
        !error.message.contains(KEY) && !format!("{error:?}").contains(KEY),
        "the key leaked: {error:?}"
    );
    // The next call, without a fault, works: the fake and the pool recovered.
    let after = backend.chat(&request("again", SOON)).await;
    assert_eq!(after.unwrap().content, "echo: again");
    (deltas, error)
}

#[tokio::test]
async fn http_errors_map_to_their_kinds() {
    let cases = [
        (Fault::Status(400), ErrorKind::InvalidRequest),
        (Fault::Status(401), ErrorKind::Auth),
        (Fault::Status(403), ErrorKind::Auth),
        (Fault::Status(500), ErrorKind::Unavailable),
        (Fault::Status(503), ErrorKind::Unavailable),
        (Fault::Status(529), ErrorKind::Unavailable),
        (Fault::ContentPolicy, ErrorKind::ContentPolicy),
        (Fault::MalformedJson, ErrorKind::Protocol),
        (Fault::Disconnect, ErrorKind::Connection),
        (Fault::CutStream, ErrorKind::Connection),
    ];
    for kind in KINDS {
        for streamed in [false, true] {
            for (fault, expected) in &cases {
                let (_, error) = fails_with(kind, fault.clone(), streamed, SOON).await;
                assert_eq!(
                    error.kind, *expected,
                    "{kind:?} {fault:?} streamed={streamed}: {error}"
                );
                assert_eq!(error.retry_after, None);
            }
        }
    }
}

#[tokio::test]
async fn provider_messages_reach_the_error() {
    let (_, error) = fails_with(Kind::Anthropic, Fault::Status(529), false, SOON).await;
    assert_eq!(error.message, "anthropic answered HTTP 529: Overloaded");
    let (_, error) = fails_with(Kind::OpenAi, Fault::Status(401), false, SOON).await;
    // The fake echoes the key it got, as OpenAI does (masked); it is scrubbed.
    assert_eq!(
        error.message,
        "openai answered HTTP 401: Incorrect API key provided: [redacted]."
    );
}

#[tokio::test]
async fn rate_limits_carry_retry_after() {
    for kind in KINDS {
        for streamed in [false, true] {
            let fault = Fault::RateLimited {
                retry_after_secs: 7,
            };
            let (_, error) = fails_with(kind, fault, streamed, SOON).await;
            assert_eq!(error.kind, ErrorKind::RateLimited, "{kind:?}");
            assert_eq!(error.retry_after, Some(Duration::from_secs(7)));
            assert!(error.kind.is_retryable());
        }
    }
}

#[tokio::test]
async fn a_cut_stream_keeps_its_deltas_then_fails_as_connection() {
    for kind in KINDS {
        let (deltas, error) = fails_with(kind, Fault::CutStream, true, SOON).await;
        assert_eq!(deltas, vec!["echo: ".to_string()], "{kind:?}");
        assert_eq!(error.kind, ErrorKind::Connection, "{error}");
    }
}

#[tokio::test]
async fn slow_providers_time_out_at_the_deadline() {
    let deadline = Duration::from_millis(400);
    let slow = Duration::from_secs(5);
    for kind in KINDS {
        for (fault, streamed) in [
            (Fault::Delay(slow), false),
            (Fault::Delay(slow), true),
            // Headers at once, then the body (streamed: after one delta) stalls.
            (Fault::Stall(slow), false),
            (Fault::Stall(slow), true),
        ] {
            let started = std::time::Instant::now();
            let (deltas, error) = fails_with(kind, fault.clone(), streamed, deadline).await;
            let took = started.elapsed();
            assert_eq!(
                error.kind,
                ErrorKind::Timeout,
                "{kind:?} {fault:?} {streamed}"
            );
            // fails_with also made a second, fast call.
            assert!(
                took < Duration::from_secs(3),
                "{kind:?} {fault:?}: {took:?}"
            );
            if matches!(fault, Fault::Stall(_)) && streamed {
                assert_eq!(deltas, vec!["echo: ".to_string()]);
            }
        }
    }
}

#[tokio::test]
async fn a_passed_deadline_sends_nothing() {
    for kind in KINDS {
        let fake = FakeProvider::start().await.unwrap();
        let backend = backend(kind, &fake);
        let mut late = request("hi", SOON);
        late.deadline = Instant::now() - Duration::from_millis(1);
        let error = backend.chat(&late).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Timeout);
        let error = backend.chat_stream(&late).await.err().unwrap();
        assert_eq!(error.kind, ErrorKind::Timeout);
        assert!(fake.requests().is_empty());
    }
}

#[tokio::test]
async fn refused_keys_are_auth_errors_that_never_show_the_key() {
    let wrong = "sk-wrong-but-still-s3cret";
    for kind in KINDS {
        let fake = FakeProvider::start().await.unwrap();
        fake.expect_api_key(KEY);
        let backend = backend_at(kind, &fake.url(), wrong);
        let error = backend.chat(&request("hi", SOON)).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Auth, "{kind:?}");
        assert_eq!(error.retry_after, None);
        let shown = format!("{error} {error:?} {backend:?}");
        assert!(!shown.contains(wrong), "{shown}");
        let error = backend
            .chat_stream(&request("hi", SOON))
            .await
            .err()
            .unwrap();
        assert_eq!(error.kind, ErrorKind::Auth);
        assert!(!format!("{error:?}").contains(wrong));
    }
}

#[tokio::test]
async fn nobody_listening_is_a_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    for kind in KINDS {
        let backend = backend_at(kind, &base, KEY);
        let error = backend.chat(&request("hi", SOON)).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Connection, "{error}");
        assert!(error.message.contains("connect"), "{error}");
    }
}

#[tokio::test]
async fn https_to_a_plain_http_server_fails_the_handshake_as_connection() {
    let fake = FakeProvider::start().await.unwrap();
    let base = fake.url().replace("http://", "https://");
    for kind in KINDS {
        let backend = backend_at(kind, &base, KEY);
        let error = backend.chat(&request("hi", SOON)).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Connection, "{error}");
    }
    // The handshake failed before any HTTP request was made.
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn seeded_failure_rates_repeat_exactly() {
    async fn outcomes(kind: Kind) -> Vec<Option<ErrorKind>> {
        let fake = FakeProvider::start().await.unwrap();
        fake.set_failure_rate(0.5, 42);
        let backend = backend(kind, &fake);
        let mut outcomes = Vec::new();
        for i in 0..24 {
            let result = backend.chat(&request(&format!("n{i}"), SOON)).await;
            outcomes.push(result.err().map(|e| e.kind));
        }
        assert_eq!(fake.requests().len(), 24);
        outcomes
    }
    for kind in KINDS {
        let first = outcomes(kind).await;
        assert_eq!(first, outcomes(kind).await, "{kind:?}");
        let failed = first.iter().flatten().count();
        assert!((4..=20).contains(&failed), "{kind:?}: {first:?}");
        assert!(
            first
                .iter()
                .flatten()
                .all(|k| matches!(k, ErrorKind::Unavailable | ErrorKind::Connection)),
            "{first:?}"
        );
    }
}

#[tokio::test]
async fn scripted_faults_come_in_order_then_answers() {
    let fake = FakeProvider::start().await.unwrap();
    fake.script(vec![
        Fault::Status(503),
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    ]);
    let backend = backend(Kind::OpenAi, &fake);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let result = backend.chat(&request("hi", SOON)).await;
        kinds.push(result.map(|r| r.content).map_err(|e| e.kind));
    }
    assert_eq!(
        kinds,
        vec![
            Err(ErrorKind::Unavailable),
            Err(ErrorKind::RateLimited),
            Ok("echo: hi".to_string())
        ]
    );
}
