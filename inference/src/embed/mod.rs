//! Sentence embeddings with BERT-family sentence-transformers on candle
//! (all-MiniLM-L6-v2 by default): mean pooling over the real tokens, then
//! L2 normalisation, as sentence-transformers computes them.
//!
//! - [`EmbeddingModel`] loads a directory (`model.safetensors`,
//!   `config.json`, `tokenizer.json`) and embeds synchronously: inputs sorted
//!   by length, batched, each batch padded only to its own longest input,
//!   results in input order. Truncation is at 256 tokens for
//!   all-MiniLM-L6-v2 (sentence-transformers' `max_seq_length`); see
//!   [`EmbeddingModel::load`].
//! - [`Embedder`] runs a model on its own thread behind a bounded queue and
//!   is what the data plane calls (`embed(texts).await`).
//!
//! Every [`Embedding`] reports its token count (what is billed) and
//! whether its text was truncated.

mod embedder;
mod load;
mod model;

pub use embedder::{Embedder, EmbedderConfig};
pub use model::{EmbeddingModel, Tokens};

/// One text's embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Unit-length vector of [`EmbeddingModel::dimensions`] components.
    pub vector: Vec<f32>,
    /// Tokens the model ran on, `[CLS]` and `[SEP]` included (so an empty
    /// text counts 2); at most [`EmbeddingModel::max_tokens`].
    pub tokens: u32,
    /// Whether the text was longer than [`EmbeddingModel::max_tokens`] and
    /// only its beginning was embedded.
    pub truncated: bool,
}

/// Cosine similarity of two vectors; for [`Embedding`] vectors (unit
/// length) it is their dot product. Vectors of different lengths, or a zero
/// vector, have similarity 0.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (dot, norm_a, norm_b) = a
        .iter()
        .zip(b)
        .fold((0.0, 0.0, 0.0), |(d, na, nb), (x, y)| {
            (d + x * y, na + x * x, nb + y * y)
        });
    let norms = f32::sqrt(norm_a) * f32::sqrt(norm_b);
    if norms == 0.0 { 0.0 } else { dot / norms }
}

#[cfg(test)]
mod tests {
    use super::cosine;

    #[test]
    fn cosine_of_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 2.0]).abs() < 1e-6);
        assert!((cosine(&[1.0, 1.0], &[-2.0, -2.0]) + 1.0).abs() < 1e-6);
        assert!((cosine(&[3.0, 4.0], &[4.0, 3.0]) - 0.96).abs() < 1e-6);
    }

    #[test]
    fn cosine_of_degenerate_vectors_is_zero() {
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[], &[]), 0.0);
    }
}
