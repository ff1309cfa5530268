//! The fallback chain: the route's models in order (primary first), each
//! behind its breaker and called with retries, all inside the caller's
//! deadline.
//!
//! For each model in turn: if its breaker is open, skip it; else call it
//! with [`RetryPolicy`] retries, asking the breaker before every attempt
//! (so half-open probes stay limited). On an answer, stop. On a failure,
//! [`falls_back`] decides whether the next model may do better:
//!
//! - retryable errors (after retries), and an open breaker: yes, the
//!   provider is in trouble;
//! - `AUTH`: yes. Refused credentials are a fault of our account at that
//!   provider, not of the request; another provider has other credentials.
//! - `PROTOCOL`: yes. An answer we cannot parse is that provider's (or its
//!   adapter's) fault; the request may well be fine elsewhere.
//! - `INVALID_REQUEST`: no. A malformed request fails everywhere; trying the
//!   whole chain only multiplies cost and latency.
//! - `CONTENT_POLICY`: no. A provider refused the content; shopping it
//!   around until some provider accepts would route around a safety
//!   decision. The node's own guardrails are the policy.
//!
//! Moving to the next model sleeps no backoff: it is another provider.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    breaker::{Breakers, Outcome, Permit, Shed},
    retry::{self, GaveUp, RetryPolicy, TimeLimits},
    stream::Streaming,
};
use crate::backend::{Backend, BackendError, ChatRequest, ChatResponse, ChatStream, ErrorKind};

/// One model of a chain.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Model name (the breaker's key, and what reports name).
    pub model: String,
    /// The model's backend.
    pub backend: Arc<dyn Backend>,
    /// Longest single attempt (the model's `timeout`).
    pub attempt_timeout: Duration,
}

impl Candidate {
    /// `model` served by `backend`, with the default per-attempt timeout.
    pub fn new(model: impl Into<String>, backend: Arc<dyn Backend>) -> Self {
        Self {
            model: model.into(),
            backend,
            attempt_timeout: aios_model::DEFAULT_MODEL_TIMEOUT,
        }
    }

    /// The same candidate with another per-attempt timeout.
    pub fn with_attempt_timeout(mut self, attempt_timeout: Duration) -> Self {
        self.attempt_timeout = attempt_timeout;
        self
    }
}

/// Retries and breakers of a node: what the pipeline's backend stage holds.
/// Cheap to clone; clones share the breakers.
#[derive(Clone, Debug, Default)]
pub struct Reliability {
    /// How each model is retried.
    pub retry: RetryPolicy,
    /// The node's breakers.
    pub breakers: Breakers,
}

/// Why no model answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The last model called failed: permanently, or after its retries with
    /// no model left to fall back to.
    #[error("model {model}: {error}")]
    Backend {
        /// The model.
        model: String,
        /// Its last error.
        error: BackendError,
    },
    /// No model was called: every breaker in the chain was open.
    #[error("circuit breaker open for model {model}; retry in {} ms", retry_in.as_millis())]
    CircuitOpen {
        /// The first model of the chain that was skipped.
        model: String,
        /// Time until the first of the chain's breakers lets probes through.
        retry_in: Duration,
    },
    /// The caller's deadline passed before any model was called.
    #[error("the deadline passed before any model was called")]
    DeadlineExceeded,
    /// The chain was empty.
    #[error("no model to call")]
    NoModels,
}

impl CallError {
    /// Whether the caller may succeed by trying again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Backend { error, .. } => error.kind.is_retryable(),
            Self::CircuitOpen { .. } | Self::DeadlineExceeded => true,
            Self::NoModels => false,
        }
    }

    /// How long the caller should wait before trying again, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Backend { error, .. } => error.retry_after,
            Self::CircuitOpen { retry_in, .. } => Some(*retry_in),
            Self::DeadlineExceeded | Self::NoModels => None,
        }
    }
}

