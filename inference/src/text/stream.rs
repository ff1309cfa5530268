//! Incremental detokenization for streamed generation.

use super::Tokenizer;

/// Turns generated ids into text as they come, one id at a time.
///
/// Byte-level BPE splits characters across tokens (an emoji is often three
/// or four byte tokens), so bytes wait here until they form whole UTF-8
/// characters: every piece returned is complete text, and the pieces joined
/// equal [`Tokenizer::decode`] of the same ids (minus control tokens, which
/// are left out unless asked for).
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    keep_control: bool,
}

impl StreamDecoder {
    /// A decoder that leaves control tokens (`<|im_end|>`) out of the text.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that writes control tokens as their text too.
    pub fn with_control_tokens() -> Self {
        Self {
            pending: Vec::new(),
            keep_control: true,
        }
    }

    /// Adds `id`; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Option<String> {
        if !self.keep_control && tokenizer.is_control(id) {
            return None;
        }
        self.pending.extend_from_slice(tokenizer.token_bytes(id));
        self.take_complete()
    }

    /// Ends the stream: bytes still waiting (a character cut short) come
    /// out as U+FFFD.
    pub fn finish(self) -> Option<String> {
        (!self.pending.is_empty()).then(|| String::from_utf8_lossy(&self.pending).into_owned())
    }

    /// Everything up to a trailing incomplete character. Bytes that can never
    /// be UTF-8 become U+FFFD, as in [`Tokenizer::decode`].
    fn take_complete(&mut self) -> Option<String> {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    match error.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        // Cut short: the next token may complete it.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let consumed = self.pending.len() - rest.len();
        self.pending.drain(..consumed);
        (!out.is_empty()).then_some(out)
    }
}
