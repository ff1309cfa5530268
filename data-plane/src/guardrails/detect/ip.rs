//! IPv6 addresses (IPv4 is a numeric kind, in `numeric.rs`).
//!
//! From each `:` next to a hex digit, the run of hex digits, colons and dots
//! around it is parsed with the standard library's strict parser, so every
//! accepted form is a real address (`2001:db8::1`, `::1`,
//! `::ffff:192.0.2.1`, full eight-group forms). Times (`12:30:45`), MAC
//! addresses (six groups) and Rust or C++ paths (`std::io`, glued to
//! letters) do not parse or are not standalone. Zone ids (`fe80::1%eth0`)
//! are matched without the zone.

use std::net::Ipv6Addr;

use aios_model::PiiKind;

use super::{Finding, byte_at, byte_before, is_word_byte};

fn is_v6_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

pub(super) fn find_v6(text: &str, out: &mut Vec<Finding>) {
    let bytes = text.as_bytes();
    let mut resume = 0;
    for colon in memchr::memchr_iter(b':', bytes) {
        if colon < resume {
            continue;
        }
        let near = |i: Option<usize>| {
            i.and_then(|i| bytes.get(i))
                .is_some_and(|&b| b.is_ascii_hexdigit() || b == b':')
        };
        if !near(colon.checked_sub(1)) && !near(Some(colon + 1)) {
            continue;
        }
        let mut start = colon;
        while start > 0 && is_v6_byte(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = colon + 1;
        while end < bytes.len() && is_v6_byte(bytes[end]) {
            end += 1;
        }
        resume = end;
        // Sentence punctuation after an address: "… at fe80::1." or "::1:".
        while end > start && bytes[end - 1] == b'.' {
            end -= 1;
        }
        if end - start >= 2 && bytes[end - 1] == b':' && bytes[end - 2] != b':' {
            end -= 1;
        }
        while start < end && bytes[start] == b'.' {
            start += 1;
        }
        if is_address(text, start, end) {
            out.push(Finding::new(PiiKind::IpAddress, start, end));
        }
    }
}

fn is_address(text: &str, start: usize, end: usize) -> bool {
    let candidate = &text[start..end];
    let colons = candidate.bytes().filter(|&b| b == b':').count();
    // The longest textual IPv6 address is 45 bytes.
    candidate.len() <= 45
        && colons >= 2
        && candidate.bytes().any(|b| b.is_ascii_hexdigit())
        && !byte_before(text, start).is_some_and(is_word_byte)
        && !byte_at(text, end).is_some_and(is_word_byte)
        && candidate.parse::<Ipv6Addr>().is_ok()
}
