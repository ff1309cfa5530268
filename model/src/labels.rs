//! Resource labels and equality-based label selectors.
//!
//! The contract fixes only lengths (keys up to 63 bytes, values up to 255,
//! at most 64 labels). For the character set we take Kubernetes' (the
//! selector syntax `k=v,k!=v,k,!k` is Kubernetes', and the data plane's
//! `--label` already follows it), so any label can be written in a selector:
//!
//! - key: `[prefix/]name`; `name` is alphanumerics, `-`, `_`, `.`, starting
//!   and ending alphanumeric; `prefix` is lowercase alphanumerics, `-`, `.`,
//!   starting and ending alphanumeric. Resource label keys are at most 63
//!   bytes in all; selector keys follow Kubernetes' limits (prefix up to 253,
//!   name up to 63) so they can also select node labels.
//! - value: empty, or alphanumerics, `-`, `_`, `.`, starting and ending
//!   alphanumeric; at most 255 bytes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;

use crate::FieldViolation;

/// Longest resource label key, in bytes.
pub const MAX_KEY_LEN: usize = 63;
/// Longest label value, in bytes.
pub const MAX_VALUE_LEN: usize = 255;
/// Most labels on one resource.
pub const MAX_LABELS: usize = 64;

const MAX_PREFIX_LEN: usize = 253;
const MAX_NAME_LEN: usize = 63;

fn is_segment(s: &str, extra: impl Fn(char) -> bool) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || extra(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks the syntax of a key, without the resource-label length limit.
fn check_key_syntax(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.len() > MAX_PREFIX_LEN
            || !is_segment(prefix, |c| matches!(c, '-' | '.'))
            || prefix.chars().any(|c| c.is_ascii_uppercase()))
    {
        return Err(format!(
            "key '{key}': the prefix before '/' must be lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit"
        ));
    }
    if name.len() > MAX_NAME_LEN || !is_segment(name, |c| matches!(c, '-' | '_' | '.')) {
        return Err(format!(
            "key '{key}' must be 1-63 letters, digits, '-', '_' or '.' (optionally after \
             'prefix/'), starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a resource label key.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key '{key}' is {} bytes; at most {MAX_KEY_LEN}",
            key.len()
        ));
    }
    check_key_syntax(key)
}

/// Checks a label value.
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_LEN {
        return Err(format!(
            "value is {} bytes; at most {MAX_VALUE_LEN}",
            value.len()
        ));
    }
    if !value.is_empty() && !is_segment(value, |c| matches!(c, '-' | '_' | '.')) {
        return Err(format!(
            "value '{value}' must be empty or letters, digits, '-', '_' or '.', starting and \
             ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks `metadata.labels`: at most 64, each key and value valid.
/// Violations name `metadata.labels["<key>"]` (keys in sorted order, so the
/// report is stable) or `metadata.labels` for the count.
pub fn validate_labels<S: BuildHasher>(labels: &HashMap<String, String, S>) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    if labels.len() > MAX_LABELS {
        out.push(FieldViolation::new(
            "metadata.labels",
            format!("{} labels; at most {MAX_LABELS}", labels.len()),
        ));
    }
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    for (key, value) in sorted {
        let field = format!("metadata.labels[{key:?}]");
        if let Err(reason) = validate_key(key).and_then(|()| validate_value(value)) {
            out.push(FieldViolation::new(field, reason));
        }
    }
    out
}

// === LabelSet ===

/// Something a selector can look labels up in.
pub trait LabelSet {
    /// The value of `key`, if the label is present.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSet for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<S: BuildHasher> LabelSet for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<T: LabelSet + ?Sized> LabelSet for &T {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}

// === LabelSelector ===

/// One term of a selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// `k=v` or `k==v`: the label is present with this value.
    Equals(String, String),
    /// `k!=v`: the label is absent or has another value.
    NotEquals(String, String),
    /// `k`: the label is present, with any value.
    Exists(String),
    /// `!k`: the label is absent.
    NotExists(String),
}

impl Requirement {
    fn matches(&self, labels: &impl LabelSet) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => labels.label(k) != Some(v.as_str()),
            Requirement::Exists(k) => labels.label(k).is_some(),
            Requirement::NotExists(k) => labels.label(k).is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::NotExists(k) => write!(f, "!{k}"),
        }
    }
}

/// A Kubernetes equality-based label selector: comma-separated terms
/// `k=v`, `k==v`, `k!=v`, `k`, `!k`, all of which must hold. Spaces around
/// terms and operators are allowed. The empty selector matches everything.
/// Set-based terms (`k in (a,b)`) are not supported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches every label set.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses a selector; the error says which term is wrong and why.
    pub fn parse(input: &str) -> Result<LabelSelector, String> {
        if input.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut requirements = Vec::new();
        for (i, raw) in input.split(',').enumerate() {
            let term = raw.trim();
            if term.is_empty() {
                return Err(format!("term {} is empty (stray ',')", i + 1));
            }
            requirements.push(parse_term(term).map_err(|e| format!("term '{term}': {e}"))?);
        }
        Ok(LabelSelector { requirements })
    }

    /// The terms, in the order written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether this selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &impl LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        check_key_syntax(k)?;
        Ok(k.to_string())
    };
    let value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        validate_value(v)?;
        Ok(v.to_string())
    };
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(key(k)?));
    }
    Ok(Requirement::Exists(key(term)?))
}

impl FromStr for LabelSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

/// The canonical form: terms joined by `,` with no spaces, `=` for equality.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "labels_tests.rs"]
mod tests;
