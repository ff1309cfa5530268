//! Every breaker transition, under paused time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tokio::time::advance;

use super::*;
use crate::backend::ErrorKind;

const OPEN_FOR: Duration = Duration::from_secs(10);

/// Breakers opening at 50% failures once `min_calls` are in the window.
fn breakers(min_calls: u32, half_open_probes: u32) -> Breakers {
    Breakers::new(BreakerConfig {
        failure_rate: 0.5,
        min_calls,
        window: Duration::from_secs(10),
        open_for: OPEN_FOR,
        half_open_probes,
    })
}

fn call(b: &Breakers, model: &str, outcome: Outcome) {
    b.acquire(model).unwrap().record(outcome);
}

fn fail(b: &Breakers, model: &str, times: u32) {
    for _ in 0..times {
        call(b, model, Outcome::Failure);
    }
}

/// Opens `m`'s breaker and waits out its cool-down.
async fn half_open(b: &Breakers) {
    fail(b, "m", b.config().min_calls);
    assert_eq!(b.state("m"), BreakerState::Open);
    advance(OPEN_FOR).await;
    assert_eq!(b.state("m"), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_once_the_window_holds_enough_calls() {
    let b = breakers(4, 1);
    assert_eq!(b.state("m"), BreakerState::Closed);
    fail(&b, "m", 1);
    call(&b, "m", Outcome::Success);
    call(&b, "m", Outcome::Success);
    assert_eq!(b.state("m"), BreakerState::Closed, "3 calls: too few");
    fail(&b, "m", 1);
    assert_eq!(b.state("m"), BreakerState::Open, "2 of 4 failed");

    let b = breakers(4, 1);
    for _ in 0..3 {
        call(&b, "m", Outcome::Success);
    }
    fail(&b, "m", 2);
    assert_eq!(b.state("m"), BreakerState::Closed, "2 of 5 failed");
    fail(&b, "m", 1);
    assert_eq!(b.state("m"), BreakerState::Open, "3 of 6 failed");
}

#[tokio::test(start_paused = true)]
async fn calls_older_than_the_window_no_longer_count() {
    let b = breakers(4, 1);
    fail(&b, "m", 3);
    advance(Duration::from_secs(11)).await;
    fail(&b, "m", 3);
    assert_eq!(
        b.state("m"),
        BreakerState::Closed,
        "the first three left the window"
    );
    fail(&b, "m", 1);
    assert_eq!(b.state("m"), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failures_coming_back_first_in_a_burst_do_not_trip_a_flaky_provider() {
    // 40 concurrent calls to a 30%-flaky provider: the 12 failures return
    // first, in a row, then the 28 successes.
    let b = Breakers::default();
    let permits: Vec<Permit> = (0..40).map(|_| b.acquire("m").unwrap()).collect();
    for (i, permit) in permits.into_iter().enumerate() {
        permit.record(if i < 12 {
            Outcome::Failure
        } else {
            Outcome::Success
        });
    }
    assert_eq!(b.state("m"), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_neither_count_nor_reset() {
    let b = breakers(3, 1);
    fail(&b, "m", 2);
    for _ in 0..20 {
        call(&b, "m", Outcome::Neutral);
    }
    assert_eq!(b.state("m"), BreakerState::Closed);
    fail(&b, "m", 1);
    assert_eq!(
        b.state("m"),
        BreakerState::Open,
        "neutral outcomes are not calls: 3 of 3 failed"
    );
}

#[test]
fn only_retryable_errors_are_failures() {
    let err = |kind| Err::<(), _>(BackendError::new(kind, "x"));
    assert_eq!(Outcome::of(&Ok::<_, BackendError>(())), Outcome::Success);
    for kind in [
        ErrorKind::RateLimited,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Connection,
    ] {
        assert_eq!(Outcome::of(&err(kind)), Outcome::Failure, "{kind:?}");
    }
    for kind in [
        ErrorKind::InvalidRequest,
        ErrorKind::Auth,
        ErrorKind::ContentPolicy,
        ErrorKind::Protocol,
    ] {
        assert_eq!(Outcome::of(&err(kind)), Outcome::Neutral, "{kind:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_sheds_until_its_cool_down_ends() {
    let b = breakers(2, 1);
    fail(&b, "m", 2);

    let shed = b.acquire("m").unwrap_err();
    assert_eq!(shed.state, BreakerState::Open);
    assert_eq!(shed.retry_in, OPEN_FOR);

    advance(OPEN_FOR - Duration::from_millis(1)).await;
    let shed = b.acquire("m").unwrap_err();
    assert_eq!(shed.retry_in, Duration::from_millis(1));

    advance(Duration::from_millis(1)).await;
    assert_eq!(b.state("m"), BreakerState::HalfOpen);
    assert!(b.acquire("m").is_ok(), "a probe passes");
}

#[tokio::test(start_paused = true)]
async fn a_successful_probe_closes_the_breaker() {
    let b = breakers(2, 1);
    half_open(&b).await;
    let probe = b.acquire("m").unwrap();
    // One probe at a time: the next call is shed while it runs.
    let shed = b.acquire("m").unwrap_err();
    assert_eq!(shed.state, BreakerState::HalfOpen);
    assert_eq!(shed.retry_in, Duration::ZERO);

    probe.record(Outcome::Success);
    assert_eq!(b.state("m"), BreakerState::Closed);
    // Closed again means a fresh count: it takes the whole threshold to
    // open it again.
    fail(&b, "m", 1);
    assert_eq!(b.state("m"), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_another_cool_down() {
    let b = breakers(2, 1);
    half_open(&b).await;
    advance(Duration::from_secs(3)).await;
    call(&b, "m", Outcome::Failure);

    assert_eq!(b.state("m"), BreakerState::Open);
    assert_eq!(b.acquire("m").unwrap_err().retry_in, OPEN_FOR);
    advance(OPEN_FOR).await;
    assert_eq!(b.state("m"), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_its_probes_and_closes_after_as_many_successes() {
    let b = breakers(1, 2);
    half_open(&b).await;
    let first = b.acquire("m").unwrap();
    let second = b.acquire("m").unwrap();
    assert!(b.acquire("m").is_err(), "only two probes");

    first.record(Outcome::Success);
    assert_eq!(b.state("m"), BreakerState::HalfOpen, "one success of two");
    assert!(b.acquire("m").is_err(), "the success used its probe slot");
    second.record(Outcome::Success);
    assert_eq!(b.state("m"), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_or_neutral_probe_frees_its_slot() {
    let b = breakers(1, 1);
    half_open(&b).await;

    drop(b.acquire("m").unwrap());
    assert_eq!(b.state("m"), BreakerState::HalfOpen);
    b.acquire("m").unwrap().record(Outcome::Neutral);
    assert_eq!(b.state("m"), BreakerState::HalfOpen);
    call(&b, "m", Outcome::Success);
    assert_eq!(b.state("m"), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_late_result_from_before_a_transition_is_ignored() {
    let b = breakers(2, 1);
    let slow = b.acquire("m").unwrap();
    fail(&b, "m", 2);
    assert_eq!(b.state("m"), BreakerState::Open);

    // Admitted while closed, it answers after the breaker opened: its
    // success says nothing about the provider now.
    slow.record(Outcome::Success);
    assert_eq!(b.state("m"), BreakerState::Open);

    // Nor does a stale failure re-open a half-open breaker.
    let stale = {
        advance(OPEN_FOR).await;
        let probe = b.acquire("m").unwrap();
        probe.record(Outcome::Success);
        b.acquire("m").unwrap()
    };
    fail(&b, "m", 2);
    advance(OPEN_FOR).await;
    assert_eq!(b.state("m"), BreakerState::HalfOpen);
    stale.record(Outcome::Failure);
    assert_eq!(b.state("m"), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn models_have_their_own_breakers_and_clones_share_them() {
    let b = breakers(1, 1);
    let clone = b.clone();
    fail(&clone, "a", 1);

    assert_eq!(b.state("a"), BreakerState::Open);
    assert_eq!(b.state("b"), BreakerState::Closed);
    assert!(b.acquire("b").is_ok());
    assert_eq!(
        b.states(),
        [
            ("a".to_owned(), BreakerState::Open),
            ("b".to_owned(), BreakerState::Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn zero_threshold_and_probes_behave_as_one() {
    let b = breakers(0, 0);
    fail(&b, "m", 1);
    assert_eq!(b.state("m"), BreakerState::Open);
    advance(OPEN_FOR).await;
    call(&b, "m", Outcome::Success);
    assert_eq!(b.state("m"), BreakerState::Closed);
}

// === the state gauge ===

/// Records gauge values by `model` label, in order.
#[derive(Debug, Default)]
struct Gauges(Arc<Mutex<Vec<(String, f64)>>>);

#[derive(Debug)]
struct Series(String, Arc<Mutex<Vec<(String, f64)>>>);

impl GaugeFn for Series {
    fn increment(&self, _: f64) {
        unreachable!("the breaker sets its gauge")
    }
    fn decrement(&self, _: f64) {
        unreachable!("the breaker sets its gauge")
    }
    fn set(&self, value: f64) {
        self.1.lock().unwrap().push((self.0.clone(), value));
    }
}

impl Recorder for Gauges {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        assert_eq!(key.name(), STATE_GAUGE);
        let model = key
            .labels()
            .find(|l| l.key() == "model")
            .map(|l| l.value().to_owned())
            .unwrap();
        Gauge::from_arc(Arc::new(Series(model, self.0.clone())))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn the_state_gauge_follows_every_transition() {
    let gauges = Gauges::default();
    let b = breakers(1, 1);
    // closed (new) → open → half-open → open → half-open → closed
    metrics::with_local_recorder(&gauges, || fail(&b, "m", 1));
    advance(OPEN_FOR).await;
    metrics::with_local_recorder(&gauges, || call(&b, "m", Outcome::Failure));
    advance(OPEN_FOR).await;
    metrics::with_local_recorder(&gauges, || call(&b, "m", Outcome::Success));

    let values: Vec<f64> = gauges.0.lock().unwrap().iter().map(|(_, v)| *v).collect();
    assert_eq!(values, [0.0, 2.0, 1.0, 2.0, 1.0, 0.0]);
    assert!(gauges.0.lock().unwrap().iter().all(|(m, _)| m == "m"));
}
