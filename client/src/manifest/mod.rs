//! Manifests: resources written as documents, for `aiosctl apply`, `diff`
//! and `get -o yaml|json`.
//!
//! A document is the proto3 JSON mapping of `aios.v1.Resource` (lowerCamelCase
//! field names, snake_case also accepted; enums by full name; durations as
//! `"30s"`; RFC 3339 timestamps), written as YAML or JSON:
//!
//! ```yaml
//! metadata:
//!   name: support-bot
//!   labels: {team: support}
//! agent:
//!   routingTable: default
//!   maxSteps: 8
//! ```
//!
//! Parsing goes straight from the YAML (or JSON) deserializer into a
//! `prost_reflect::DynamicMessage` built from the contract's own
//! descriptors, so the format cannot drift from the `.proto` files and
//! every error keeps the parser's line and column. Rendering uses the same
//! mapping, so what `get -o yaml` prints can be applied again.

mod locate;
mod render;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use aios_proto::v1::Resource;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

pub use self::render::{Described, to_json, to_json_list, to_yaml, to_yaml_list};

/// Full name of the message a document holds.
const RESOURCE: &str = "aios.v1.Resource";

/// File name endings read from a directory.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// One resource read from a manifest, and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// The file as given (`-` is shown as `<stdin>`).
    pub file: String,
    /// 1-based number of the document in the file (documents are separated
    /// by `---`; a JSON file is one document).
    pub document: usize,
    /// The resource, exactly as written (output-only fields included).
    pub resource: Resource,
}

impl Manifest {
    /// `agents.yaml, document 2`: where to look when the server refuses it.
    pub fn source(&self) -> String {
        format!("{}, document {}", self.file, self.document)
    }
}

/// Why manifests could not be read or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file or directory could not be read.
    #[error("{file}: {reason}")]
    Read {
        /// The path.
        file: String,
        /// The I/O error.
        reason: String,
    },
    /// A document is malformed or does not match the schema.
    #[error("{file}: document {document}, line {line}, column {column}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based document number.
        document: usize,
        /// 1-based line in the file (not in the document).
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A document is wrong in a way the parser could not place.
    #[error("{file}: document {document}: {message}")]
    Document {
        /// The file.
        file: String,
        /// 1-based document number.
        document: usize,
        /// What is wrong.
        message: String,
    },
    /// The descriptors compiled into `aios-proto` cannot be used (a build
    /// problem, not an input problem).
    #[error("the embedded aios.v1 descriptors are unusable: {0}")]
    Descriptors(String),
    /// A message could not be rendered.
    #[error("cannot render {name}: {reason}")]
    Render {
        /// Full message name.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

// === Descriptors ===

/// The contract's descriptors, decoded once.
fn pool() -> Result<&'static DescriptorPool, ManifestError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(aios_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| ManifestError::Descriptors(e.clone()))
}

/// The descriptor of an `aios.v1` (or well-known) message.
fn descriptor(full_name: &str) -> Result<MessageDescriptor, ManifestError> {
    pool()?
        .get_message_by_name(full_name)
        .ok_or_else(|| ManifestError::Descriptors(format!("no message {full_name}")))
}

// === Reading ===

/// Reads every path in order: see [`load`].
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Manifest>, ManifestError> {
    let mut manifests = Vec::new();
    for path in paths {
        manifests.extend(load(path)?);
    }
    Ok(manifests)
}

/// Reads a file, `-` (stdin), or a directory: every `*.yaml`, `*.yml` and
/// `*.json` file directly in it (not in subdirectories), sorted by name.
pub fn load(path: &Path) -> Result<Vec<Manifest>, ManifestError> {
    if path == Path::new("-") {
        let text = std::io::read_to_string(std::io::stdin()).map_err(|e| read_error(path, &e))?;
        return parse_str("<stdin>", &text);
    }
    if path.is_dir() {
        let mut manifests = Vec::new();
        for file in manifest_files(path)? {
            manifests.extend(load_file(&file)?);
        }
        return Ok(manifests);
    }
    load_file(path)
}

/// The manifest files directly in `dir`, sorted by name.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let entries = std::fs::read_dir(dir).map_err(|e| read_error(dir, &e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| read_error(dir, &e))?.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load_file(path: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| read_error(path, &e))?;
    parse_str(&path.display().to_string(), &text)
}

fn read_error(path: &Path, error: &std::io::Error) -> ManifestError {
    ManifestError::Read {
        file: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// Parses the documents of one file. `file` names it in errors and picks
/// the syntax: JSON if it ends in `.json`, YAML otherwise. Empty documents
/// (only comments) are skipped; a document may also be a list of
/// resources, which is what `get -o json` prints for a listing.
pub fn parse_str(file: &str, text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let root = descriptor(RESOURCE)?;
    let manifest = |document, resource| Manifest {
        file: file.to_string(),
        document,
        resource,
    };
    if file.to_ascii_lowercase().ends_with(".json") {
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let resources = DocumentSeed(&root)
            .deserialize(&mut deserializer)
            .and_then(|resources| deserializer.end().map(|()| resources))
            .map_err(|e| locate::json_error(file, text, &e))?;
        return Ok(resources.into_iter().map(|r| manifest(1, r)).collect());
    }
    let mut manifests = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        // After a syntax error the iterator repeats it forever: the first
        // error ends the file.
        let resources = DocumentSeed(&root)
            .deserialize(document)
            .map_err(|e| locate::yaml_error(file, number, text, &root, &e))?;
        manifests.extend(resources.into_iter().map(|r| manifest(number, r)));
    }
    Ok(manifests)
}

// === Deserialization ===

/// One document: nothing (empty), a resource, or a list of resources.
struct DocumentSeed<'a>(&'a MessageDescriptor);

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_> {
    type Value = Vec<Resource>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(DocumentVisitor(self.0))
    }
}

struct DocumentVisitor<'a>(&'a MessageDescriptor);

impl<'de> Visitor<'de> for DocumentVisitor<'_> {
    type Value = Vec<Resource>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a resource (a mapping with `metadata` and one spec key) or a list of them")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        ResourceVisitor(self.0).visit_map(map).map(|r| vec![r])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut resources = Vec::new();
        while let Some(resource) = seq.next_element_seed(ResourceSeed(self.0))? {
            resources.push(resource);
        }
        Ok(resources)
    }
}

struct ResourceSeed<'a>(&'a MessageDescriptor);

impl<'de> DeserializeSeed<'de> for ResourceSeed<'_> {
    type Value = Resource;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(ResourceVisitor(self.0))
    }
}

/// A resource mapping. Checks run inside the visitor so that the YAML
/// parser attaches the mapping's position to their errors.
struct ResourceVisitor<'a>(&'a MessageDescriptor);

impl<'de> Visitor<'de> for ResourceVisitor<'_> {
    type Value = Resource;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a resource (a mapping with `metadata` and one spec key)")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let message = DynamicMessage::deserialize_with_options(
            self.0.clone(),
            de::value::MapAccessDeserializer::new(map),
            &DeserializeOptions::new(),
        )?;
        let resource: Resource = message.transcode_to().map_err(de::Error::custom)?;
        if resource.spec.is_none() {
            return Err(de::Error::custom(format!(
                "no spec: a resource needs exactly one of {}",
                locate::spec_keys(self.0)
            )));
        }
        if resource.metadata.as_ref().is_none_or(|m| m.name.is_empty()) {
            return Err(de::Error::custom("`metadata.name` is required"));
        }
        Ok(resource)
    }
}
