//! Turning parser errors into `file: document N, line L, column C: message`.
//!
//! serde_yaml already counts lines from the start of the file (not of the
//! document) and prefixes messages with the path of the value. One error
//! needs help: an unknown field is reported by prost-reflect after the key
//! was read, so serde_yaml places it at the start of the enclosing mapping.
//! For block mappings the key is found again on the lines that follow, and
//! the path names the message whose fields are listed as the alternatives.

use prost_reflect::{Kind, MessageDescriptor};

use super::ManifestError;

/// A serde_yaml error on document `document` of `text`.
pub(super) fn yaml_error(
    file: &str,
    document: usize,
    text: &str,
    root: &MessageDescriptor,
    error: &serde_yaml::Error,
) -> ManifestError {
    let full = error.to_string();
    let Some(location) = error.location() else {
        return ManifestError::Document {
            file: file.to_string(),
            document,
            message: full,
        };
    };
    let (mut line, mut column) = (location.line(), location.column());
    // The location is reported separately: drop it from the text. Syntax
    // errors put it mid-sentence (`... at line 3 column 1, while parsing`).
    let mut message = full.replacen(&format!(" at line {line} column {column}"), "", 1);
    if (line, column) == (1, 1) {
        message = message.replacen(&format!(" at position {}", location.index()), "", 1);
    }
    let (path, detail) = split_path(&message);
    let scope = match path {
        None => Some(root.clone()),
        Some(path) => resolve(root, path),
    };
    if let Some(field) = unknown_field(detail) {
        if let Some((key_line, key_column)) = find_key(text, line, column, field) {
            (line, column) = (key_line, key_column);
        }
        let mut rewritten = format!("unknown field `{field}`");
        if let Some(path) = path {
            rewritten.push_str(&format!(" in `{path}`"));
        }
        if let Some(scope) = scope {
            rewritten.push_str(&format!(", expected one of {}", field_list(&scope)));
        }
        message = rewritten;
    } else if path.is_none() && detail == "multiple fields provided for oneof 'spec'" {
        message = format!(
            "more than one spec key: a resource has exactly one of {}",
            spec_keys(root)
        );
    }
    ManifestError::Parse {
        file: file.to_string(),
        document,
        line,
        column,
        message,
    }
}

/// A serde_json error; a JSON file is one document.
pub(super) fn json_error(file: &str, text: &str, error: &serde_json::Error) -> ManifestError {
    let (line, mut column) = (error.line(), error.column());
    let full = error.to_string();
    let mut message = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full)
        .to_string();
    if let Some(field) = unknown_field(&message) {
        // serde_json stops on the key's closing quote; point at its start.
        let quoted = format!("\"{field}\"");
        let start = column.saturating_sub(quoted.chars().count() - 1);
        let written: String = text
            .lines()
            .nth(line.saturating_sub(1))
            .unwrap_or_default()
            .chars()
            .skip(start.saturating_sub(1))
            .take(quoted.chars().count())
            .collect();
        if start > 0 && written == quoted {
            column = start;
        }
        message = format!("unknown field `{field}`");
    }
    ManifestError::Parse {
        file: file.to_string(),
        document: 1,
        line,
        column,
        message,
    }
}

/// The spec keys of `Resource`, as written in manifests.
pub(super) fn spec_keys(resource: &MessageDescriptor) -> String {
    let keys: Vec<String> = resource
        .oneofs()
        .filter(|o| o.name() == "spec")
        .flat_map(|o| {
            o.fields()
                .map(|f| format!("`{}`", f.json_name()))
                .collect::<Vec<_>>()
        })
        .collect();
    keys.join(", ")
}

/// `agent: unrecognized …` → (`Some("agent")`, `unrecognized …`). serde_yaml
/// writes the path (never containing spaces) before the message.
fn split_path(message: &str) -> (Option<&str>, &str) {
    match message.split_once(": ") {
        Some((path, rest)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
            (Some(path), rest)
        }
        _ => (None, message),
    }
}