/// How one model of the chain fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryResult {
    /// It answered.
    Served,
    /// It was called and failed.
    Failed {
        /// Its last error's kind.
        kind: ErrorKind,
        /// Why its attempts stopped.
        gave_up: GaveUp,
    },
    /// Its breaker was open: it was not called.
    CircuitOpen,
}

/// One model of the chain, as tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelTry {
    /// The model.
    pub model: String,
    /// Calls made to it.
    pub attempts: u32,
    /// How it fared.
    pub result: TryResult,
}

/// One call to a model's backend, as made: each becomes a `chat` span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempted {
    /// The model.
    pub model: String,
    /// 1 for the model's first call, 2 for its first retry, …
    pub attempt: u32,
    /// The model is a fallback (not the chain's first).
    pub fallback: bool,
    /// When the call started.
    pub started: Instant,
    /// How long it took (a stream: until its first token).
    pub latency: Duration,
    /// Why it failed; `None` = it answered.
    pub error: Option<ErrorKind>,
}

/// What a chain call did, for the route decision and the span.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// The model that answered.
    pub served_by: Option<String>,
    /// The models tried, in order (models after the one that answered, or
    /// after a stop, do not appear).
    pub tries: Vec<ModelTry>,
    /// Every call made, in order, all models together.
    pub calls: Vec<Attempted>,
    /// Time slept in backoffs, all models together.
    pub backoff: Duration,
}

impl ChainReport {
    /// Models tried that did not answer, in order, skipped ones included:
    /// `RouteDecision.failed_models`.
    pub fn failed_models(&self) -> Vec<String> {
        self.tries
            .iter()
            .filter(|t| t.result != TryResult::Served)
            .map(|t| t.model.clone())
            .collect()
    }

    /// Calls made, all models together.
    pub fn attempts(&self) -> u32 {
        self.tries.iter().map(|t| t.attempts).sum()
    }
}

/// The answer (or error) of a chain call with its report.
#[derive(Debug)]
pub struct Chained<T> {
    /// The first answer, or why there was none.
    pub result: Result<T, CallError>,
    /// What happened on the way.
    pub report: ChainReport,
}

/// Whether a model's final error lets the chain try the next model (see the
/// module documentation for why).
pub fn falls_back(kind: ErrorKind) -> bool {
    match kind {
        ErrorKind::RateLimited
        | ErrorKind::Unavailable
        | ErrorKind::Timeout
        | ErrorKind::Connection
        | ErrorKind::Auth
        | ErrorKind::Protocol => true,
        ErrorKind::InvalidRequest | ErrorKind::ContentPolicy => false,
    }
}

// === impl Reliability ===

impl Reliability {
    /// Retries with `retry` and breakers `breakers`.
    pub fn new(retry: RetryPolicy, breakers: Breakers) -> Self {
        Self { retry, breakers }
    }

    /// Calls the chain's models in order until one answers. The request's
    /// `deadline` is the caller's; each attempt gets the smaller of it and
    /// the model's per-attempt timeout.
    pub async fn chat(&self, chain: &[Candidate], request: &ChatRequest) -> Chained<ChatResponse> {
        self.run(chain, request, &Unary).await
    }

    /// Like [`Reliability::chat`], streaming. Retries and fallbacks happen
    /// only before the first token: the returned stream starts with a
    /// non-empty delta (or the final response) already received. After
    /// that, a failure ends the stream with its error and nothing is
    /// retried, because the caller has already forwarded text: another
    /// attempt (let alone another model) would sample a different answer,
    /// and splicing it onto what was sent would give the user a garbled
    /// answer and double-count tokens. Empty deltas before the first token
    /// are dropped. The stream enforces the attempt's deadline and reports
    /// to the breaker when it finishes (dropping it early counts as
    /// neutral); the report covers what happened before the first token.
    pub async fn chat_stream(
        &self,
        chain: &[Candidate],
        request: &ChatRequest,
    ) -> Chained<ChatStream> {
        self.run(chain, request, &Streaming).await
    }

