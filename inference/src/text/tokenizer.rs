//! The tokenizer a GGUF file describes: byte-level BPE (`tokenizer.ggml.model`
//! = `gpt2`), as llama.cpp builds it from the same metadata.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::quantized::gguf_file::Content;

use super::bpe::{self, Merges, Scratch};
use super::meta::Meta;
use super::pretokenize::{self, CharClasses, PreTokenizerSpec};
use crate::InferenceError;

// === Token kinds ===

/// `tokenizer.ggml.token_type`, as llama.cpp's token attributes use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    /// Unused or undefined: stands for no text.
    Unused,
    Byte,
}

impl TokenKind {
    fn from_gguf(value: i64) -> Self {
        match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            6 => Self::Byte,
            _ => Self::Unused,
        }
    }

    /// Matched whole in the text rather than merged from bytes.
    fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::UserDefined | Self::Unknown)
    }

    /// Not text: left out of streamed output, matched only with `parse_special`.
    fn is_control(self) -> bool {
        matches!(self, Self::Control | Self::Unknown)
    }
}

/// Token texts llama.cpp takes for end-of-turn when `tokenizer.ggml.eot_token_id`
/// is missing, in the order it prefers them.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Token texts that end generation (llama.cpp's `special_eog_ids`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle tokens that also end generation in llama.cpp (pad,
/// repository and file separators): the id under the metadata key, else the
/// first token with one of the texts.
const FIM_EOG: &[(&str, &[&str])] = &[
    (
        "tokenizer.ggml.fim_pad_token_id",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        "tokenizer.ggml.fim_rep_token_id",
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    ("tokenizer.ggml.fim_sep_token_id", &["<|file_sep|>"]),
];

// === Tokenizer ===

/// A GGUF model's tokenizer: byte-level BPE over the model's vocabulary,
/// the pre-tokenizer its `tokenizer.ggml.pre` names, and its special tokens.
///
/// Ids match llama.cpp's `llama_tokenize` for the same file (the tests
/// check this against ids llama.cpp produced).
pub struct Tokenizer {
    /// What each token stands for, as bytes: `pieces[piece_offsets[id]..piece_offsets[id + 1]]`.
    pieces: Vec<u8>,
    piece_offsets: Vec<usize>,
    kinds: Vec<TokenKind>,
    /// Token text (GPT-2 alphabet) to id, for words that skip the merges.
    text_to_id: HashMap<String, u32>,
    merges: Merges,
    byte_token: [Option<u32>; 256],
    byte_to_char: [char; 256],
    /// Special tokens matched in text, longest first.
    specials: Vec<Special>,
    pre_name: String,
    pre: PreTokenizerSpec,
    classes: CharClasses,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Special {
    text: String,
    id: u32,
    /// User-defined tokens are matched even without `parse_special`.
    always: bool,
}

/// A piece of the text after special tokens are cut out.
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pre", &self.pre_name)
            .field("special_tokens", &self.specials.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata: `tokenizer.ggml.tokens`,
    /// `.merges`, `.token_type`, `.pre`, the special token ids and `.add_bos_token`.
    ///
    /// Fails with [`InferenceError::File`] when the metadata is missing or
    /// malformed, when the tokenizer is not byte-level BPE, or when the
    /// pre-tokenizer is one aios does not implement.
    pub fn from_gguf(content: &Content) -> Result<Self, InferenceError> {
        let meta = Meta::new(content);
        match meta.string("tokenizer.ggml.model")? {
            Some("gpt2") => {}
            Some(other) => {
                return Err(meta.error(
                    "tokenizer.ggml.model",
                    format!(
                        "{other:?} is not supported: aios implements byte-level BPE (\"gpt2\") only"
                    ),
                ));
            }
            None => return Err(meta.error("tokenizer.ggml.model", "missing")),
        }
        let pre_name = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
        let pre = PreTokenizerSpec::from_name(pre_name).ok_or_else(|| {
            meta.error(
                "tokenizer.ggml.pre",
                format!(
                    "pre-tokenizer {pre_name:?} is not supported (supported: {})",
                    pretokenize::SUPPORTED
                ),
            )
        })?;
        let texts = meta
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| meta.error("tokenizer.ggml.tokens", "missing"))?;
        let n_vocab = u32::try_from(texts.len())
            .map_err(|_| meta.error("tokenizer.ggml.tokens", "too many tokens"))?;
        let merge_list = meta
            .strings("tokenizer.ggml.merges")?
            .ok_or_else(|| meta.error("tokenizer.ggml.merges", "missing"))?;
        let mut kinds = match meta.integers("tokenizer.ggml.token_type")? {
            Some(types) if types.len() == texts.len() => {
                types.into_iter().map(TokenKind::from_gguf).collect()
            }
            Some(types) => {
                return Err(meta.error(
                    "tokenizer.ggml.token_type",
                    format!("{} entries for {} tokens", types.len(), texts.len()),
                ));
            }
            None => vec![TokenKind::Normal; texts.len()],
        };

        let mut text_to_id = HashMap::with_capacity(texts.len());
        for (id, text) in (0..n_vocab).zip(&texts) {
            text_to_id.insert((*text).to_owned(), id);
        }
        let id_of = |key: &str| -> Result<Option<u32>, InferenceError> {
            // Out-of-range ids are ignored, as llama.cpp does.
            Ok(meta
                .uint(key)?
                .and_then(|id| u32::try_from(id).ok())
                .filter(|&id| id < n_vocab))
        };
        let by_text = |names: &[&str]| names.iter().find_map(|t| text_to_id.get(*t).copied());
        let bos = id_of("tokenizer.ggml.bos_token_id")?;
        let eos = id_of("tokenizer.ggml.eos_token_id")?;
        let pad = id_of("tokenizer.ggml.padding_token_id")?;
        let eom = id_of("tokenizer.ggml.eom_token_id")?;
        let eot = id_of("tokenizer.ggml.eot_token_id")?.or_else(|| by_text(EOT_TEXTS));
        let add_bos = meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);

        // End of generation: the named ids and the tokens llama.cpp knows by
        // text, which it also treats as control tokens.
        let mut stop_ids: Vec<u32> = EOG_TEXTS
            .iter()
            .filter_map(|t| text_to_id.get(*t).copied())
            .collect();
        for (key, names) in FIM_EOG {
            stop_ids.extend(id_of(key)?.or_else(|| by_text(names)));
        }
        for id in stop_ids.iter().copied().chain(eot) {
            if let Some(kind @ TokenKind::Normal) = kinds.get_mut(id as usize) {
                *kind = TokenKind::Control;
            }
        }
        stop_ids.extend([eos, eot, eom].into_iter().flatten());
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let byte_to_char = bpe::byte_to_char();
        let char_to_byte = bpe::char_to_byte(&byte_to_char);
        let (pieces, piece_offsets) = token_pieces(&texts, &kinds, &char_to_byte);
        let mut byte_token = [None; 256];
        for (slot, c) in byte_token.iter_mut().zip(&byte_to_char) {
            *slot = text_to_id.get(c.encode_utf8(&mut [0; 4]) as &str).copied();
        }
        let specials = special_tokens(&texts, &kinds);
        let merges = Merges::new(
            &text_to_id,
            n_vocab,
            &merge_list,
            &byte_to_char,
            &char_to_byte,
        )
        .map_err(|reason| meta.error("tokenizer.ggml.merges", reason))?;
        let classes =
            CharClasses::new().map_err(|reason| meta.error("tokenizer.ggml.pre", reason))?;
        if !pre.ignore_merges {
            // Only words that skip the merges look tokens up by text.
            text_to_id = HashMap::new();
        }
        Ok(Self {
            pieces,
            piece_offsets,
            kinds,
            text_to_id,
            merges,
            byte_token,
            byte_to_char,
            specials,
            pre_name: pre_name.to_owned(),
            pre,
            classes,
            bos,
            eos,
            eot,
            pad,
            add_bos,
            stop_ids,
        })
    }

    /// Token ids for `text`.
    ///
    /// - `add_bos`: prepend BOS if the model asks for it
    ///   (`tokenizer.ggml.add_bos_token`), like llama.cpp's `add_special`;
    ///   SmolLM2 does not, so this adds nothing there.
    /// - `parse_special`: control tokens written in the text (`<|im_start|>`)
    ///   become their ids; otherwise they are encoded as plain text. As in
    ///   llama.cpp, user-defined tokens are matched either way.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            out.extend(self.bos);
        }
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Text(range) => self.encode_text(&text[range], &mut out),
                Fragment::Token(id) => out.push(id),
            }
        }
        out
    }

    /// The text of `ids`, special tokens included as their text. Lossless:
    /// `decode(&encode(s, ..)) == s`. Bytes that do not form UTF-8 (a
    /// sequence cut short) come out as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes token `id` stands for (a special token's text; nothing for
    /// an unknown id). A byte token may be part of a UTF-8 character.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match (self.piece_offsets.get(id), self.piece_offsets.get(id + 1)) {
            (Some(&start), Some(&end)) => &self.pieces[start..end],
            _ => &[],
        }
    }

    /// Whether `id` is a special token (control, user-defined or unknown):
    /// one matched whole in text rather than built from bytes.
    pub fn is_special(&self, id: u32) -> bool {
        self.kind(id).is_some_and(TokenKind::is_special)
    }

    /// Whether `id` is a control token (`<|im_start|>`, `<|im_end|>`) or the
    /// unknown token: markup rather than text, left out of streamed output.
    pub fn is_control(&self, id: u32) -> bool {
        self.kind(id).is_some_and(TokenKind::is_control)
    }

    /// The id of the special token written `text` (`"<|im_end|>"`), if any.
    pub fn special_token(&self, text: &str) -> Option<u32> {
        self.specials.iter().find(|s| s.text == text).map(|s| s.id)
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token (`<|im_end|>` for ChatML models).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Padding token.
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether the model wants BOS in front of a prompt.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Tokens that end generation, sorted: EOS, EOT, EOM and the other
    /// end-of-generation tokens llama.cpp recognises by text.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Number of tokens in the vocabulary (embedding rows may be more).
    pub fn vocab_size(&self) -> usize {
        self.kinds.len()
    }

    /// The `tokenizer.ggml.pre` name the tokenizer splits text by.
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre_name
    }

    fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// Cuts the special tokens out of `text`, longest token first, as
    /// llama.cpp's `tokenizer_st_partition` does.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Text(0..text.len())];
        // Which bytes occur at all, to skip most special tokens for free.
        let mut present = [false; 256];
        for &b in text.as_bytes() {
            present[usize::from(b)] = true;
        }
        for special in &self.specials {
            if !(parse_special || special.always) {
                continue;
            }
            let starts = special.text.as_bytes().first();
            if !starts.is_some_and(|&b| present[usize::from(b)])
                || !text.contains(special.text.as_str())
            {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(range) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut start = range.start;
                while let Some(found) = text[start..range.end].find(special.text.as_str()) {
                    let at = start + found;
                    if at > start {
                        next.push(Fragment::Text(start..at));
                    }
                    next.push(Fragment::Token(special.id));
                    start = at + special.text.len();
                }
                if start < range.end {
                    next.push(Fragment::Text(start..range.end));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// BPE over `text`, which holds no special tokens.
    fn encode_text(&self, text: &str, out: &mut Vec<u32>) {
        let mut spelled = String::new();
        let mut scratch = Scratch::default();
        for word in pretokenize::split(text, self.pre.split, &self.classes) {
            let bytes = &text.as_bytes()[word];
            if self.pre.ignore_merges {
                spelled.clear();
                spelled.extend(bytes.iter().map(|&b| self.byte_to_char[usize::from(b)]));
                if let Some(&id) = self.text_to_id.get(&spelled) {
                    out.push(id);
                    continue;
                }
            }
            self.merges
                .encode_word(bytes, &self.byte_token, &mut scratch, out);
        }
    }
}

// === Construction helpers ===

/// The bytes every token stands for, in one buffer, and where each starts.
fn token_pieces(
    texts: &[&str],
    kinds: &[TokenKind],
    char_to_byte: &[Option<u8>],
) -> (Vec<u8>, Vec<usize>) {
    let mut pieces = Vec::new();
    let mut offsets = Vec::with_capacity(texts.len() + 1);
    offsets.push(0);
    for (text, kind) in texts.iter().zip(kinds) {
        match kind {
            TokenKind::Normal | TokenKind::Byte => {
                pieces.extend(bpe::decode_alphabet(text, char_to_byte));
            }
            TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown => {
                pieces.extend_from_slice(text.as_bytes());
            }
            TokenKind::Unused => {}
        }
        offsets.push(pieces.len());
    }
    (pieces, offsets)
}

/// The tokens matched whole in text, longest first (ties by id, so the
/// order is stable).
fn special_tokens(texts: &[&str], kinds: &[TokenKind]) -> Vec<Special> {
    let mut specials: Vec<Special> = (0u32..)
        .zip(texts.iter().zip(kinds))
        .filter(|(_, (text, kind))| kind.is_special() && !text.is_empty())
        .map(|(id, (text, kind))| Special {
            text: (*text).to_owned(),
            id,
            always: *kind == TokenKind::UserDefined,
        })
        .collect();
    specials.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
    specials
}
