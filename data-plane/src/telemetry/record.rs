//! A span as the request path builds it, and its protobuf encoding.
//!
//! A [`Record`] borrows what it can from the request (names, models,
//! messages) and is written straight to `pb::Span`'s wire format as one
//! `SpanBatch.spans` entry, so a request's spans cost the request thread no
//! owned strings, no attribute map and no second pass through `pb::Span`.
//! What is written decodes to exactly the `pb::Span` the fields describe
//! (tested against prost's own decoding).

use std::borrow::Cow;

use aios_proto::v1 as pb;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// What every span of one request shares.
#[derive(Clone, Copy, Debug)]
pub struct Shared<'a> {
    /// The trace (16 bytes, big-endian).
    pub trace_id: [u8; 16],
    /// Tenant of the caller.
    pub tenant: &'a str,
    /// The agent ("" for embeddings).
    pub agent: &'a str,
    /// The node.
    pub node: &'a str,
    /// Its region.
    pub region: &'a str,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    /// Text.
    Text(Cow<'a, str>),
    /// A count, written in decimal.
    Count(u64),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(text: &'a str) -> Self {
        Self::Text(Cow::Borrowed(text))
    }
}

impl From<String> for Value<'_> {
    fn from(text: String) -> Self {
        Self::Text(Cow::Owned(text))
    }
}

impl From<u64> for Value<'_> {
    fn from(count: u64) -> Self {
        Self::Count(count)
    }
}

/// A span's status.
#[derive(Clone, Debug, PartialEq)]
pub struct Status<'a> {
    /// OK or ERROR.
    pub code: pb::SpanStatusCode,
    /// Low-cardinality error class ("" when OK).
    pub error_type: Cow<'a, str>,
    /// What went wrong ("" when OK).
    pub message: Cow<'a, str>,
}

impl Status<'_> {
    /// OK.
    pub const OK: Status<'static> = Status {
        code: pb::SpanStatusCode::Ok,
        error_type: Cow::Borrowed(""),
        message: Cow::Borrowed(""),
    };
}

/// One span of a request (the fields [`Shared`] does not hold).
#[derive(Clone, Debug, PartialEq)]
pub struct Record<'a> {
    /// Its id.
    pub span_id: u64,
    /// Its parent's id; `None` = a root span.
    pub parent: Option<u64>,
    /// Its name: the operation, a space, and what it ran.
    pub name: (&'static str, &'a str),
    /// Start and end, in Unix nanoseconds.
    pub start: u64,
    /// See `start`.
    pub end: u64,
    /// `chat`, the tool, or the action.
    pub action: &'a str,
    /// The model that answered.
    pub model: &'a str,
    /// `gen_ai.operation.name`.
    pub operation: &'static str,
    /// Its own tokens and cost (not its children's).
    pub input_tokens: u64,
    /// See `input_tokens`.
    pub output_tokens: u64,
    /// See `input_tokens`.
    pub cost_usd: f64,
    /// Answered from a cache.
    pub cache_hit: bool,
    /// What the baseline model would have cost.
    pub baseline_cost_usd: f64,
    /// OK or ERROR; `None` = unset.
    pub status: Option<Status<'a>>,
    /// Attributes, each name once.
    pub attributes: Vec<(&'static str, Value<'a>)>,
}

impl<'a> Record<'a> {
    /// A span named `operation subject`, everything else empty.
    pub fn new(
        span_id: u64,
        parent: Option<u64>,
        operation: &'static str,
        subject: &'a str,
    ) -> Self {
        Self {
            span_id,
            parent,
            name: (operation, subject),
            start: 0,
            end: 0,
            action: "",
            model: "",
            operation,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            cache_hit: false,
            baseline_cost_usd: 0.0,
            status: None,
            attributes: Vec::with_capacity(8),
        }
    }

