//! The keyword tables of complexity analysis, and their index.
//!
//! The tables are declarative: a keyword's name (shown in explanations),
//! its weight and the lowercased words or phrases that spell it (variants
//! are listed rather than stemmed, so a table reads as what it matches).
//! Phrases are words joined by single spaces; the scanner splits text on
//! anything not ASCII alphanumeric, so `trade-offs` and `What's` arrive as
//! `trade offs` and `what s`.
//!
//! At first use the tables become one hash index (FNV-1a, short keys): a
//! word costs one lookup, and a phrase is looked up only when its first
//! word is known to start one.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

/// Weights for complex tasks: 5 = complex on its own; 3 = complex with two
/// more points; 1–2 = supporting.
#[rustfmt::skip]
const COMPLEX: &[(&str, i8, &[&str])] = &[
    ("prove", 5, &["prove", "proof", "proving"]),
    ("refactor", 5, &["refactor", "refactoring", "refactored"]),
    ("debug", 5, &["debug", "debugging", "diagnose", "diagnosing", "troubleshoot"]),
    ("architecture", 5, &["architect", "architecture", "architectural", "system design"]),
    ("implement", 5, &["implement", "implementing", "implementation"]),
    ("derive", 5, &["derive", "derivation", "induction"]),
    ("trade-offs", 5, &["tradeoff", "tradeoffs", "trade off", "trade offs"]),
    ("step by step", 5, &["step by step"]),
    ("root cause", 5, &["root cause"]),
    ("race condition", 5, &["race condition", "race conditions"]),
    ("design", 3, &["design", "designing"]),
    ("optimize", 3, &["optimize", "optimise", "optimization", "optimisation"]),
    ("algorithm", 3, &["algorithm", "algorithms"]),
    ("analyze", 3, &["analyze", "analyse", "analysis"]),
    ("plan", 3, &["plan", "planning"]),
    ("migrate", 3, &["migrate", "migration"]),
    ("stack trace", 3, &["traceback", "stacktrace", "stack trace", "segfault", "panicked"]),
    ("complexity analysis", 3, &["time complexity", "space complexity"]),
    ("evaluate", 2, &["evaluate", "assess"]),
    ("scalability", 2, &["scalable", "scalability", "scale"]),
    ("concurrency", 2, &["concurrency", "concurrent", "deadlock", "deadlocks"]),
    ("distributed", 2, &["distributed", "sharded", "sharding"]),
    ("vulnerability", 2, &["vulnerability", "vulnerabilities", "exploit"]),
    ("intermittent", 2, &["intermittent", "intermittently", "flaky"]),
    ("rigorous", 2, &["rigorous", "rigorously", "comprehensive", "in depth", "deep dive"]),
    ("tests", 2, &["unit test", "unit tests", "integration test", "integration tests"]),
    ("security", 1, &["security", "secure"]),
    ("systems", 1, &["schema", "consistency", "regression"]),
];

/// Weights for moderate tasks (capped together; see `complexity`).
#[rustfmt::skip]
const MODERATE: &[(&str, i8, &[&str])] = &[
    ("explain", 3, &["explain", "explaining", "explanation"]),
    ("summarize", 3, &["summarize", "summarise", "summary", "tldr"]),
    ("compare", 3, &["compare", "comparison", "contrast"]),
    ("draft", 3, &["draft"]),
    ("outline", 3, &["outline"]),
    ("brainstorm", 3, &["brainstorm"]),
    ("pros and cons", 3, &["pros and cons"]),
    ("rewrite", 2, &["rewrite", "rephrase", "paraphrase"]),
    ("describe", 2, &["describe", "discuss"]),
    ("review", 2, &["review", "critique"]),
    ("suggest", 2, &["suggest", "recommend", "propose"]),
    ("essay", 2, &["essay", "article", "report", "story"]),
    ("write", 2, &["write"]),
    ("how does", 2, &["how does", "how do"]),
    ("email", 1, &["email", "letter"]),
    ("why", 1, &["why"]),
    ("difference", 1, &["difference", "differences"]),
];