/// The key of prost-reflect's unknown-field error.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unrecognized field name '")?
        .strip_suffix('\'')
}

/// The message at a serde_yaml path such as `policy.rules[0]`.
fn resolve(root: &MessageDescriptor, path: &str) -> Option<MessageDescriptor> {
    let mut message = root.clone();
    let mut in_map_value = false;
    for segment in path.split('.') {
        if in_map_value {
            // The segment is a map key; the value type was chosen already.
            in_map_value = false;
            continue;
        }
        let name = segment.split('[').next().unwrap_or(segment);
        let field = message
            .get_field_by_json_name(name)
            .or_else(|| message.get_field_by_name(name))?;
        let Kind::Message(inner) = field.kind() else {
            return None;
        };
        if field.is_map() {
            let Kind::Message(value) = inner.map_entry_value_field().kind() else {
                return None;
            };
            message = value;
            in_map_value = true;
        } else {
            message = inner;
        }
    }
    Some(message)
}

/// `` `a`, `b` ``: a message's fields as written in manifests.
fn field_list(message: &MessageDescriptor) -> String {
    let names: Vec<String> = message
        .fields()
        .map(|f| format!("`{}`", f.json_name()))
        .collect();
    names.join(", ")
}

/// Where `key` is written in the block mapping that starts at `line`,
/// `column` (both 1-based): on that line, or on a later line indented to the
/// same column, before the mapping ends. `None` for flow mappings (`{…}`).
fn find_key(text: &str, line: usize, column: usize, key: &str) -> Option<(usize, usize)> {
    let indent = column.checked_sub(1)?;
    for (offset, content) in text.lines().skip(line.checked_sub(1)?).enumerate() {
        let number = line + offset;
        if offset == 0 {
            let rest: String = content.chars().skip(indent).collect();
            if rest.starts_with('{') {
                return None;
            }
            if is_key(&rest, key) {
                return Some((number, column));
            }
            continue;
        }
        let trimmed = content.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let depth = content.len() - trimmed.len();
        let document_marker = trimmed.starts_with("---") || trimmed.starts_with("...");
        if depth < indent || (depth == 0 && document_marker) {
            return None;
        }
        if depth == indent && is_key(trimmed, key) {
            return Some((number, column));
        }
    }
    None
}

/// Whether `text` starts with `key` (plain or quoted) followed by `:`.
fn is_key(text: &str, key: &str) -> bool {
    [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .filter_map(|written| text.strip_prefix(written.as_str()))
        .any(|after| after.trim_start_matches(' ').starts_with(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_below_the_mapping_start_and_stops_at_its_end() {
        let text = "agent:\n  systemPrompt: hi\n\n  # note\n  maxStepz: 8\ntool: {}\n";
        assert_eq!(find_key(text, 2, 3, "maxStepz"), Some((5, 3)));
        assert_eq!(find_key(text, 2, 3, "systemPrompt"), Some((2, 3)));
        assert_eq!(find_key(text, 2, 3, "tool"), None);
        assert_eq!(find_key("a: {b: 1, c: 2}\n", 1, 4, "c"), None);
        assert_eq!(
            find_key("x:\n  - a: 1\n    'b' : 2\n", 2, 5, "b"),
            Some((3, 5))
        );
    }

    #[test]
    fn paths_resolve_through_lists_and_messages() {
        let pool = super::super::pool().unwrap();
        let root = pool.get_message_by_name("aios.v1.Resource").unwrap();
        let rules = resolve(&root, "policy.rules[0]").unwrap();
        assert_eq!(rules.full_name(), "aios.v1.ActionRule");
        let scope = resolve(&root, "apiKey.rate_limit").unwrap();
        assert_eq!(scope.full_name(), "aios.v1.RateLimit");
        assert!(resolve(&root, "agent.maxSteps").is_none());
        assert_eq!(split_path("invalid type: map"), (None, "invalid type: map"));
        assert_eq!(split_path("a.b[1]: bad"), (Some("a.b[1]"), "bad"));
    }
}
