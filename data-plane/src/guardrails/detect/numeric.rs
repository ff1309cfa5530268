//! The digit-shaped kinds: payment card numbers, US social security
//! numbers, phone numbers and IPv4 addresses.
//!
//! One scan finds "numeric islands": runs of digits joined by short
//! separators (` `, `-`, `.`, `(`, `)`), with a leading `+` or `(`. Islands
//! too short for any kind (most numbers in prose) are dropped at once; the
//! rest go to small anchored checks, so the text is walked once for all four
//! kinds. Every match must stand alone: no letter or digit glued to either
//! end (`ORD-555-123-4567`, `v1.2.3.4` and `555-123-4567-89` are not
//! matched).
//!
//! * **Card numbers**: 13–19 digits, optionally in groups of 3–6 separated
//!   by spaces or dashes; the Luhn check must pass and the prefix must
//!   belong to an issuer that issues that length (Visa, Mastercard, Amex,
//!   Discover, Diners, JCB, UnionPay, Maestro).
//! * **SSNs**: `AAA-GG-SSSS` (dashes or spaces) outside the ranges never
//!   assigned (area 000, 666, 900–999; group 00; serial 0000); nine bare
//!   digits only right after "SSN" or "social security".
//! * **Phone numbers**: `+` and a country code with 8–15 digits in all;
//!   North American `(555) 123-4567`, `555-123-4567`, `555.123.4567` and
//!   `1-555-…` (area code 2–9; not three space-separated groups, which is
//!   how lists of numbers look); national numbers with a trunk `0` in
//!   groups (`020 7946 0958`, `01 23 45 67 89`) of 10–11 digits. Bare digit
//!   strings without `+` are never phone numbers.
//! * **IPv4**: four dotted decimal octets ≤ 255 without leading zeros, not
//!   right after "version"/"build"/"release".

use std::sync::LazyLock;

use aios_model::PiiKind;
use regex::Regex;

use super::{Finding, KindSet, byte_at, byte_before, is_word_byte};