/// Weights for simple tasks: lookups, classification, extraction.
#[rustfmt::skip]
const SIMPLE: &[(&str, i8, &[&str])] = &[
    ("classify", -3, &["classify", "categorize", "categorise"]),
    ("extract", -3, &["extract"]),
    ("translate", -3, &["translate"]),
    ("yes or no", -3, &["yes or no"]),
    ("true or false", -3, &["true or false"]),
    ("sentiment", -2, &["sentiment"]),
    ("define", -2, &["define", "definition"]),
    ("convert", -2, &["convert"]),
    ("spell", -2, &["spell"]),
    ("lookup", -2, &["lookup", "look up"]),
    ("synonym", -2, &["synonym", "antonym"]),
    ("typo", -2, &["typo", "typos"]),
    ("label", -2, &["tag", "label", "category"]),
    ("what is", -2, &["what is", "what s", "what was"]),
    ("who is", -2, &["who is", "who was", "who wrote", "who invented"]),
    ("when did", -2, &["when did", "when was", "when is"]),
    ("where is", -2, &["where is", "where was"]),
    ("capital of", -2, &["capital of"]),
    ("how many", -2, &["how many", "how much"]),
    ("stand for", -2, &["stand for"]),
    ("one word", -2, &["one word"]),
];

/// Words that order steps.
const SEQUENCING: &[&str] = &[
    "then",
    "afterwards",
    "finally",
    "subsequently",
    "after that",
];

/// Words of mathematics beyond arithmetic.
#[rustfmt::skip]
const MATH: &[&str] = &["integral", "derivative", "eigenvalue", "eigenvalues", "theorem", "lemma"];

/// Verbs asking for code; with a [`CODE_NOUNS`] word, a code task.
#[rustfmt::skip]
const CODE_VERBS: &[&str] = &[
    "write", "implement", "create", "build", "generate", "code", "develop",
];

/// Nouns naming code.
#[rustfmt::skip]
const CODE_NOUNS: &[&str] = &[
    "function", "functions", "script", "program", "class", "method", "module", "parser",
    "library", "endpoint", "api", "cli", "query", "regex", "test", "tests", "python", "rust",
    "javascript", "typescript", "java", "golang", "sql", "bash", "kotlin", "swift", "haskell",
    "cpp",
];

/// How hard a keyword says a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    Simple,
    Moderate,
    Complex,
}

/// A task keyword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Keyword {
    pub(super) name: &'static str,
    pub(super) weight: i8,
    pub(super) class: Class,
}

/// Everything a word (or phrase) means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) keyword: Option<Keyword>,
    pub(super) code_verb: bool,
    pub(super) code_noun: bool,
    pub(super) sequencing: bool,
    pub(super) math: bool,
    /// The word begins a two-word phrase.
    pub(super) starts_phrase2: bool,
    /// The word begins a three-word phrase.
    pub(super) starts_phrase3: bool,
}

/// Longest word or phrase in the tables, in bytes.
pub(super) const MAX_KEY: usize = 24;

/// What `word` (ASCII letters and digits, any case) means, if anything.
#[inline]
pub(super) fn word(word: &[u8]) -> Option<&'static Entry> {
    INDEX.get(word)
}

/// What the phrase `words` (ASCII letters and digits, any case) means, if
/// anything.
pub(super) fn phrase(words: &[&[u8]]) -> Option<&'static Entry> {
    let mut key = [0u8; MAX_KEY];
    let mut len = 0;
    for (i, w) in words.iter().enumerate() {
        let sep = usize::from(i > 0);
        let end = len + sep + w.len();
        if end > MAX_KEY {
            return None;
        }
        if sep == 1 {
            key[len] = b' ';
        }
        key[len + sep..end].copy_from_slice(w);
        len = end;
    }
    INDEX.get(&key[..len])
}

// === index ===

/// Words and the flag they set in their entry.
type Flag = (&'static [&'static str], fn(&mut Entry));

type Map = HashMap<&'static [u8], Entry, BuildHasherDefault<Fnv>>;

/// The tables' words and phrases, behind a filter: most words of a prompt
/// are in no table, and one bit (of length, first and last byte, in lower
/// case) tells so without lowercasing or hashing the word (about 1 in 15
/// false positives).
struct Index {
    map: Map,
    filter: [u64; FILTER_WORDS],
}

const FILTER_WORDS: usize = 64;

impl Index {
    /// The entry of `key`, in any case: most words are turned away by the
    /// filter before they are lowercased.
    #[inline]
    fn get(&self, key: &[u8]) -> Option<&Entry> {
        if key.len() > MAX_KEY || !self.may_hold(key) {
            return None;
        }
        let mut lower = [0u8; MAX_KEY];
        let lower = &mut lower[..key.len()];
        lower.copy_from_slice(key);
        lower.make_ascii_lowercase();
        self.map.get(&*lower)
    }

