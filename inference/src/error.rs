//! Errors of local inference.

/// Why a local model could not load or answer.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// A model file is missing, unreadable or not what it claims to be.
    #[error("model file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request cannot be served as asked (prompt too long, bad parameter).
    #[error("{0}")]
    InvalidRequest(String),
    /// The engine's queue is full: try later or elsewhere.
    #[error("local model {model} is at capacity ({queued} requests queued)")]
    Overloaded {
        /// The model.
        model: String,
        /// Requests already waiting.
        queued: usize,
    },
    /// The engine has stopped (shutdown, or it failed).
    #[error("local model {0} is not running")]
    Stopped(String),
    /// candle failed while computing.
    #[error("inference failed: {0}")]
    Compute(String),
}

impl From<candle_core::Error> for InferenceError {
    fn from(error: candle_core::Error) -> Self {
        InferenceError::Compute(error.to_string())
    }
}
