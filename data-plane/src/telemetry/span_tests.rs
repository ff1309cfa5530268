//! Span building from outcomes: ids and parents, cost accounting, error
//! classes, attribute names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aios_model::Usd;
use aios_runtime::hex;

use super::*;
use crate::{
    backend::ErrorKind,
    pipeline::{Outcome, Status, call::Step},
    reliability::Attempted,
    telemetry::{OutboxReceiver, outbox},
};

const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn sink() -> (SpanSink, OutboxReceiver) {
    let (outbox, receiver) = outbox(16);
    (SpanSink::new(outbox, "node-1", "eu"), receiver)
}

fn info(received: Instant) -> RequestInfo {
    RequestInfo {
        trace: TraceContext::join(Some(CALLER)),
        clock: Clock::at(received),
        tenant: "acme".into(),
        agent: "support".into(),
        action: "chat".into(),
        temperature: Some(0.5),
        max_tokens: Some(256),
    }
}

fn usd(micros: i64) -> Usd {
    Usd::from_micros(micros)
}

fn attempt(
    model: &str,
    n: u32,
    fallback: bool,
    at: Instant,
    error: Option<ErrorKind>,
) -> Attempted {
    Attempted {
        model: model.into(),
        attempt: n,
        fallback,
        started: at,
        latency: Duration::from_millis(5),
        error,
    }
}

fn model_step(
    index: u32,
    at: Instant,
    attempts: Vec<Attempted>,
    tokens: (u64, u64),
    cost: Usd,
) -> Step {
    Step {
        index,
        kind: StepKind::Model,
        name: attempts.last().map(|a| a.model.clone()).unwrap_or_default(),
        skipped_forensic: false,
        started: at,
        latency: Duration::from_millis(40),
        error: None,
        error_type: None,
        usage: Usage {
            input_tokens: tokens.0,
            output_tokens: tokens.1,
        },
        cost,
        baseline_cost: Some(usd(9_000)),
        attempts,
        span_id: None,
    }
}

fn tool_step(index: u32, at: Instant, span_id: u64, error: Option<&'static str>) -> Step {
    Step {
        index,
        kind: StepKind::Tool,
        name: "refund".into(),
        skipped_forensic: false,
        started: at,
        latency: Duration::from_millis(3),
        error: error.map(|e| format!("it failed: {e}")),
        error_type: error,
        usage: Usage::default(),
        cost: Usd::ZERO,
        baseline_cost: None,
        attempts: Vec::new(),
        span_id: Some(span_id),
    }
}

/// A conversation: model (two retries of `primary`, then the fallback
/// answers) → a tool → model again; as the agent loop adds them up.
fn conversation(received: Instant) -> Outcome {
    let t = received + Duration::from_millis(1);
    let steps = vec![
        model_step(
            0,
            t,
            vec![
                attempt("primary", 1, false, t, Some(ErrorKind::RateLimited)),
                attempt("primary", 2, false, t, Some(ErrorKind::Unavailable)),
                attempt("backup", 1, true, t, None),
            ],
            (100, 20),
            usd(1_234),
        ),
        tool_step(1, t, 0xabcd, None),
        model_step(
            2,
            t,
            vec![attempt("backup", 1, true, t, None)],
            (150, 30),
            usd(2_001),
        ),
    ];
    Outcome {
        model: "backup".into(),
        usage: Usage {
            input_tokens: 250,
            output_tokens: 50,
        },
        cost: usd(3_235),
        steps,
        output: "done".into(),
        ..Outcome::empty()
    }
}

fn attr<'a>(span: &'a pb::Span, key: &str) -> Option<&'a str> {
    span.attributes.get(key).map(String::as_str)
}

fn micros(span: &pb::Span) -> i64 {
    (span.cost_usd * 1e6).round() as i64
}

fn status(span: &pb::Span) -> (pb::SpanStatusCode, &str) {
    let status = span.status.as_ref().expect("a status");
    (status.code(), status.error_type.as_str())
}