/// Compiles a pattern written in this file; a typo fails the unit tests
/// (the match then finds nothing rather than aborting a request).
fn compile(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

static SSN: LazyLock<Option<Regex>> =
    LazyLock::new(|| compile(r"[0-9]{3}([- ])[0-9]{2}([- ])[0-9]{4}"));
static CARD: LazyLock<Option<Regex>> = LazyLock::new(|| compile(r"[0-9](?:[ -]?[0-9]){11,}"));
static NANP: LazyLock<Option<Regex>> = LazyLock::new(|| {
    compile(r"(?:1[ .-]?)?(?:\(([2-9][0-9]{2})\) ?|([2-9][0-9]{2})([ .-]))[0-9]{3}([ .-])[0-9]{4}")
});
static TRUNK: LazyLock<Option<Regex>> =
    LazyLock::new(|| compile(r"0[0-9]{1,4}(?:[ -][0-9]{2,8}){1,4}"));
static IPV4: LazyLock<Option<Regex>> =
    LazyLock::new(|| compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"));

/// Forces compilation (so the first request does not pay for it) and says
/// whether every pattern compiled.
pub(super) fn compiled() -> bool {
    [&SSN, &CARD, &NANP, &TRUNK, &IPV4]
        .iter()
        .all(|r| r.is_some())
}

pub(super) fn find(text: &str, kinds: KindSet, out: &mut Vec<Finding>) {
    let want_card = kinds.contains(PiiKind::CardNumber);
    let want_ssn = kinds.contains(PiiKind::Ssn);
    let want_phone = kinds.contains(PiiKind::Phone);
    let want_ip = kinds.contains(PiiKind::IpAddress);
    if !(want_card || want_ssn || want_phone || want_ip) {
        return;
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(island) = next_island(bytes, i) {
        i = island.end;
        let slice = &text[island.start..island.end];
        if want_ip && island.dots >= 3 {
            ipv4(text, island.start, slice, out);
        }
        if want_ssn && island.digits >= 9 {
            ssn(text, island.start, slice, island.digits, out);
        }
        if want_card && island.digits >= 13 {
            cards(text, island.start, slice, out);
        }
        if want_phone && island.digits >= 8 {
            phones(text, island.start, slice, out);
        }
    }
}

// === islands ===

struct Island {
    start: usize,
    end: usize,
    digits: usize,
    dots: usize,
}

fn is_joiner(b: u8) -> bool {
    matches!(b, b' ' | b'-' | b'.' | b'(' | b')')
}

/// Where the first ASCII digit of `bytes` is. Most text has few digits:
/// blocks of 16 bytes are tested whole (a test without an early exit, which
/// the compiler turns into vector instructions), then the block that has
/// one is searched byte by byte.
pub(super) fn first_digit(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 16;
    let mut at = 0;
    for block in bytes.chunks_exact(BLOCK) {
        if block.iter().fold(false, |any, b| any | b.is_ascii_digit()) {
            break;
        }
        at += BLOCK;
    }
    bytes[at..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|i| at + i)
}

/// The next run of digits and short separators at or after `from`.
fn next_island(bytes: &[u8], from: usize) -> Option<Island> {
    let first = from + first_digit(bytes.get(from..)?)?;
    let mut start = first;
    if start > 0 && bytes[start - 1] == b'(' {
        start -= 1;
    }
    if start > 0 && bytes[start - 1] == b'+' {
        start -= 1;
    }
    let (mut digits, mut dots) = (0, 0);
    let mut i = first;
    let mut end = first;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_digit() {
            digits += 1;
            i += 1;
            end = i;
            continue;
        }
        // A separator run of at most three bytes joins two digit groups.
        let mut j = i;
        while j < bytes.len() && j - i < 3 && is_joiner(bytes[j]) {
            j += 1;
        }
        if j == i || !bytes.get(j).is_some_and(u8::is_ascii_digit) {
            break;
        }
        dots += bytes[i..j].iter().filter(|&&b| b == b'.').count();
        i = j;
    }
    // A closing parenthesis right after the last digit belongs to it only
    // in `(555)`-style groups, which never end an island.
    Some(Island {
        start,
        end,
        digits,
        dots,
    })
}

/// Whether `[start, end)` stands alone: no word byte glued to either end,
/// and no separator that continues into more digits or a word
/// (`ORD-555-…`, `1-555-…-89`).
fn isolated(text: &str, start: usize, end: usize) -> bool {
    isolated_before(text, start) && isolated_after(text, end)
}

fn isolated_before(text: &str, start: usize) -> bool {
    match byte_before(text, start) {
        None => true,
        Some(b) if is_word_byte(b) => false,
        Some(b'-' | b'.' | b'/' | b'+') => !start
            .checked_sub(2)
            .and_then(|j| byte_at(text, j))
            .is_some_and(|c| c.is_ascii_alphanumeric()),
        Some(_) => true,
    }
}

fn isolated_after(text: &str, end: usize) -> bool {
    match byte_at(text, end) {
        None => true,
        Some(b) if is_word_byte(b) => false,
        Some(b'-' | b'.' | b'/') => {
            !byte_at(text, end + 1).is_some_and(|c| c.is_ascii_alphanumeric())
        }
        Some(_) => true,
    }
}

fn digit_count(s: &str) -> usize {
    s.bytes().filter(u8::is_ascii_digit).count()
}

/// The (up to) `n` bytes before `i`, lowercased, for keyword context.
fn context_before(text: &str, i: usize, n: usize) -> String {
    let from = i.saturating_sub(n);
    text.as_bytes()[from..i]
        .iter()
        .map(|b| b.to_ascii_lowercase() as char)
        .collect()
}

// === SSN ===

fn ssn(text: &str, base: usize, slice: &str, digits: usize, out: &mut Vec<Finding>) {
    if let Some(re) = SSN.as_ref() {
        for caps in re.captures_iter(slice) {
            let (Some(m), Some(s1), Some(s2)) = (caps.get(0), caps.get(1), caps.get(2)) else {
                continue;
            };
            let d = m.as_str().as_bytes();
            let area = &d[0..3];
            let group = &d[4..6];
            let serial = &d[7..11];
            if s1.as_str() == s2.as_str()
                && valid_ssn(area, group, serial)
                && isolated(text, base + m.start(), base + m.end())
            {
                out.push(Finding::new(PiiKind::Ssn, base + m.start(), base + m.end()));
            }
        }
    }
    // Nine bare digits count only with the words before them.
    if digits == 9 && slice.len() == 9 && slice.bytes().all(|b| b.is_ascii_digit()) {
        let d = slice.as_bytes();
        let ctx = context_before(text, base, 24);
        if (ctx.contains("ssn") || ctx.contains("social security"))
            && valid_ssn(&d[0..3], &d[3..5], &d[5..9])
            && isolated(text, base, base + 9)
        {
            out.push(Finding::new(PiiKind::Ssn, base, base + 9));
        }
    }
}

fn valid_ssn(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    area != b"000" && area != b"666" && area[0] != b'9' && group != b"00" && serial != b"0000"
}

// === card numbers ===

fn cards(text: &str, base: usize, slice: &str, out: &mut Vec<Finding>) {
    let Some(re) = CARD.as_ref() else { return };
    for m in re.find_iter(slice) {
        let at = base + m.start();
        for (s, e) in card_spans(m.as_str()) {
            if isolated(text, at + s, at + e) {
                out.push(Finding::new(PiiKind::CardNumber, at + s, at + e));
            }
        }
    }
}

/// A digit group of a candidate: byte range and digit count.
#[derive(Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
}

impl Group {
    fn len(self) -> usize {
        self.end - self.start
    }
}

/// Plausible card numbers inside `candidate` (digit groups with single
/// separators): from each group, the longest run of whole groups that
/// passes, then on after it.
fn card_spans(candidate: &str) -> Vec<(usize, usize)> {
    let bytes = candidate.as_bytes();
    let mut groups: Vec<Group> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            groups.push(Group { start, end: i });
        } else {
            i += 1;
        }
    }
    let mut spans = Vec::new();
    let mut first = 0;
    'from: while first < groups.len() {
        // At most seven groups make a card number (19 digits in groups of
        // at least 3, one ungrouped run aside): this bounds the work.
        for last in (first..groups.len().min(first + 7)).rev() {
            let run = &groups[first..=last];
            let n: usize = run.iter().map(|g| g.len()).sum();
            if !(13..=19).contains(&n) || !card_grouping(run) {
                continue;
            }
            let digits: Vec<u8> = run
                .iter()
                .flat_map(|g| bytes[g.start..g.end].iter().map(|b| b - b'0'))
                .collect();
            if luhn(&digits) && issuer_plausible(&digits) {
                spans.push((run[0].start, run[run.len() - 1].end));
                first = last + 1;
                continue 'from;
            }
        }
        first += 1;
    }
    spans
}

