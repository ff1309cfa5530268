//! Span batches as nodes encode them, read in place.
//!
//! Ingest stores a batch exactly as the node encoded it, and the feed folds
//! it from those bytes: the rollups need only each span's dimensions and
//! numbers, so a span is read as a [`SpanView`] of borrowed strings, without
//! allocating, and decoded into a `pb::Span` only when one is asked for
//! (`GetTrace`, a subscriber with spans, the OTLP export). Reading a batch
//! checks it as strictly as decoding it would (keys, wire types, lengths,
//! UTF-8 of every string, nested status and attributes), so whatever ingest
//! accepts decodes later.

use std::ops::Range;

use aios_proto::v1 as pb;
use prost::{
    DecodeError, Message,
    bytes::{Buf, Bytes},
    encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field},
};

// === Errors ===

/// Why a batch does not read: the field (a path below the batch) and what
/// is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Malformed {
    /// E.g. `spans[3].tenant`.
    pub field: String,
    /// What is wrong.
    pub why: String,
}

impl Malformed {
    fn new(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            why: why.into(),
        }
    }

    fn decode(field: impl Into<String>, error: DecodeError) -> Self {
        Self::new(field, error.to_string())
    }

    /// The same error, for the span at `index` of a batch.
    fn in_span(self, index: usize) -> Self {
        let field = match self.field.as_str() {
            "" => format!("spans[{index}]"),
            field => format!("spans[{index}].{field}"),
        };
        Self { field, ..self }
    }
}

// === Spans ===

/// What the rollups, the trace index and span filters read of a span,
/// borrowed from its encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpanView<'a> {
    /// W3C trace id (16 bytes when valid).
    pub trace_id: &'a [u8],
    /// Start, nanoseconds since the Unix epoch.
    pub start_time_unix_nano: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_time_unix_nano: u64,
    /// Tenant.
    pub tenant: &'a str,
    /// Agent.
    pub agent: &'a str,
    /// Model.
    pub model: &'a str,
    /// Node; empty = the node that sent the batch.
    pub node: &'a str,
    /// Region.
    pub region: &'a str,
    /// GenAI operation.
    pub operation: &'a str,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost, USD.
    pub cost_usd: f64,
    /// Whether served from the cache.
    pub cache_hit: bool,
    /// Baseline cost, USD.
    pub baseline_cost_usd: f64,
    /// `SpanStatusCode` of the status (0 when unset).
    pub status_code: i32,
}

impl<'a> SpanView<'a> {
    /// The view of a decoded span.
    pub fn of(span: &'a pb::Span) -> Self {
        Self {
            trace_id: &span.trace_id,
            start_time_unix_nano: span.start_time_unix_nano,
            end_time_unix_nano: span.end_time_unix_nano,
            tenant: &span.tenant,
            agent: &span.agent,
            model: &span.model,
            node: &span.node,
            region: &span.region,
            operation: &span.operation,
            input_tokens: span.input_tokens,
            output_tokens: span.output_tokens,
            cost_usd: span.cost_usd,
            cache_hit: span.cache_hit,
            baseline_cost_usd: span.baseline_cost_usd,
            status_code: span.status.as_ref().map_or(0, |status| status.code),
        }
    }

