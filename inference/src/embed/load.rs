//! Reading a sentence-transformer's directory, with errors that name the file.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use tokenizers::Tokenizer;

use crate::InferenceError;

/// The weights of the model.
pub(super) const WEIGHTS: &str = "model.safetensors";
/// The BERT hyper-parameters (Hugging Face `config.json`).
pub(super) const CONFIG: &str = "config.json";
/// The Hugging Face tokenizer (WordPiece for BERT).
pub(super) const TOKENIZER: &str = "tokenizer.json";
/// Optional: sentence-transformers' settings, for `max_seq_length`.
pub(super) const SENTENCE_CONFIG: &str = "sentence_bert_config.json";

/// The files of a model directory, parsed; the weights stay bytes until
/// [`ModelFiles::weights`] puts them on a device.
pub(super) struct ModelFiles {
    pub config: Config,
    pub tokenizer: Tokenizer,
    pub max_seq_length: Option<usize>,
    weights_path: PathBuf,
    weights: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct SentenceConfig {
    max_seq_length: usize,
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> InferenceError {
    InferenceError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, InferenceError> {
    std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => file_error(
            path,
            "not found: an embedding model directory needs model.safetensors, config.json and tokenizer.json",
        ),
        _ => file_error(path, error),
    })
}

impl ModelFiles {
    pub(super) fn read(dir: &Path) -> Result<Self, InferenceError> {
        if !dir.is_dir() {
            return Err(file_error(dir, "not a directory"));
        }
        let config_path = dir.join(CONFIG);
        let config: Config = serde_json::from_slice(&read(&config_path)?)
            .map_err(|error| file_error(&config_path, format!("not a BERT config: {error}")))?;
        if let Some(model_type) = config.model_type.as_deref().filter(|t| *t != "bert") {
            return Err(file_error(
                &config_path,
                format!("model_type {model_type:?} is not supported: only BERT models embed"),
            ));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(file_error(
                &config_path,
                "hidden_size is not a multiple of num_attention_heads",
            ));
        }

        let tokenizer_path = dir.join(TOKENIZER);
        let tokenizer = Tokenizer::from_bytes(read(&tokenizer_path)?)
            .map_err(|error| file_error(&tokenizer_path, format!("not a tokenizer: {error}")))?;
        let vocabulary = tokenizer.get_vocab_size(true);
        if vocabulary > config.vocab_size {
            return Err(file_error(
                &tokenizer_path,
                format!(
                    "its {vocabulary} tokens do not fit the model's vocab_size {} (config.json)",
                    config.vocab_size
                ),
            ));
        }

        let sentence_path = dir.join(SENTENCE_CONFIG);
        let max_seq_length = match sentence_path.exists() {
            true => {
                let parsed: SentenceConfig = serde_json::from_slice(&read(&sentence_path)?)
                    .map_err(|error| file_error(&sentence_path, error))?;
                Some(parsed.max_seq_length)
            }
            false => None,
        };

        let weights_path = dir.join(WEIGHTS);
        let weights = read(&weights_path)?;
        Ok(Self {
            config,
            tokenizer,
            max_seq_length,
            weights_path,
            weights,
        })
    }

    /// The weights as a candle `VarBuilder` on `device`, in f32.
    pub(super) fn weights(&self, device: &Device) -> Result<VarBuilder<'_>, InferenceError> {
        // Loading copies each tensor out; the file's bytes are dropped with `self`.
        VarBuilder::from_slice_safetensors(&self.weights, DType::F32, device)
            .map_err(|error| self.weights_error(error))
    }

    /// A weights file that does not parse or lacks BERT tensors.
    pub(super) fn weights_error(&self, error: candle_core::Error) -> InferenceError {
        file_error(
            &self.weights_path,
            format!("not the BERT weights config.json describes: {error}"),
        )
    }
}