    /// Sets attribute `key` (replacing an earlier value).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value<'a>>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.attributes.push((key, value)),
        }
    }

    /// The error class, if it failed.
    pub fn error_type(&self) -> Option<&str> {
        self.status
            .as_ref()
            .filter(|s| s.code == pb::SpanStatusCode::Error)
            .map(|s| s.error_type.as_ref())
    }

    /// Appends this span to `out` as one `SpanBatch.spans` entry (field 2),
    /// reserving exactly the room it takes.
    pub fn encode(&self, shared: &Shared<'_>, out: &mut Vec<u8>) {
        let len = self.body_len(shared);
        out.reserve(key_len(SPANS_FIELD) + encoded_len_varint(len as u64) + len);
        encode_key(SPANS_FIELD, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
        let start = out.len();
        self.body(shared, out);
        debug_assert_eq!(out.len() - start, len, "the length written ahead");
    }

    fn name_len(&self) -> usize {
        self.name.0.len() + 1 + self.name.1.len()
    }

    fn body_len(&self, shared: &Shared<'_>) -> usize {
        let mut len = bytes_len(1, &shared.trace_id) + bytes_len(2, &[0; 8]);
        if self.parent.is_some() {
            len += bytes_len(3, &[0; 8]);
        }
        len += key_len(4) + encoded_len_varint(self.name_len() as u64) + self.name_len();
        len += fixed64_len(5, self.start) + fixed64_len(6, self.end);
        for (tag, text) in self.texts(shared) {
            len += text_len(tag, text);
        }
        len += uint64_len(20, self.input_tokens) + uint64_len(21, self.output_tokens);
        len += double_len(22, self.cost_usd) + double_len(24, self.baseline_cost_usd);
        if self.cache_hit {
            len += key_len(23) + 1;
        }
        if let Some(status) = &self.status {
            let inner = status_len(status);
            len += key_len(30) + encoded_len_varint(inner as u64) + inner;
        }
        for (key, value) in &self.attributes {
            let inner = entry_len(key, value);
            len += key_len(31) + encoded_len_varint(inner as u64) + inner;
        }
        len
    }

    fn body(&self, shared: &Shared<'_>, out: &mut Vec<u8>) {
        put_bytes(1, &shared.trace_id, out);
        put_bytes(2, &self.span_id.to_be_bytes(), out);
        if let Some(parent) = self.parent {
            put_bytes(3, &parent.to_be_bytes(), out);
        }
        encode_key(4, WireType::LengthDelimited, out);
        encode_varint(self.name_len() as u64, out);
        out.extend_from_slice(self.name.0.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.name.1.as_bytes());
        put_fixed64(5, self.start, out);
        put_fixed64(6, self.end, out);
        for (tag, text) in self.texts(shared) {
            put_text(tag, text, out);
        }
        put_uint64(20, self.input_tokens, out);
        put_uint64(21, self.output_tokens, out);
        put_double(22, self.cost_usd, out);
        if self.cache_hit {
            encode_key(23, WireType::Varint, out);
            out.push(1);
        }
        put_double(24, self.baseline_cost_usd, out);
        if let Some(status) = &self.status {
            encode_key(30, WireType::LengthDelimited, out);
            encode_varint(status_len(status) as u64, out);
            put_uint64(1, status.code as i32 as u64, out);
            put_text(2, &status.error_type, out);
            put_text(3, &status.message, out);
        }
        for (key, value) in &self.attributes {
            encode_key(31, WireType::LengthDelimited, out);
            encode_varint(entry_len(key, value) as u64, out);
            put_text(1, key, out);
            match value {
                Value::Text(text) => put_text(2, text, out),
                Value::Count(n) => {
                    let mut digits = [0; 20];
                    put_text(2, decimal(*n, &mut digits), out);
                }
            }
        }
    }

    /// The string fields 10-16, by tag.
    fn texts<'s>(&'s self, shared: &'s Shared<'_>) -> [(u32, &'s str); 7] {
        [
            (10, shared.tenant),
            (11, shared.agent),
            (12, self.action),
            (13, self.model),
            (14, shared.node),
            (15, shared.region),
            (16, self.operation),
        ]
    }
}

/// Field number of `SpanBatch.spans`.
pub(super) const SPANS_FIELD: u32 = 2;

fn bytes_len(tag: u32, bytes: &[u8]) -> usize {
    key_len(tag) + encoded_len_varint(bytes.len() as u64) + bytes.len()
}

fn put_bytes(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Proto3: empty strings and zero numbers are not written.
fn text_len(tag: u32, text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        bytes_len(tag, text.as_bytes())
    }
}

fn put_text(tag: u32, text: &str, out: &mut Vec<u8>) {
    if !text.is_empty() {
        put_bytes(tag, text.as_bytes(), out);
    }
}

fn fixed64_len(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + 8 }
}