    /// Reads one encoded `Span` (the message's body), checking all of it.
    pub(crate) fn read(mut buf: &'a [u8]) -> Result<Self, Malformed> {
        let mut view = Self::default();
        while !buf.is_empty() {
            let (tag, wire) = decode_key(&mut buf).map_err(|e| Malformed::decode("", e))?;
            let name = span_field(tag);
            match tag {
                1 => view.trace_id = bytes_field(&mut buf, wire, name)?,
                2 | 3 => {
                    bytes_field(&mut buf, wire, name)?;
                }
                4 | 12 => {
                    string(&mut buf, wire, name)?;
                }
                5 => view.start_time_unix_nano = fixed64(&mut buf, wire, name)?,
                6 => view.end_time_unix_nano = fixed64(&mut buf, wire, name)?,
                10 => view.tenant = string(&mut buf, wire, name)?,
                11 => view.agent = string(&mut buf, wire, name)?,
                13 => view.model = string(&mut buf, wire, name)?,
                14 => view.node = string(&mut buf, wire, name)?,
                15 => view.region = string(&mut buf, wire, name)?,
                16 => view.operation = string(&mut buf, wire, name)?,
                20 => view.input_tokens = varint(&mut buf, wire, name)?,
                21 => view.output_tokens = varint(&mut buf, wire, name)?,
                22 => view.cost_usd = f64::from_bits(fixed64(&mut buf, wire, name)?),
                23 => view.cache_hit = varint(&mut buf, wire, name)? != 0,
                24 => view.baseline_cost_usd = f64::from_bits(fixed64(&mut buf, wire, name)?),
                30 => {
                    let status = bytes_field(&mut buf, wire, name)?;
                    // A repeated message field merges: the last code set wins.
                    if let Some(code) = read_status(status)? {
                        view.status_code = code;
                    }
                }
                31 => read_attribute(bytes_field(&mut buf, wire, name)?)?,
                _ => skip(&mut buf, wire, tag, "")?,
            }
        }
        Ok(view)
    }
}

/// The name of `Span` field `tag`, for errors.
fn span_field(tag: u32) -> &'static str {
    match tag {
        1 => "trace_id",
        2 => "span_id",
        3 => "parent_span_id",
        4 => "name",
        5 => "start_time_unix_nano",
        6 => "end_time_unix_nano",
        10 => "tenant",
        11 => "agent",
        12 => "action",
        13 => "model",
        14 => "node",
        15 => "region",
        16 => "operation",
        20 => "input_tokens",
        21 => "output_tokens",
        22 => "cost_usd",
        23 => "cache_hit",
        24 => "baseline_cost_usd",
        30 => "status",
        31 => "attributes",
        _ => "",
    }
}

/// A `SpanStatus`: its code, if set; checks its strings.
fn read_status(mut buf: &[u8]) -> Result<Option<i32>, Malformed> {
    let mut code = None;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| Malformed::decode("status", e))?;
        match tag {
            1 => code = Some(varint(&mut buf, wire, "status.code")? as i32),
            2 => {
                string(&mut buf, wire, "status.error_type")?;
            }
            3 => {
                string(&mut buf, wire, "status.message")?;
            }
            _ => skip(&mut buf, wire, tag, "status")?,
        }
    }
    Ok(code)
}

/// One `attributes` map entry: checks its key and value.
fn read_attribute(mut buf: &[u8]) -> Result<(), Malformed> {
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| Malformed::decode("attributes", e))?;
        match tag {
            1 | 2 => {
                string(&mut buf, wire, "attributes")?;
            }
            _ => skip(&mut buf, wire, tag, "attributes")?,
        }
    }
    Ok(())
}

// === Batches ===

/// A batch's own fields, and where each of its spans lies in its encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The batch's sequence.
    pub sequence: u64,
    /// Spans the node dropped.
    pub dropped_spans: u64,
    /// Where each span's encoding lies, in order.
    pub spans: Vec<Range<usize>>,
}

impl Layout {
    /// Reads an encoded `SpanBatch`, checking every span.
    pub(crate) fn read(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut layout = Self::default();
        let mut buf = bytes;
        while !buf.is_empty() {
            let (tag, wire) = decode_key(&mut buf).map_err(|e| Malformed::decode("", e))?;
            match tag {
                1 => layout.sequence = varint(&mut buf, wire, "sequence")?,
                2 => {
                    let span = bytes_field(&mut buf, wire, "spans")?;
                    let index = layout.spans.len();
                    SpanView::read(span).map_err(|e| e.in_span(index))?;
                    // `span` is a slice of `bytes`: its offset is the distance.
                    let start = span.as_ptr() as usize - bytes.as_ptr() as usize;
                    layout.spans.push(start..start + span.len());
                }
                3 => layout.dropped_spans = varint(&mut buf, wire, "dropped_spans")?,
                _ => skip(&mut buf, wire, tag, "")?,
            }
        }
        Ok(layout)
    }
}

