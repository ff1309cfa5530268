//! Credentials.
//!
//! 1. **Well-known formats**, one regex whose alternatives all begin with a
//!    literal (`AKIA`, `ghp_`, `github_pat_`, `xoxb-`, `sk-ant-`, `sk-`,
//!    `AIza`, `sk_live_`, `eyJ`, `-----BEGIN`, `Bearer`, `Basic`, `aios_`),
//!    so the regex engine jumps between candidates with a SIMD literal
//!    search and the text is not walked byte by byte. Each candidate is then
//!    checked: no word character glued on the left, fixed-length formats end
//!    where the format ends, free-form bodies (`sk-…`, bearer tokens) mix
//!    letters and digits, `Basic` credentials decode to `user:password`.
//! 2. **Assignments**: at each `=` or `:`, a key that names a credential
//!    (`password`, `passwd`, `pwd`, `secret`, `api_key`, `apiKey`, `token`,
//!    `client_secret`, `private_key`, …, also as the tail of a longer key
//!    such as `DB_PASSWORD`) followed by a value that is not a placeholder
//!    (`${VAR}`, `<password>`, `changeme`, `****`, a function call) and
//!    looks random enough: two classes of character and, for keys other
//!    than passwords, at least 12 characters and 3 bits of entropy per
//!    character. Only the value is reported, so redaction keeps the key.
//! 3. **URL credentials**: the password of `scheme://user:password@host`.

use std::sync::LazyLock;

use aios_model::PiiKind;
use base64::Engine as _;
use regex::Regex;

use super::{Finding, byte_at, byte_before, is_word_byte};

/// The well-known formats, each beginning with a literal.
const FORMATS: &[&str] = &[
    // AWS access key ids (long-term and temporary).
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",
    // GitHub personal, OAuth, user-to-server, server-to-server, refresh.
    r"gh[pousr]_[A-Za-z0-9]{36,255}",
    r"github_pat_[A-Za-z0-9_]{60,255}",
    // Slack.
    r"xox[baprs]-[A-Za-z0-9-]{10,250}",
    // Anthropic, then OpenAI (project, service-account and legacy keys).
    r"sk-ant-[A-Za-z0-9_-]{20,300}",
    r"sk-[A-Za-z0-9_-]{20,300}",
    // Google API keys.
    r"AIza[0-9A-Za-z_-]{35}",
    // Stripe secret and restricted keys.
    r"[sr]k_(?:live|test)_[0-9A-Za-z]{16,247}",
    // JSON Web Tokens (header and payload are base64url JSON objects).
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
    // PEM private keys; the body may be JSON-escaped (`\n`); a key cut off
    // before its END line is matched up to where the base64 stops.
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:[A-Za-z0-9+/=\s]|\\[nr])*(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)?",
    // HTTP authorization credentials.
    r"(?:Bearer|bearer|BEARER) +[A-Za-z0-9._~+/-]{16,}=*",
    r"(?:Basic|basic|BASIC) +[A-Za-z0-9+/]{8,}={0,2}",
    // aios API keys: `aios_` and 43 characters of URL-safe base64.
    r"aios_[A-Za-z0-9_-]{43}",
];

static FORMAT: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(&FORMATS.join("|")).ok());

/// Forces compilation and says whether the pattern compiled.
pub(super) fn compiled() -> bool {
    FORMAT.is_some()
}

pub(super) fn find(text: &str, out: &mut Vec<Finding>) {
    if let Some(re) = FORMAT.as_ref() {
        for m in re.find_iter(text) {
            if !byte_before(text, m.start()).is_some_and(is_word_byte) && format_ok(text, m) {
                out.push(Finding::new(PiiKind::Secret, m.start(), m.end()));
            }
        }
    }
    assignments(text, out);
    url_credentials(text, out);
}

