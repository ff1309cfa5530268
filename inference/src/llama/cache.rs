//! One sequence's state: its KV cache and how far it has got.

use super::config::LlamaConfig;

/// The keys and values of one sequence, for every layer, preallocated to the
/// sequence's maximum length and written in place as tokens arrive.
///
/// Layout: `[layer][kv_head][position][head_dim]`, so attention for one head
/// reads its keys (and values) as one contiguous run. Memory is
/// `2 × layers × kv_heads × capacity × head_dim × 4` bytes (SmolLM2-135M: 46 KiB
/// a position); pages that are never written are never touched.
pub struct SequenceState {
    len: usize,
    capacity: usize,
    head_dim: usize,
    kv_heads: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl std::fmt::Debug for SequenceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceState")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl SequenceState {
    pub(crate) fn new(config: &LlamaConfig, capacity: usize) -> Self {
        let size = config.layers * config.kv_heads * capacity * config.head_dim;
        Self {
            len: 0,
            capacity,
            head_dim: config.head_dim,
            kv_heads: config.kv_heads,
            k: vec![0.0; size],
            v: vec![0.0; size],
        }
    }

    /// Tokens already in the cache (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the prompt is fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions this sequence can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions left.
    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }

    /// Bytes the cache holds.
    pub fn size_in_bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<f32>()
    }

    /// Forgets the tokens (the buffers stay, for reuse by another sequence).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }

    fn offset(&self, layer: usize, head: usize, pos: usize) -> usize {
        ((layer * self.kv_heads + head) * self.capacity + pos) * self.head_dim
    }

    /// Writes the key and value of `head` at `pos` in `layer`.
    pub(crate) fn store(&mut self, layer: usize, head: usize, pos: usize, k: &[f32], v: &[f32]) {
        let at = self.offset(layer, head, pos);
        self.k[at..at + self.head_dim].copy_from_slice(k);
        self.v[at..at + self.head_dim].copy_from_slice(v);
    }

    /// Keys and values of `head` in `layer` for positions `0..upto`.
    pub(crate) fn head(&self, layer: usize, head: usize, upto: usize) -> (&[f32], &[f32]) {
        let at = self.offset(layer, head, 0);
        let end = at + upto * self.head_dim;
        (&self.k[at..end], &self.v[at..end])
    }
}
