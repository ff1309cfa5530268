//! Resource names and the other small string syntaxes specs use.

use std::collections::BTreeSet;

use crate::violation::Ctx;

/// Longest resource name, in characters (a DNS label's limit).
pub const MAX_NAME_LEN: usize = 63;

/// Checks a resource name (also used for tenant ids, regions, tier and group
/// names): 1-63 characters of lowercase ASCII letters, digits, `-` and `.`,
/// starting and ending with a letter or digit, as `common.proto` states.
///
/// Consecutive dots or dashes (`a..b`) are accepted: the contract does not
/// forbid them.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters (got {})",
            name.chars().count()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')))
    {
        return Err(format!(
            "'{name}' contains {bad:?}; names use lowercase letters, digits, '-' and '.'"
        ));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Err(format!(
            "'{name}' must start and end with a lowercase letter or digit"
        ));
    }
    Ok(())
}

/// Checks a list of names: each valid, none twice. Returns the valid ones.
pub(crate) fn name_list(ctx: &mut Ctx, names: &[String], path: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let field = format!("{path}[{i}]");
        if let Err(reason) = validate_name(name) {
            ctx.violation(field, reason);
        } else if !seen.insert(name.as_str()) {
            ctx.violation(field, format!("duplicate '{name}'"));
        } else {
            out.push(name.clone());
        }
    }
    out
}

/// Checks a list of references to `kind`: each a valid name, none twice.
pub(crate) fn reference_list(
    ctx: &mut Ctx,
    kind: crate::Kind,
    names: &[String],
    path: &str,
) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let field = format!("{path}[{i}]");
        if seen.contains(name.as_str()) {
            ctx.violation(field, format!("duplicate '{name}'"));
        } else if let Some(valid) = ctx.reference(kind, name, field) {
            seen.insert(name.as_str());
            out.push(valid);
        }
    }
    out
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn validate_env_var(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => Err("is required".to_string()),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => Err(format!(
            "'{name}' is not an environment variable name: it must start with a letter or '_'"
        )),
        _ if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') => Err(format!(
            "'{name}' is not an environment variable name: use letters, digits and '_'"
        )),
        _ => Ok(()),
    }
}

/// An absolute `http://` or `https://` URL with a host and no whitespace.
/// Path, port and query are not checked further: the backend's HTTP client
/// has the final word.
pub(crate) fn validate_http_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("is required".to_string());
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("'{url}' must be an http:// or https:// URL"))?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{url}' must not contain whitespace"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, after)) => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("'{url}' has an invalid host")),
            },
            None => return Err(format!("'{url}' has an invalid host")),
        },
        None => match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(format!("'{url}' has no host"));
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("'{url}' has an invalid port '{port}'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for name in [
            "a",
            "0",
            "gpt-4o-mini",
            "payments.refund",
            "a..b",
            "a--b",
            "x1",
            &"a".repeat(63),
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for name in [
            "",
            "-a",
            "a-",
            ".a",
            "a.",
            "A",
            "Payments",
            "a_b",
            "a b",
            "a/b",
            "é",
            "*",
            &"a".repeat(64),
        ] {
            assert!(validate_name(name).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn name_errors_say_why() {
        assert_eq!(validate_name(""), Err("is required".to_string()));
        assert!(validate_name(&"a".repeat(64)).unwrap_err().contains("63"));
        assert!(validate_name("a_b").unwrap_err().contains("'_'"));
        assert!(validate_name("a-").unwrap_err().contains("start and end"));
    }

    #[test]
    fn env_var_names() {
        for ok in ["OPENAI_API_KEY", "_X", "a1"] {
            assert_eq!(validate_env_var(ok), Ok(()), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "$A"] {
            assert!(validate_env_var(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn http_urls() {
        for ok in [
            "http://tools.internal:7070",
            "https://api.openai.com/v1",
            "http://127.0.0.1:8000/v1?x=1",
            "http://[::1]:7070",
            "https://user@host/v1",
        ] {
            assert_eq!(validate_http_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "tools.internal:7070",
            "grpc://tools:7070",
            "http://",
            "http:///path",
            "http://host:port",
            "http://host:",
            "http://host:99999",
            "http://ho st",
            "HTTP://host",
        ] {
            assert!(validate_http_url(bad).is_err(), "{bad:?} accepted");
        }
    }
}