/// The per-format checks a regex cannot express.
fn format_ok(text: &str, m: regex::Match<'_>) -> bool {
    let s = m.as_str();
    let glued_after = byte_at(text, m.end()).is_some_and(|b| is_word_byte(b) || b == b'-');
    if s.starts_with("AKIA") || s.starts_with("ASIA") || s.starts_with("AIza") {
        return !glued_after;
    }
    if s.starts_with("aios_") {
        return !glued_after;
    }
    if let Some(body) = s.strip_prefix("sk-") {
        return mixed(body);
    }
    if let Some(rest) = s
        .split_once(' ')
        .map(|(scheme, rest)| (scheme, rest.trim_start()))
    {
        let (scheme, token) = rest;
        if scheme.eq_ignore_ascii_case("bearer") {
            return mixed(token) && !glued_after;
        }
        if scheme.eq_ignore_ascii_case("basic") {
            return basic_credentials(token) && !glued_after;
        }
    }
    true
}

/// Letters and digits both: random tokens have both; words and
/// hyphenated phrases (`sk-learn-…`) rarely do.
fn mixed(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit()) && s.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `Basic` credentials are base64 of `user:password`.
fn basic_credentials(token: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .is_some_and(|s| s.contains(':') && s.len() >= 3 && s.chars().all(|c| !c.is_control()))
}

// === key = value ===

/// Key endings that name a credential, matched on the lowercased key with
/// `-` and `.` read as `_` (so `authToken`, `DB_PASSWORD` and `apiKey` all
/// count; `max_tokens` does not end in `token`). `strict` ones must be the
/// whole key or follow a `_` (so `cwd` is not `pwd`).
const KEYS: &[(&str, bool)] = &[
    ("password", false),
    ("passwd", false),
    ("passphrase", false),
    ("pwd", true),
    ("secret", false),
    ("secret_key", false),
    ("apikey", false),
    ("api_key", false),
    ("access_key", false),
    ("private_key", false),
    ("token", false),
    ("credential", true),
    ("credentials", true),
];

/// Values that are obviously not a real credential.
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change_me",
    "password",
    "passwd",
    "secret",
    "your_",
    "your-",
    "yourpassword",
    "xxx",
    "***",
    "...",
    "example",
    "placeholder",
    "redacted",
    "hidden",
    "null",
    "none",
    "nil",
    "undefined",
    "true",
    "false",
    "required",
    "optional",
    "string",
    "todo",
    "process.env",
    "os.environ",
    "getenv",
    "<",
    "$",
    "{",
    "[",
    "%(",
];

fn assignments(text: &str, out: &mut Vec<Finding>) {
    let bytes = text.as_bytes();
    for at in memchr::memchr2_iter(b'=', b':', bytes) {
        let Some(is_password) = credential_key_before(bytes, at) else {
            continue;
        };
        // `==` is a comparison; `:=`/`=>` assignments are fine.
        if bytes.get(at + 1) == Some(&b'=') {
            continue;
        }
        if let Some((s, e)) = value_after(bytes, at + 1)
            && plausible_secret(&text[s..e], is_password)
            && bytes.get(e) != Some(&b'(')
        {
            out.push(Finding::new(PiiKind::Secret, s, e));
        }
    }
}

/// Whether the key right before `at` names a credential; `Some(true)` for
/// password-like keys (humans choose those, so they need less entropy).
fn credential_key_before(bytes: &[u8], at: usize) -> Option<bool> {
    let mut end = at;
    while end > 0 && bytes[end - 1] == b' ' && at - end < 3 {
        end -= 1;
    }
    if end > 0 && matches!(bytes[end - 1], b'"' | b'\'') {
        end -= 1;
    }
    let mut start = end;
    while start > 0
        && end - start < 64
        && (bytes[start - 1].is_ascii_alphanumeric()
            || matches!(bytes[start - 1], b'_' | b'-' | b'.'))
    {
        start -= 1;
    }
    if start == end {
        return None;
    }
    let key: Vec<u8> = bytes[start..end]
        .iter()
        .map(|&b| match b {
            b'-' | b'.' => b'_',
            b => b.to_ascii_lowercase(),
        })
        .collect();
    KEYS.iter().find_map(|&(k, strict)| {
        let k = k.as_bytes();
        let hit = key.ends_with(k)
            && (!strict || key.len() == k.len() || key[key.len() - k.len() - 1] == b'_');
        hit.then_some(k.starts_with(b"pass") || k == b"pwd")
    })
}

