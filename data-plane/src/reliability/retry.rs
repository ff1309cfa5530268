//! Retries of one model: exponential backoff with full jitter, only for
//! retryable errors, never past the caller's deadline.
//!
//! The loop is a driver ([`Attempts`]) rather than a closure-taking
//! function, so callers keep one mutable copy of the request (only its
//! deadline changes between attempts) and can put a circuit breaker in
//! front of every attempt ([`super::fallback`] does both).

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::Instant;

use crate::backend::{Backend, BackendError, ChatRequest, ChatResponse, ErrorKind};

/// Attempts per model when the config says nothing (the first call included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Backoff ceiling of the first retry; doubles on each retry.
pub const DEFAULT_BASE: Duration = Duration::from_millis(50);
/// Largest backoff ceiling.
pub const DEFAULT_CAP: Duration = Duration::from_secs(2);

/// Tokio's timers fire on whole milliseconds, so a sleep may end up to this
/// much late; a backoff must end at least this long before the deadline.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// How one model is retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Calls per model, the first included; 0 behaves as 1.
    pub max_attempts: u32,
    /// Backoff ceiling after the first failure.
    pub base: Duration,
    /// Backoff ceiling never exceeds this.
    pub cap: Duration,
    /// Source of the random part of each backoff.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base: DEFAULT_BASE,
            cap: DEFAULT_CAP,
            jitter: Jitter::default(),
        }
    }
}

/// The two time limits of one model's attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeLimits {
    /// The caller's deadline: no attempt and no backoff runs past it.
    pub deadline: Instant,
    /// Longest single attempt (the model's per-attempt timeout).
    pub attempt_timeout: Duration,
}

impl TimeLimits {
    /// Deadline of an attempt started at `now`: the smaller of the caller's
    /// deadline and `now + attempt_timeout`.
    pub fn attempt_deadline(&self, now: Instant) -> Instant {
        now.checked_add(self.attempt_timeout)
            .map_or(self.deadline, |end| end.min(self.deadline))
    }
}

/// Why a model's attempts ended without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// The error is permanent: the same call would fail again.
    Permanent,
    /// `max_attempts` calls were made.
    Exhausted,
    /// The next backoff (or the provider's `Retry-After`) would end at or
    /// after the caller's deadline, or the deadline has passed.
    Deadline,
    /// The model's circuit breaker opened between attempts (set by the
    /// fallback chain, which asks the breaker before every attempt).
    CircuitOpen,
}

impl GaveUp {
    /// Stable lower-case name, for spans and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
            Self::Deadline => "deadline",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// The result of [`RetryPolicy::chat`] and what it took.
#[derive(Clone, Debug)]
pub struct Retried<T> {
    /// The answer, or the last error.
    pub result: Result<T, BackendError>,
    /// Calls made (0 if the deadline had passed before the first).
    pub attempts: u32,
    /// Time slept between attempts.
    pub backoff: Duration,
    /// Why it stopped, when it failed.
    pub gave_up: Option<GaveUp>,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// The same policy drawing its jitter from `jitter`.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Backoff ceiling before retry number `retry` (0 = after the first
    /// failure): `min(cap, base · 2^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A full-jitter backoff before retry number `retry`: uniform in
    /// `[0, ceiling(retry)]`. Full jitter (rather than a fixed or "equal"
    /// jitter) spreads the retries of many callers that failed together, so
    /// a recovering provider does not receive them as one burst.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.jitter.up_to(self.ceiling(retry))
    }

    /// A driver for one model's attempts under `limits`.
    pub fn attempts(&self, limits: TimeLimits) -> Attempts<'_> {
        Attempts {
            policy: self,
            limits,
            made: 0,
            backoff: Duration::ZERO,
        }
    }

    /// Calls `backend` until it answers, fails permanently, has been called
    /// `max_attempts` times, or the request's deadline leaves no room for
    /// another try. Each attempt's `deadline` is the smaller of the
    /// request's and `attempt_timeout` from the attempt's start.
    pub async fn chat(
        &self,
        backend: &dyn Backend,
        request: &ChatRequest,
        attempt_timeout: Duration,
    ) -> Retried<ChatResponse> {
        let mut attempts = self.attempts(TimeLimits {
            deadline: request.deadline,
            attempt_timeout,
        });
        let mut attempt = request.clone();
        let mut last = None;
        loop {
            let Some(deadline) = attempts.start() else {
                let error = last.unwrap_or_else(deadline_passed);
                return attempts.finish(Err(error), Some(GaveUp::Deadline));
            };
            attempt.deadline = deadline;
            match call(backend, &attempt).await {
                Ok(response) => return attempts.finish(Ok(response), None),
                Err(error) => match attempts.after_failure(&error).await {
                    Ok(()) => last = Some(error),
                    Err(gave_up) => return attempts.finish(Err(error), Some(gave_up)),
                },
            }
        }
    }
}

