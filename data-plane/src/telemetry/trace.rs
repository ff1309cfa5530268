//! W3C trace context (`traceparent`): join the caller's trace or start
//! one, give this node's request its own span id, and hand that span to
//! whatever runs downstream (tools), each tool call as a child of its own.
//!
//! Both edges use it: the gRPC edge reads and answers gRPC metadata, the
//! HTTP edge the headers of the same name.

use tonic::metadata::{MetadataMap, MetadataValue};

/// The header (and gRPC metadata key) carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A request's place in a W3C trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace: the caller's, or one this node started. Never 0.
    pub trace_id: u128,
    /// This node's request span. Never 0.
    pub span_id: u64,
    /// The caller's span, when it came with a valid `traceparent`.
    pub parent: Option<u64>,
}

impl TraceContext {
    /// Joins the trace of a valid `traceparent` (as the caller's child),
    /// or starts a new trace when there is none or it is malformed.
    pub fn join(traceparent: Option<&str>) -> Self {
        let caller = traceparent.and_then(parse);
        Self {
            trace_id: caller.map_or_else(|| rand::random::<u128>() | 1, |(trace, _)| trace),
            span_id: new_span_id(),
            parent: caller.map(|(_, parent)| parent),
        }
    }

    /// [`TraceContext::join`] on the caller's metadata, which then carries
    /// this node's span for everything downstream.
    pub fn join_metadata(metadata: &mut MetadataMap) -> Self {
        let trace = Self::join(metadata.get(TRACEPARENT).and_then(|v| v.to_str().ok()));
        trace.answer(metadata);
        trace
    }

    /// The trace id as 32 lowercase hex digits (responses carry it).
    pub fn trace_id_hex(&self) -> String {
        hex(self.trace_id, 32)
    }

    /// `traceparent` naming this node's request span.
    pub fn traceparent(&self) -> String {
        self.child_traceparent(self.span_id)
    }

    /// `traceparent` naming `span_id`, a span of this trace (a tool call).
    pub fn child_traceparent(&self, span_id: u64) -> String {
        ascii_string(&self.traceparent_bytes(span_id))
    }

    /// Sets `traceparent` in `metadata` to this node's request span (the
    /// response's metadata, or the request's for downstream calls).
    pub fn answer(&self, metadata: &mut MetadataMap) {
        if let Ok(value) = MetadataValue::try_from(&self.traceparent_bytes(self.span_id)[..]) {
            metadata.insert(TRACEPARENT, value);
        }
    }

    /// `00-<trace id>-<span_id>-01`: written by hand, as it is on every
    /// request (`format!` costs several times more).
    fn traceparent_bytes(&self, span_id: u64) -> [u8; TRACEPARENT_LEN] {
        let mut out = *b"00-________________________________-________________-01";
        put_hex(&mut out[3..35], self.trace_id);
        put_hex(&mut out[36..52], u128::from(span_id));
        out
    }
}

/// The low `digits` hex digits of `value` (at most 32), zero-padded and
/// lowercase, e.g. an id made on every request: `format!("{:032x}")` costs
/// several times more.
pub(crate) fn hex(value: u128, digits: usize) -> String {
    let mut buf = [0; 32];
    let digits = &mut buf[..digits.min(32)];
    put_hex(digits, value);
    ascii_string(digits)
}

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// Fills `out` with the low `2 × out.len()` bits of `value` as lowercase
/// hex, most significant digit first.
fn put_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// `bytes` (ASCII by construction) as a `String`.
fn ascii_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh, non-zero span id.
pub fn new_span_id() -> u64 {
    rand::random::<u64>() | 1
}

/// `(trace id, parent span id)` of a valid `traceparent`
/// (`version-trace-parent-flags`, lowercase hex, ids not all zero, version
/// not `ff`).
fn parse(value: &str) -> Option<(u128, u64)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    // Version 00 has exactly four fields; later versions may append more.
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok()?;
    let parent = u64::from_str_radix(parent, 16).ok()?;
    (trace != 0 && parent != 0).then_some((trace, parent))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_joined_as_the_callers_child() {
        let mut md = MetadataMap::new();
        md.insert(TRACEPARENT, CALLER.parse().unwrap());
        let trace = TraceContext::join_metadata(&mut md);
        assert_eq!(trace.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(trace.parent, Some(0xb7ad_6b71_6920_3331));
        assert_ne!(trace.span_id, 0xb7ad_6b71_6920_3331, "this node's own span");
        let downstream = md.get(TRACEPARENT).unwrap().to_str().unwrap();
        assert_eq!(downstream, trace.traceparent());
        assert!(downstream.contains(&format!("{:016x}", trace.span_id)));
    }

    #[test]
    fn anything_else_starts_a_trace_without_a_parent() {
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "garbage",
        ] {
            let trace = TraceContext::join(Some(bad));
            assert_ne!(
                trace.trace_id, 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
                "{bad}"
            );
            assert_eq!(trace.parent, None, "{bad}");
            assert_eq!(trace.trace_id_hex().len(), 32);
        }
        let fresh = TraceContext::join(None);
        assert_ne!(fresh.trace_id, 0);
        assert_ne!(fresh.span_id, 0);
    }

    #[test]
    fn ids_are_written_as_fixed_width_lowercase_hex() {
        let trace = TraceContext {
            trace_id: 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            span_id: 0xb7,
            parent: None,
        };
        assert_eq!(trace.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(0xb7, 16), "00000000000000b7");
        assert_eq!(hex(u128::MAX, 40), "f".repeat(32));
        assert_eq!(
            trace.traceparent(),
            "00-0af7651916cd43dd8448eb211c80319c-00000000000000b7-01"
        );
        assert_eq!(
            trace.child_traceparent(u64::MAX),
            "00-0af7651916cd43dd8448eb211c80319c-ffffffffffffffff-01"
        );
        let mut md = MetadataMap::new();
        trace.answer(&mut md);
        assert_eq!(md.get(TRACEPARENT).unwrap(), trace.traceparent().as_str());
        // What this node writes, it reads back.
        let again = TraceContext::join(Some(&trace.traceparent()));
        assert_eq!((again.trace_id, again.parent), (trace.trace_id, Some(0xb7)));
    }

    #[test]
    fn a_later_version_with_more_fields_is_joined() {
        let trace = TraceContext::join(Some(
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-ever",
        ));
        assert_eq!(trace.parent, Some(0xb7ad_6b71_6920_3331));
    }
}
