//! Personal-data and credential detectors: pure functions from text to
//! [`Finding`]s (a kind and a byte range, never the matched text).
//!
//! Each kind has its own module. The digit-shaped kinds (card numbers, SSNs,
//! phone numbers, IPv4) share one scan for "numeric islands" so the text is
//! walked once for all of them; e-mail and IPv6 start only at an `@` or a
//! `:`; credentials use one regex whose alternatives all start with a
//! literal (so the regex engine skips ahead with a SIMD prefilter) plus a
//! scan of `key = value` assignments.

mod email;
mod ip;
mod numeric;
mod secret;

use std::borrow::Cow;
use std::fmt;

use aios_model::PiiKind;

// === Finding ===

/// One detected span: what it is and where, as a byte range of the text
/// that was scanned (always on `char` boundaries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Finding {
    /// What was found.
    pub kind: PiiKind,
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Finding {
    pub(crate) fn new(kind: PiiKind, start: usize, end: usize) -> Self {
        Self { kind, start, end }
    }

    /// The byte range, for slicing the scanned text.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the span is empty (never true of a detector's output).
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The redaction label of a kind: `EMAIL`, `PHONE`, `CARD_NUMBER`, `SSN`,
/// `IP_ADDRESS` or `SECRET`, as in `[REDACTED:EMAIL]`.
pub fn label(kind: PiiKind) -> &'static str {
    match kind {
        PiiKind::Email => "EMAIL",
        PiiKind::Phone => "PHONE",
        PiiKind::CardNumber => "CARD_NUMBER",
        PiiKind::Ssn => "SSN",
        PiiKind::IpAddress => "IP_ADDRESS",
        PiiKind::Secret => "SECRET",
    }
}

fn index(kind: PiiKind) -> usize {
    match kind {
        PiiKind::Email => 0,
        PiiKind::Phone => 1,
        PiiKind::CardNumber => 2,
        PiiKind::Ssn => 3,
        PiiKind::IpAddress => 4,
        PiiKind::Secret => 5,
    }
}

/// Which of two overlapping findings survives: credentials first (a token
/// may contain digits that look like a phone number), then the kinds with
/// the strictest checks (Luhn, SSN ranges), then the rest.
fn priority(kind: PiiKind) -> u8 {
    match kind {
        PiiKind::Secret => 6,
        PiiKind::CardNumber => 5,
        PiiKind::Ssn => 4,
        PiiKind::Email => 3,
        PiiKind::IpAddress => 2,
        PiiKind::Phone => 1,
    }
}

// === KindSet ===

/// A set of [`PiiKind`]s (a bit set; `Copy`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KindSet(u8);

impl KindSet {
    /// No kind.
    pub const EMPTY: Self = Self(0);
    /// Every kind, [`PiiKind::Secret`] included.
    pub const ALL: Self = Self(0b11_1111);
    /// Every kind of personal data: all but [`PiiKind::Secret`].
    pub const PERSONAL: Self = Self(0b01_1111);

    /// Exactly these kinds.
    pub fn of(kinds: &[PiiKind]) -> Self {
        kinds.iter().fold(Self::EMPTY, |set, &k| set.with(k))
    }

    /// The policy reading of a `pii_kinds` list: these kinds, or `all`
    /// when the list is empty.
    pub fn or_if_empty(kinds: &[PiiKind], all: Self) -> Self {
        if kinds.is_empty() {
            all
        } else {
            Self::of(kinds)
        }
    }

    /// This set plus `kind`.
    #[must_use]
    pub fn with(self, kind: PiiKind) -> Self {
        Self(self.0 | 1 << index(kind))
    }

    /// This set less `kind`.
    #[must_use]
    pub fn without(self, kind: PiiKind) -> Self {
        Self(self.0 & !(1 << index(kind)))
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: PiiKind) -> bool {
        self.0 & (1 << index(kind)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in proto order.
    pub fn iter(self) -> impl Iterator<Item = PiiKind> {
        PiiKind::ALL
            .iter()
            .copied()
            .filter(move |&k| self.contains(k))
    }
}

impl fmt::Debug for KindSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(label)).finish()
    }
}

// === KindCounts ===

/// How many findings of each kind (what a span records instead of the text).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KindCounts([u32; 6]);

