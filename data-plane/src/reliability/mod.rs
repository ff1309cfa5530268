//! Retries with full-jitter backoff, per-model circuit breakers and fallback chains. (Being built.)