/// One unbroken number, or groups of 3–6 digits with a first group of
/// 4–6 (4-4-4-4, 4-6-5, 4-4-4-4-3).
fn card_grouping(run: &[Group]) -> bool {
    match run {
        [_] => true,
        [head, rest @ ..] => {
            (4..=6).contains(&head.len()) && rest.iter().all(|g| (3..=6).contains(&g.len()))
        }
        [] => false,
    }
}

/// The Luhn checksum over digit values (0–9).
pub(super) fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether the leading digits name an issuer that issues cards of this
/// length.
fn issuer_plausible(d: &[u8]) -> bool {
    let n = d.len();
    let prefix = |k: usize| d.iter().take(k).fold(0u32, |a, &x| a * 10 + u32::from(x));
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    match p1 {
        // Visa.
        4 => matches!(n, 13 | 16 | 19),
        // Mastercard 2-series.
        2 => (2221..=2720).contains(&p4) && n == 16,
        // Amex, Diners, JCB.
        3 => {
            (matches!(p2, 34 | 37) && n == 15)
                || (((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39))
                    && (14..=19).contains(&n))
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&n))
        }
        // Mastercard; Maestro (50, 56–59).
        5 => ((51..=55).contains(&p2) && n == 16) || (matches!(p2, 50 | 56..=59) && n >= 13),
        // Discover, UnionPay, Maestro (6x).
        6 => n >= 13,
        _ => false,
    }
}