    /// `false` when no key has `key`'s filter bit (of its length and its
    /// first and last bytes, lowercased).
    #[inline]
    fn may_hold(&self, key: &[u8]) -> bool {
        let bit = filter_bit(key);
        self.filter[bit / 64] & (1 << (bit % 64)) != 0
    }
}

#[inline]
fn filter_bit(key: &[u8]) -> usize {
    // Keys start and end with ASCII letters or digits, whose lower case is
    // `| 0x20` (digits already have that bit).
    let (first, last) = (key.first().copied(), key.last().copied());
    let k = (key.len() as u32) << 16
        | u32::from(first.unwrap_or(0) | 0x20) << 8
        | u32::from(last.unwrap_or(0) | 0x20);
    // Fibonacci hashing: the top 12 bits of k × 2^32/φ.
    (k.wrapping_mul(0x9e37_79b9) >> 20) as usize
}

static INDEX: LazyLock<Index> = LazyLock::new(|| {
    let map = build();
    let mut filter = [0; FILTER_WORDS];
    for key in map.keys() {
        let bit = filter_bit(key);
        filter[bit / 64] |= 1 << (bit % 64);
    }
    Index { map, filter }
});

fn build() -> Map {
    let mut index = Map::default();
    let keywords = [
        (COMPLEX, Class::Complex),
        (MODERATE, Class::Moderate),
        (SIMPLE, Class::Simple),
    ];
    for (table, class) in keywords {
        for &(name, weight, spellings) in table {
            for s in spellings {
                entry(&mut index, s).keyword = Some(Keyword {
                    name,
                    weight,
                    class,
                });
            }
        }
    }
    let flags: [Flag; 4] = [
        (SEQUENCING, |e| e.sequencing = true),
        (MATH, |e| e.math = true),
        (CODE_VERBS, |e| e.code_verb = true),
        (CODE_NOUNS, |e| e.code_noun = true),
    ];
    for (words, set) in flags {
        for w in words {
            set(entry(&mut index, w));
        }
    }
    index
}

/// The entry of `key`, created; marks a phrase's first word.
fn entry<'i>(index: &'i mut Map, key: &'static str) -> &'i mut Entry {
    let words = key.split(' ').count();
    if words > 1
        && let Some(first) = key.split(' ').next()
    {
        let starter = entry(index, first);
        if words == 2 {
            starter.starts_phrase2 = true;
        } else {
            starter.starts_phrase3 = true;
        }
    }
    index.entry(key.as_bytes()).or_default()
}

/// FNV-1a: fast on the short keys here; the keys are ours, not an
/// attacker's, so flooding resistance buys nothing.
#[derive(Clone, Copy, Debug)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Slices hash their length first: one round, not eight.
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn no_spelling_is_two_keywords_and_all_fit() {
        let mut seen = HashSet::new();
        for table in [COMPLEX, MODERATE, SIMPLE] {
            for (name, weight, spellings) in table {
                assert!(*weight != 0, "{name}");
                for s in *spellings {
                    assert!(seen.insert(*s), "{s} is spelt twice");
                    assert!(s.len() <= MAX_KEY, "{s}");
                    assert_eq!(*s, s.to_ascii_lowercase(), "{s}");
                    assert!(s.split(' ').count() <= 3, "{s}");
                    assert!(
                        s.split(' ')
                            .all(|w| w.bytes().all(|b| b.is_ascii_alphanumeric())),
                        "{s}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_key_is_lowercase_words_of_letters_and_digits() {
        // What `filter_bit`'s `| 0x20` and the scan's words rely on.
        for key in INDEX.map.keys() {
            let key = std::str::from_utf8(key).unwrap();
            assert!(
                key.split(' ').all(|w| !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())),
                "{key:?}"
            );
        }
    }

    #[test]
    fn index_marks_phrase_starters_and_merges_roles() {
        assert!(word(b"step").unwrap().starts_phrase3);
        assert!(word(b"root").unwrap().starts_phrase2);
        let write = word(b"write").unwrap();
        assert!(write.code_verb);
        assert_eq!(write.keyword.unwrap().class, Class::Moderate);
        assert_eq!(
            phrase(&[b"step", b"by", b"step"])
                .unwrap()
                .keyword
                .unwrap()
                .name,
            "step by step"
        );
        assert!(phrase(&[b"after", b"that"]).unwrap().sequencing);
        assert_eq!(word(b"banana"), None);
        assert_eq!(phrase(&[b"aaaaaaaaaaaaaaaa", b"bbbbbbbbbbbbbbbb"]), None);
    }
}
