//! A mergeable latency histogram with bounded relative error.
//!
//! Buckets are log-linear, as in HDR histograms: values below 128 ns have a
//! bucket each; above, every power of two is cut into 64 equal sub-buckets.
//! A bucket's width is at most 1/64 of its lower bound and a quantile is
//! answered with the bucket's midpoint, so the answer is within 1/128
//! (≈0.8%) of the exact value. Two histograms merge by adding counts, so
//! rollups of any windows and dimensions combine without losing accuracy.
//!
//! Most rollup cells see few distinct latencies, so storage is sparse: the
//! buckets that saw a value, sorted by index (a few hundred at most in
//! practice; 3,776 in theory for the whole `u64` range of nanoseconds).

use std::time::Duration;

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 6;
/// Values below this have a bucket each (exact).
const EXACT_BELOW: u64 = 2 << SUB_BITS;

/// A latency histogram; cheap when empty, mergeable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// `(bucket index, count)` for buckets that saw a value, by index.
    buckets: Vec<(u16, u64)>,
    /// Values recorded.
    count: u64,
}

// === impl Histogram ===

impl Histogram {
    /// Records one latency (saturating at `u64::MAX` nanoseconds, 584 years).
    pub fn record(&mut self, latency: Duration) {
        self.record_nanos(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one latency in nanoseconds.
    pub fn record_nanos(&mut self, nanos: u64) {
        let index = bucket(nanos);
        match self.buckets.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => self.buckets[at].1 += 1,
            Err(at) => self.buckets.insert(at, (index, 1)),
        }
        self.count += 1;
    }

    /// Adds every value `other` recorded.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            self.clone_from(other);
            return;
        }
        let mut merged = Vec::with_capacity(self.buckets.len() + other.buckets.len());
        let (mut a, mut b) = (
            self.buckets.iter().peekable(),
            other.buckets.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&(i, x)), Some(&&(j, y))) if i == j => {
                    a.next();
                    b.next();
                    (i, x + y)
                }
                (Some(&&x), Some(&&y)) if x.0 < y.0 => {
                    a.next();
                    x
                }
                (_, Some(&&y)) => {
                    b.next();
                    y
                }
                (Some(&&x), None) => {
                    a.next();
                    x
                }
                (None, None) => break,
            };
            merged.push(next);
        }
        self.buckets = merged;
        self.count += other.count;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The latency at quantile `q` (0-1, clamped): the value of rank
    /// `ceil(q * count)` in sorted order, within 1/128 of it. Zero when
    /// empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // Float to integer casts saturate; the clamp keeps the rank in 1..=count.
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for &(index, count) in &self.buckets {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(midpoint(index));
            }
        }
        // Unreachable while counts add up; the largest bucket is the answer.
        self.buckets.last().map_or(Duration::ZERO, |&(index, _)| {
            Duration::from_nanos(midpoint(index))
        })
    }
}

/// The bucket of `nanos`: exact below 128, else 64 per power of two.
/// Indexes are contiguous: `shift * 64 + top` with `top` in 64..128.
fn bucket(nanos: u64) -> u16 {
    if nanos < EXACT_BELOW {
        return nanos as u16;
    }
    let shift = 63 - nanos.leading_zeros() - SUB_BITS;
    let top = nanos >> shift;
    // At most 57 * 64 + 127 = 3775.
    ((u64::from(shift) << SUB_BITS) + top) as u16
}

/// The middle of bucket `index` (its only value when exact).
fn midpoint(index: u16) -> u64 {
    let index = u64::from(index);
    if index < EXACT_BELOW {
        return index;
    }
    let shift = (index >> SUB_BITS) - 1;
    let top = index - (shift << SUB_BITS);
    let lower = top << shift;
    lower + ((1u64 << shift) - 1) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic xorshift sequence (no seedable RNG in the build).
    fn values(n: usize, mut state: u64) -> Vec<u64> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Log-uniform from 1 ns to ~18 minutes: every bucket range.
                let exponent = state % 40;
                (state >> 8) % (1u64 << exponent).max(1) + (1u64 << exponent)
            })
            .collect()
    }

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        let mut last = 0;
        for nanos in 0..100_000u64 {
            let index = bucket(nanos);
            assert!(index == last || index == last + 1, "{nanos}");
            last = index;
        }
        for nanos in (0..100_000u64).chain([1 << 40, u64::MAX / 3, u64::MAX]) {
            let mid = midpoint(bucket(nanos));
            let error = mid.abs_diff(nanos) as f64 / nanos.max(1) as f64;
            assert!(error <= 1.0 / 128.0, "{nanos} → {mid}");
        }
        assert_eq!(bucket(u64::MAX), 3775);
    }

    #[test]
    fn quantiles_are_within_one_percent_of_the_exact_values() {
        let mut exact = values(50_000, 0x9e37_79b9_7f4a_7c15);
        let mut histogram = Histogram::default();
        for &v in &exact {
            histogram.record(Duration::from_nanos(v));
        }
        exact.sort_unstable();
        assert_eq!(histogram.count(), exact.len() as u64);
        for q in [0.0, 0.001, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let rank = ((q * exact.len() as f64).ceil() as usize).clamp(1, exact.len());
            let want = exact[rank - 1] as f64;
            let got = histogram.quantile(q).as_nanos() as f64;
            assert!(
                (got - want).abs() <= want * 0.01,
                "q={q}: {got} vs exact {want}"
            );
        }
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (a, b) = (values(3_000, 7), values(5_000, 11));
        let mut left = Histogram::default();
        let mut right = Histogram::default();
        let mut all = Histogram::default();
        for &v in &a {
            left.record_nanos(v);
            all.record_nanos(v);
        }
        for &v in &b {
            right.record_nanos(v);
            all.record_nanos(v);
        }
        let mut merged = left.clone();
        merged.merge(&right);
        assert_eq!(merged, all);
        let mut other_way = right.clone();
        other_way.merge(&left);
        assert_eq!(other_way, all);
        let mut from_empty = Histogram::default();
        from_empty.merge(&all);
        from_empty.merge(&Histogram::default());
        assert_eq!(from_empty, all);
    }

    #[test]
    fn an_empty_histogram_answers_zero() {
        let empty = Histogram::default();
        assert_eq!((empty.count(), empty.quantile(0.99)), (0, Duration::ZERO));
        let mut one = Histogram::default();
        one.record(Duration::from_millis(250));
        let p = one.quantile(0.5).as_nanos() as f64;
        assert!((p - 250e6).abs() <= 250e6 / 128.0, "{p}");
    }
}
