//! A fake model provider speaking the OpenAI and Anthropic HTTP protocols, with fault injection. (Being built.)