    async fn run<A: Attempt>(
        &self,
        chain: &[Candidate],
        request: &ChatRequest,
        how: &A,
    ) -> Chained<A::Output> {
        let deadline = request.deadline;
        let mut attempt = request.clone();
        let mut report = ChainReport::default();
        // The error to return if no model answers: the last model that was
        // called explains the failure best; failing that, the breakers.
        let mut last: Option<CallError> = None;
        let mut shed: Option<(String, Duration)> = None;
        for (position, candidate) in chain.iter().enumerate() {
            if Instant::now() >= deadline {
                break;
            }
            let model = candidate.model.clone();
            let tried = Tried {
                fallback: position > 0,
                calls: &mut report.calls,
            };
            let run = self
                .try_model(candidate, &mut attempt, deadline, how, tried)
                .await;
            report.backoff += run.backoff;
            let (gave_up, error) = match (run.stop, run.failure) {
                (Stop::Served(output), _) => {
                    report.tries.push(ModelTry {
                        model: model.clone(),
                        attempts: run.calls,
                        result: TryResult::Served,
                    });
                    report.served_by = Some(model);
                    return Chained {
                        result: Ok(output),
                        report,
                    };
                }
                (Stop::Shed(refused), None) => {
                    report.tries.push(ModelTry {
                        model: model.clone(),
                        attempts: 0,
                        result: TryResult::CircuitOpen,
                    });
                    shed = Some(match shed {
                        Some((first, soonest)) => (first, soonest.min(refused.retry_in)),
                        None => (model, refused.retry_in),
                    });
                    continue;
                }
                (Stop::GaveUp(gave_up), Some(error)) => (gave_up, error),
                (Stop::Shed(_), Some(error)) => (GaveUp::CircuitOpen, error),
                (Stop::Deadline, Some(error)) => (GaveUp::Deadline, error),
                // The deadline passed between the check above and the first
                // attempt (or a failure went unrecorded): nothing was called.
                (Stop::Deadline | Stop::GaveUp(_), None) => break,
            };
            report.tries.push(ModelTry {
                model: model.clone(),
                attempts: run.calls,
                result: TryResult::Failed {
                    kind: error.kind,
                    gave_up,
                },
            });
            let go_on = falls_back(error.kind);
            tracing::info!(
                model = %model,
                error.kind = error.kind.as_str(),
                gave_up = gave_up.as_str(),
                falling_back = go_on,
                "model failed"
            );
            last = Some(CallError::Backend { model, error });
            if !go_on {
                break;
            }
        }
        let error = match (last, shed) {
            (Some(error), _) => error,
            (None, Some((model, retry_in))) => CallError::CircuitOpen { model, retry_in },
            (None, None) if chain.is_empty() => CallError::NoModels,
            (None, None) => CallError::DeadlineExceeded,
        };
        Chained {
            result: Err(error),
            report,
        }
    }

