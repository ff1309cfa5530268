//! Complexity analysis: how hard is the task a conversation asks for?
//!
//! A score, summed from cheap features of the request, picks the class:
//! at most [`SIMPLE_MAX_SCORE`] is simple, at least [`COMPLEX_MIN_SCORE`]
//! is complex, moderate between. Every point of the score comes from a
//! [`Feature`] the explanation names, so an operator can see why a request
//! went where it went.
//!
//! The task is the last user message: keywords, code, math and multi-step
//! structure are read from it alone, in one pass over its bytes with no
//! allocation: each word is looked up once in the keyword index
//! (`keywords.rs`, which turns most words away before lowercasing them);
//! two- and three-word phrases are looked up only after a word that starts
//! one, so the scan keeps the last two words as written.
//! The rest of the conversation contributes its length, its depth and
//! whether code was seen earlier. System messages count only towards the
//! input-token estimate (the agent's prompt says nothing about this task).
//!
//! Tokens are estimated as bytes / 4 (rounded up): cheap, tokenizer-free
//! and close enough for English text and code to pick a tier or bound a
//! cost.

use std::fmt;

use aios_model::Complexity;

use crate::backend::Role;

use super::keywords::{self, Class, Entry, Keyword};

/// Highest score classified [`Complexity::Simple`].
pub const SIMPLE_MAX_SCORE: i32 = 1;
/// Lowest score classified [`Complexity::Complex`].
pub const COMPLEX_MIN_SCORE: i32 = 5;

/// Moderate keywords add at most this much together: a list of "explain,
/// compare and summarise" is still a moderate request, and takes two more
/// points (a long text, several steps) to become a complex one.
const MODERATE_KEYWORDS_CAP: i32 = 3;

/// How hard a request is, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// The class the score falls in.
    pub complexity: Complexity,
    /// Sum of the features' weights.
    pub score: i32,
    /// What was found, in order of absolute weight (largest first); the
    /// weights sum to `score`. Every signal but the length (always present)
    /// has a non-zero weight.
    pub features: Vec<Feature>,
    /// Estimated tokens of the whole conversation, system prompt included:
    /// the input side of a cost estimate.
    pub input_tokens: u32,
    /// The request offers tools (so the model must support tool calling).
    pub tools_offered: bool,
    /// Output tokens the request asks for at most; `None` = the model's
    /// limit.
    pub max_tokens: Option<u32>,
}

/// One signal found in a request and the points it adds (or removes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// What was found.
    pub signal: Signal,
    /// Points added to the score (negative for simple-task signals).
    pub weight: i32,
}

/// What a [`Feature`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A task keyword or phrase, e.g. `refactor`, `what is`.
    Keyword(&'static str),
    /// Asked to write code: a verb such as `write` or `implement` with a
    /// noun such as `function`, `script` or a language name.
    WritesCode,
    /// A fenced code block (```).
    CodeBlock,
    /// Lines that look like code (ending in `;`, `{` or `}`), unfenced.
    CodeLines(u32),
    /// Code earlier in the conversation (follow-ups on code stay code).
    CodeEarlier,
    /// Math notation (LaTeX, `$$`, ∑ ∫ √ ≤ …).
    Math,
    /// Numbered list items.
    NumberedSteps(u32),
    /// Bullet list items.
    Bullets(u32),
    /// Sequencing words: `then`, `after that`, `finally`, …
    Sequencing(u32),
    /// Question marks.
    Questions(u32),
    /// Estimated tokens of the conversation, system messages left out.
    Length(u32),
    /// User and assistant messages in the conversation.
    Turns(u32),
    /// The request offers tools.
    ToolsOffered,
    /// The output tokens asked for.
    MaxTokens(u32),
}

