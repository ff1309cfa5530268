//! Pre-tokenization: splitting text into the words that BPE merges within.
//!
//! GGUF names the split in `tokenizer.ggml.pre`; llama.cpp (`llama-vocab.cpp`)
//! maps each name to a list of regexes that are applied in turn, each one
//! splitting the pieces the previous one left. The families below are ported
//! from llama.cpp's hand-written matchers (`unicode.cpp`), which are what it
//! runs for these regexes, so the words, and therefore the ids, are the same:
//!
//! - GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! - SmolLM, StarCoder and kin: every `\p{N}` on its own first, then GPT-2.
//! - Llama 3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! - Qwen 2: as Llama 3 with `\p{N}` instead of `\p{N}{1,3}`.

use std::ops::Range;

use regex_syntax::hir::{Class, HirKind};

// === Pre-tokenizer ===

/// The split a GGUF vocabulary asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizer {
    /// GPT-2's regex.
    Gpt2,
    /// Each number character alone, then GPT-2's regex (SmolLM, StarCoder).
    DigitsGpt2,
    /// Llama 3's regex; numbers in groups of at most `max_digits`.
    Llama3 {
        /// 3 for Llama 3, 1 for Qwen 2.
        max_digits: usize,
    },
}

/// What a `tokenizer.ggml.pre` name means: the split, and whether a word that
/// is itself a token skips the merges (llama.cpp's `ignore_merges`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PreTokenizerSpec {
    pub(crate) split: PreTokenizer,
    pub(crate) ignore_merges: bool,
}

impl PreTokenizerSpec {
    /// The spec llama.cpp uses for `name`, or `None` for names aios does not
    /// support (the list follows `llama_vocab::impl::load`).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        let (split, ignore_merges) = match name {
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais"
            | "trillion" | "exaone4" | "granite-docling" => (PreTokenizer::Gpt2, false),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => (PreTokenizer::DigitsGpt2, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" => (PreTokenizer::Llama3 { max_digits: 3 }, true),
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => {
                (PreTokenizer::Llama3 { max_digits: 1 }, false)
            }
            _ => return None,
        };
        Some(Self {
            split,
            ignore_merges,
        })
    }
}

/// The names [`PreTokenizerSpec::from_name`] accepts, for error messages.
pub(crate) const SUPPORTED: &str = "gpt-2 and its aliases, smollm/starcoder/refact/command-r, \
     llama3/llama-bpe and aliases, qwen2/deepseek-r1-qwen";

// === Character classes ===

/// The classes the split regexes test, as llama.cpp's `unicode_cpt_flags`
/// has them: general category L, general category N, the White_Space
/// property, anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CharClass {
    Letter,
    Number,
    Whitespace,
    Other,
}

/// Unicode tables for [`CharClass`], taken once from regex-syntax (the tables
/// the `regex` crate uses), so no Unicode data is vendored here.
#[derive(Clone)]
pub(crate) struct CharClasses {
    letters: Vec<(char, char)>,
    numbers: Vec<(char, char)>,
}

impl std::fmt::Debug for CharClasses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CharClasses")
            .field("letter_ranges", &self.letters.len())
            .field("number_ranges", &self.numbers.len())
            .finish()
    }
}

impl CharClasses {
    /// Builds the tables; fails only if regex-syntax lost its Unicode tables.
    pub(crate) fn new() -> Result<Self, String> {
        Ok(Self {
            letters: unicode_ranges(r"\p{L}")?,
            numbers: unicode_ranges(r"\p{N}")?,
        })
    }

    fn class(&self, c: char) -> CharClass {
        if c.is_ascii() {
            return match c {
                'a'..='z' | 'A'..='Z' => CharClass::Letter,
                '0'..='9' => CharClass::Number,
                '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' => CharClass::Whitespace,
                _ => CharClass::Other,
            };
        }
        // White_Space first: llama.cpp's flag set overrides the category.
        if c.is_whitespace() {
            CharClass::Whitespace
        } else if in_ranges(&self.letters, c) {
            CharClass::Letter
        } else if in_ranges(&self.numbers, c) {
            CharClass::Number
        } else {
            CharClass::Other
        }
    }
}

fn unicode_ranges(pattern: &str) -> Result<Vec<(char, char)>, String> {
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .map_err(|e| format!("unicode class {pattern}: {e}"))?;
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => Ok(class
            .ranges()
            .iter()
            .map(|r| (r.start(), r.end()))
            .collect()),
        _ => Err(format!("unicode class {pattern} is not a class")),
    }
}

