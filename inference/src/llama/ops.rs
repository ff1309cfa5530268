//! The float parts of the forward pass: RMSNorm, RoPE, attention, SwiGLU.
//! Plain loops over `f32` slices, written so the compiler vectorizes them
//! (eight independent lanes, fused multiply-add).

use rayon::prelude::*;

use super::cache::SequenceState;
use super::config::LlamaConfig;

/// `Σ a·b` over two equal-length slices.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut sum = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// `out = x / rms(x) · weight`, row by row.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (x, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = dot(x, x) / dim as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &x), &w) in out.iter_mut().zip(x).zip(weight) {
            *o = x * scale * w;
        }
    }
}

/// `gate_up` rows hold `[gate | up]`; `out = silu(gate) · up`.
pub(crate) fn swiglu(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    for (gu, out) in gate_up.chunks_exact(2 * ffn).zip(out.chunks_exact_mut(ffn)) {
        let (gate, up) = gu.split_at(ffn);
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

/// `x += y`.
pub(crate) fn add_assign(x: &mut [f32], y: &[f32]) {
    for (x, &y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// Rotary position embedding: cos/sin per position and frequency.
#[derive(Debug)]
pub(crate) struct Rope {
    half: usize,
    neox: bool,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    pub(crate) fn new(config: &LlamaConfig) -> Self {
        let half = config.rope_dim / 2;
        let positions = config.context_length.max(1);
        let theta: Vec<f32> = (0..half)
            .map(|i| {
                1.0 / config
                    .rope_base
                    .powf((2 * i) as f32 / config.rope_dim as f32)
            })
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for pos in 0..positions {
            for &t in &theta {
                let angle = pos as f32 * t;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Self {
            half,
            neox: config.rope_neox,
            cos,
            sin,
        }
    }

    /// Rotates every head of `x` (`heads × head_dim`) for position `pos`.
    pub(crate) fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let cos = &self.cos[pos * self.half..(pos + 1) * self.half];
        let sin = &self.sin[pos * self.half..(pos + 1) * self.half];
        for head in x.chunks_exact_mut(head_dim) {
            if self.neox {
                let (a, b) = head[..2 * self.half].split_at_mut(self.half);
                for (((a, b), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
                    let (x0, x1) = (*a, *b);
                    *a = x0 * c - x1 * s;
                    *b = x0 * s + x1 * c;
                }
            } else {
                let (pairs, _) = head[..2 * self.half].as_chunks_mut::<2>();
                for ((p, &c), &s) in pairs.iter_mut().zip(cos).zip(sin) {
                    let (x0, x1) = (p[0], p[1]);
                    p[0] = x0 * c - x1 * s;
                    p[1] = x0 * s + x1 * c;
                }
            }
        }
    }
}

/// Where one query row of the batch sits: its sequence and its position.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowPos {
    pub(crate) seq: usize,
    pub(crate) pos: usize,
}

/// Causal attention of every query row against its own sequence's cache
/// (which already holds this step's keys and values).
///
/// `q` is `rows × heads·head_dim`; `out` the same shape. Work is split by
/// (row, kv head): the query heads of one group share their keys and values.
pub(crate) fn attention(
    config: &LlamaConfig,
    layer: usize,
    seqs: &[&mut SequenceState],
    rows: &[RowPos],
    q: &[f32],
    out: &mut [f32],
) {
    let hd = config.head_dim;
    let group = config.heads / config.kv_heads;
    let q_dim = config.heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let work = |(task, out): (usize, &mut [f32])| {
        let row = task / config.kv_heads;
        let kv_head = task % config.kv_heads;
        let RowPos { seq, pos } = rows[row];
        let (keys, values) = seqs[seq].head(layer, kv_head, pos + 1);
        let mut scores = vec![0f32; pos + 1];
        for j in 0..group {
            let head = kv_head * group + j;
            let q = &q[row * q_dim + head * hd..row * q_dim + (head + 1) * hd];
            let mut max = f32::NEG_INFINITY;
            for (s, k) in scores.iter_mut().zip(keys.chunks_exact(hd)) {
                *s = dot(q, k) * scale;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let out = &mut out[j * hd..(j + 1) * hd];
            out.fill(0.0);
            for (&s, v) in scores.iter().zip(values.chunks_exact(hd)) {
                let w = s / sum;
                for (o, &v) in out.iter_mut().zip(v) {
                    *o = w.mul_add(v, *o);
                }
            }
        }
    };
    // Short contexts are cheaper than the hand-off to the pool.
    let positions: usize = rows.iter().map(|r| r.pos + 1).sum();
    if positions * config.heads * hd >= 1 << 16 {
        out.par_chunks_mut(group * hd).enumerate().for_each(work);
    } else {
        out.chunks_mut(group * hd).enumerate().for_each(work);
    }
}