fn put_fixed64(tag: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn uint64_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

fn put_uint64(tag: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

// A double is its bits on the wire; the test is on the value, as prost's
// (-0.0 is the default too).
fn double_len(tag: u32, value: f64) -> usize {
    if value == 0.0 {
        0
    } else {
        fixed64_len(tag, value.to_bits())
    }
}

fn put_double(tag: u32, value: f64, out: &mut Vec<u8>) {
    if value != 0.0 {
        put_fixed64(tag, value.to_bits(), out);
    }
}

fn status_len(status: &Status<'_>) -> usize {
    uint64_len(1, status.code as i32 as u64)
        + text_len(2, &status.error_type)
        + text_len(3, &status.message)
}

fn entry_len(key: &str, value: &Value<'_>) -> usize {
    let value = match value {
        Value::Text(text) => text_len(2, text),
        Value::Count(n) => {
            let mut digits = [0; 20];
            text_len(2, decimal(*n, &mut digits))
        }
    };
    text_len(1, key) + value
}

/// `n` in decimal, in `digits`.
fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &str {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&digits[at..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use prost::Message;

    use super::*;

    fn shared() -> Shared<'static> {
        Shared {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c_u128.to_be_bytes(),
            tenant: "acme",
            agent: "support",
            node: "node-1",
            region: "eu",
        }
    }

    fn decoded(records: &[Record<'_>]) -> Vec<pb::Span> {
        let mut out = Vec::new();
        for record in records {
            record.encode(&shared(), &mut out);
        }
        let batch = pb::SpanBatch::decode(out.as_slice()).unwrap();
        assert_eq!(out.len(), batch.encoded_len(), "as compact as prost's");
        batch.spans
    }

    #[test]
    fn a_record_decodes_to_the_span_it_describes() {
        let mut full = Record::new(7, Some(3), "chat", "small-a");
        full.start = 1_700_000_000_000_000_001;
        full.end = u64::MAX;
        full.action = "chat";
        full.model = "small-a";
        full.input_tokens = 300;
        full.output_tokens = 1;
        full.cost_usd = 0.000_084;
        full.cache_hit = true;
        full.baseline_cost_usd = 12.5;
        full.status = Some(Status {
            code: pb::SpanStatusCode::Error,
            error_type: Cow::Borrowed("rate_limited"),
            message: Cow::Owned("429 from the provider: é".into()),
        });
        full.set("gen_ai.request.model", "small-a");
        full.set("aios.attempt", 2_u64);
        full.set("aios.attempt", 3_u64);
        full.set("gen_ai.usage.input_tokens", 0_u64);
        full.set("empty", "");
        let mut bare = Record::new(u64::MAX, None, "invoke_agent", "");
        bare.status = Some(Status::OK);

        let spans = decoded(&[full, bare]);
        let span = &spans[0];
        assert_eq!(
            span.trace_id,
            0x0af7651916cd43dd8448eb211c80319c_u128.to_be_bytes()
        );
        assert_eq!(span.span_id, 7_u64.to_be_bytes());
        assert_eq!(span.parent_span_id, 3_u64.to_be_bytes());
        assert_eq!(span.name, "chat small-a");
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (1_700_000_000_000_000_001, u64::MAX)
        );
        assert_eq!(
            (
                span.tenant.as_str(),
                span.agent.as_str(),
                span.action.as_str(),
                span.model.as_str(),
                span.node.as_str(),
                span.region.as_str(),
                span.operation.as_str()
            ),
            ("acme", "support", "chat", "small-a", "node-1", "eu", "chat")
        );
        assert_eq!((span.input_tokens, span.output_tokens), (300, 1));
        assert_eq!((span.cost_usd, span.baseline_cost_usd), (0.000_084, 12.5));
        assert!(span.cache_hit);
        let status = span.status.as_ref().unwrap();
        assert_eq!(status.code, pb::SpanStatusCode::Error as i32);
        assert_eq!(status.error_type, "rate_limited");
        assert_eq!(status.message, "429 from the provider: é");
        assert_eq!(span.attributes.len(), 4);
        assert_eq!(span.attributes["aios.attempt"], "3", "set replaces");
        assert_eq!(span.attributes["gen_ai.usage.input_tokens"], "0");
        assert_eq!(span.attributes["empty"], "");

        let bare = &spans[1];
        assert_eq!(bare.name, "invoke_agent ");
        assert!(bare.parent_span_id.is_empty());
        assert_eq!(
            bare.status.as_ref().unwrap().code,
            pb::SpanStatusCode::Ok as i32
        );
        assert!(bare.attributes.is_empty());
    }

    #[test]
    fn counts_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 12_345, u64::MAX] {
            let mut digits = [0; 20];
            assert_eq!(decimal(n, &mut digits), n.to_string());
        }
    }
}