/// Classifies a conversation (oldest message first, as `(role, text)`),
/// given whether tools are offered and the output tokens asked for.
pub fn analyze<'a>(
    messages: impl IntoIterator<Item = (Role, &'a str)>,
    tools_offered: bool,
    max_tokens: Option<u32>,
) -> Analysis {
    let mut total_bytes: u64 = 0;
    let mut dialogue_bytes: u64 = 0;
    let mut turns: u32 = 0;
    let mut task: Option<&str> = None;
    let mut last: Option<&str> = None;
    let mut code_earlier = false;
    for (role, text) in messages {
        let len = text.len() as u64;
        total_bytes = total_bytes.saturating_add(len);
        last = Some(text);
        match role {
            Role::System => continue,
            Role::User => {
                if let Some(previous) = task.replace(text) {
                    code_earlier |= previous.contains("```");
                }
            }
            Role::Assistant => code_earlier |= text.contains("```"),
            Role::Tool => {}
        }
        dialogue_bytes = dialogue_bytes.saturating_add(len);
        if matches!(role, Role::User | Role::Assistant) {
            turns = turns.saturating_add(1);
        }
    }
    let scan = scan(task.or(last).unwrap_or(""));

    let mut features = Vec::with_capacity(16);
    // Zero-weight signals are left out, but for the length: an explanation
    // always says how long the conversation was.
    let mut add = |signal: Signal, weight: i32| {
        if weight != 0 || matches!(signal, Signal::Length(_)) {
            features.push(Feature { signal, weight });
        }
    };

    // Keywords. Simple-task words count only when nothing complex was
    // asked: "what is the trade-off…" is no lookup.
    let complex_asked = scan.writes_code() || scan.hits().any(|k| k.class == Class::Complex);
    let mut moderate_left = MODERATE_KEYWORDS_CAP;
    for kw in scan.hits() {
        let weight = match kw.class {
            Class::Complex => i32::from(kw.weight),
            Class::Moderate => {
                let w = i32::from(kw.weight).min(moderate_left);
                moderate_left -= w;
                w
            }
            Class::Simple if complex_asked => 0,
            Class::Simple => i32::from(kw.weight),
        };
        add(Signal::Keyword(kw.name), weight);
    }
    if scan.writes_code() {
        add(Signal::WritesCode, 5);
    }

    // Structure of the task.
    if scan.fences > 0 {
        add(Signal::CodeBlock, 3);
    } else if scan.code_lines >= 2 {
        add(Signal::CodeLines(scan.code_lines), 2);
    }
    if code_earlier && scan.fences == 0 {
        add(Signal::CodeEarlier, 1);
    }
    if scan.math {
        add(Signal::Math, 3);
    }
    if scan.numbered >= 2 {
        add(
            Signal::NumberedSteps(scan.numbered),
            to_i32(scan.numbered - 1).min(3),
        );
    }
    if scan.bullets >= 3 {
        add(Signal::Bullets(scan.bullets), 1);
    }
    if scan.sequencing > 0 {
        add(
            Signal::Sequencing(scan.sequencing),
            if scan.sequencing >= 3 { 2 } else { 1 },
        );
    }
    if scan.questions >= 2 {
        add(
            Signal::Questions(scan.questions),
            if scan.questions >= 4 { 2 } else { 1 },
        );
    }

    // The conversation.
    let dialogue_tokens = estimate_tokens(dialogue_bytes);
    let length_weight = match dialogue_tokens {
        0..8 => -1,
        8..150 => 0,
        150..600 => 1,
        600..2500 => 2,
        _ => 3,
    };
    add(Signal::Length(dialogue_tokens), length_weight);
    if turns >= 8 {
        add(Signal::Turns(turns), if turns >= 20 { 2 } else { 1 });
    }
    if tools_offered {
        add(Signal::ToolsOffered, 2);
    }
    if let Some(max) = max_tokens {
        let weight = match max {
            0..=64 => -1,
            65..4000 => 0,
            4000..16000 => 1,
            _ => 2,
        };
        add(Signal::MaxTokens(max), weight);
    }

    features.sort_by_key(|f| std::cmp::Reverse(f.weight.abs()));
    let score = features.iter().map(|f| f.weight).sum();
    Analysis {
        complexity: classify(score),
        score,
        features,
        input_tokens: estimate_tokens(total_bytes),
        tools_offered,
        max_tokens,
    }
}

/// The class of a score.
pub fn classify(score: i32) -> Complexity {
    if score <= SIMPLE_MAX_SCORE {
        Complexity::Simple
    } else if score >= COMPLEX_MIN_SCORE {
        Complexity::Complex
    } else {
        Complexity::Moderate
    }
}

