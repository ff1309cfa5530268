//! Local inference on an aios node: generation with GGUF llama-family models
//! and embeddings with BERT-family models, on candle (CPU by default, CUDA
//! with the `cuda` feature).
//!
//! - [`files`]: where the model files are (`scripts/models.sh` puts them there).
//! - [`text`]: the tokenizer built from GGUF metadata and the chat template.
//! - [`llama`]: the quantized llama forward pass with per-sequence KV caches,
//!   batched across sequences.
//! - [`sample`]: greedy, temperature, top-p, seeded sampling; stop sequences.
//! - [`engine`]: the task that owns a model: bounded queue, admission,
//!   continuous batching, cancellation, compute off the async runtime.
//! - [`embed`]: BERT sentence embeddings (mean pooling, L2-normalised).

pub mod embed;
pub mod engine;
pub mod error;
pub mod files;
pub mod llama;
pub mod sample;
pub mod text;

pub use error::InferenceError;
