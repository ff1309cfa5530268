//! Choosing the next token from logits: greedy, or temperature with top-p
//! (nucleus) and top-k, reproducible given a seed.
//!
//! Stop conditions on token ids (end of sequence, `max_tokens`) are the
//! engine's; stop *strings* belong to the text layer.

/// How one request samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` (or below) picks the most likely token.
    pub temperature: f32,
    /// Nucleus: sample among the most likely tokens whose probabilities add
    /// up to `top_p` (`1` = all tokens).
    pub top_p: f32,
    /// Sample among the `top_k` most likely tokens (`0` = no limit).
    pub top_k: usize,
    /// Seed of the random generator: the same seed, prompt and parameters
    /// give the same output. `None` = a fresh random seed.
    pub seed: Option<u64>,
    /// Tokens to generate at most.
    pub max_tokens: u32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            max_tokens: 256,
        }
    }
}

impl SamplingParams {
    /// Rejects values that make no sense.
    pub fn validate(&self) -> Result<(), crate::InferenceError> {
        let bad = |what: &str| Err(crate::InferenceError::InvalidRequest(what.to_string()));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature must be a finite number ≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1");
        }
        Ok(())
    }

    /// True when sampling is greedy (no randomness).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// Picks tokens for one sequence; holds its random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for `params` (seeded from `params.seed`, else at random).
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(random_seed);
        Self {
            params,
            rng: SplitMix64(seed),
            candidates: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token given the logits of one position.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, ((l - max) / t).exp()))
                .filter(|&(_, p)| p > 0.0),
        );
        let filtered = self.params.top_k > 0 || self.params.top_p < 1.0;
        if filtered {
            self.candidates
                .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            if self.params.top_k > 0 {
                self.candidates.truncate(self.params.top_k);
            }
            if self.params.top_p < 1.0 {
                let total: f32 = self.candidates.iter().map(|c| c.1).sum();
                let mut cumulative = 0.0;
                let mut keep = self.candidates.len();
                for (i, c) in self.candidates.iter().enumerate() {
                    cumulative += c.1;
                    if cumulative >= self.params.top_p * total {
                        keep = i + 1;
                        break;
                    }
                }
                self.candidates.truncate(keep);
            }
        }
        let total: f32 = self.candidates.iter().map(|c| c.1).sum();
        let mut target = self.rng.next_f32() * total;
        for &(id, p) in &self.candidates {
            if target < p {
                return id;
            }
            target -= p;
        }
        // Rounding left a sliver past the end: the last candidate.
        self.candidates
            .last()
            .map_or_else(|| argmax(logits), |c| c.0)
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect()
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let l = logits();
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&l), argmax(&l));
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let l = logits();
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(42),
            ..SamplingParams::default()
        };
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&l)).collect::<Vec<_>>()
        };
        assert_eq!(run(&params), run(&params));
        let other = SamplingParams {
            seed: Some(43),
            ..params.clone()
        };
        assert_ne!(run(&params), run(&other));
        // Not greedy: more than one distinct token over 50 draws.
        let mut distinct = run(&params);
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 1);
    }

    #[test]
    fn top_p_and_top_k_keep_the_head() {
        let mut l = vec![0.0f32; 10];
        l[3] = 10.0;
        l[7] = 9.0;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: Some(1),
            ..SamplingParams::default()
        });
        assert!((0..100).all(|_| s.sample(&l) == 3));
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 2,
            seed: Some(1),
            ..SamplingParams::default()
        });
        assert!((0..100).all(|_| matches!(s.sample(&l), 3 | 7)));
    }

    #[test]
    fn validation() {
        assert!(SamplingParams::default().validate().is_ok());
        let bad = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        assert!(bad.validate().is_err());
        let bad = SamplingParams {
            max_tokens: 0,
            ..SamplingParams::default()
        };
        assert!(bad.validate().is_err());
    }
}
