//! The backend-call stage's reliability: retries with full-jitter backoff,
//! per-model circuit breakers and fallback chains.
//!
//! The pipeline holds one [`Reliability`] per node (a retry policy and the
//! shared [`Breakers`]) and calls [`Reliability::chat`] or
//! [`Reliability::chat_stream`] with the route's models, primary first. The
//! returned [`ChainReport`] names the model that served and the ones that
//! failed (`RouteDecision.failed_models`), with attempts and backoff for the
//! span.
//!
//! - [`retry`]: one model, retried on retryable errors only, with
//!   exponential backoff and full jitter (or the provider's `Retry-After`),
//!   never sleeping past the caller's deadline.
//! - [`breaker`]: one breaker per model; a high rate of retryable
//!   failures over a rolling window opens it, open sheds calls, half-open probes close or re-open it.
//! - [`fallback`]: the chain, and which errors may fall back (auth and
//!   protocol errors do; invalid requests and content refusals do not).
//!
//! All timing uses `tokio::time`, so tests run it under paused time.

pub mod breaker;
pub mod fallback;
pub mod retry;
mod stream;

#[cfg(test)]
mod testing;

pub use breaker::{BreakerConfig, BreakerState, Breakers, Outcome, Permit, Shed};
pub use fallback::{
    Attempted, CallError, Candidate, ChainReport, Chained, ModelTry, Reliability, TryResult,
    falls_back,
};
pub use retry::{Attempts, GaveUp, Jitter, Retried, RetryPolicy, TimeLimits};