/// Tokens in `bytes` of text, estimated as bytes / 4 rounded up.
pub fn estimate_tokens(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX)
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

// === impl Analysis ===

impl Analysis {
    /// One line: the class, the score and the features, e.g.
    /// `complex (score 7): code block, "refactor", 1.2k tokens`.
    pub fn explanation(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(complexity_name(self.complexity))?;
        f.write_str(" (score ")?;
        self.score.fmt(f)?;
        f.write_str(")")?;
        for (i, feature) in self.features.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            feature.signal.fmt(f)?;
        }
        Ok(())
    }
}

/// `simple`, `moderate` or `complex`.
pub fn complexity_name(c: Complexity) -> &'static str {
    match c {
        Complexity::Simple => "simple",
        Complexity::Moderate => "moderate",
        Complexity::Complex => "complex",
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Signal::Keyword(word) => {
                f.write_str("\"")?;
                f.write_str(word)?;
                f.write_str("\"")
            }
            Signal::WritesCode => f.write_str("writes code"),
            Signal::CodeBlock => f.write_str("code block"),
            Signal::CodeLines(n) => write!(f, "{n} code lines"),
            Signal::CodeEarlier => f.write_str("code earlier in the conversation"),
            Signal::Math => f.write_str("math"),
            Signal::NumberedSteps(n) => write!(f, "{n} numbered steps"),
            Signal::Bullets(n) => write!(f, "{n} bullets"),
            Signal::Sequencing(n) => write!(f, "{n} sequencing words"),
            Signal::Questions(n) => write!(f, "{n} questions"),
            Signal::Length(tokens) => write!(f, "{} tokens", Compact(tokens)),
            Signal::Turns(n) => write!(f, "{n} turns"),
            Signal::ToolsOffered => f.write_str("tools offered"),
            Signal::MaxTokens(n) => write!(f, "max_tokens {}", Compact(n)),
        }
    }
}

/// `850`, `1.2k`, `45k`, `1.2M`.
struct Compact(u32);

impl fmt::Display for Compact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = u64::from(self.0);
        if n < 1_000 {
            return write!(f, "{n}");
        }
        // 999_500 would round to "1000k".
        let (unit, suffix) = if n < 999_500 {
            (1_000, "k")
        } else {
            (1_000_000, "M")
        };
        // One decimal below 9.95 units (shown as "10k", not "10.0k").
        if n < 10 * unit - unit / 20 {
            let tenths = (n * 10 + unit / 2) / unit;
            if tenths % 10 == 0 {
                write!(f, "{}{suffix}", tenths / 10)
            } else {
                write!(f, "{}.{}{suffix}", tenths / 10, tenths % 10)
            }
        } else {
            write!(f, "{}{suffix}", (n + unit / 2) / unit)
        }
    }
}

// === the scan ===

/// What one pass over the task's bytes found.
#[derive(Debug, Default)]
struct Scan {
    hits: [Option<Keyword>; MAX_HITS],
    code_verb: bool,
    code_noun: bool,
    fences: u32,
    code_lines: u32,
    math: bool,
    numbered: u32,
    bullets: u32,
    sequencing: u32,
    questions: u32,
}

/// Distinct keywords kept; more add nothing a reader needs.
const MAX_HITS: usize = 12;

impl Scan {
    fn hits(&self) -> impl Iterator<Item = &Keyword> + Clone {
        self.hits.iter().map_while(Option::as_ref)
    }

    fn writes_code(&self) -> bool {
        self.code_verb && self.code_noun
    }

    fn hit(&mut self, kw: Keyword) {
        for slot in &mut self.hits {
            match slot {
                Some(seen) if seen.name == kw.name => return,
                Some(_) => {}
                None => {
                    *slot = Some(kw);
                    return;
                }
            }
        }
    }