// === phone numbers ===

fn phones(text: &str, base: usize, slice: &str, out: &mut Vec<Finding>) {
    if slice.starts_with('+') {
        if let Some(end) = international_end(slice)
            && isolated(text, base, base + end)
        {
            out.push(Finding::new(PiiKind::Phone, base, base + end));
        }
        return;
    }
    if let Some(re) = NANP.as_ref() {
        for caps in re.captures_iter(slice) {
            let Some(m) = caps.get(0) else { continue };
            let spaced = caps.get(3).is_some_and(|s| s.as_str() == " ")
                && caps.get(4).is_some_and(|s| s.as_str() == " ");
            let (s, e) = (base + m.start(), base + m.end());
            if !spaced && isolated(text, s, e) {
                out.push(Finding::new(PiiKind::Phone, s, e));
            }
        }
    }
    if let Some(re) = TRUNK.as_ref() {
        for m in re.find_iter(slice) {
            let s = m.as_str();
            let n = digit_count(s);
            let one_sep = !(s.contains(' ') && s.contains('-'));
            let (start, end) = (base + m.start(), base + m.end());
            if (10..=11).contains(&n) && one_sep && isolated(text, start, end) {
                out.push(Finding::new(PiiKind::Phone, start, end));
            }
        }
    }
}

/// The end of an international number at the start of `slice` (`+` then
/// digit groups), if it has 8–15 digits.
fn international_end(slice: &str) -> Option<usize> {
    let bytes = slice.as_bytes();
    if bytes
        .get(1)
        .is_none_or(|b| !b.is_ascii_digit() || *b == b'0')
    {
        return None;
    }
    let (mut digits, mut end, mut group) = (0usize, 0usize, 0usize);
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_digit() {
            if group == 0 && digits + count_group(&bytes[i..]) > 15 {
                // The next group would make it too long: stop at a space,
                // give up at any other separator (an id, not a number).
                if bytes[end..i].iter().all(|&c| c == b' ') {
                    break;
                }
                return None;
            }
            digits += 1;
            group += 1;
            end = i + 1;
        } else {
            if group > 8 && digits > group {
                return None; // a long run after a country code: not a number
            }
            group = 0;
        }
        i += 1;
    }
    (8..=15).contains(&digits).then_some(end)
}

fn count_group(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

// === IPv4 ===

fn ipv4(text: &str, base: usize, slice: &str, out: &mut Vec<Finding>) {
    let Some(re) = IPV4.as_ref() else { return };
    for m in re.find_iter(slice) {
        let (s, e) = (base + m.start(), base + m.end());
        // A CIDR suffix (`/8`) may follow.
        let after_ok = byte_at(text, e) == Some(b'/') || isolated_after(text, e);
        if !m.as_str().split('.').all(valid_octet) || !isolated_before(text, s) || !after_ok {
            continue;
        }
        let ctx = context_before(text, s, 10);
        let ctx = ctx.trim_end();
        if ["version", "ver", "build", "release", "firmware"]
            .iter()
            .any(|w| ctx.ends_with(w))
        {
            continue;
        }
        out.push(Finding::new(PiiKind::IpAddress, s, e));
    }
}

fn valid_octet(o: &str) -> bool {
    !(o.len() > 1 && o.starts_with('0')) && o.parse::<u16>().is_ok_and(|v| v <= 255)
}