#[test]
fn the_request_span_is_the_edges_span_under_the_callers() {
    let (sink, _rx) = sink();
    let received = Instant::now();
    let info = info(received);
    let outcome = conversation(received);
    let spans = execution_spans(&sink, &info, Ended::Outcome(&outcome, &[]), Instant::now());
    let request = &spans[0];
    assert_eq!(
        hex::encode(&request.trace_id),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(
        hex::encode(&request.span_id),
        format!("{:016x}", info.trace.span_id)
    );
    assert_eq!(hex::encode(&request.parent_span_id), "b7ad6b7169203331");
    assert_eq!(request.name, "invoke_agent support");
    assert_eq!(request.operation, "invoke_agent");
    assert_eq!(
        (
            request.tenant.as_str(),
            request.agent.as_str(),
            request.action.as_str()
        ),
        ("acme", "support", "chat")
    );
    assert_eq!(
        (request.node.as_str(), request.region.as_str()),
        ("node-1", "eu")
    );
    assert_eq!(request.model, "backup", "the model that answered");
    assert!(request.end_time_unix_nano >= request.start_time_unix_nano);
    assert!(request.start_time_unix_nano > 0);
    for child in &spans[1..] {
        assert_eq!(child.trace_id, request.trace_id);
        assert_eq!(child.parent_span_id, request.span_id, "{}", child.name);
        assert_ne!(child.span_id, request.span_id);
        assert_eq!(child.tenant, "acme");
    }
    let tool = spans
        .iter()
        .find(|s| s.operation == "execute_tool")
        .unwrap();
    assert_eq!(
        hex::encode(&tool.span_id),
        "000000000000abcd",
        "the id the tool saw"
    );
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id.clone()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");
}

#[test]
fn every_attempt_is_a_child_and_the_children_carry_exactly_the_cost() {
    let (sink, _rx) = sink();
    let received = Instant::now();
    let outcome = conversation(received);
    let spans = execution_spans(
        &sink,
        &info(received),
        Ended::Outcome(&outcome, &[]),
        Instant::now(),
    );
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "invoke_agent support",
            "chat primary",
            "chat primary",
            "chat backup",
            "execute_tool refund",
            "chat backup",
        ]
    );
    let chats: Vec<&pb::Span> = spans.iter().filter(|s| s.operation == "chat").collect();
    let attempts: Vec<(Option<&str>, Option<&str>)> = chats
        .iter()
        .map(|s| (attr(s, attr::ATTEMPT), attr(s, attr::FALLBACK)))
        .collect();
    assert_eq!(
        attempts,
        [
            (Some("1"), None),
            (Some("2"), None),
            (Some("1"), Some("true")),
            (Some("1"), Some("true")),
        ]
    );
    assert_eq!(
        status(chats[0]),
        (pb::SpanStatusCode::Error, "rate_limited")
    );
    assert_eq!(status(chats[1]), (pb::SpanStatusCode::Error, "unavailable"));
    assert_eq!(status(chats[2]), (pb::SpanStatusCode::Ok, ""));
    assert_eq!(
        (chats[0].cost_usd, chats[0].input_tokens),
        (0.0, 0),
        "a failed call costs nothing"
    );
    assert_eq!(
        (
            chats[2].input_tokens,
            chats[2].output_tokens,
            micros(chats[2])
        ),
        (100, 20, 1_234)
    );
    assert_eq!(chats[2].baseline_cost_usd, 0.009);

    let total: i64 = spans.iter().map(micros).sum();
    assert_eq!(
        total,
        outcome.cost.micros(),
        "spans add up to the response's cost"
    );
    let input: u64 = spans.iter().map(|s| s.input_tokens).sum();
    let output: u64 = spans.iter().map(|s| s.output_tokens).sum();
    assert_eq!((input, output), (250, 50));
    assert_eq!(
        (spans[0].cost_usd, spans[0].input_tokens),
        (0.0, 0),
        "all on the children"
    );
}