    /// One model's attempts, each admitted by its breaker, all before
    /// `caller_deadline`. `attempt` is the caller's request; only its
    /// deadline is changed, per attempt.
    async fn try_model<A: Attempt>(
        &self,
        candidate: &Candidate,
        attempt: &mut ChatRequest,
        caller_deadline: Instant,
        how: &A,
        tried: Tried<'_>,
    ) -> ModelRun<A::Output> {
        let model = candidate.model.as_str();
        let mut attempts = self.retry.attempts(TimeLimits {
            deadline: caller_deadline,
            attempt_timeout: candidate.attempt_timeout,
        });
        let mut failure = None;
        let stop = loop {
            let Some(attempt_deadline) = attempts.start() else {
                break Stop::Deadline;
            };
            let permit = match self.breakers.acquire(model) {
                Ok(permit) => permit,
                Err(refused) => break Stop::Shed(refused),
            };
            attempt.deadline = attempt_deadline;
            let guard = Guard {
                permit,
                attempt_deadline,
                caller_deadline,
            };
            let started = Instant::now();
            let result = how.attempt(&*candidate.backend, attempt, guard).await;
            tried.calls.push(Attempted {
                model: candidate.model.clone(),
                attempt: attempts.made(),
                fallback: tried.fallback,
                started,
                latency: started.elapsed(),
                error: result.as_ref().err().map(|e| e.kind),
            });
            match result {
                Ok(output) => break Stop::Served(output),
                Err(error) => {
                    let next = attempts.after_failure(&error).await;
                    tracing::debug!(
                        model,
                        attempt = attempts.made(),
                        error.kind = error.kind.as_str(),
                        error.message = %error.message,
                        retrying = next.is_ok(),
                        "model call failed"
                    );
                    failure = Some(error);
                    if let Err(gave_up) = next {
                        break Stop::GaveUp(gave_up);
                    }
                }
            }
        };
        // A shed attempt was counted by `start` but never called.
        let shed = u32::from(matches!(stop, Stop::Shed(_)));
        ModelRun {
            calls: attempts.made().saturating_sub(shed),
            backoff: attempts.backoff(),
            stop,
            failure,
        }
    }
}

/// Where [`Reliability::try_model`] records its calls.
struct Tried<'a> {
    /// The model is not the chain's first.
    fallback: bool,
    calls: &'a mut Vec<Attempted>,
}

/// What [`Reliability::try_model`] did.
struct ModelRun<T> {
    stop: Stop<T>,
    /// Calls made to the backend.
    calls: u32,
    /// Time slept between them.
    backoff: Duration,
    /// The last call's error.
    failure: Option<BackendError>,
}

/// How one model's attempts ended.
enum Stop<T> {
    Served(T),
    GaveUp(GaveUp),
    Shed(Shed),
    Deadline,
}

// === Attempt ===

/// One admitted attempt's breaker permit, and what judging its outcome needs.
#[derive(Debug)]
pub(super) struct Guard {
    permit: Permit,
    attempt_deadline: Instant,
    caller_deadline: Instant,
}

impl Guard {
    /// The provider answered.
    pub(super) fn succeeded(self) {
        self.permit.record(Outcome::Success);
    }

    /// The attempt failed with `error`. A timeout that the caller's own
    /// deadline imposed (shorter than the model's per-attempt timeout) says
    /// nothing about the provider, so it does not count against it: a client
    /// sending tight deadlines must not open the breaker for everyone.
    pub(super) fn failed(self, error: &BackendError) {
        let cut_by_caller = error.kind == ErrorKind::Timeout
            && self.attempt_deadline >= self.caller_deadline
            && Instant::now() >= self.caller_deadline;
        let outcome = if cut_by_caller {
            Outcome::Neutral
        } else {
            Outcome::of_error(error)
        };
        self.permit.record(outcome);
    }
}

/// One call to a backend, unary or streaming, reporting to `guard`.
pub(super) trait Attempt: Sync {
    /// What an answer is.
    type Output: Send;

    /// Calls `backend` once with `request` (whose deadline is the attempt's).
    fn attempt<'a>(
        &'a self,
        backend: &'a dyn Backend,
        request: &'a ChatRequest,
        guard: Guard,
    ) -> impl Future<Output = Result<Self::Output, BackendError>> + Send + 'a;
}

/// A unary call.
struct Unary;

impl Attempt for Unary {
    type Output = ChatResponse;

    async fn attempt(
        &self,
        backend: &dyn Backend,
        request: &ChatRequest,
        guard: Guard,
    ) -> Result<ChatResponse, BackendError> {
        let result = retry::call(backend, request).await;
        match &result {
            Ok(_) => guard.succeeded(),
            Err(error) => guard.failed(error),
        }
        result
    }
}

#[cfg(test)]
#[path = "fallback_tests.rs"]
mod tests;
