//! One circuit breaker per model, shared by every request on the node.
//!
//! **Trip rule: failure rate over a rolling window.** A closed breaker
//! counts retryable failures and successes (every attempt, retries
//! included) in a window of `window` (ten buckets). It opens when the
//! window holds at least `min_calls` calls and at least `failure_rate` of
//! them failed. A dead provider trips it after `min_calls` calls; a merely
//! flaky one (30 % failures with the defaults' 50 % threshold) does not.
//!
//! Why not consecutive failures: under concurrency, failures often come
//! back faster than successes (a 503 or a reset is quicker than an answer),
//! so a burst of concurrent requests to a 30 %-flaky provider returns its
//! failures first, in a row, and a consecutive-failure rule trips a
//! provider that retries would have served well. A rate over many calls is
//! indifferent to completion order.
//!
//! Only retryable failures (rate limited, unavailable, timeout, connection:
//! the provider is in trouble) count. Permanent errors (an invalid request,
//! refused credentials, a content refusal, an unparsable answer) say
//! nothing about the provider's health and neither count nor reset.
//!
//! States: **closed** (calls pass) → **open** after the threshold (calls
//! are shed at once for `open_for`) → **half-open** (up to
//! `half_open_probes` trial calls pass; the first failure re-opens for
//! another `open_for`, `half_open_probes` successes close it).
//!
//! Each model's state is exported as the gauge `aios_breaker_state{model}`
//! (0 closed, 1 half-open, 2 open: larger is worse) and logged on every
//! transition.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use tokio::time::Instant;

use crate::backend::BackendError;

/// Gauge of each model's breaker state: 0 closed, 1 half-open, 2 open.
pub const STATE_GAUGE: &str = "aios_breaker_state";

/// When breakers open and how they recover.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Share of failed calls in the window that opens the breaker, (0, 1].
    pub failure_rate: f64,
    /// Calls the window must hold before the rate counts; 0 behaves as 1.
    pub min_calls: u32,
    /// How far back calls count.
    pub window: Duration,
    /// How long an open breaker sheds calls before letting probes through.
    pub open_for: Duration,
    /// Trial calls admitted while half-open, and the successes needed to
    /// close; 0 behaves as 1.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            min_calls: 40,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

/// Buckets of the rolling window.
const BUCKETS: usize = 10;

/// Calls and failures of one slice of the window.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    index: u64,
    calls: u32,
    failures: u32,
}

/// A rolling window of call outcomes in [`BUCKETS`] time slices.
#[derive(Clone, Copy, Debug)]
struct Window {
    origin: Instant,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            origin: now,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    /// Adds one outcome; returns (calls, failures) now in the window.
    fn add(&mut self, now: Instant, width: Duration, failed: bool) -> (u32, u32) {
        let slice = (width / BUCKETS as u32).max(Duration::from_millis(1));
        let index =
            (now.saturating_duration_since(self.origin).as_nanos() / slice.as_nanos()) as u64;
        let bucket = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket.calls += 1;
        bucket.failures += u32::from(failed);
        self.buckets
            .iter()
            .filter(|b| b.index + (BUCKETS as u64) > index)
            .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures))
    }
}

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are shed.
    Open,
    /// A few trial calls pass; the rest are shed.
    HalfOpen,
}

impl BreakerState {
    /// Stable lower-case name, for logs and spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of [`STATE_GAUGE`].
    pub fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// A call the breaker refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shed {
    /// Open, or half-open with every probe slot taken.
    pub state: BreakerState,
    /// Time until the breaker lets probes through; zero while half-open
    /// (the probes in flight decide).
    pub retry_in: Duration,
}

/// What an admitted call tells its breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The provider answered.
    Success,
    /// The provider is in trouble (a retryable error).
    Failure,
    /// Says nothing about the provider (a permanent error, a call the
    /// caller abandoned or cut short with its own deadline).
    Neutral,
}

impl Outcome {
    /// The outcome of a call's result: success, failure if the error is
    /// retryable, neutral otherwise.
    pub fn of<T>(result: &Result<T, BackendError>) -> Self {
        match result {
            Ok(_) => Self::Success,
            Err(error) => Self::of_error(error),
        }
    }

    /// The outcome of a failed call.
    pub fn of_error(error: &BackendError) -> Self {
        if error.kind.is_retryable() {
            Self::Failure
        } else {
            Self::Neutral
        }
    }
}

/// The node's breakers, one per model name, created on first use. Cheap to
/// clone; clones share the breakers.
///
/// Model names come from the node's config, not from callers, so the map
/// stays as small as the catalog.
#[derive(Clone, Debug, Default)]
pub struct Breakers {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    config: BreakerConfig,
    /// Read-locked on every call only to find the model's slot; each slot
    /// has its own lock, so models never contend with each other.
    slots: RwLock<HashMap<String, Arc<Slot>>>,
}

#[derive(Debug)]
struct Slot {
    model: String,
    config: BreakerConfig,
    machine: Mutex<Machine>,
}