fn in_ranges(ranges: &[(char, char)], c: char) -> bool {
    ranges
        .binary_search_by(|&(start, end)| {
            if end < c {
                std::cmp::Ordering::Less
            } else if start > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

// === Splitting ===

/// The text's characters with their byte offsets and classes, so the
/// matchers can look ahead without decoding UTF-8 again.
struct Chars {
    chars: Vec<char>,
    classes: Vec<CharClass>,
    /// Byte offset of each char, plus the text's length at the end.
    offsets: Vec<usize>,
}

impl Chars {
    fn new(text: &str, classes: &CharClasses) -> Self {
        let n = text.len();
        let mut out = Self {
            chars: Vec::with_capacity(n),
            classes: Vec::with_capacity(n),
            offsets: Vec::with_capacity(n + 1),
        };
        for (offset, c) in text.char_indices() {
            out.chars.push(c);
            out.classes.push(classes.class(c));
            out.offsets.push(offset);
        }
        out.offsets.push(n);
        out
    }
}

/// Splits `text` into words; returns their byte ranges, in order, covering
/// the whole text.
pub(crate) fn split(text: &str, how: PreTokenizer, classes: &CharClasses) -> Vec<Range<usize>> {
    let chars = Chars::new(text, classes);
    let n = chars.chars.len();
    let mut words = Words {
        chars: &chars,
        out: Vec::with_capacity(n / 3 + 1),
    };
    match how {
        PreTokenizer::Gpt2 => words.gpt2(0, n),
        PreTokenizer::DigitsGpt2 => {
            // `\p{N}`: every number character is a piece of its own, and the
            // runs between them are split again by GPT-2's regex.
            let mut start = 0;
            for i in 0..n {
                if chars.classes[i] == CharClass::Number {
                    words.gpt2(start, i);
                    words.push(i, i + 1);
                    start = i + 1;
                }
            }
            words.gpt2(start, n);
        }
        PreTokenizer::Llama3 { max_digits } => words.llama3(0, n, max_digits),
    }
    words.out
}

/// Collects word ranges (in chars) while a matcher walks one piece.
struct Words<'a> {
    chars: &'a Chars,
    out: Vec<Range<usize>>,
}

impl Words<'_> {
    fn push(&mut self, start: usize, end: usize) {
        if end > start {
            self.out
                .push(self.chars.offsets[start]..self.chars.offsets[end]);
        }
    }

    /// GPT-2's regex over chars `ini..end` (llama.cpp's
    /// `unicode_regex_split_custom_gpt2`).
    fn gpt2(&mut self, ini: usize, end: usize) {
        let chars = &self.chars.chars;
        let class = |pos: usize| (pos < end).then(|| self.chars.classes[pos]);
        let mut pos = ini;
        while pos < end {
            let start = pos;
            let c = chars[pos];
            // 's|'t|'re|'ve|'m|'ll|'d
            if c == '\'' && pos + 1 < end {
                let next = chars[pos + 1];
                if matches!(next, 's' | 't' | 'm' | 'd') {
                    pos += 2;
                    self.push(start, pos);
                    continue;
                }
                if pos + 2 < end
                    && matches!((next, chars[pos + 2]), ('r', 'e') | ('v', 'e') | ('l', 'l'))
                {
                    pos += 3;
                    self.push(start, pos);
                    continue;
                }
            }
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
            let head = if c == ' ' { class(pos + 1) } else { class(pos) };
            if let Some(run @ (CharClass::Letter | CharClass::Number | CharClass::Other)) = head {
                if c == ' ' {
                    pos += 1;
                }
                while class(pos) == Some(run) {
                    pos += 1;
                }
                self.push(start, pos);
                continue;
            }
            // \s+(?!\S) leaves the last space to the word that follows; \s+
            let mut spaces = 0;
            while class(pos + spaces) == Some(CharClass::Whitespace) {
                spaces += 1;
            }
            pos += match spaces {
                0 => 1,
                1 => 1,
                _ if pos + spaces < end => spaces - 1,
                _ => spaces,
            };
            self.push(start, pos);
        }
    }

    /// Llama 3's regex over chars `ini..end`, numbers grouped by at most
    /// `max_digits` (llama.cpp's `unicode_regex_split_custom_llama3` and
    /// `_qwen2`).
    fn llama3(&mut self, ini: usize, end: usize, max_digits: usize) {
        let chars = &self.chars.chars;
        let class = |pos: usize| (pos < end).then(|| self.chars.classes[pos]);
        let newline = |pos: usize| pos < end && matches!(chars[pos], '\r' | '\n');
        let mut pos = ini;
        while pos < end {
            let start = pos;
            let c = chars[pos];
            let here = self.chars.classes[pos];
            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if c == '\'' && pos + 1 < end {
                let next = chars[pos + 1].to_ascii_lowercase();
                if matches!(next, 's' | 't' | 'm' | 'd') {
                    pos += 2;
                    self.push(start, pos);
                    continue;
                }
                if pos + 2 < end
                    && matches!(
                        (next, chars[pos + 2].to_ascii_lowercase()),
                        ('r', 'e') | ('v', 'e') | ('l', 'l')
                    )
                {
                    pos += 3;
                    self.push(start, pos);
                    continue;
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(newline(pos) || here == CharClass::Number)
                && (here == CharClass::Letter || class(pos + 1) == Some(CharClass::Letter))
            {
                pos += 1;
                while class(pos) == Some(CharClass::Letter) {
                    pos += 1;
                }
                self.push(start, pos);
                continue;
            }
            // \p{N}{1,max_digits}
            if here == CharClass::Number {
                let mut group = pos;
                while class(pos) == Some(CharClass::Number) {
                    pos += 1;
                    if pos - group >= max_digits {
                        self.push(group, pos);
                        group = pos;
                    }
                }
                self.push(group, pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`; a lone trailing space lands here too.
            let head = if c == ' ' { class(pos + 1) } else { Some(here) };
            if matches!(head, None | Some(CharClass::Other)) {
                if c == ' ' {
                    pos += 1;
                }
                while class(pos) == Some(CharClass::Other) {
                    pos += 1;
                }
                while newline(pos) {
                    pos += 1;
                }
                self.push(start, pos);
                continue;
            }
            // \s*[\r\n]+, then \s+(?!\S), then \s+
            let mut spaces = 0;
            let mut after_newline = None;
            while class(pos + spaces) == Some(CharClass::Whitespace) {
                if newline(pos + spaces) {
                    after_newline = Some(pos + spaces + 1);
                }
                spaces += 1;
            }
            pos = match (after_newline, spaces) {
                (Some(after), _) => after,
                (None, 0) => pos + 1,
                (None, 1) => pos + 1,
                (None, _) if pos + spaces < end => pos + spaces - 1,
                (None, _) => pos + spaces,
            };
            self.push(start, pos);
        }
    }
}

// === Tests ===

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

    use super::*;

    fn words(text: &str, how: PreTokenizer) -> Vec<&str> {
        let classes = CharClasses::new().unwrap();
        split(text, how, &classes)
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    #[test]
    fn gpt2_keeps_the_last_space_for_the_next_word() {
        assert_eq!(
            words("Hello  world's 42!!\n\n", PreTokenizer::Gpt2),
            ["Hello", " ", " world", "'s", " 42", "!!", "\n\n"]
        );
    }

    #[test]
    fn digits_stand_alone_for_smollm() {
        assert_eq!(
            words("in 2024, x1", PreTokenizer::DigitsGpt2),
            ["in", " ", "2", "0", "2", "4", ",", " x", "1"]
        );
    }

    #[test]
    fn llama3_groups_digits_by_three_and_attaches_punctuation() {
        assert_eq!(
            words(
                "I'LL pay 1234567.\n\n  ok",
                PreTokenizer::Llama3 { max_digits: 3 }
            ),
            [
                "I", "'LL", " pay", " ", "123", "456", "7", ".\n\n", " ", " ok"
            ]
        );
    }

    #[test]
    fn non_ascii_classes() {
        let classes = CharClasses::new().unwrap();
        assert_eq!(classes.class('日'), CharClass::Letter);
        assert_eq!(classes.class('é'), CharClass::Letter);
        assert_eq!(classes.class('٣'), CharClass::Number);
        assert_eq!(classes.class('Ⅻ'), CharClass::Number);
        assert_eq!(classes.class('\u{3000}'), CharClass::Whitespace);
        assert_eq!(classes.class('😀'), CharClass::Other);
        assert_eq!(classes.class('\u{301}'), CharClass::Other);
    }
}
