//! Typed reads of GGUF metadata, with errors that name the key.
//!
//! candle's own accessors put the whole value in their error text, which for
//! a 49 152-entry token array is not a message anyone can read.

use candle_core::quantized::gguf_file::{Content, Value};

use crate::InferenceError;

/// Reads keys of one GGUF file's metadata.
#[derive(Clone, Copy)]
pub(crate) struct Meta<'a> {
    content: &'a Content,
}

impl<'a> Meta<'a> {
    pub(crate) fn new(content: &'a Content) -> Self {
        Self { content }
    }

    /// An error about this model's metadata. The model is named by
    /// `general.name`, since the reader has no path.
    pub(crate) fn error(&self, key: &str, reason: impl std::fmt::Display) -> InferenceError {
        let model = self
            .content
            .metadata
            .get("general.name")
            .and_then(|v| v.to_string().ok())
            .map_or_else(
                || "GGUF model".to_string(),
                |name| format!("GGUF model {name:?}"),
            );
        InferenceError::File {
            path: model,
            reason: format!("{key}: {reason}"),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(key)
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<&'a str>, InferenceError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.error(
                key,
                format!("expected a string, found {:?}", other.value_type()),
            )),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, InferenceError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.error(
                key,
                format!("expected a bool, found {:?}", other.value_type()),
            )),
        }
    }

    /// An unsigned integer of any width (writers differ on u32 and i32).
    pub(crate) fn uint(&self, key: &str) -> Result<Option<u64>, InferenceError> {
        let value = match self.get(key) {
            None => return Ok(None),
            Some(value) => value,
        };
        integer(value)
            .and_then(|n| u64::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                self.error(
                    key,
                    format!(
                        "expected an unsigned integer, found {:?}",
                        value.value_type()
                    ),
                )
            })
    }

    pub(crate) fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>, InferenceError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.error(
                    key,
                    format!("item {i} is {:?}, not a string", other.value_type()),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub(crate) fn integers(&self, key: &str) -> Result<Option<Vec<i64>>, InferenceError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                integer(item).ok_or_else(|| {
                    self.error(
                        key,
                        format!("item {i} is {:?}, not an integer", item.value_type()),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, InferenceError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(self.error(
                key,
                format!("expected an array, found {:?}", other.value_type()),
            )),
        }
    }
}

fn integer(value: &Value) -> Option<i64> {
    Some(match value {
        Value::U8(n) => i64::from(*n),
        Value::I8(n) => i64::from(*n),
        Value::U16(n) => i64::from(*n),
        Value::I16(n) => i64::from(*n),
        Value::U32(n) => i64::from(*n),
        Value::I32(n) => i64::from(*n),
        Value::U64(n) => i64::try_from(*n).ok()?,
        Value::I64(n) => *n,
        _ => return None,
    })
}