#[derive(Debug)]
struct Machine {
    phase: Phase,
    /// Bumped on every transition; a permit's outcome only counts in the
    /// epoch that admitted it (a slow call admitted while closed must not
    /// close a breaker that has since opened).
    epoch: u64,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Closed { window: Window },
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

/// Leave to make one call through a breaker. Report how it went with
/// [`Permit::record`]; dropping it unreported counts as
/// [`Outcome::Neutral`] (and frees a half-open probe slot).
#[derive(Debug)]
#[must_use = "a permit reports the call's outcome to its breaker"]
pub struct Permit {
    slot: Option<Arc<Slot>>,
    epoch: u64,
}

// === impl Breakers ===

impl Breakers {
    /// Breakers that all use `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                slots: RwLock::default(),
            }),
        }
    }

    /// The breakers' config.
    pub fn config(&self) -> BreakerConfig {
        self.shared.config
    }

    /// Asks `model`'s breaker to let one call through.
    pub fn acquire(&self, model: &str) -> Result<Permit, Shed> {
        let slot = self.slot(model);
        let epoch = {
            let mut machine = slot.lock();
            slot.admit(&mut machine, Instant::now())?
        };
        Ok(Permit {
            slot: Some(slot),
            epoch,
        })
    }

    /// `model`'s state now (closed for a model never called). An open
    /// breaker whose cool-down has ended reads as half-open.
    pub fn state(&self, model: &str) -> BreakerState {
        let slot = self
            .shared
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
            .cloned();
        slot.map_or(BreakerState::Closed, |slot| {
            let mut machine = slot.lock();
            slot.refresh(&mut machine, Instant::now());
            machine.phase.state()
        })
    }

    /// Every known model's state, sorted by model name.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        let mut models: Vec<String> = self
            .shared
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        models.sort();
        models
            .into_iter()
            .map(|model| {
                let state = self.state(&model);
                (model, state)
            })
            .collect()
    }

    fn slot(&self, model: &str) -> Arc<Slot> {
        if let Some(slot) = self
            .shared
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
        {
            return slot.clone();
        }
        self.shared
            .slots
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(model.to_owned())
            .or_insert_with(|| {
                set_gauge(model, BreakerState::Closed);
                Arc::new(Slot {
                    model: model.to_owned(),
                    config: self.shared.config,
                    machine: Mutex::new(Machine {
                        phase: Phase::Closed {
                            window: Window::new(Instant::now()),
                        },
                        epoch: 0,
                    }),
                })
            })
            .clone()
    }
}

// === impl Permit ===

impl Permit {
    /// Reports the call's outcome to the breaker.
    pub fn record(mut self, outcome: Outcome) {
        self.report(outcome);
    }

    fn report(&mut self, outcome: Outcome) {
        if let Some(slot) = self.slot.take() {
            let mut machine = slot.lock();
            slot.record(&mut machine, self.epoch, outcome, Instant::now());
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.report(Outcome::Neutral);
    }
}

// === impl Slot ===

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn probes(&self) -> u32 {
        self.config.half_open_probes.max(1)
    }

    /// Moves an open breaker whose cool-down is over to half-open.
    fn refresh(&self, machine: &mut Machine, now: Instant) {
        if let Phase::Open { until } = machine.phase
            && now >= until
        {
            self.transition(
                machine,
                Phase::HalfOpen {
                    in_flight: 0,
                    succeeded: 0,
                },
            );
        }
    }

    /// Admits a call (returning the epoch it counts in) or sheds it.
    fn admit(&self, machine: &mut Machine, now: Instant) -> Result<u64, Shed> {
        self.refresh(machine, now);
        match &mut machine.phase {
            Phase::Closed { .. } => Ok(machine.epoch),
            Phase::Open { until } => Err(Shed {
                state: BreakerState::Open,
                retry_in: until.saturating_duration_since(now),
            }),
            Phase::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if *in_flight + *succeeded < self.probes() {
                    *in_flight += 1;
                    Ok(machine.epoch)
                } else {
                    Err(Shed {
                        state: BreakerState::HalfOpen,
                        retry_in: Duration::ZERO,
                    })
                }
            }
        }
    }

    fn record(&self, machine: &mut Machine, epoch: u64, outcome: Outcome, now: Instant) {
        if epoch != machine.epoch {
            return;
        }
        let open = Phase::Open {
            until: now.checked_add(self.config.open_for).unwrap_or(now),
        };
        match (&mut machine.phase, outcome) {
            (Phase::Closed { window }, Outcome::Success | Outcome::Failure) => {
                let failed = outcome == Outcome::Failure;
                let (calls, failures) = window.add(now, self.config.window, failed);
                if failed
                    && calls >= self.config.min_calls.max(1)
                    && f64::from(failures) >= self.config.failure_rate * f64::from(calls)
                {
                    self.transition(machine, open);
                }
            }
            (Phase::HalfOpen { in_flight, .. }, Outcome::Neutral) => {
                *in_flight = in_flight.saturating_sub(1);
            }
            (
                Phase::HalfOpen {
                    in_flight,
                    succeeded,
                },
                Outcome::Success,
            ) => {
                *in_flight = in_flight.saturating_sub(1);
                *succeeded += 1;
                if *succeeded >= self.probes() {
                    self.transition(
                        machine,
                        Phase::Closed {
                            window: Window::new(now),
                        },
                    );
                }
            }
            (Phase::HalfOpen { .. }, Outcome::Failure) => self.transition(machine, open),
            // Open admits nothing, so no permit of this epoch exists.
            (Phase::Closed { .. }, Outcome::Neutral) | (Phase::Open { .. }, _) => {}
        }
    }

    fn transition(&self, machine: &mut Machine, to: Phase) {
        let from = machine.phase.state();
        machine.phase = to;
        machine.epoch += 1;
        let to = to.state();
        if from != to {
            set_gauge(&self.model, to);
            if to == BreakerState::Open {
                tracing::warn!(model = %self.model, from = from.as_str(), "circuit breaker opened");
            } else {
                tracing::info!(
                    model = %self.model,
                    from = from.as_str(),
                    to = to.as_str(),
                    "circuit breaker changed state"
                );
            }
        }
    }
}

impl Phase {
    fn state(&self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

fn set_gauge(model: &str, state: BreakerState) {
    metrics::gauge!(STATE_GAUGE, "model" => model.to_owned()).set(state.gauge_value());
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
