//! API keys on the wire, shared by both planes so they hash and read keys
//! the same way: the secret travels in `x-api-key` (or `authorization:
//! Bearer`), and only its SHA-256 is ever stored or compared.

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

/// Metadata key carrying an API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The key in the request metadata, if any: `x-api-key`, else a Bearer
/// token in `authorization`.
pub fn secret_from(metadata: &MetadataMap) -> Option<&str> {
    if let Some(value) = metadata.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(value.trim());
    }
    let bearer = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())?;
    bearer.strip_prefix("Bearer ").map(str::trim)
}

/// `sha256:<64 hex>` of a secret, as stored in `ApiKeySpec.secret_hash`.
///
/// On every authenticated request: the hex goes through a table
/// ([`crate::hex`]), not `fmt` (which cost more than the hash itself).
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    crate::hex::encode_into(&mut text, &digest);
    text
}

/// SHA-256 of an approval's `arguments_json` (its UTF-8 bytes): the digest
/// an approval is bound to. Both planes compute it here, so they agree.
pub fn arguments_sha256(arguments_json: &str) -> [u8; 32] {
    Sha256::digest(arguments_json.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            hash_secret("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn argument_digests_are_sha256_of_the_bytes() {
        assert_eq!(
            crate::hex::encode(&arguments_sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(arguments_sha256("{}"), arguments_sha256("{ }"));
    }

    #[test]
    fn the_key_comes_from_x_api_key_else_bearer() {
        let mut md = MetadataMap::new();
        assert_eq!(secret_from(&md), None);
        md.insert("authorization", "Bearer aios_abc".parse().unwrap());
        assert_eq!(secret_from(&md), Some("aios_abc"));
        md.insert(API_KEY_HEADER, " aios_def ".parse().unwrap());
        assert_eq!(secret_from(&md), Some("aios_def"));
    }
}