    /// Reads one word (as written) and the phrases it ends.
    #[inline(always)]
    fn word<'t>(&mut self, recent: &mut Recent<'t>, w: &'t [u8]) {
        let entry = keywords::word(w);
        if entry.is_none() && recent.0[0].1.is_none() && recent.0[1].1.is_none() {
            // Most words: neither this one nor the two before mean anything,
            // so no phrase ends here or goes on from here, and the two words
            // before the next one mean nothing either, as now.
            return;
        }
        let [(p1, e1), (p2, e2)] = recent.0;
        if e1.is_some_and(|e| e.starts_phrase2)
            && let Some(e) = keywords::phrase(&[p1, w])
        {
            self.apply(e);
        }
        if e2.is_some_and(|e| e.starts_phrase3)
            && let Some(e) = keywords::phrase(&[p2, p1, w])
        {
            self.apply(e);
        }
        if let Some(e) = entry {
            self.apply(e);
        }
        recent.0 = [(w, entry), (p1, e1)];
    }

    fn apply(&mut self, e: &Entry) {
        if let Some(kw) = e.keyword {
            self.hit(kw);
        }
        self.sequencing += u32::from(e.sequencing);
        self.math |= e.math;
        self.code_verb |= e.code_verb;
        self.code_noun |= e.code_noun;
    }
}

/// The two words before the current one, as written, and what they mean:
/// a phrase is looked up only when one of them starts one.
#[derive(Debug, Default)]
struct Recent<'t>([(&'t [u8], Option<&'static Entry>); 2]);

/// The scan reads the text in blocks of this many bytes, each turned into
/// two bit masks (word bytes, and bytes that may be markers): a prompt's
/// bytes are classified eight at a time, and only the words and the few
/// other bytes that are not spaces are looked at one by one.
const BLOCK: usize = 64;

/// Bytes a structure signal starts at: a line end (code lines), `?`, a
/// backtick (fences), `-` and `*` (bullets), `\` (LaTeX), `$` (`$$`), and
/// 0xE2, the lead byte of U+2200..U+22FF (Mathematical Operators).
#[inline]
fn is_marker(c: u8) -> bool {
    matches!(c, b'\n' | b'?' | b'`' | b'-' | b'*' | b'\\' | b'$' | 0xE2)
}

/// `b` in every byte of a `u64`.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// Bit `i` of the first mask: byte `i` of the block is a word byte (an
/// ASCII letter or digit); of the second: it is neither a word byte nor a
/// space, so it may be a marker.
#[inline]
fn masks(block: &[u8; BLOCK]) -> (u64, u64) {
    let (mut words, mut others) = (0, 0);
    let (eights, _) = block.as_chunks::<8>();
    for (k, eight) in eights.iter().enumerate() {
        let (w, o) = masks8(u64::from_le_bytes(*eight));
        words |= w << (8 * k);
        others |= o << (8 * k);
    }
    (words, others)
}