impl KindCounts {
    /// Counts the findings by kind.
    pub fn of(findings: &[Finding]) -> Self {
        let mut counts = Self::default();
        counts.add_all(findings);
        counts
    }

    /// Adds one `kind`.
    pub fn add(&mut self, kind: PiiKind) {
        let slot = &mut self.0[index(kind)];
        *slot = slot.saturating_add(1);
    }

    /// Adds every finding's kind.
    pub fn add_all(&mut self, findings: &[Finding]) {
        for f in findings {
            self.add(f.kind);
        }
    }

    /// Adds another count.
    pub fn merge(&mut self, other: &KindCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    /// The count of `kind`.
    pub fn get(&self, kind: PiiKind) -> u32 {
        self.0[index(kind)]
    }

    /// The total over every kind.
    pub fn total(&self) -> u32 {
        self.0.iter().fold(0u32, |a, &b| a.saturating_add(b))
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// The kinds with a non-zero count, in proto order.
    pub fn kinds(&self) -> KindSet {
        self.iter().fold(KindSet::EMPTY, |s, (k, _)| s.with(k))
    }

    /// `(kind, count)` for each kind counted at least once, in proto order.
    pub fn iter(&self) -> impl Iterator<Item = (PiiKind, u32)> + '_ {
        PiiKind::ALL
            .iter()
            .map(|&k| (k, self.get(k)))
            .filter(|&(_, n)| n > 0)
    }
}

impl fmt::Debug for KindCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, n)| (label(k), n)))
            .finish()
    }
}

/// `EMAIL×2, PHONE×1`: a summary that names kinds, never content.
impl fmt::Display for KindCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, n)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}×{n}", label(k))?;
        }
        Ok(())
    }
}

// === detect, redact ===

/// Finds every span of the given kinds in `text`: sorted by position and
/// never overlapping (where two detectors claim overlapping bytes, the
/// stricter kind wins; see the module docs of each detector).
pub fn detect(text: &str, kinds: KindSet) -> Vec<Finding> {
    let mut found = Vec::new();
    if kinds.is_empty() || text.is_empty() {
        return found;
    }
    if kinds.contains(PiiKind::Secret) {
        secret::find(text, &mut found);
    }
    if kinds.contains(PiiKind::Email) {
        email::find(text, &mut found);
    }
    numeric::find(text, kinds, &mut found);
    if kinds.contains(PiiKind::IpAddress) {
        ip::find_v6(text, &mut found);
    }
    resolve_overlaps(found)
}

/// Sorts the findings and drops those overlapping a finding of a higher
/// priority (or, at equal priority, a longer one).
fn resolve_overlaps(mut found: Vec<Finding>) -> Vec<Finding> {
    if found.len() < 2 {
        return found;
    }
    found.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        let mut keep = true;
        while let Some(last) = kept.last() {
            if last.end <= f.start {
                break;
            }
            let (lp, fp) = (priority(last.kind), priority(f.kind));
            if fp > lp || (fp == lp && f.len() > last.len()) {
                kept.pop();
            } else {
                keep = false;
                break;
            }
        }
        if keep {
            kept.push(f);
        }
    }
    kept
}

/// Replaces each finding with `[REDACTED:<KIND>]`. `findings` must be
/// sorted and non-overlapping, as [`detect`] returns them; borrowed when
/// there is nothing to replace.
pub fn redact<'a>(text: &'a str, findings: &[Finding]) -> Cow<'a, str> {
    if findings.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + findings.len() * 16);
    let mut at = 0;
    for f in findings {
        if f.start < at || f.end > text.len() {
            continue;
        }
        out.push_str(&text[at..f.start]);
        out.push_str("[REDACTED:");
        out.push_str(label(f.kind));
        out.push(']');
        at = f.end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// Forces the detectors' patterns to compile; whether all did.
pub(super) fn compiled() -> bool {
    numeric::compiled() && secret::compiled()
}

// === shared helpers ===

/// The byte before `i`, if any.
fn byte_before(text: &str, i: usize) -> Option<u8> {
    i.checked_sub(1).map(|j| text.as_bytes()[j])
}

/// The byte at `i`, if any.
fn byte_at(text: &str, i: usize) -> Option<u8> {
    text.as_bytes().get(i).copied()
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
