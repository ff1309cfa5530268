//! The model's shape, read from GGUF metadata (`<arch>.*` keys).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::InferenceError;

/// Hyperparameters of a llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `general.architecture` (`llama`, `mistral`, …).
    pub architecture: String,
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Feed-forward (MLP) inner size.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer than `heads` with grouped-query attention).
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates.
    pub rope_dim: usize,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// RoPE pairs neighbours `(2i, 2i+1)` (llama) or halves `(i, i+d/2)` (NeoX).
    pub rope_neox: bool,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Positions the model was trained for (prompt and output together).
    pub context_length: usize,
    /// Vocabulary size.
    pub vocab: usize,
}

impl LlamaConfig {
    /// Reads the shape from GGUF metadata; `file` names the file in errors.
    pub(crate) fn from_gguf(
        metadata: &HashMap<String, Value>,
        file: &str,
    ) -> Result<Self, InferenceError> {
        let bad = |reason: String| InferenceError::File {
            path: file.to_string(),
            reason,
        };
        let architecture = match metadata.get("general.architecture") {
            Some(Value::String(arch)) => arch.clone(),
            _ => "llama".to_string(),
        };
        let get = |key: &str| metadata.get(&format!("{architecture}.{key}"));
        let int = |key: &str| -> Result<usize, InferenceError> {
            let value =
                get(key).ok_or_else(|| bad(format!("metadata {architecture}.{key} is missing")))?;
            let value = value
                .to_u64()
                .map_err(|_| bad(format!("metadata {architecture}.{key} is not an integer")))?;
            usize::try_from(value)
                .map_err(|_| bad(format!("metadata {architecture}.{key} is too large")))
        };
        let float = |key: &str| get(key).and_then(|v| v.to_f32().ok());
        let layers = int("block_count")?;
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads =
            get("attention.head_count_kv").map_or(Ok(heads), |_| int("attention.head_count_kv"))?;
        let ffn = int("feed_forward_length")?;
        if heads == 0
            || kv_heads == 0
            || !hidden.is_multiple_of(heads)
            || !heads.is_multiple_of(kv_heads)
        {
            return Err(bad(format!(
                "unsupported attention shape: hidden {hidden}, {heads} heads, {kv_heads} kv heads"
            )));
        }
        let head_dim = hidden / heads;
        let rope_dim =
            get("rope.dimension_count").map_or(Ok(head_dim), |_| int("rope.dimension_count"))?;
        if rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(bad(format!("unsupported rope dimension {rope_dim}")));
        }
        let vocab = match get("vocab_size") {
            Some(_) => int("vocab_size")?,
            None => match metadata.get("tokenizer.ggml.tokens") {
                Some(Value::Array(tokens)) => tokens.len(),
                _ => 0,
            },
        };
        let context_length = get("context_length").map_or(Ok(4096), |_| int("context_length"))?;
        // llama.cpp's rope type per architecture: these use NeoX-style halves.
        let rope_neox = matches!(
            architecture.as_str(),
            "qwen"
                | "qwen2"
                | "qwen3"
                | "falcon"
                | "phi2"
                | "phi3"
                | "stablelm"
                | "starcoder2"
                | "olmo2"
        );
        Ok(Self {
            layers,
            hidden,
            ffn,
            heads,
            kv_heads,
            head_dim,
            rope_dim,
            rope_base: float("rope.freq_base").unwrap_or(10_000.0),
            rope_neox,
            rms_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            context_length,
            vocab,
            architecture,
        })
    }

    /// Width of the key (and value) projection: `kv_heads × head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}
