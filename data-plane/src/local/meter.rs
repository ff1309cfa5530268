//! What a local call costs: the device's price per hour over the model's
//! measured throughput.
//!
//! A remote provider bills per token; a local model costs the device it
//! runs on, whether busy or not. The fair per-token price is the device's
//! price per second divided by the tokens per second the model actually
//! delivers, so a model that batches well (more tokens per busy second)
//! gets cheaper per call. The meter measures throughput over the time the
//! model was busy (at least one call in flight), with older work decaying
//! away (half-life [`HALF_LIFE`]), so the price follows the load.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use aios_model::Usd;

/// How fast old measurements fade.
pub const HALF_LIFE: Duration = Duration::from_secs(60);

/// Throughput of one local model, and the price per token it implies.
#[derive(Debug)]
pub struct Meter {
    usd_per_hour: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    in_flight: u32,
    /// When the current busy period (or its last accounted part) began.
    busy_since: Option<Instant>,
    /// Decayed busy seconds and tokens.
    busy_seconds: f64,
    tokens: f64,
    /// When the decay was last applied.
    decayed_at: Instant,
}

/// One call in flight; [`Meter::finish`] it with its tokens.
#[derive(Debug)]
#[must_use = "finish the call to record its tokens"]
pub struct Call<'a> {
    meter: &'a Meter,
    done: bool,
}

impl Meter {
    /// A meter for a device costing `usd_per_hour`.
    pub fn new(usd_per_hour: f64) -> Self {
        let now = Instant::now();
        Self {
            usd_per_hour,
            state: Mutex::new(State {
                in_flight: 0,
                busy_since: None,
                busy_seconds: 0.0,
                tokens: 0.0,
                decayed_at: now,
            }),
        }
    }

    /// A call starts (the model is busy from now while any call runs).
    pub fn start(&self) -> Call<'_> {
        self.start_at(Instant::now())
    }

    fn start_at(&self, now: Instant) -> Call<'_> {
        self.update(now, |state, now| {
            if state.in_flight == 0 {
                state.busy_since = Some(now);
            }
            state.in_flight += 1;
        });
        Call {
            meter: self,
            done: false,
        }
    }

    /// Tokens per busy second, as measured so far (`None` before any call).
    pub fn throughput(&self) -> Option<f64> {
        self.throughput_at(Instant::now())
    }

    fn throughput_at(&self, now: Instant) -> Option<f64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let busy = state.busy_seconds
            + state.busy_since.map_or(0.0, |since| {
                now.saturating_duration_since(since).as_secs_f64()
            });
        (busy > 0.0 && state.tokens > 0.0).then(|| state.tokens / busy)
    }

    /// The device cost of `tokens` at the measured throughput.
    pub fn cost(&self, tokens: u64) -> Usd {
        self.cost_at(tokens, Instant::now())
    }

    fn cost_at(&self, tokens: u64, now: Instant) -> Usd {
        let Some(rate) = self.throughput_at(now) else {
            return Usd::ZERO;
        };
        let usd = self.usd_per_hour / 3600.0 * tokens as f64 / rate;
        // Micro-USD, rounded half-up; far inside i64.
        Usd::from_micros((usd * 1e6).round() as i64)
    }

    fn update(&self, now: Instant, change: impl FnOnce(&mut State, Instant)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Account the busy time up to now, then decay everything.
        if let Some(since) = state.busy_since {
            state.busy_seconds += now.saturating_duration_since(since).as_secs_f64();
            state.busy_since = Some(now);
        }
        let age = now
            .saturating_duration_since(state.decayed_at)
            .as_secs_f64();
        let keep = 0.5_f64.powf(age / HALF_LIFE.as_secs_f64());
        state.busy_seconds *= keep;
        state.tokens *= keep;
        state.decayed_at = now;
        change(&mut state, now);
    }
}

impl Call<'_> {
    /// The call processed `tokens` (prompt and output); returns its cost.
    pub fn finish(self, tokens: u64) -> Usd {
        self.finish_at(tokens, Instant::now())
    }

    fn finish_at(mut self, tokens: u64, now: Instant) -> Usd {
        self.end(tokens, now);
        self.meter.cost_at(tokens, now)
    }

    fn end(&mut self, tokens: u64, now: Instant) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.meter.update(now, |state, _| {
            state.tokens += tokens as f64;
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.busy_since = None;
            }
        });
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        // A failed or cancelled call: busy time without tokens.
        self.end(0, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn cost_is_device_seconds_per_token() {
        let meter = Meter::new(3.6); // 0.001 USD per second
        assert_eq!(meter.cost(100), Usd::ZERO, "nothing measured yet");
        let t0 = Instant::now();
        let cost = meter.start_at(t0).finish_at(100, t0 + 50 * MS);
        // 100 tokens in 50 ms busy: 2,000 tokens/s, so 100 tokens cost
        // 0.05 s of device time = 50 micro-USD.
        let throughput = meter.throughput_at(t0 + 50 * MS).unwrap();
        assert!((throughput - 2_000.0).abs() < 5.0, "{throughput}");
        assert_eq!(cost.micros(), 50);
    }

    #[test]
    fn overlapping_calls_share_the_busy_time() {
        let meter = Meter::new(3.6);
        let t0 = Instant::now();
        let (a, b) = (meter.start_at(t0), meter.start_at(t0));
        let _ = a.finish_at(100, t0 + 40 * MS);
        let cost = b.finish_at(100, t0 + 40 * MS);
        // Two calls in the same 40 ms: 5,000 tokens/s, each costs 20 µUSD.
        let throughput = meter.throughput_at(t0 + 40 * MS).unwrap();
        assert!((throughput - 5_000.0).abs() < 10.0, "{throughput}");
        assert_eq!(cost.micros(), 20);
    }

    #[test]
    fn idle_time_is_not_busy_time_and_old_work_fades() {
        let meter = Meter::new(3.6);
        let t0 = Instant::now();
        let _ = meter.start_at(t0).finish_at(100, t0 + 100 * MS);
        // Idle for a minute: the rate is unchanged (no busy time added)...
        let later = t0 + 100 * MS + HALF_LIFE;
        let _ = meter.start_at(later).finish_at(100, later + 100 * MS);
        // ...and the old call weighs half as much as the new one.
        let throughput = meter.throughput_at(later + 100 * MS).unwrap();
        assert!((throughput - 1_000.0).abs() < 5.0, "{throughput}");
    }

    #[test]
    fn a_dropped_call_counts_busy_time_only() {
        let meter = Meter::new(3.6);
        drop(meter.start());
        assert_eq!(meter.throughput(), None);
    }
}
