//! Tools built into every node: a Tool resource whose `address` is
//! `builtin` names one of these by `remote_name`. All are side-effect free
//! and quick (their inputs are bounded), so they run inline on the request's
//! task, with no timeout of their own.
//!
//! Each declares the JSON Schema of its arguments: the model is offered
//! that schema whatever the resource says, since the implementation, not
//! the resource, decides what the arguments mean.

use jiff::{Timestamp, tz::TimeZone};
use serde_json::{Map, Value, json};

use super::math;

/// One built-in tool.
#[derive(Debug)]
pub struct Builtin {
    /// Its name (`remote_name` of the resource).
    pub name: &'static str,
    /// What it does, for operators writing the resource.
    pub description: &'static str,
    /// JSON Schema of its arguments object.
    pub parameters_json_schema: &'static str,
    run: fn(&Map<String, Value>) -> Result<Value, String>,
}

impl Builtin {
    /// Runs it on `arguments` (already checked against the schema):
    /// the result, or an error message for the model.
    pub fn run(&self, arguments: &Map<String, Value>) -> Result<Value, String> {
        (self.run)(arguments)
    }
}

/// Every built-in, by name.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "time.now",
        description: "The current date and time, in UTC and optionally in an IANA time zone.",
        parameters_json_schema: r#"{"type":"object","properties":{"time_zone":{"type":"string","description":"IANA time zone, e.g. Europe/Paris. Default UTC."}},"additionalProperties":false}"#,
        run: time_now,
    },
    Builtin {
        name: "math.evaluate",
        description: "Evaluates an arithmetic expression: + - * / % ^, parentheses, pi, e, sqrt, abs, round(x[, digits]), floor, ceil, min, max, ln, log10, exp.",
        parameters_json_schema: r#"{"type":"object","properties":{"expression":{"type":"string","description":"e.g. (2 + 3) * sqrt(16) / 2^3"}},"required":["expression"],"additionalProperties":false}"#,
        run: math_evaluate,
    },
    Builtin {
        name: "json.extract",
        description: "Extracts a value from a JSON document by a JSON Pointer (RFC 6901), e.g. /items/0/name.",
        parameters_json_schema: r#"{"type":"object","properties":{"document":{"description":"The JSON document, as JSON text or as a value."},"pointer":{"type":"string","description":"JSON Pointer; empty = the whole document."}},"required":["document","pointer"],"additionalProperties":false}"#,
        run: json_extract,
    },
    Builtin {
        name: "text.stats",
        description: "Counts the characters, bytes, words and lines of a text.",
        parameters_json_schema: r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"],"additionalProperties":false}"#,
        run: text_stats,
    },
];

/// The built-in called `name`.
pub fn get(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The names of every built-in, comma-separated (for error messages).
pub fn names() -> String {
    BUILTINS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

// === The tools ===

fn string_arg<'a>(arguments: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    arguments.get(name).and_then(Value::as_str)
}

fn time_now(arguments: &Map<String, Value>) -> Result<Value, String> {
    now_in(Timestamp::now(), string_arg(arguments, "time_zone"))
}

/// `time.now` at `now` (split out so tests can fix the clock).
fn now_in(now: Timestamp, zone: Option<&str>) -> Result<Value, String> {
    let zone = zone
        .map(str::trim)
        .filter(|z| !z.is_empty())
        .unwrap_or("UTC");
    let tz = TimeZone::get(zone).map_err(|_| {
        format!("unknown time zone '{zone}': use an IANA name such as Europe/Paris or UTC")
    })?;
    let local = now.to_zoned(tz);
    Ok(json!({
        "utc": now.to_string(),
        "unix_seconds": now.as_second(),
        "time_zone": zone,
        "local": local.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "utc_offset": local.offset().to_string(),
        "weekday": format!("{:?}", local.weekday()),
    }))
}

fn math_evaluate(arguments: &Map<String, Value>) -> Result<Value, String> {
    let expression = string_arg(arguments, "expression").unwrap_or_default();
    let value = math::evaluate(expression).map_err(|e| e.message)?;
    Ok(json!({ "expression": expression, "result": number(value) }))
}

/// Whole results within f64's exact integers print as integers (`7`, not
/// `7.0`), which is what a model (and a person) expects.
fn number(value: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.fract() == 0.0 && value.abs() <= EXACT {
        // In range and whole: the cast is exact.
        json!(value as i64)
    } else {
        json!(value)
    }
}

fn json_extract(arguments: &Map<String, Value>) -> Result<Value, String> {
    let pointer = string_arg(arguments, "pointer").unwrap_or_default();
    let parsed;
    let document = match arguments.get("document") {
        // JSON text, as models usually pass documents.
        Some(Value::String(text)) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| format!("document is not valid JSON: {e}"))?;
            &parsed
        }
        Some(value) => value,
        None => return Err("document is required".into()),
    };
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "'{pointer}' is not a JSON Pointer: it must be empty or start with '/', e.g. /items/0"
        ));
    }
    match document.pointer(pointer) {
        Some(value) => Ok(json!({ "pointer": pointer, "value": value })),
        None => Err(format!("the document has no value at '{pointer}'")),
    }
}

fn text_stats(arguments: &Map<String, Value>) -> Result<Value, String> {
    let text = string_arg(arguments, "text").unwrap_or_default();
    Ok(json!({
        "characters": text.chars().count(),
        "bytes": text.len(),
        "words": text.split_whitespace().count(),
        "lines": text.lines().count(),
    }))
}

#[cfg(test)]
#[path = "builtin_tests.rs"]
mod tests;
