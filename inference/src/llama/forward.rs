//! The forward pass over a ragged batch: any number of sequences, each
//! feeding any number of new tokens (a prompt chunk, or one token in decode).
//!
//! All rows of the batch go through the projections and the MLP together, one
//! matmul per weight (that is where batching pays on a CPU: each weight row is
//! read once for every row of the batch). Attention runs per row against that
//! row's own sequence cache, causal by position.

use super::LlamaModel;
use super::cache::SequenceState;
use super::ops::{self, RowPos};
use super::quant::Q8Rows;
use crate::InferenceError;

/// Buffers of one forward pass, kept between passes.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    xq: Q8Rows,
    kernel: Vec<f32>,
    last: Vec<f32>,
    rows: Vec<RowPos>,
}

/// Next-token logits, one row per sequence of the batch.
#[derive(Debug, Clone)]
pub struct Logits {
    vocab: usize,
    data: Vec<f32>,
}

impl Logits {
    /// Rows (sequences).
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.vocab).unwrap_or(0)
    }

    /// The logits of sequence `i` of the batch.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// All rows, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
}

fn resize(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

impl LlamaModel {
    /// Feeds `tokens[i]` to `seqs[i]` for every `i` in one pass and returns the
    /// logits after each sequence's last new token. Each sequence's cache
    /// grows by its token count.
    pub fn forward(
        &self,
        seqs: &mut [&mut SequenceState],
        tokens: &[&[u32]],
    ) -> Result<Logits, InferenceError> {
        let c = &self.config;
        if seqs.len() != tokens.len() {
            return Err(InferenceError::InvalidRequest(format!(
                "{} sequences but {} token lists",
                seqs.len(),
                tokens.len()
            )));
        }
        for (seq, tokens) in seqs.iter().zip(tokens) {
            if tokens.is_empty() {
                return Err(InferenceError::InvalidRequest("no tokens to feed".into()));
            }
            if tokens.len() > seq.remaining() {
                return Err(InferenceError::InvalidRequest(format!(
                    "{} tokens do not fit: the sequence holds {} of {} positions",
                    tokens.len(),
                    seq.len(),
                    seq.capacity()
                )));
            }
            if let Some(&bad) = tokens
                .iter()
                .find(|&&t| t as usize >= self.weights.embed.rows())
            {
                return Err(InferenceError::InvalidRequest(format!(
                    "token id {bad} is outside the vocabulary ({})",
                    self.weights.embed.rows()
                )));
            }
        }
        let mut guard = self
            .scratch
            .lock()
            .map_err(|_| InferenceError::Compute("a previous forward pass panicked".into()))?;
        let s = &mut *guard;

        // Rows of the batch: which sequence, which position.
        s.rows.clear();
        for (i, (seq, tokens)) in seqs.iter().zip(tokens).enumerate() {
            s.rows.extend((0..tokens.len()).map(|t| RowPos {
                seq: i,
                pos: seq.len() + t,
            }));
        }
        let n = s.rows.len();
        let (h, hd, kv) = (c.hidden, c.head_dim, c.kv_dim());
        let q_dim = c.heads * hd;
        let qkv_dim = q_dim + 2 * kv;

        let x = resize(&mut s.x, n * h);
        for (row, &t) in x
            .chunks_exact_mut(h)
            .zip(tokens.iter().flat_map(|t| t.iter()))
        {
            self.weights.embed.dequantize_row(t as usize, row);
        }

        for (l, layer) in self.weights.layers.iter().enumerate() {
            // Attention block.
            let xn = resize(&mut s.xn, n * h);
            ops::rms_norm(&s.x, &layer.attn_norm, c.rms_eps, xn);
            let qkv = resize(&mut s.qkv, n * qkv_dim);
            layer.qkv.forward(xn, h, qkv, &mut s.xq, &mut s.kernel)?;
            let q = resize(&mut s.q, n * q_dim);
            for (r, (row, q)) in qkv
                .chunks_exact_mut(qkv_dim)
                .zip(q.chunks_exact_mut(q_dim))
                .enumerate()
            {
                let RowPos { seq, pos } = s.rows[r];
                let (qs, kvs) = row.split_at_mut(q_dim);
                let (ks, vs) = kvs.split_at_mut(kv);
                self.rope.apply(qs, hd, pos);
                self.rope.apply(ks, hd, pos);
                q.copy_from_slice(qs);
                for (g, (k, v)) in ks.chunks_exact(hd).zip(vs.chunks_exact(hd)).enumerate() {
                    seqs[seq].store(l, g, pos, k, v);
                }
            }
            let attn = resize(&mut s.attn, n * q_dim);
            ops::attention(c, l, seqs, &s.rows, &s.q, attn);
            let proj = resize(&mut s.proj, n * h);
            layer
                .wo
                .forward(attn, q_dim, proj, &mut s.xq, &mut s.kernel)?;
            ops::add_assign(&mut s.x, proj);

            // MLP block.
            let xn = resize(&mut s.xn, n * h);
            ops::rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, xn);
            let gate_up = resize(&mut s.gate_up, n * 2 * c.ffn);
            layer
                .gate_up
                .forward(xn, h, gate_up, &mut s.xq, &mut s.kernel)?;
            let act = resize(&mut s.act, n * c.ffn);
            ops::swiglu(gate_up, c.ffn, act);
            let proj = resize(&mut s.proj, n * h);
            layer
                .down
                .forward(act, c.ffn, proj, &mut s.xq, &mut s.kernel)?;
            ops::add_assign(&mut s.x, proj);
        }

        // Logits for the last new token of each sequence only.
        let last = resize(&mut s.last, seqs.len() * h);
        let mut end = 0;
        for (row, tokens) in last.chunks_exact_mut(h).zip(tokens) {
            end += tokens.len();
            ops::rms_norm(
                &s.x[(end - 1) * h..end * h],
                &self.weights.norm,
                c.rms_eps,
                row,
            );
        }
        let vocab = self.weights.output.rows();
        let mut data = vec![0f32; seqs.len() * vocab];
        self.weights
            .output
            .forward(last, h, &mut data, &mut s.xq, &mut s.kernel)?;
        for (seq, tokens) in seqs.iter_mut().zip(tokens) {
            seq.advance(tokens.len());
        }
        Ok(Logits { vocab, data })
    }

    /// Feeds a prompt (or the next chunk of one) to one sequence; returns the
    /// logits after its last token.
    pub fn prefill(
        &self,
        seq: &mut SequenceState,
        tokens: &[u32],
    ) -> Result<Vec<f32>, InferenceError> {
        Ok(self.forward(&mut [seq], &[tokens])?.data)
    }

    /// One decode step for several sequences: `tokens[i]` is fed to `seqs[i]`;
    /// row `i` of the result is that sequence's next-token logits.
    pub fn decode(
        &self,
        seqs: &mut [&mut SequenceState],
        tokens: &[u32],
    ) -> Result<Logits, InferenceError> {
        let tokens: Vec<&[u32]> = tokens.iter().map(std::slice::from_ref).collect();
        self.forward(seqs, &tokens)
    }
}
