//! Fake backends for the reliability tests: a scripted one (a queue of
//! results; counts calls and records each attempt's deadline) and a flaky
//! one (fails a seeded random share of calls).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::Instant;

use crate::backend::{
    Backend, BackendError, ChatEvent, ChatMessage, ChatRequest, ChatResponse, ChatStream,
    ErrorKind, FinishReason, Role, Usage,
};

/// A request with `deadline`.
pub(crate) fn request(deadline: Instant) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::text(Role::User, "hello")],
        tools: Vec::new(),
        max_tokens: None,
        temperature: None,
        top_p: None,
        stop: Vec::new(),
        seed: None,
        deadline,
    }
}

/// A request due `after` from now.
pub(crate) fn request_in(after: Duration) -> ChatRequest {
    request(Instant::now() + after)
}

/// A finished response with `content`.
pub(crate) fn response(content: &str) -> ChatResponse {
    ChatResponse {
        content: content.to_owned(),
        tool_calls: Vec::new(),
        usage: Usage {
            input_tokens: 1,
            output_tokens: 1,
        },
        finish: FinishReason::Stop,
        device_cost: None,
    }
}

/// An error of `kind`.
pub(crate) fn error(kind: ErrorKind) -> BackendError {
    BackendError::new(kind, format!("scripted {}", kind.as_str()))
}

/// What one call of a [`Scripted`] backend does.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// Answers `content` (as one delta then done, when streamed).
    Answer(&'static str),
    /// Fails.
    Fail(BackendError),
    /// Never answers.
    Hang,
    /// Waits, then does the step.
    After(Duration, Box<Step>),
    /// Streams these events (when called with `chat_stream`).
    Stream(Vec<Result<ChatEvent, BackendError>>),
}

impl Step {
    pub(crate) fn fail(kind: ErrorKind) -> Self {
        Self::Fail(error(kind))
    }
}

/// A backend that plays a script, one step per call; when the script runs
/// out it fails with `PROTOCOL` (so a test that calls too often notices).
#[derive(Debug, Default)]
pub(crate) struct Scripted {
    script: Mutex<VecDeque<Step>>,
    calls: AtomicU32,
    deadlines: Mutex<Vec<Instant>>,
}

impl Scripted {
    pub(crate) fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            script: Mutex::new(steps.into_iter().collect()),
            ..Self::default()
        }
    }

    /// Calls so far.
    pub(crate) fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Each call's request deadline, in order.
    pub(crate) fn deadlines(&self) -> Vec<Instant> {
        self.deadlines.lock().unwrap().clone()
    }

    fn next(&self, request: &ChatRequest) -> Step {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.deadlines.lock().unwrap().push(request.deadline);
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Step::fail(ErrorKind::Protocol))
    }
}

async fn play(mut step: Step) -> Result<Vec<Result<ChatEvent, BackendError>>, BackendError> {
    loop {
        match step {
            Step::Answer(content) => {
                return Ok(vec![
                    Ok(ChatEvent::Delta(content.to_owned())),
                    Ok(ChatEvent::Done(response(content))),
                ]);
            }
            Step::Fail(error) => return Err(error),
            Step::Hang => std::future::pending::<()>().await,
            Step::After(wait, then) => {
                tokio::time::sleep(wait).await;
                step = *then;
            }
            Step::Stream(events) => return Ok(events),
        }
    }
}

#[tonic::async_trait]
impl Backend for Scripted {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        let events = play(self.next(request)).await?;
        for event in events {
            if let ChatEvent::Done(response) = event? {
                return Ok(response);
            }
        }
        Err(error(ErrorKind::Connection))
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, BackendError> {
        let events = play(self.next(request)).await?;
        Ok(Box::pin(futures::stream::iter(events)))
    }
}

/// A backend that fails a seeded random `failure_rate` of its calls with
/// `UNAVAILABLE`, after `latency`.
#[derive(Debug)]
pub(crate) struct Flaky {
    rng: Mutex<StdRng>,
    failure_rate: f64,
    latency: Duration,
    calls: AtomicU32,
}

impl Flaky {
    pub(crate) fn new(seed: u64, failure_rate: f64, latency: Duration) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            failure_rate,
            latency,
            calls: AtomicU32::new(0),
        }
    }

    pub(crate) fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl Backend for Flaky {
    async fn chat(&self, _request: &ChatRequest) -> Result<ChatResponse, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        let fails = self.rng.lock().unwrap().random_bool(self.failure_rate);
        if fails {
            Err(error(ErrorKind::Unavailable))
        } else {
            Ok(response("ok"))
        }
    }
}
