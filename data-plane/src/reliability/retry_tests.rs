//! Retries against a scripted backend, under paused time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::reliability::testing::{Scripted, Step, request_in};

const TIMEOUT: Duration = Duration::from_secs(10);

fn policy(seed: u64) -> RetryPolicy {
    RetryPolicy::default().with_jitter(Jitter::seeded(seed))
}

#[tokio::test(start_paused = true)]
async fn retryable_errors_are_retried_until_an_answer() {
    let backend = Scripted::new([
        Step::fail(ErrorKind::Unavailable),
        Step::fail(ErrorKind::Connection),
        Step::Answer("hi"),
    ]);
    let started = Instant::now();
    let out = policy(1)
        .chat(&backend, &request_in(Duration::from_secs(30)), TIMEOUT)
        .await;

    assert_eq!(out.result.unwrap().content, "hi");
    assert_eq!(out.attempts, 3);
    assert_eq!(backend.calls(), 3);
    assert_eq!(out.gave_up, None);
    // Two backoffs: at most base, then at most 2·base; the clock moved by
    // exactly what was slept (the fake answers instantly).
    assert!(out.backoff <= DEFAULT_BASE * 3, "{:?}", out.backoff);
    let late = started.elapsed() - out.backoff;
    assert!(
        late <= Duration::from_millis(2),
        "timers fire on whole ms: {late:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    for kind in [
        ErrorKind::InvalidRequest,
        ErrorKind::Auth,
        ErrorKind::ContentPolicy,
        ErrorKind::Protocol,
    ] {
        let backend = Scripted::new([Step::fail(kind), Step::Answer("never")]);
        let out = policy(2)
            .chat(&backend, &request_in(Duration::from_secs(30)), TIMEOUT)
            .await;

        assert_eq!(out.result.unwrap_err().kind, kind);
        assert_eq!(backend.calls(), 1, "{kind:?}");
        assert_eq!(out.gave_up, Some(GaveUp::Permanent));
        assert_eq!(out.backoff, Duration::ZERO);
    }
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_max_attempts_with_the_last_error() {
    let backend = Scripted::new([
        Step::fail(ErrorKind::Unavailable),
        Step::fail(ErrorKind::Unavailable),
        Step::fail(ErrorKind::RateLimited),
        Step::Answer("too late"),
    ]);
    let out = policy(3)
        .chat(&backend, &request_in(Duration::from_secs(30)), TIMEOUT)
        .await;

    assert_eq!(out.result.unwrap_err().kind, ErrorKind::RateLimited);
    assert_eq!(backend.calls(), DEFAULT_MAX_ATTEMPTS);
    assert_eq!(out.gave_up, Some(GaveUp::Exhausted));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let mut limited = BackendError::new(ErrorKind::RateLimited, "slow down");
    limited.retry_after = Some(Duration::from_millis(700));
    let backend = Scripted::new([Step::Fail(limited), Step::Answer("hi")]);
    let started = Instant::now();
    let out = policy(4)
        .chat(&backend, &request_in(Duration::from_secs(30)), TIMEOUT)
        .await;

    assert!(out.result.is_ok());
    // Not the (at most 50 ms) backoff: the provider's 700 ms.
    assert_eq!(out.backoff, Duration::from_millis(700));
    assert_eq!(started.elapsed(), Duration::from_millis(700));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_deadline_returns_the_error_at_once() {
    let mut limited = BackendError::new(ErrorKind::RateLimited, "slow down");
    limited.retry_after = Some(Duration::from_secs(5));
    let backend = Scripted::new([Step::Fail(limited.clone()), Step::Answer("hi")]);
    let started = Instant::now();
    let out = policy(5)
        .chat(&backend, &request_in(Duration::from_secs(2)), TIMEOUT)
        .await;

    // The caller gets the provider's error (with its Retry-After) now, not
    // a timeout in two seconds.
    assert_eq!(out.result.unwrap_err(), limited);
    assert_eq!(backend.calls(), 1);
    assert_eq!(out.gave_up, Some(GaveUp::Deadline));
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn retries_never_sleep_past_the_deadline() {
    // Every attempt takes 300 ms and fails; backoffs up to 1 s; 10 attempts
    // allowed; the deadline (1 s) ends the loop long before that.
    let slow_failure = || {
        Step::After(
            Duration::from_millis(300),
            Box::new(Step::fail(ErrorKind::Unavailable)),
        )
    };
    for seed in 0..50 {
        let backend = Scripted::new((0..10).map(|_| slow_failure()));
        let policy = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(400),
            cap: Duration::from_secs(1),
            jitter: Jitter::seeded(seed),
        };
        let request = request_in(Duration::from_secs(1));
        let out = policy.chat(&backend, &request, TIMEOUT).await;

        // The last attempt either failed on its own or ran into the deadline.
        let kind = out.result.unwrap_err().kind;
        assert!(
            matches!(kind, ErrorKind::Unavailable | ErrorKind::Timeout),
            "seed {seed}: {kind:?}"
        );
        assert_eq!(out.gave_up, Some(GaveUp::Deadline), "seed {seed}");
        assert!(Instant::now() <= request.deadline, "seed {seed}");
        assert!(backend.calls() < 10, "seed {seed}");
        // Every attempt was told the caller's deadline (the per-attempt
        // timeout is longer).
        assert!(backend.deadlines().iter().all(|d| *d == request.deadline));
    }
}

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_the_per_attempt_timeout_within_the_deadline() {
    // The first attempt hangs and is cut at its 2 s timeout; the second
    // starts at ~2 s and is cut by the caller's deadline (3 s) instead.
    let backend = Scripted::new([Step::Hang, Step::Hang, Step::Answer("never")]);
    let start = Instant::now();
    let request = request_in(Duration::from_secs(3));
    let out = policy(6)
        .chat(&backend, &request, Duration::from_secs(2))
        .await;

    assert_eq!(out.result.unwrap_err().kind, ErrorKind::Timeout);
    let deadlines = backend.deadlines();
    assert_eq!(deadlines.len(), 2);
    assert_eq!(deadlines[0], start + Duration::from_secs(2));
    assert_eq!(deadlines[1], request.deadline);
    assert_eq!(Instant::now(), request.deadline);
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_makes_no_call() {
    let backend = Scripted::new([Step::Answer("hi")]);
    let request = request_in(Duration::ZERO);
    let out = policy(7).chat(&backend, &request, TIMEOUT).await;

    assert_eq!(out.result.unwrap_err().kind, ErrorKind::Timeout);
    assert_eq!(out.attempts, 0);
    assert_eq!(backend.calls(), 0);
    assert_eq!(out.gave_up, Some(GaveUp::Deadline));
}

#[test]
fn ceilings_double_from_base_up_to_cap() {
    let p = RetryPolicy::default();
    let ms = |n| Duration::from_millis(n);
    let ceilings: Vec<_> = (0..8).map(|n| p.ceiling(n)).collect();
    assert_eq!(
        ceilings,
        [
            ms(50),
            ms(100),
            ms(200),
            ms(400),
            ms(800),
            ms(1600),
            ms(2000),
            ms(2000)
        ]
    );
    // No overflow far out.
    assert_eq!(p.ceiling(31), DEFAULT_CAP);
    assert_eq!(p.ceiling(u32::MAX), DEFAULT_CAP);
}

#[test]
fn full_jitter_stays_within_bounds_and_covers_them() {
    // Property over many seeds: every backoff lies in [0, ceiling], and the
    // draws span the whole range (full jitter, not "ceiling/2 + jitter").
    let mut lowest = [f64::MAX; 8];
    let mut highest = [0f64; 8];
    let mut sum = [0f64; 8];
    let seeds = 500;
    for seed in 0..seeds {
        let p = policy(seed);
        for retry in 0..8 {
            let ceiling = p.ceiling(retry);
            let backoff = p.backoff(retry);
            assert!(
                backoff <= ceiling,
                "seed {seed} retry {retry}: {backoff:?} > {ceiling:?}"
            );
            let share = backoff.as_secs_f64() / ceiling.as_secs_f64();
            let r = retry as usize;
            lowest[r] = lowest[r].min(share);
            highest[r] = highest[r].max(share);
            sum[r] += share;
        }
    }
    for r in 0..8 {
        assert!(lowest[r] < 0.02, "retry {r}: lowest share {}", lowest[r]);
        assert!(highest[r] > 0.98, "retry {r}: highest share {}", highest[r]);
        let mean = sum[r] / seeds as f64;
        assert!((0.45..0.55).contains(&mean), "retry {r}: mean share {mean}");
    }
}

#[test]
fn a_seeded_jitter_is_reproducible() {
    let draws = |seed| {
        let p = policy(seed);
        (0..20).map(|n| p.backoff(n % 6)).collect::<Vec<_>>()
    };
    assert_eq!(draws(42), draws(42));
    assert_ne!(draws(42), draws(43));
}

#[test]
fn a_zero_ceiling_gives_no_backoff() {
    let p = RetryPolicy {
        base: Duration::ZERO,
        ..policy(8)
    };
    assert_eq!(p.backoff(3), Duration::ZERO);
}
