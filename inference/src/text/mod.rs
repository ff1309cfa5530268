//! Text in and out of a GGUF model: the tokenizer its metadata describes,
//! streamed detokenization, and its chat template.
//!
//! The tokenizer is built from `tokenizer.ggml.*` the way llama.cpp builds
//! it (its ids are the reference the tests hold it to): byte-level BPE over
//! `tokens` and `merges`, the pre-tokenizer that `pre` names, control and
//! user-defined tokens matched whole in text. candle's own GGUF tokenizer is
//! not used: it adds a prefix space and gets SmolLM2's ids wrong.
//!
//! - [`Tokenizer`]: `encode` / `decode`, special and stop tokens.
//! - [`StreamDecoder`]: ids to text one at a time, whole characters only.
//! - [`ChatTemplate`]: `tokenizer.chat_template` rendered with minijinja.

mod bpe;
mod meta;
mod pretokenize;
mod stream;
mod template;
mod tokenizer;

pub use stream::StreamDecoder;
pub use template::{CHATML_TEMPLATE, ChatMessage, ChatTemplate};
pub use tokenizer::Tokenizer;