/// [`masks`] of eight bytes, computed in one `u64` (SWAR): each test sets
/// the top bit of the bytes it holds for, and no addition carries into the
/// next byte (every byte is at most 0x7F before one).
#[inline]
fn masks8(x: u64) -> (u64, u64) {
    const LOW7: u64 = splat(0x7F);
    const HIGH: u64 = splat(0x80);
    let ascii = x & LOW7;
    // `ascii + (0x80 - lo)` has its top bit set where the byte is >= lo.
    let at_least = |v: u64, lo: u8| v.wrapping_add(splat(0x80 - lo));
    let lower = ascii | splat(0x20);
    let letters = at_least(lower, b'a') & !at_least(lower, b'z' + 1);
    let digits = at_least(ascii, b'0') & !at_least(ascii, b'9' + 1);
    let words = (letters | digits) & !x & HIGH;
    // Exact zero test of `x ^ '  …'`: the top bit set only in space bytes.
    let t = x ^ splat(b' ');
    let spaces = !((t & LOW7).wrapping_add(LOW7) | t) & HIGH;
    let others = !(words | spaces) & HIGH;
    // Gather the eight top bits into the low byte, byte `i` to bit `i`.
    let gather = |m: u64| (m >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56;
    (gather(words), gather(others))
}

/// One pass over the task's bytes: words (runs of ASCII letters and digits)
/// go to the keyword index, markers to the structure signals; every other
/// byte is only classified, a block at a time.
fn scan(text: &str) -> Scan {
    let b = text.as_bytes();
    let mut s = Scan::default();
    let mut recent = Recent::default();
    // Where the word in progress started, and whether one is in progress
    // (carried from one block to the next).
    let mut start = 0;
    let mut in_word = false;
    // Backticks before this index belong to a fence already counted.
    let mut fence_end = 0;
    for base in (0..b.len()).step_by(BLOCK) {
        let (words, others) = match b[base..].first_chunk() {
            Some(block) => masks(block),
            None => {
                // The last, short block, padded with spaces.
                let mut block = [b' '; BLOCK];
                block[..b.len() - base].copy_from_slice(&b[base..]);
                masks(&block)
            }
        };
        // A bit per byte where a word starts or ends (the byte after it).
        let mut edges = words ^ (words << 1 | u64::from(in_word));
        while edges != 0 {
            let i = base + edges.trailing_zeros() as usize;
            edges &= edges - 1;
            if in_word {
                s.word_at(&mut recent, b, start, i);
            } else {
                start = i;
            }
            in_word = !in_word;
        }
        let mut others = others;
        while others != 0 {
            let i = base + others.trailing_zeros() as usize;
            others &= others - 1;
            if i >= fence_end && is_marker(b[i]) {
                s.marker(b, i, &mut fence_end);
            }
        }
    }
    // A padded last block always ends its word; a text that fills its last
    // block may not.
    if in_word {
        s.word_at(&mut recent, b, start, b.len());
    }
    if matches!(last_on_line(b, b.len()), Some(b';' | b'{' | b'}')) {
        s.code_lines += 1;
    }
    s
}

impl Scan {
    /// The word `b[start..end]`, and whether it numbers a list item (digits
    /// first on their line, then `.` or `)` and a space).
    #[inline(always)]
    fn word_at<'t>(&mut self, recent: &mut Recent<'t>, b: &'t [u8], start: usize, end: usize) {
        let word = &b[start..end];
        if word[0].is_ascii_digit()
            && matches!(b.get(end), Some(b'.' | b')'))
            && matches!(b.get(end + 1), Some(b' ' | b'\t'))
            && word.iter().all(u8::is_ascii_digit)
            && line_start(b, start)
        {
            self.numbered += 1;
        }
        self.word(recent, word);
    }

    /// The marker at `b[i]`.
    fn marker(&mut self, b: &[u8], i: usize, fence_end: &mut usize) {
        match b[i] {
            b'\n' => {
                if matches!(last_on_line(b, i), Some(b';' | b'{' | b'}')) {
                    self.code_lines += 1;
                }
            }
            b'`' if b[i..].starts_with(b"```") => {
                self.fences += 1;
                *fence_end = i + 3;
            }
            b'?' => self.questions += 1,
            b'-' | b'*' if b.get(i + 1) == Some(&b' ') && line_start(b, i) => self.bullets += 1,
            b'\\' => self.math |= latex_command(&b[i + 1..]),
            b'$' => self.math |= b.get(i + 1) == Some(&b'$'),
            0xE2 => self.math |= matches!(b.get(i + 1), Some(0x88..=0x8B)),
            _ => {}
        }
    }
}

/// Spaces, tabs and carriage returns: what a line may start or end with.
fn is_blank(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r')
}

/// Whether only blanks stand between `b[i]` and the start of its line.
fn line_start(b: &[u8], i: usize) -> bool {
    b[..i]
        .iter()
        .rev()
        .find(|&&c| !is_blank(c))
        .is_none_or(|&c| c == b'\n')
}

/// The last byte before `b[i]` on its line that is not blank, if any.
fn last_on_line(b: &[u8], i: usize) -> Option<u8> {
    b[..i]
        .iter()
        .rev()
        .find(|&&c| !is_blank(c))
        .copied()
        .filter(|&c| c != b'\n')
}

fn latex_command(rest: &[u8]) -> bool {
    const COMMANDS: [&[u8]; 8] = [
        b"frac", b"int", b"sum", b"sqrt", b"begin", b"lim", b"prod", b"partial",
    ];
    COMMANDS.iter().any(|c| rest.starts_with(c))
}

#[cfg(test)]
#[path = "complexity_tests.rs"]
mod tests;