/// A stored batch as its node encoded it, who sent it, when it was taken,
/// and where its spans lie; read once, shared by the rollups, the trace
/// index and subscribers.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The node that sent it (spans without a node ran there).
    pub node: String,
    /// The minute it was taken (Unix minutes).
    pub unix_minute: u64,
    /// The encoded `SpanBatch`.
    pub bytes: Bytes,
    /// Its fields and spans.
    pub layout: Layout,
}

impl Encoded {
    /// Reads `bytes`, an encoded `SpanBatch` from `node` taken in
    /// `unix_minute`, checking every span.
    pub(crate) fn read(node: &str, unix_minute: u64, bytes: Bytes) -> Result<Self, Malformed> {
        let layout = Layout::read(&bytes)?;
        Ok(Self {
            node: node.to_string(),
            unix_minute,
            bytes,
            layout,
        })
    }

    /// Every span's index and view, in order.
    pub(crate) fn views(&self) -> impl Iterator<Item = (usize, SpanView<'_>)> {
        // Each span was checked when the batch was read.
        (0..self.len()).filter_map(|index| Some((index, self.view(index)?)))
    }

    /// The view of span `index`.
    pub(crate) fn view(&self, index: usize) -> Option<SpanView<'_>> {
        let range = self.layout.spans.get(index)?;
        SpanView::read(self.bytes.get(range.clone())?).ok()
    }

    /// Span `index`, decoded, with this batch's node when it names none.
    pub(crate) fn span(&self, index: usize) -> Option<pb::Span> {
        let range = self.layout.spans.get(index)?;
        let mut span = pb::Span::decode(self.bytes.get(range.clone())?).ok()?;
        if span.node.is_empty() {
            span.node.clone_from(&self.node);
        }
        Some(span)
    }

    /// Spans in the batch.
    pub(crate) fn len(&self) -> usize {
        self.layout.spans.len()
    }

    /// The whole batch, decoded (spans keep their node as sent).
    pub(crate) fn decode(&self) -> Result<pb::SpanBatch, DecodeError> {
        pb::SpanBatch::decode(self.bytes.as_ref())
    }
}

// === Fields ===

fn wire_error(field: &str, wire: WireType, want: WireType) -> Malformed {
    Malformed::new(
        field,
        format!("invalid wire type: {wire:?} (expected {want:?})"),
    )
}

fn varint(buf: &mut &[u8], wire: WireType, field: &str) -> Result<u64, Malformed> {
    if wire != WireType::Varint {
        return Err(wire_error(field, wire, WireType::Varint));
    }
    decode_varint(buf).map_err(|e| Malformed::decode(field, e))
}

fn fixed64(buf: &mut &[u8], wire: WireType, field: &str) -> Result<u64, Malformed> {
    if wire != WireType::SixtyFourBit {
        return Err(wire_error(field, wire, WireType::SixtyFourBit));
    }
    if buf.len() < 8 {
        return Err(Malformed::new(field, "buffer underflow"));
    }
    Ok(buf.get_u64_le())
}

/// A length-delimited field's bytes.
fn bytes_field<'a>(buf: &mut &'a [u8], wire: WireType, field: &str) -> Result<&'a [u8], Malformed> {
    if wire != WireType::LengthDelimited {
        return Err(wire_error(field, wire, WireType::LengthDelimited));
    }
    let len = decode_varint(buf).map_err(|e| Malformed::decode(field, e))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= buf.len())
        .ok_or_else(|| Malformed::new(field, "buffer underflow"))?;
    let (value, rest) = buf.split_at(len);
    *buf = rest;
    Ok(value)
}

fn string<'a>(buf: &mut &'a [u8], wire: WireType, field: &str) -> Result<&'a str, Malformed> {
    let value = bytes_field(buf, wire, field)?;
    std::str::from_utf8(value).map_err(|_| Malformed::new(field, "is not valid UTF-8"))
}

fn skip(buf: &mut &[u8], wire: WireType, tag: u32, field: &str) -> Result<(), Malformed> {
    skip_field(wire, tag, buf, DecodeContext::default()).map_err(|e| Malformed::decode(field, e))
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