/// The value starting after `from` (spaces and an opening quote skipped):
/// up to the closing quote, or to whitespace or punctuation that ends a
/// value in code, JSON, YAML, URLs and env files.
fn value_after(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut s = from;
    while s < bytes.len() && bytes[s] == b' ' && s - from < 3 {
        s += 1;
    }
    let quote = bytes
        .get(s)
        .copied()
        .filter(|b| matches!(b, b'"' | b'\'' | b'`'));
    if quote.is_some() {
        s += 1;
    }
    let mut e = s;
    while e < bytes.len() && e - s <= 256 {
        let b = bytes[e];
        let stop = match quote {
            Some(q) => b == q || b == b'\n' || b == b'\\',
            None => {
                b.is_ascii_whitespace()
                    || matches!(
                        b,
                        b',' | b';'
                            | b')'
                            | b'('
                            | b'}'
                            | b']'
                            | b'&'
                            | b'"'
                            | b'\''
                            | b'`'
                            | b'<'
                            | b'>'
                    )
            }
        };
        if stop {
            break;
        }
        e += 1;
    }
    // A sentence's full stop is not part of the value.
    while e > s && matches!(bytes[e - 1], b'.' | b':' | b'!' | b'?') && quote.is_none() {
        e -= 1;
    }
    (e > s && e - s <= 256).then_some((s, e))
}

fn plausible_secret(value: &str, is_password: bool) -> bool {
    let lower = value.to_ascii_lowercase();
    if PLACEHOLDERS
        .iter()
        .any(|p| lower.starts_with(p) || lower == p.trim_end_matches('_'))
        || lower.bytes().all(|b| b == lower.as_bytes()[0])
        || lower.contains("***")
        || lower.contains("xxxx")
    {
        return false;
    }
    let classes = [
        value.bytes().any(|b| b.is_ascii_lowercase()),
        value.bytes().any(|b| b.is_ascii_uppercase()),
        value.bytes().any(|b| b.is_ascii_digit()),
        value.bytes().any(|b| !b.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|&&c| c)
    .count();
    if is_password {
        value.len() >= 6 && (classes >= 2 || value.len() >= 16)
    } else {
        value.len() >= 12 && classes >= 2 && entropy_bits(value) >= 3.0
    }
}

/// Shannon entropy in bits per byte.
fn entropy_bits(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

// === scheme://user:password@host ===

fn url_credentials(text: &str, out: &mut Vec<Finding>) {
    let bytes = text.as_bytes();
    for at in memchr::memmem::find_iter(bytes, b"://") {
        let auth_start = at + 3;
        let auth_end = bytes[auth_start..]
            .iter()
            .position(|&b| {
                b.is_ascii_whitespace()
                    || matches!(b, b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>')
            })
            .map_or(bytes.len(), |i| auth_start + i);
        let authority = &bytes[auth_start..auth_end];
        let Some(at_sign) = authority.iter().rposition(|&b| b == b'@') else {
            continue;
        };
        let Some(colon) = authority[..at_sign].iter().position(|&b| b == b':') else {
            continue;
        };
        let (s, e) = (auth_start + colon + 1, auth_start + at_sign);
        let password = &text[s..e];
        let lower = password.to_ascii_lowercase();
        let placeholder = password.is_empty()
            || password.starts_with('$')
            || password.starts_with('<')
            || password.starts_with('{')
            || password.bytes().all(|b| b == b'*' || b == b'x')
            || matches!(lower.as_str(), "password" | "pass" | "secret" | "pwd");
        if !placeholder {
            out.push(Finding::new(PiiKind::Secret, s, e));
        }
    }
}
