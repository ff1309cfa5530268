//! OpenAI and OpenAI-compatible chat completions over HTTP. (Being built.)