// === Attempts ===

/// One model's attempts in progress: hands out each attempt's deadline and
/// sleeps the backoff between them.
#[derive(Debug)]
pub struct Attempts<'p> {
    policy: &'p RetryPolicy,
    limits: TimeLimits,
    made: u32,
    backoff: Duration,
}

impl Attempts<'_> {
    /// Starts an attempt: returns its deadline, or `None` if the caller's
    /// deadline has passed (no attempt is counted then).
    pub fn start(&mut self) -> Option<Instant> {
        let now = Instant::now();
        if now >= self.limits.deadline {
            return None;
        }
        self.made += 1;
        Some(self.limits.attempt_deadline(now))
    }

    /// After the attempt just made failed with `error`: sleeps before the
    /// next one and returns `Ok`, or returns at once why there is none.
    ///
    /// The sleep is the provider's `Retry-After` when it sent one (it knows
    /// its own recovery better than our backoff), else a full-jitter backoff.
    /// A sleep that would end at or after the caller's deadline (or within
    /// the timer's 1 ms resolution of it) is not started: the caller gets the error now instead of a timeout later.
    pub async fn after_failure(&mut self, error: &BackendError) -> Result<(), GaveUp> {
        if !error.kind.is_retryable() {
            return Err(GaveUp::Permanent);
        }
        if self.made >= self.policy.max_attempts.max(1) {
            return Err(GaveUp::Exhausted);
        }
        let sleep = error
            .retry_after
            .unwrap_or_else(|| self.policy.backoff(self.made.saturating_sub(1)));
        let wake = Instant::now().checked_add(sleep);
        match wake {
            Some(wake) if wake + TIMER_SLACK < self.limits.deadline => {
                tokio::time::sleep_until(wake).await;
                self.backoff += sleep;
                Ok(())
            }
            _ => Err(GaveUp::Deadline),
        }
    }

    /// Calls made so far.
    pub fn made(&self) -> u32 {
        self.made
    }

    /// Time slept between attempts so far.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// Packs `result` with what it took.
    pub fn finish<T>(
        &self,
        result: Result<T, BackendError>,
        gave_up: Option<GaveUp>,
    ) -> Retried<T> {
        Retried {
            result,
            attempts: self.made,
            backoff: self.backoff,
            gave_up,
        }
    }
}

/// One call, cut off at `request.deadline` even if the backend ignores it.
pub async fn call(
    backend: &dyn Backend,
    request: &ChatRequest,
) -> Result<ChatResponse, BackendError> {
    tokio::time::timeout_at(request.deadline, backend.chat(request))
        .await
        .unwrap_or_else(|_| Err(attempt_timed_out()))
}

/// The error of an attempt that reached its deadline.
pub(super) fn attempt_timed_out() -> BackendError {
    BackendError::new(
        ErrorKind::Timeout,
        "no answer before the attempt's deadline",
    )
}

/// The error when the caller's deadline passed before any call.
pub(super) fn deadline_passed() -> BackendError {
    BackendError::new(
        ErrorKind::Timeout,
        "the deadline passed before the model could be called",
    )
}

// === Jitter ===

/// Where backoffs get their randomness: the thread's RNG in production, a
/// seeded one in tests (shared by clones, so a whole run is reproducible).
#[derive(Clone, Default)]
pub struct Jitter {
    seeded: Option<Arc<Mutex<StdRng>>>,
}

impl Jitter {
    /// The thread-local RNG (no lock; the default).
    pub fn thread() -> Self {
        Self::default()
    }

    /// A deterministic RNG from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seeded: Some(Arc::new(Mutex::new(StdRng::seed_from_u64(seed)))),
        }
    }

    /// A duration uniform in `[0, upper]` (nanosecond resolution).
    pub fn up_to(&self, upper: Duration) -> Duration {
        let upper = u64::try_from(upper.as_nanos()).unwrap_or(u64::MAX);
        let nanos = match &self.seeded {
            Some(rng) => rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .random_range(0..=upper),
            None => rand::rng().random_range(0..=upper),
        };
        Duration::from_nanos(nanos)
    }
}

impl fmt::Debug for Jitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.seeded {
            Some(_) => "Jitter::Seeded",
            None => "Jitter::Thread",
        })
    }
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
