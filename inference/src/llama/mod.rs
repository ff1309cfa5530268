//! Generation with GGUF llama-family models: our own forward pass (after
//! candle-transformers' `quantized_llama`), built for serving many sequences.
//!
//! - [`LlamaModel`] holds only weights. Each sequence's keys and values live
//!   in its own [`SequenceState`], preallocated to the sequence's maximum
//!   length and written in place, so sequences come and go independently.
//! - [`LlamaModel::forward`] takes a ragged batch (any sequences, any number
//!   of new tokens each): projections and MLP run as one matmul over all rows,
//!   attention per row against its own cache.
//! - Q8_0, Q4_0 and Q4_1 weights run as stored on our AVX2 kernels; Q5_0 and
//!   Q5_1 are re-quantized to Q8 at load by default, and any type can be
//!   ([`Requantize`]); other types run on candle's kernels. Activations are
//!   `f32`, quantized to 8 bits per block at each matmul as ggml does.
//! - Threads: the kernels split work with rayon, so they use the pool they are
//!   called in (the engine installs its own pool of `threads` workers); weights
//!   left on candle's kernels use candle's pool, sized by `CANDLE_NUM_THREADS`
//!   (else `RAYON_NUM_THREADS`, else the CPU count) when the process starts.
//!
//! The CPU is the only device so far.

mod cache;
mod config;
mod forward;
mod ops;
mod q4;
mod quant;
mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Value};

pub use cache::SequenceState;
pub use config::LlamaConfig;
pub use forward::Logits;
pub use weights::Requantize;

use crate::InferenceError;
use forward::Scratch;
use weights::{Layer, Reader, Weights};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Which weight types are re-quantized to Q8 at load (default: Q5_0 and
    /// Q5_1, which have no fast kernel).
    pub requantize: Requantize,
}

/// A loaded llama-family model: configuration and weights, shared by every
/// sequence it serves.
pub struct LlamaModel {
    config: LlamaConfig,
    weights: Weights,
    rope: ops::Rope,
    metadata: HashMap<String, Value>,
    path: PathBuf,
    load_time: Duration,
    scratch: Mutex<Scratch>,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LlamaModel {
    /// Loads a GGUF file. Blocking: seconds for a small model.
    pub fn load(
        path: &Path,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<Self, InferenceError> {
        if !device.is_cpu() {
            return Err(InferenceError::InvalidRequest(
                "generation runs on the CPU only for now".into(),
            ));
        }
        let started = Instant::now();
        let shown = path.display().to_string();
        let file_error = |reason: String| InferenceError::File {
            path: shown.clone(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(|e| file_error(e.to_string()))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| file_error(e.to_string()))?;
        let config = LlamaConfig::from_gguf(&content.metadata, &shown)?;
        let mut reader = Reader {
            content: &content,
            file: &mut file,
            path: &shown,
            requantize: options.requantize,
        };
        if reader.has("blk.0.attn_q.bias") || reader.has("blk.0.ffn_gate_inp.weight") {
            return Err(file_error(
                "attention biases and mixtures of experts are not supported".into(),
            ));
        }
        let (h, f, kv) = (config.hidden, config.ffn, config.kv_dim());
        let embed = reader.q8("token_embd.weight", config.vocab_from(&content), h)?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let name = |t: &str| format!("blk.{i}.{t}.weight");
            let (q, k, v) = (name("attn_q"), name("attn_k"), name("attn_v"));
            let (gate, up) = (name("ffn_gate"), name("ffn_up"));
            layers.push(Layer {
                attn_norm: reader.vector(&name("attn_norm"), h)?,
                qkv: reader.projection(&[(&q, h), (&k, kv), (&v, kv)], h)?,
                wo: reader.projection(&[(&name("attn_output"), h)], h)?,
                ffn_norm: reader.vector(&name("ffn_norm"), h)?,
                gate_up: reader.projection(&[(&gate, f), (&up, f)], h)?,
                down: reader.projection(&[(&name("ffn_down"), h)], f)?,
            });
        }
        let norm = reader.vector("output_norm.weight", h)?;
        // Tied embeddings: the output projection is the embedding matrix.
        let output_name = match reader.has("output.weight") {
            true => "output.weight",
            false => "token_embd.weight",
        };
        let output = reader.projection(&[(output_name, embed.rows())], h)?;
        let config = LlamaConfig {
            vocab: embed.rows(),
            ..config
        };
        let rope = ops::Rope::new(&config);
        let weights = Weights {
            embed,
            layers,
            norm,
            output,
        };
        let load_time = started.elapsed();
        tracing::info!(
            path = %shown,
            layers = config.layers,
            hidden = config.hidden,
            vocab = config.vocab,
            q8_bytes = weights.size_in_bytes(),
            load_ms = load_time.as_millis() as u64,
            "loaded llama model"
        );
        Ok(Self {
            config,
            weights,
            rope,
            metadata: content.metadata,
            path: path.to_path_buf(),
            load_time,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Positions the model handles (prompt and output together).
    pub fn context_length(&self) -> usize {
        self.config.context_length
    }

    /// Vocabulary size (rows of the logits).
    pub fn vocab_size(&self) -> usize {
        self.config.vocab
    }

    /// The GGUF metadata (tokenizer, chat template, …), tensors excluded.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long [`LlamaModel::load`] took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// A new, empty sequence that can hold `capacity` positions (capped at
    /// the context length); its cache is allocated now.
    pub fn new_sequence(&self, capacity: usize) -> Result<SequenceState, InferenceError> {
        let capacity = capacity.min(self.config.context_length);
        if capacity == 0 {
            return Err(InferenceError::InvalidRequest(
                "a sequence needs at least one position".into(),
            ));
        }
        Ok(SequenceState::new(&self.config, capacity))
    }
}

impl LlamaConfig {
    /// Rows of the embedding matrix (the vocabulary), from its tensor info.
    fn vocab_from(&self, content: &gguf_file::Content) -> usize {
        content
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|t| t.shape.dims2().ok())
            .map_or(self.vocab, |(rows, _)| rows)
    }
}
