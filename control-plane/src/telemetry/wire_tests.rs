#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;

use super::*;

fn span(tenant: &str) -> pb::Span {
    pb::Span {
        trace_id: vec![7; 16],
        span_id: vec![1; 8],
        parent_span_id: vec![2; 8],
        name: "chat gpt".into(),
        start_time_unix_nano: 10,
        end_time_unix_nano: 30,
        tenant: tenant.into(),
        agent: "bot".into(),
        action: "chat".into(),
        model: "gpt".into(),
        node: String::new(),
        region: "eu".into(),
        operation: "invoke_agent".into(),
        input_tokens: 12,
        output_tokens: 34,
        cost_usd: 0.25,
        cache_hit: true,
        baseline_cost_usd: 0.5,
        status: Some(pb::SpanStatus {
            code: pb::SpanStatusCode::Error as i32,
            error_type: "timeout".into(),
            message: "slow".into(),
        }),
        attributes: HashMap::from([("gen_ai.request.temperature".into(), "0.2".into())]),
    }
}

fn encoded(spans: Vec<pb::Span>, dropped_spans: u64) -> Vec<u8> {
    pb::SpanBatch {
        sequence: 9,
        spans,
        dropped_spans,
    }
    .encode_to_vec()
}

#[test]
fn a_batch_reads_in_place_as_it_decodes() {
    let spans = vec![span("acme"), pb::Span::default(), span("globex")];
    let batch = Encoded::read("n1", 5, encoded(spans.clone(), 3).into()).unwrap();
    assert_eq!((batch.layout.sequence, batch.layout.dropped_spans), (9, 3));
    assert_eq!(batch.len(), 3);
    let views: Vec<_> = batch.views().collect();
    for (i, (index, view)) in views.iter().enumerate() {
        assert_eq!(*index, i);
        assert_eq!(*view, SpanView::of(&spans[i]));
    }
    // Decoded on demand, with the sender's node where the span names none.
    let first = batch.span(0).unwrap();
    assert_eq!(
        first,
        pb::Span {
            node: "n1".into(),
            ..spans[0].clone()
        }
    );
    assert_eq!(batch.span(3), None);
    assert_eq!(batch.decode().unwrap().spans, spans);
}

#[test]
fn unknown_fields_are_skipped_as_decoding_does() {
    // Span field 99 (varint) and batch field 7 (bytes), appended.
    let mut one = span("acme").encode_to_vec();
    one.extend([0x98, 0x06, 0x01]);
    let mut bytes = Vec::new();
    prost::encoding::bytes::encode(2, &one, &mut bytes);
    prost::encoding::uint64::encode(1, &4, &mut bytes);
    prost::encoding::bytes::encode(7, &b"later".to_vec(), &mut bytes);
    let batch = Encoded::read("n1", 0, bytes.clone().into()).unwrap();
    assert_eq!(batch.layout.sequence, 4);
    assert_eq!(batch.view(0).unwrap(), SpanView::of(&span("acme")));
    assert!(pb::SpanBatch::decode(bytes.as_slice()).is_ok());
}

#[test]
fn what_would_not_decode_is_malformed_with_its_field() {
    let read = |bytes: Vec<u8>| Layout::read(&bytes).unwrap_err();
    // A tenant that is not UTF-8, in the second span.
    let mut bad = pb::Span {
        tenant: "x".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let at = bad.iter().position(|&b| b == b'x').unwrap();
    bad[at] = 0xff;
    let mut bytes = Vec::new();
    prost::encoding::message::encode(2, &span("acme"), &mut bytes);
    prost::encoding::bytes::encode(2, &bad, &mut bytes);
    assert!(pb::SpanBatch::decode(bytes.as_slice()).is_err());
    assert_eq!(read(bytes).field, "spans[1].tenant");
    // A string where a fixed64 belongs.
    let mut bytes = Vec::new();
    prost::encoding::string::encode(6, &"x".to_string(), &mut bytes);
    let mut batch = Vec::new();
    prost::encoding::bytes::encode(2, &bytes, &mut batch);
    assert_eq!(read(batch).field, "spans[0].end_time_unix_nano");
    // A status message cut short; a batch cut short.
    let whole = encoded(vec![span("acme")], 0);
    assert!(Layout::read(&whole[..whole.len() - 1]).is_err());
    let mut status = Vec::new();
    prost::encoding::bytes::encode(30, &vec![0x12, 0x05, b'a'], &mut status);
    let mut batch = Vec::new();
    prost::encoding::bytes::encode(2, &status, &mut batch);
    assert_eq!(read(batch).field, "spans[0].status.error_type");
    // Tag 0.
    assert_eq!(read(vec![0x00]).field, "");
}

/// Reading accepts exactly what decodes, and reads what decoding reads
/// (compared through `Debug`, where NaN equals NaN).
fn agrees(bytes: &[u8]) {
    let read = Layout::read(bytes);
    let decoded = pb::SpanBatch::decode(bytes);
    assert_eq!(
        read.is_ok(),
        decoded.is_ok(),
        "{bytes:?}: {read:?} vs {decoded:?}"
    );
    if let (Ok(layout), Ok(batch)) = (read, decoded) {
        assert_eq!(layout.sequence, batch.sequence);
        assert_eq!(layout.dropped_spans, batch.dropped_spans);
        let encoded = Encoded {
            node: String::new(),
            unix_minute: 0,
            bytes: bytes.to_vec().into(),
            layout,
        };
        let views: Vec<_> = encoded
            .views()
            .map(|(_, view)| format!("{view:?}"))
            .collect();
        let want: Vec<_> = batch
            .spans
            .iter()
            .map(|span| format!("{:?}", SpanView::of(span)))
            .collect();
        assert_eq!(views, want);
    }
}

#[test]
fn every_mangled_byte_reads_exactly_when_it_decodes() {
    let whole = encoded(vec![span("acme"), span("globex")], 2);
    for at in 0..whole.len() {
        for byte in [0x00, 0x01, 0x07, 0x0a, 0x0d, 0x12, 0x7f, 0x80, 0xc3, 0xff] {
            let mut bytes = whole.clone();
            bytes[at] = byte;
            agrees(&bytes);
        }
        agrees(&whole[..at]);
    }
}

#[test]
fn random_bytes_read_exactly_when_they_decode() {
    // A fixed xorshift sequence: the same cases every run.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        agrees(&bytes);
    }
}
