//! The embedding model: tokenizer, BERT forward pass, mean pooling.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_transformers::models::bert::BertModel;
use tokenizers::{PostProcessor, Tokenizer, TruncationParams};

use super::Embedding;
use super::load;
use crate::InferenceError;

/// Truncation when the directory has no `sentence_bert_config.json`:
/// all-MiniLM-L6-v2's `max_seq_length`, which sentence-transformers uses.
const DEFAULT_MAX_TOKENS: usize = 256;

/// A BERT-family sentence-transformer loaded from a directory.
///
/// Synchronous and compute-bound: the data plane reaches it through an
/// [`Embedder`](super::Embedder), which runs it on its own threads.
pub struct EmbeddingModel {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimensions: usize,
    max_tokens: usize,
    max_positions: usize,
    pad_id: u32,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("device", &self.device)
            .field("dimensions", &self.dimensions)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

/// One text's token ids, as the model sees them (with `[CLS]` and `[SEP]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids, at most [`EmbeddingModel::max_tokens`] of them.
    pub ids: Vec<u32>,
    /// Whether the text was longer and its tail was cut off.
    pub truncated: bool,
}

// === impl EmbeddingModel ===

impl EmbeddingModel {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from
    /// `dir` (and `max_seq_length` from `sentence_bert_config.json` when the
    /// directory has one) onto `device`.
    ///
    /// Inputs are truncated at [`max_tokens`](Self::max_tokens): the
    /// directory's `max_seq_length` if it has `sentence_bert_config.json`,
    /// else 256, the value sentence-transformers ships for all-MiniLM-L6-v2
    /// (`scripts/models.sh` fetches only the three files above) — either way
    /// no more than the model's `max_position_embeddings`. This keeps vectors
    /// equal to what sentence-transformers computes for the same model.
    /// [`with_max_tokens`](Self::with_max_tokens) overrides it.
    ///
    /// A missing or malformed file is [`InferenceError::File`] naming it.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, InferenceError> {
        let files = load::ModelFiles::read(dir)?;
        let bert = BertModel::load(files.weights(device)?, &files.config)
            .map_err(|error| files.weights_error(error))?;
        let max_positions = files.config.max_position_embeddings;
        let max_tokens = files
            .max_seq_length
            .unwrap_or(DEFAULT_MAX_TOKENS)
            .min(max_positions);
        let mut model = Self {
            bert,
            dimensions: files.config.hidden_size,
            pad_id: u32::try_from(files.config.pad_token_id).unwrap_or(0),
            tokenizer: files.tokenizer,
            device: device.clone(),
            max_tokens,
            max_positions,
        };
        // tokenizer.json may pad to a fixed length (all-MiniLM-L6-v2's pads
        // to 128); batches are padded here, to their own longest input.
        model.tokenizer.with_padding(None);
        model.set_truncation(max_tokens)?;
        Ok(model)
    }

    /// Truncates inputs at `max_tokens` (special tokens included) instead.
    ///
    /// Fails when it is beyond the model's position embeddings or leaves no
    /// room for text next to the special tokens.
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Result<Self, InferenceError> {
        if max_tokens > self.max_positions {
            return Err(InferenceError::InvalidRequest(format!(
                "max_tokens {max_tokens} is beyond the model's {} positions",
                self.max_positions
            )));
        }
        self.set_truncation(max_tokens)?;
        self.max_tokens = max_tokens;
        Ok(self)
    }

    fn set_truncation(&mut self, max_tokens: usize) -> Result<(), InferenceError> {
        let special = self
            .tokenizer
            .get_post_processor()
            .map_or(0, |processor| processor.added_tokens(false));
        if max_tokens <= special {
            return Err(InferenceError::InvalidRequest(format!(
                "max_tokens {max_tokens} leaves no room for text next to {special} special tokens"
            )));
        }
        let truncation = TruncationParams {
            max_length: max_tokens,
            ..TruncationParams::default()
        };
        self.tokenizer
            .with_truncation(Some(truncation))
            .map_err(|error| InferenceError::InvalidRequest(error.to_string()))?;
        Ok(())
    }

    /// Length of the vectors (the model's hidden size; 384 for MiniLM-L6).
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Inputs are cut to this many tokens, `[CLS]` and `[SEP]` included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The token ids the model runs on for `text`.
    pub fn tokenize(&self, text: &str) -> Result<Tokens, InferenceError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|error| InferenceError::InvalidRequest(format!("cannot tokenize: {error}")))?;
        Ok(Tokens {
            ids: encoding.get_ids().to_vec(),
            truncated: !encoding.get_overflowing().is_empty(),
        })
    }

    /// Embeds `texts`, returning one [`Embedding`] per text in input order.
    ///
    /// Texts are sorted by token count and cut into batches of at most
    /// `max_batch`; each batch is padded only to its own longest text, so a
    /// long text does not make short ones pay for its length. Padding does
    /// not change a vector: the attention mask hides padded positions and
    /// pooling averages over real tokens only.
    pub fn embed(
        &self,
        texts: &[&str],
        max_batch: usize,
    ) -> Result<Vec<Embedding>, InferenceError> {
        let tokens = texts
            .iter()
            .map(|text| self.tokenize(text))
            .collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&index| tokens[index].ids.len());

        let mut vectors = vec![Vec::new(); tokens.len()];
        for chunk in order.chunks(max_batch.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| tokens[i].ids.as_slice()).collect();
            for (&index, vector) in chunk.iter().zip(self.forward(&batch)?) {
                vectors[index] = vector;
            }
        }
        Ok(tokens
            .into_iter()
            .zip(vectors)
            .map(|(tokens, vector)| Embedding {
                vector,
                tokens: u32::try_from(tokens.ids.len()).unwrap_or(u32::MAX),
                truncated: tokens.truncated,
            })
            .collect())
    }

    /// One forward pass over `batch`, padded to its longest sequence:
    /// mean-pooled over real tokens, L2-normalised.
    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let Some(longest) = batch.iter().map(|ids| ids.len()).max() else {
            return Ok(Vec::new());
        };
        let mut ids = Vec::with_capacity(batch.len() * longest);
        let mut mask = Vec::with_capacity(batch.len() * longest);
        for sequence in batch {
            ids.extend_from_slice(sequence);
            ids.resize(ids.len() + longest - sequence.len(), self.pad_id);
            mask.extend((0..longest).map(|position| u32::from(position < sequence.len())));
        }
        let shape = (batch.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let hidden = self.bert.forward(&ids, &ids.zeros_like()?, Some(&mask))?;

        // Mean over real tokens: padded positions are multiplied by zero.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let mean = summed.broadcast_div(&mask.sum(1)?)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f32::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}
