//! E-mail addresses: from each `@`, the local part to the left and a dotted
//! domain to the right whose last label is a plausible top-level domain.
//!
//! Not matched on purpose: `user@localhost` (no dot), package and version
//! specs (`lodash@4.17.21`: the last label is not alphabetic), image names
//! (`icon@2x.png`), and the `user:password@host` part of a URL (that is a
//! credential, found by the secret detector). Addresses whose local part
//! has non-ASCII letters are not matched.

use aios_model::PiiKind;

use super::{Finding, byte_at, byte_before, is_word_byte};

/// Longest local part (RFC 5321).
const MAX_LOCAL: usize = 64;
/// Longest domain (RFC 1035).
const MAX_DOMAIN: usize = 253;
/// How far back a URL's `scheme://user:` is looked for.
const MAX_USERINFO: usize = 256;

/// File extensions that look like a top-level domain after `@2x`-style
/// image names; none is a real TLD.
const NOT_TLDS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tiff",
];

pub(super) fn find(text: &str, out: &mut Vec<Finding>) {
    let bytes = text.as_bytes();
    let mut resume = 0;
    for at in memchr::memchr_iter(b'@', bytes) {
        if at < resume {
            continue;
        }
        if let Some((start, end)) = address_around(text, at) {
            out.push(Finding::new(PiiKind::Email, start, end));
            resume = end;
        }
    }
}

fn is_local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn address_around(text: &str, at: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    // Local part, leftwards.
    let mut start = at;
    while start > 0 && at - start < MAX_LOCAL + 8 && is_local_byte(bytes[start - 1]) {
        start -= 1;
    }
    if start > 0 && is_local_byte(bytes[start - 1]) {
        return None; // longer than any real local part
    }
    while start < at && matches!(bytes[start], b'.' | b'-' | b'+') {
        start += 1;
    }
    let local = &bytes[start..at];
    if local.is_empty() || local.len() > MAX_LOCAL || local.ends_with(b".") {
        return None;
    }
    // A letter glued on the left (non-ASCII) means we only see part of it.
    if byte_before(text, start).is_some_and(|b| b >= 0x80 || is_word_byte(b)) {
        return None;
    }
    if in_url_userinfo(bytes, start) {
        return None;
    }
    let end = domain_end(bytes, at + 1)?;
    if byte_at(text, end).is_some_and(|b| b == b'@' || b >= 0x80 || is_word_byte(b)) {
        return None;
    }
    Some((start, end))
}

/// Whether the local part starting at `start` is the `user:pass@` of a URL
/// (looking back at most [`MAX_USERINFO`] bytes, so a long run of `@`s
/// costs linear time).
fn in_url_userinfo(bytes: &[u8], start: usize) -> bool {
    let window = &bytes[start.saturating_sub(MAX_USERINFO)..start];
    let token = window
        .iter()
        .rposition(|b| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'<' | b'('))
        .map_or(window, |i| &window[i + 1..]);
    memchr::memmem::find(token, b"://").is_some()
}

/// The end of a dotted domain starting at `from`, if it is one.
fn domain_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    let mut labels = 0usize;
    let mut last_label = (from, from);
    loop {
        if i - from > MAX_DOMAIN {
            return None;
        }
        let label_start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-') {
            i += 1;
        }
        if i == label_start
            || bytes[label_start] == b'-'
            || bytes[i - 1] == b'-'
            || i - label_start > 63
        {
            // An empty label or one that starts or ends with '-': the
            // domain ends at the previous dot.
            if labels == 0 {
                return None;
            }
            break;
        }
        labels += 1;
        last_label = (label_start, i);
        // Continue over a dot only when a label follows it.
        if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_alphanumeric() {
            i += 1;
        } else {
            break;
        }
    }
    let end = last_label.1;
    if labels < 2 || end - from > MAX_DOMAIN {
        return None;
    }
    let tld = &bytes[last_label.0..last_label.1];
    let plausible_tld = (2..=24).contains(&tld.len())
        && tld.iter().all(u8::is_ascii_alphabetic)
        && !NOT_TLDS
            .iter()
            .any(|x| x.as_bytes().eq_ignore_ascii_case(tld));
    plausible_tld.then_some(end)
}
