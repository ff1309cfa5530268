//! Globs over action names (`ActionRule.action_glob`,
//! `AgentSpec.action_criticality` keys).
//!
//! `*` matches any run of characters (including none and including `.`), `?`
//! exactly one character, and every other character only itself. There is no
//! escaping and there are no classes: action names never contain `*` or `?`.
//! Matching is iterative with single-star backtracking, so it takes at most
//! O(pattern × text) steps, never exponential time.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// One literal character.
    Char(char),
    /// `?`: any one character.
    Any,
    /// `*`: any run of characters. Never two in a row.
    Star,
}

/// A compiled glob. Equality, ordering and hashing follow the pattern text.
#[derive(Clone, Debug)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`. The only invalid pattern is the empty one.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("glob is empty; use `*` to match every action".to_string());
        }
        let mut tokens = Vec::with_capacity(pattern.len());
        for c in pattern.chars() {
            let token = match c {
                '*' => Token::Star,
                '?' => Token::Any,
                c => Token::Char(c),
            };
            // `**` means the same as `*`; keeping one keeps matching linear
            // in the number of stars.
            if !(token == Token::Star && tokens.last() == Some(&Token::Star)) {
                tokens.push(token);
            }
        }
        Ok(Glob {
            pattern: pattern.to_string(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern has no `*` or `?`, i.e. matches one name only.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Char(_)))
    }

    /// Whether the whole of `text` matches the pattern.
    pub fn matches(&self, text: &str) -> bool {
        // Classic wildcard matching: on a mismatch, retry from the most
        // recent star with it swallowing one more character. Earlier stars
        // never need revisiting, which bounds the work.
        let mut p = 0; // next token
        let mut t = 0; // byte offset into text
        let mut resume: Option<(usize, usize)> = None; // (token after star, text offset)
        loop {
            let rest = text.get(t..).unwrap_or_default();
            let advanced = match self.tokens.get(p) {
                Some(Token::Star) => {
                    resume = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                Some(Token::Any) => rest.chars().next().map(char::len_utf8),
                Some(Token::Char(c)) => rest.starts_with(*c).then(|| c.len_utf8()),
                None if rest.is_empty() => return true,
                None => None,
            };
            if let Some(len) = advanced {
                p += 1;
                t += len;
                continue;
            }
            let Some((star_p, star_t)) = resume else {
                return false;
            };
            let Some(c) = text.get(star_t..).and_then(|r| r.chars().next()) else {
                return false;
            };
            let next_t = star_t + c.len_utf8();
            resume = Some((star_p, next_t));
            p = star_p;
            t = next_t;
        }
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for Glob {}

impl Hash for Glob {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pattern.hash(state);
    }
}

impl PartialOrd for Glob {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Glob {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.pattern.cmp(&other.pattern)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl FromStr for Glob {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Glob::new(s)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn check(pattern: &str, yes: &[&str], no: &[&str]) {
        let glob = Glob::new(pattern).unwrap();
        for text in yes {
            assert!(glob.matches(text), "{pattern:?} should match {text:?}");
        }
        for text in no {
            assert!(!glob.matches(text), "{pattern:?} should not match {text:?}");
        }
    }

    #[test]
    fn empty_pattern_is_rejected() {
        assert!(Glob::new("").is_err());
    }

    #[test]
    fn star_alone_matches_everything() {
        check("*", &["", "a", "payments.refund", "*", "日本"], &[]);
    }

    #[test]
    fn literal_matches_only_itself() {
        check(
            "payments.refund",
            &["payments.refund"],
            &["payments.refunds", "payments_refund", "Payments.refund", ""],
        );
        assert!(Glob::new("payments.refund").unwrap().is_literal());
        assert!(!Glob::new("payments.*").unwrap().is_literal());
    }

    #[test]
    fn prefix_and_suffix_stars() {
        check(
            "payments.*",
            &["payments.", "payments.refund", "payments.a.b"],
            &["payments", "payment.refund", "xpayments.refund"],
        );
        check(
            "*.delete",
            &[".delete", "db.delete", "a.b.delete"],
            &["db.deleted", "delete"],
        );
    }

    #[test]
    fn several_stars_in_order() {
        check(
            "a*b*c",
            &["abc", "aXbYc", "abbc", "aXXbYYbZZc", "acbc"],
            &["ab", "acb", "bac", "abcx", "xabc"],
        );
    }

    #[test]
    fn question_mark_is_exactly_one_char() {
        check("?", &["a", "?", "é", "日"], &["", "ab"]);
        check("a?c", &["abc", "a.c", "aéc"], &["ac", "abbc"]);
        check("??*", &["ab", "abc"], &["a", ""]);
    }

    #[test]
    fn double_star_is_a_single_star() {
        check("a**", &["a", "ab", "a.b.c"], &["", "ba"]);
        check("**", &["", "x"], &[]);
        assert_eq!(
            Glob::new("a**").unwrap().tokens,
            Glob::new("a*").unwrap().tokens
        );
    }

    #[test]
    fn no_escaping_backslash_is_literal() {
        check(r"a\*", &[r"a\", r"a\bc"], &["a*x", "a"]);
        check(r"\?", &[r"\x"], &["?", "x"]);
        check("[ab]", &["[ab]"], &["a", "b"]);
    }

    #[test]
    fn pathological_patterns_finish_fast() {
        let text = "a".repeat(100_000);
        let start = Instant::now();
        assert!(!Glob::new("a*a*a*a*b").unwrap().matches(&text));
        assert!(!Glob::new("*a*a*a*a*a*a*a*a*b").unwrap().matches(&text));
        assert!(Glob::new("a*a*a*a*a").unwrap().matches(&text));
        // Exponential backtracking would take ages; linear-ish takes ms.
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn equality_and_display_follow_the_pattern() {
        let a = Glob::new("x.*").unwrap();
        assert_eq!(a, "x.*".parse::<Glob>().unwrap());
        assert_ne!(a, Glob::new("x.**").unwrap());
        assert_eq!(a.to_string(), "x.*");
        assert_eq!(a.as_str(), "x.*");
    }
}
