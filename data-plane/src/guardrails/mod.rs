//! Input and output guardrails: size limits, prompt-injection and PII detection, redaction. (Being built.)
