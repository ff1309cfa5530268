//! Anthropic Messages over HTTP. (Being built.)
