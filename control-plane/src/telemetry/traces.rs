//! A bounded in-memory index of recent traces, for `GetTrace`.
//!
//! Spans are not copied: the index points into the folded batches, kept as
//! their nodes encoded them (shared `Arc`s), and decodes a span only when
//! its trace is read, so a batch's memory is freed once its last trace is
//! evicted.
//! When the index holds more spans than its bound, whole traces leave,
//! oldest first (by when their first span arrived).

use std::{collections::VecDeque, sync::Arc};

use aios_proto::v1 as pb;

use super::{
    rollup::{FastMap, Filter},
    wire::{Encoded, SpanView},
};

/// A W3C trace id.
pub type TraceId = [u8; 16];

/// One span, inside the batch it arrived in.
#[derive(Clone, Debug)]
struct SpanRef {
    batch: Arc<Encoded>,
    index: usize,
}

/// Recent traces by id, holding at most `capacity` spans.
#[derive(Debug)]
pub struct TraceIndex {
    capacity: usize,
    spans: usize,
    traces: FastMap<TraceId, Vec<SpanRef>>,
    /// Trace ids by first arrival, oldest first.
    order: VecDeque<TraceId>,
}

impl TraceIndex {
    /// An empty index bounded to `capacity` spans.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            spans: 0,
            traces: FastMap::default(),
            order: VecDeque::new(),
        }
    }

    /// Indexes every span of `batch` with a 16-byte trace id, given as
    /// `spans` (span index in the batch, and its view), then evicts the
    /// oldest traces beyond the bound.
    pub(crate) fn add(&mut self, batch: &Arc<Encoded>, spans: &[(usize, SpanView<'_>)]) {
        for &(index, ref span) in spans {
            let Ok(id) = TraceId::try_from(span.trace_id) else {
                continue;
            };
            let refs = self.traces.entry(id).or_insert_with(|| {
                self.order.push_back(id);
                Vec::new()
            });
            refs.push(SpanRef {
                batch: batch.clone(),
                index,
            });
            self.spans += 1;
        }
        while self.spans > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(refs) = self.traces.remove(&oldest) {
                self.spans -= refs.len();
            }
        }
    }

    /// The spans of trace `id` that `filter` lets the caller see, ordered by
    /// start time; empty when the trace is unknown or aged out.
    pub fn get(&self, id: &TraceId, filter: &Filter) -> Vec<pb::Span> {
        let mut spans: Vec<pb::Span> = self
            .traces
            .get(id)
            .into_iter()
            .flatten()
            .filter(|at| {
                at.batch
                    .view(at.index)
                    .is_some_and(|span| filter.admits(&span, &at.batch.node))
            })
            .filter_map(|at| at.batch.span(at.index))
            .collect();
        spans.sort_by_key(|span| (span.start_time_unix_nano, span.end_time_unix_nano));
        spans
    }

    /// Spans held.
    pub fn len(&self) -> usize {
        self.spans
    }

    /// Whether no span is held.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }
}

/// Parses a trace id written as 32 lowercase hex characters.
pub fn parse_trace_id(text: &str) -> Option<TraceId> {
    let bytes = text.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut id = [0; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        id[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::rollup::TenantScope;

    fn span(trace: u8, tenant: &str, start: u64) -> pb::Span {
        pb::Span {
            trace_id: vec![trace; 16],
            span_id: vec![start as u8; 8],
            start_time_unix_nano: start,
            end_time_unix_nano: start + 10,
            tenant: tenant.into(),
            ..Default::default()
        }
    }

    /// Adds `spans` as one batch from node `n1`, as the feed does.
    fn add(index: &mut TraceIndex, spans: Vec<pb::Span>) {
        use prost::Message;
        let bytes = pb::SpanBatch {
            sequence: 1,
            spans,
            dropped_spans: 0,
        }
        .encode_to_vec();
        let batch = Arc::new(Encoded::read("n1", 0, bytes.into()).unwrap());
        let views: Vec<_> = batch.views().collect();
        index.add(&batch, &views);
    }

    #[test]
    fn spans_come_back_by_start_time_and_scoped_to_the_tenant() {
        let mut index = TraceIndex::new(100);
        add(&mut index, vec![span(1, "acme", 30), span(2, "acme", 5)]);
        add(&mut index, vec![span(1, "acme", 10), span(1, "globex", 20)]);
        let all = Filter::tenant(TenantScope::All);
        let starts: Vec<u64> = index
            .get(&[1; 16], &all)
            .iter()
            .map(|s| s.start_time_unix_nano)
            .collect();
        assert_eq!(starts, [10, 20, 30]);
        let acme = Filter::tenant(TenantScope::One("acme".into()));
        assert_eq!(index.get(&[1; 16], &acme).len(), 2);
        let initech = Filter::tenant(TenantScope::One("initech".into()));
        assert!(index.get(&[1; 16], &initech).is_empty());
        assert!(index.get(&[9; 16], &all).is_empty());
        // A span that names no node ran on the node that sent its batch.
        assert!(index.get(&[1; 16], &all).iter().all(|s| s.node == "n1"));
        let elsewhere = Filter {
            node: "n2".into(),
            ..Filter::tenant(TenantScope::All)
        };
        assert!(index.get(&[1; 16], &elsewhere).is_empty());
    }

    #[test]
    fn the_oldest_traces_leave_first_beyond_the_bound() {
        let mut index = TraceIndex::new(4);
        add(&mut index, vec![span(1, "a", 1), span(1, "a", 2)]);
        add(&mut index, vec![span(2, "a", 3), span(3, "a", 4)]);
        assert_eq!(index.len(), 4);
        add(&mut index, vec![span(4, "a", 5)]);
        let all = Filter::tenant(TenantScope::All);
        assert!(index.get(&[1; 16], &all).is_empty(), "oldest evicted whole");
        assert_eq!(index.len(), 3);
        assert_eq!(index.get(&[4; 16], &all).len(), 1);
        // Spans without a 16-byte trace id are not indexed.
        add(&mut index, vec![pb::Span::default()]);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn trace_ids_are_32_lowercase_hex_characters() {
        let id = parse_trace_id("0af7651916cd43dd8448eb211c80319c").unwrap();
        assert_eq!(id[0], 0x0a);
        assert_eq!(id[15], 0x9c);
        assert!(parse_trace_id("0AF7651916CD43DD8448EB211C80319C").is_none());
        assert!(parse_trace_id("0af7651916cd43dd8448eb211c80319").is_none());
        assert!(parse_trace_id("0af7651916cd43dd8448eb211c80319g").is_none());
    }
}