#[test]
fn attributes_use_the_opentelemetry_genai_names() {
    let (sink, _rx) = sink();
    let received = Instant::now();
    let outcome = conversation(received);
    let spans = execution_spans(
        &sink,
        &info(received),
        Ended::Outcome(&outcome, &["PII"]),
        Instant::now(),
    );
    let request = &spans[0];
    assert_eq!(attr(request, "gen_ai.operation.name"), Some("invoke_agent"));
    assert_eq!(attr(request, "gen_ai.agent.name"), Some("support"));
    assert_eq!(attr(request, "gen_ai.request.model"), Some("primary"));
    assert_eq!(attr(request, "gen_ai.response.model"), Some("backup"));
    assert_eq!(attr(request, "gen_ai.request.temperature"), Some("0.5"));
    assert_eq!(attr(request, "gen_ai.request.max_tokens"), Some("256"));
    assert_eq!(attr(request, "aios.guardrails.flags"), Some("PII"));
    let chat = &spans[3];
    assert_eq!(attr(chat, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(attr(chat, "gen_ai.request.model"), Some("backup"));
    assert_eq!(attr(chat, "gen_ai.response.model"), Some("backup"));
    assert_eq!(attr(chat, "gen_ai.usage.input_tokens"), Some("100"));
    assert_eq!(attr(chat, "gen_ai.usage.output_tokens"), Some("20"));
    let tool = &spans[4];
    assert_eq!(attr(tool, "gen_ai.operation.name"), Some("execute_tool"));
    assert_eq!(attr(tool, "gen_ai.tool.name"), Some("refund"));
    assert_eq!(tool.action, "refund");
}

#[test]
fn errors_become_low_cardinality_types() {
    let (sink, _rx) = sink();
    let received = Instant::now();
    let info = info(received);
    let cases = [
        (
            ExecError::RateLimited {
                subject: "api_key:acme/ci".into(),
                description: "2 per minute".into(),
                retry_after: Duration::from_secs(1),
            },
            "rate_limited",
        ),
        (ExecError::Unavailable("no model".into()), "unavailable"),
        (
            ExecError::DeadlineExceeded("late".into()),
            "deadline_exceeded",
        ),
        (ExecError::invalid("agent", "required"), "invalid_request"),
        (ExecError::Internal("secret detail".into()), "internal"),
    ];
    for (error, expected) in cases {
        let spans = execution_spans(&sink, &info, Ended::Error(&error), Instant::now());
        assert_eq!(spans.len(), 1);
        assert_eq!(status(&spans[0]), (pb::SpanStatusCode::Error, expected));
        assert_eq!(attr(&spans[0], "error.type"), Some(expected));
        assert!(
            !spans[0]
                .status
                .as_ref()
                .unwrap()
                .message
                .contains("secret detail")
        );
    }

    let blocked = Outcome::blocked("PROMPT_INJECTION", "looks like an injection");
    let spans = execution_spans(&sink, &info, Ended::Outcome(&blocked, &[]), Instant::now());
    assert_eq!(status(&spans[0]), (pb::SpanStatusCode::Error, "blocked"));
    assert!(
        spans[0]
            .status
            .as_ref()
            .unwrap()
            .message
            .starts_with("PROMPT_INJECTION")
    );

    let mut failed = conversation(received);
    failed.status = Status::Failed;
    failed.error = Some(("MAX_STEPS".into(), "too many".into()));
    failed.steps[1] = tool_step(1, received, 7, Some("tool_failed"));
    let spans = execution_spans(&sink, &info, Ended::Outcome(&failed, &[]), Instant::now());
    assert_eq!(status(&spans[0]), (pb::SpanStatusCode::Error, "max_steps"));
    assert_eq!(
        status(&spans[4]),
        (pb::SpanStatusCode::Error, "tool_failed")
    );
}

#[test]
fn a_cache_hit_costs_nothing_and_a_replay_is_not_billed_again() {
    let (sink, _rx) = sink();
    let received = Instant::now();
    let hit = Outcome {
        cache_hit: true,
        model: "backup".into(),
        ..Outcome::empty()
    };
    let spans = execution_spans(
        &sink,
        &info(received),
        Ended::Outcome(&hit, &[]),
        Instant::now(),
    );
    assert_eq!(spans.len(), 1);
    assert!(spans[0].cache_hit);
    assert_eq!(spans[0].cost_usd, 0.0);
    assert_eq!(status(&spans[0]), (pb::SpanStatusCode::Ok, ""));

    // The first run's outcome, handed back for a repeated idempotency key.
    let first = conversation(received);
    let later = received + Duration::from_secs(1);
    let spans = execution_spans(
        &sink,
        &info(later),
        Ended::Outcome(&first, &[]),
        Instant::now(),
    );
    assert_eq!(spans.len(), 1, "its steps were reported with the first run");
    assert_eq!(spans[0].cost_usd, 0.0);
    assert_eq!(attr(&spans[0], "aios.replay"), Some("true"));
}

#[test]
fn an_action_answered_alone_keeps_its_cost_and_a_step_without_calls_is_one_child() {
    let (sink, _rx) = sink();
    let received = Instant::now();
    // A model step no backend was called for (every breaker open).
    let mut step = model_step(0, received, Vec::new(), (0, 0), Usd::ZERO);
    step.name = "primary".into();
    step.error = Some("circuit breaker open".into());
    step.error_type = Some("circuit_open");
    let outcome = Outcome {
        steps: vec![step],
        cost: usd(10),
        ..Outcome::empty()
    };
    let spans = execution_spans(
        &sink,
        &info(received),
        Ended::Outcome(&outcome, &[]),
        Instant::now(),
    );
    assert_eq!(spans.len(), 2);
    assert_eq!(attr(&spans[1], "aios.attempts"), Some("0"));
    assert_eq!(
        status(&spans[1]),
        (pb::SpanStatusCode::Error, "circuit_open")
    );
    assert_eq!(
        micros(&spans[0]),
        10,
        "what no child accounts for stays on the request span"
    );
}

#[tokio::test]
async fn spans_reach_the_outbox_and_embeddings_are_one_span() {
    let (sink, mut rx) = sink();
    let received = Instant::now();
    let mut info = info(received);
    info.agent = String::new();
    info.action = "embeddings".into();
    sink.embedding(&info, "minilm", Ok((42, usd(7))));
    let spans = rx.recv().await.unwrap().decode().unwrap();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.name, "embeddings minilm");
    assert_eq!(span.operation, "embeddings");
    assert_eq!(
        (span.input_tokens, micros(span), span.model.as_str()),
        (42, 7, "minilm")
    );
    assert_eq!(hex::encode(&span.parent_span_id), "b7ad6b7169203331");

    let outcome = conversation(received);
    sink.execution(&info, Ended::Outcome(&outcome, &[]));
    assert_eq!(rx.recv().await.unwrap().len(), 6, "one send per request");
}
