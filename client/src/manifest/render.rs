//! Rendering messages as manifest YAML or JSON: the proto3 JSON mapping,
//! fields in `.proto` order (so `metadata` comes first), default values
//! left out.

use aios_proto::v1::{
    ApplyResponse, AuditEvent, BatchApplyResponse, DeleteResponse, ListAuditEventsResponse,
    ListResponse, Resource, WatchEvent,
};
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde::{Serialize, Serializer};

use super::{ManifestError, descriptor};

/// A generated message and its full protobuf name, so it can be rendered
/// through the descriptors.
pub trait Described: prost::Message + Default {
    /// `aios.v1.Resource`, …
    const FULL_NAME: &'static str;
}

macro_rules! described {
    ($($message:ident),* $(,)?) => {
        $(impl Described for $message {
            const FULL_NAME: &'static str = concat!("aios.v1.", stringify!($message));
        })*
    };
}

described!(
    Resource,
    AuditEvent,
    ApplyResponse,
    BatchApplyResponse,
    DeleteResponse,
    ListResponse,
    ListAuditEventsResponse,
    WatchEvent,
);

/// One message as YAML (ends with a newline).
pub fn to_yaml<T: Described>(message: &T) -> Result<String, ManifestError> {
    serde_yaml::to_string(&Mapped(&dynamic(message)?)).map_err(|e| render_error::<T>(&e))
}

/// Messages as a YAML stream, documents separated by `---`; empty for none.
pub fn to_yaml_list<T: Described>(messages: &[T]) -> Result<String, ManifestError> {
    let documents = messages
        .iter()
        .map(to_yaml)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(documents.join("---\n"))
}

/// One message as pretty JSON (ends with a newline).
pub fn to_json<T: Described>(message: &T) -> Result<String, ManifestError> {
    let text = serde_json::to_string_pretty(&Mapped(&dynamic(message)?))
        .map_err(|e| render_error::<T>(&e))?;
    Ok(text + "\n")
}

/// Messages as a pretty JSON array (ends with a newline).
pub fn to_json_list<T: Described>(messages: &[T]) -> Result<String, ManifestError> {
    let dynamics = messages
        .iter()
        .map(dynamic)
        .collect::<Result<Vec<_>, _>>()?;
    let mapped: Vec<Mapped<'_>> = dynamics.iter().map(Mapped).collect();
    let text = serde_json::to_string_pretty(&mapped).map_err(|e| render_error::<T>(&e))?;
    Ok(text + "\n")
}

fn dynamic<T: Described>(message: &T) -> Result<DynamicMessage, ManifestError> {
    let mut dynamic = DynamicMessage::new(descriptor(T::FULL_NAME)?);
    dynamic
        .transcode_from(message)
        .map_err(|e| render_error::<T>(&e))?;
    Ok(dynamic)
}

fn render_error<T: Described>(error: &dyn std::fmt::Display) -> ManifestError {
    ManifestError::Render {
        name: T::FULL_NAME,
        reason: error.to_string(),
    }
}

/// Serializes a dynamic message with the standard JSON mapping options
/// (lowerCamelCase names, enum names, defaults skipped).
struct Mapped<'a>(&'a DynamicMessage);

impl Serialize for Mapped<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_with_options(serializer, &SerializeOptions::new())
    }
}
