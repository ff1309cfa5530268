//! The light argument check every tool call passes before it runs.
//!
//! Not a full JSON Schema validator (a tool server validates its own input;
//! pulling in one would cost more build than the check is worth). It
//! catches what models get wrong in practice, with messages a model can act
//! on: the arguments must be a JSON object (empty text means `{}`); every
//! name in the schema's top-level `required` must be present; a property
//! whose schema names a `type` (or a list of types) must have one of them;
//! a property with an `enum` must take one of its values; and with
//! `additionalProperties: false`, no property outside `properties` is
//! accepted. Nested schemas are not descended into.

use serde_json::{Map, Value};

/// Parses `arguments_json` and checks it against `schema` (the tool's
/// parameters schema); returns the arguments object or why not.
pub fn check(schema: &Value, arguments_json: &str) -> Result<Map<String, Value>, String> {
    let arguments = if arguments_json.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Value>(arguments_json) {
            Ok(Value::Object(map)) => map,
            Ok(other) => {
                return Err(format!(
                    "arguments must be a JSON object, not {}",
                    type_name(&other)
                ));
            }
            Err(e) => return Err(format!("arguments are not valid JSON: {e}")),
        }
    };
    let mut problems = Vec::new();
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !arguments.contains_key(name) {
                problems.push(format!("'{name}' is required"));
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for (name, value) in &arguments {
        let Some(property) = properties.and_then(|p| p.get(name)) else {
            if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
                let known = properties
                    .map(|p| p.keys().map(String::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                problems.push(format!("unknown argument '{name}' (known: {known})"));
            }
            continue;
        };
        if let Some(wanted) = property.get("type")
            && !type_matches(wanted, value)
        {
            problems.push(format!(
                "'{name}' must be {}, not {}",
                describe(wanted),
                type_name(value)
            ));
        }
        if let Some(choices) = property.get("enum").and_then(Value::as_array)
            && !choices.contains(value)
        {
            let choices: Vec<String> = choices.iter().map(Value::to_string).collect();
            problems.push(format!(
                "'{name}' must be one of {}, not {value}",
                choices.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        Ok(arguments)
    } else {
        Err(format!("invalid arguments: {}", problems.join("; ")))
    }
}

/// Whether `value` has the JSON Schema type (or one of the types) `wanted`.
/// A `type` that is neither a string nor a list of strings checks nothing.
fn type_matches(wanted: &Value, value: &Value) -> bool {
    match wanted {
        Value::String(name) => is_type(name, value),
        Value::Array(names) => names
            .iter()
            .filter_map(Value::as_str)
            .any(|name| is_type(name, value)),
        _ => true,
    }
}

fn is_type(name: &str, value: &Value) -> bool {
    match name {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        // A type this check does not know: let the tool decide.
        _ => true,
    }
}

fn describe(wanted: &Value) -> String {
    match wanted {
        Value::Array(names) => {
            let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
            format!("one of {}", names.join(", "))
        }
        Value::String(name) => format!(
            "a{} {name}",
            if name.starts_with(['a', 'i', 'o']) {
                "n"
            } else {
                ""
            }
        ),
        other => other.to_string(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "amount": {"type": "integer"},
                "note": {"type": ["string", "null"]},
                "mode": {"enum": ["fast", "slow"]},
                "meta": {}
            },
            "required": ["id", "amount"],
            "additionalProperties": false
        })
    }

    #[test]
    fn good_arguments_pass() {
        let args = check(&schema(), r#"{"id": "p1", "amount": 3, "note": null}"#).unwrap();
        assert_eq!(args["id"], "p1");
        assert!(
            check(
                &schema(),
                r#"{"id": "p1", "amount": 3.0, "mode": "fast", "meta": [1]}"#
            )
            .is_ok()
        );
        assert!(
            check(&json!({}), "").unwrap().is_empty(),
            "empty text is {{}}"
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let err = check(&schema(), r#"{"amount": "3", "mode": "warp", "extra": 1}"#).unwrap_err();
        assert_eq!(
            err,
            "invalid arguments: 'id' is required; 'amount' must be an integer, not a string; \
             unknown argument 'extra' (known: amount, id, meta, mode, note); \
             'mode' must be one of \"fast\", \"slow\", not \"warp\""
        );
        let err = check(&schema(), r#"{"id": "p", "amount": 1, "note": 5}"#).unwrap_err();
        assert!(
            err.contains("'note' must be one of string, null, not a number"),
            "{err}"
        );
    }

    #[test]
    fn arguments_must_be_a_json_object() {
        assert_eq!(
            check(&schema(), "[1]").unwrap_err(),
            "arguments must be a JSON object, not an array"
        );
        assert!(
            check(&schema(), "{")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn without_additional_properties_false_extra_arguments_pass() {
        let open = json!({"properties": {"q": {"type": "string"}}});
        assert!(check(&open, r#"{"q": "x", "page": 2}"#).is_ok());
    }
}
