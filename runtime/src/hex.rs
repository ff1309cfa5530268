//! Lowercase hex, written through a table: on hot paths (every API key
//! hash) `format!("{:02x}")` per byte cost more than the work around it.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lowercase hex to `text`.
pub fn encode_into(text: &mut String, bytes: &[u8]) {
    text.reserve(bytes.len() * 2);
    for &byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut text = String::new();
    encode_into(&mut text, bytes);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_is_two_lowercase_digits() {
        assert_eq!(encode(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(encode(&[]), "");
        let mut text = "id:".to_string();
        encode_into(&mut text, &[0xde, 0xad]);
        assert_eq!(text, "id:dead");
    }
}
