//! A cheap test that says when no rule can fire on a text, so most texts
//! skip the rule automata: they cost more than normalising the text, and
//! matching every rule in one pass is what a [`RegexSet`] does slowly.
//!
//! It answers "nothing can fire" only when that follows from what it saw,
//! so it never costs recall. It reads the normalised text, and says a rule
//! could fire when the text
//!
//! * has a raw rule's marker ([`raw_markers`]),
//! * has a base64 run to decode, or [`SPACED_RUN`] one-letter words in a
//!   row (read squashed),
//! * or holds an **anchor** of a word rule: literal pieces one of which is
//!   inside every normalised text the rule matches, derived from the
//!   compiled pattern itself (so an edited rule brings its own anchors).
//!
//! The anchors are found by one Aho–Corasick DFA, run as [`STREAMS`]
//! interleaved walks over overlapping slices of the text: one walk waits
//! on each table lookup before the next, several keep the core busy.
//!
//! [`RegexSet`]: regex::bytes::RegexSet

use aho_corasick::{
    Anchored, MatchKind, StartKind,
    automaton::{Automaton, StateID},
    dfa::{self, DFA},
};
use regex_syntax::hir::{
    Hir, HirKind,
    literal::{ExtractKind, Extractor},
};

use super::SPACED_RUN;
use super::normalize::Normalized;
use super::rules::raw_markers;

/// Walks of the DFA interleaved over the text.
const STREAMS: usize = 4;
/// Most prefix or suffix literals taken from one pattern: more makes longer
/// (rarer) anchors but a larger automaton, slower to build. On the labelled
/// set 24 lets 243 of 488 texts skip the rules with 289 anchors; 250 (the
/// extractor's default) lets 251 skip with 1,343.
const LIMIT: usize = 24;

/// The anchors of every word rule, ready to scan normalised text.
#[derive(Debug)]
pub(super) struct Precheck {
    anchors: DFA,
    /// The longest anchor, in bytes: how far the slices overlap.
    longest: usize,
}

impl Precheck {
    /// From the word rules as compiled (folded, bytes regexes); `None` when a
    /// rule has no anchor (then every text takes the full path).
    pub(super) fn new(patterns: impl IntoIterator<Item = impl AsRef<str>>) -> Option<Self> {
        let mut all = Vec::new();
        for pattern in patterns {
            let hir = regex_syntax::ParserBuilder::new()
                .utf8(false)
                .build()
                .parse(pattern.as_ref())
                .ok()?;
            all.extend(anchors(&hir)?);
        }
        // An anchor holding another is redundant.
        all.sort_by_key(Vec::len);
        all.dedup();
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(all.len());
        for anchor in all {
            if !kept
                .iter()
                .any(|k| memchr::memmem::find(&anchor, k).is_some())
            {
                kept.push(anchor);
            }
        }
        let longest = kept.iter().map(Vec::len).max()?;
        let anchors = dfa::Builder::new()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(&kept)
            .ok()?;
        Some(Self { anchors, longest })
    }

    /// Whether some rule could fire on `text`, normalised as `norm`;
    /// `false` only when none can.
    pub(super) fn could_fire(&self, text: &str, norm: &Normalized) -> bool {
        norm.max_single_run >= SPACED_RUN
            || !norm.base64_runs.is_empty()
            || raw_markers(text)
            || self.holds_anchor(norm.words.as_bytes())
    }

    /// Whether `hay` holds an anchor: [`STREAMS`] walks, each over its slice
    /// and the `longest - 1` bytes after it (so an anchor that starts in a
    /// slice ends inside the walk over it).
    pub(super) fn holds_anchor(&self, hay: &[u8]) -> bool {
        let dfa = &self.anchors;
        let Ok(start) = dfa.start_state(Anchored::No) else {
            return true;
        };
        let slice = hay.len().div_ceil(STREAMS);
        let walk = slice + self.longest.saturating_sub(1);
        let walks: [&[u8]; STREAMS] = std::array::from_fn(|k| {
            let from = (k * slice).min(hay.len());
            &hay[from..(from + walk).min(hay.len())]
        });
        let step = |state: &mut StateID, byte: u8| {
            *state = dfa.next_state(Anchored::No, *state, byte);
            dfa.is_match(*state)
        };
        // Every walk has bytes up to the last one's length (the shortest):
        // there the four steps run side by side, without bounds checks.
        let [a, b, c, d] = walks;
        let mut states = [start; STREAMS];
        for (((&w, &x), &y), &z) in a.iter().zip(b).zip(c).zip(d) {
            let [s0, s1, s2, s3] = &mut states;
            if step(s0, w) | step(s1, x) | step(s2, y) | step(s3, z) {
                return true;
            }
        }
        // The rest of the longer walks.
        let common = d.len();
        walks.iter().zip(&mut states).any(|(walk, state)| {
            walk[common.min(walk.len())..]
                .iter()
                .any(|&byte| step(state, byte))
        })
    }
}

// === anchors ===

/// Pieces of text one of which is inside every match of `hir`, as few and
/// as long as can be found; `None` when a match may hold none of them.
fn anchors(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    let mut best = required(hir);
    for kind in [ExtractKind::Prefix, ExtractKind::Suffix] {
        let seq = Extractor::new().kind(kind).limit_total(LIMIT).extract(hir);
        let from_seq: Option<Vec<Vec<u8>>> = seq
            .literals()
            .and_then(|literals| literals.iter().map(|l| piece(l.as_bytes())).collect());
        if let Some(candidate) = from_seq
            && best
                .as_ref()
                .is_none_or(|b| quality(&candidate) > quality(b))
        {
            best = Some(candidate);
        }
    }
    best
}

/// Like [`anchors`], from the structure: every part of a concatenation is
/// in the match, and one branch of an alternation.
fn required(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    match hir.kind() {
        HirKind::Literal(literal) => piece(&literal.0).map(|p| vec![p]),
        HirKind::Capture(capture) => anchors(&capture.sub),
        HirKind::Repetition(repetition) if repetition.min > 0 => anchors(&repetition.sub),
        HirKind::Concat(parts) => parts
            .iter()
            .filter_map(anchors)
            .max_by_key(|anchors| quality(anchors)),
        HirKind::Alternation(branches) => {
            let mut all = Vec::new();
            for branch in branches {
                all.extend(anchors(branch)?);
            }
            Some(all)
        }
        // The empty string, look-arounds, classes and optional parts: a
        // match need not contain any literal from them.
        HirKind::Empty | HirKind::Class(_) | HirKind::Look(_) | HirKind::Repetition(_) => None,
    }
}

/// A literal as an anchor; `None` if it is only spaces (in every text).
fn piece(literal: &[u8]) -> Option<Vec<u8>> {
    (literal.iter().any(|&b| b != b' ')).then(|| literal.to_vec())
}

/// How selective a set of anchors is: its shortest anchor (longer ones turn
/// up in fewer ordinary texts; the spaces around a word count, as they rule
/// out the longer words it is part of), then fewer anchors.
fn quality(anchors: &[Vec<u8>]) -> (usize, std::cmp::Reverse<usize>) {
    let shortest = anchors.iter().map(Vec::len).min().unwrap_or(0);
    (shortest, std::cmp::Reverse(anchors.len()))
}
