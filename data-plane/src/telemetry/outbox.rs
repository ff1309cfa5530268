//! Where the request path leaves finished spans: a bounded queue to the
//! reporter. Sending never waits and, below a batch's worth of spans, never
//! wakes the reporter either: a wake-up per request (a futex call when the
//! reporter's thread is parked) cost more than building the spans, so the
//! reporter looks every [`POLL`] and is woken only when a batch is ready.
//! When the reporter falls behind and the queue is full, the spans are
//! dropped and counted, and the count rides on the next batch
//! (`SpanBatch.dropped_spans`).
//!
//! A request's spans travel [`Encoded`]: the request's task encodes them
//! as they will sit in a batch and frees them where they were allocated,
//! so one buffer crosses to the reporter's thread instead of dozens of
//! small allocations. (Freed on another thread, glibc returned those to the
//! request thread's arena and consolidated them on its next large
//! allocation: measured, that made a request cost 1.5x the CPU.) The
//! reporter appends them to its batch as they are.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use aios_proto::v1 as pb;
use prost::Message;
use tokio::sync::Notify;

use super::record::{self, Record};

/// Requests' spans the outbox holds before it drops (one entry per request).
pub const DEFAULT_OUTBOX_CAPACITY: usize = 8192;

/// How often the reporter looks at the outbox when nobody woke it.
pub const POLL: Duration = Duration::from_millis(50);

/// Spans waiting that make a sender wake the reporter (a batch's worth).
const WAKE_AT: usize = 1000;

/// One request's spans, encoded as `SpanBatch.spans` entries: appended to
/// an encoded batch they are its spans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    bytes: Vec<u8>,
    spans: usize,
}

impl Encoded {
    /// Encodes `spans` (tests: the request path encodes records).
    #[cfg(test)]
    pub(crate) fn new(spans: &[pb::Span]) -> Self {
        let mut bytes = Vec::with_capacity(prost::encoding::message::encoded_len_repeated(
            record::SPANS_FIELD,
            spans,
        ));
        for span in spans {
            prost::encoding::message::encode(record::SPANS_FIELD, span, &mut bytes);
        }
        Self {
            bytes,
            spans: spans.len(),
        }
    }

    /// Encodes the records of one request's spans.
    pub fn from_records(shared: &record::Shared<'_>, records: &[Record<'_>]) -> Self {
        let mut bytes = Vec::new();
        for record in records {
            record.encode(shared, &mut bytes);
        }
        Self {
            bytes,
            spans: records.len(),
        }
    }

    /// How many spans.
    pub fn len(&self) -> usize {
        self.spans
    }

    /// No span.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// The encoded entries.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The spans again (tests and tools; the reporter never decodes).
    pub fn decode(&self) -> Result<Vec<pb::Span>, prost::DecodeError> {
        Ok(pb::SpanBatch::decode(self.bytes.as_slice())?.spans)
    }
}

/// The sending side, held by the pipeline; cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The reporter's side.
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<Shared>,
    /// What the last look took from the queue, not yet handed on: the
    /// receiver takes everything waiting under one lock, so the request
    /// path meets the lock held once per look, not once per request.
    taken: VecDeque<Encoded>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<Encoded>>,
    capacity: usize,
    /// Spans queued (not entries): what decides a wake-up.
    spans: AtomicUsize,
    wake: Notify,
    receiver_alive: AtomicBool,
    dropped: AtomicU64,
}

/// An outbox holding up to `capacity` requests' spans.
pub fn outbox(capacity: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        capacity: capacity.max(1),
        spans: AtomicUsize::new(0),
        wake: Notify::new(),
        receiver_alive: AtomicBool::new(true),
        dropped: AtomicU64::new(0),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxReceiver {
            shared,
            taken: VecDeque::new(),
        },
    )
}

// === impl Outbox ===

impl Outbox {
    /// Hands one request's spans to the reporter without waiting; returns
    /// false (and counts them as dropped) when the outbox is full or the
    /// reporter is gone.
    pub fn send(&self, spans: Encoded) -> bool {
        if spans.is_empty() {
            return true;
        }
        let count = spans.len();
        let shared = &self.shared;
        // Spans queued before these; `None` = not queued. Counted under the
        // lock, so the count never runs behind the queue.
        let before = match shared.receiver_alive.load(Ordering::Acquire) {
            false => None,
            true => {
                let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
                (queue.len() < shared.capacity).then(|| {
                    queue.push_back(spans);
                    shared.spans.fetch_add(count, Ordering::Relaxed)
                })
            }
        };
        let Some(before) = before else {
            shared.dropped.fetch_add(count as u64, Ordering::Relaxed);
            metrics::counter!("aios_telemetry_spans_dropped_total", "where" => "outbox")
                .increment(count as u64);
            return false;
        };
        if before < WAKE_AT && before + count >= WAKE_AT {
            shared.wake.notify_one();
        }
        true
    }

    /// Spans dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

// === impl OutboxReceiver ===

impl OutboxReceiver {
    /// The next request's spans, waiting (up to [`POLL`] at a time) until
    /// some arrive; `None` once every [`Outbox`] is gone and none is left.
    pub async fn recv(&mut self) -> Option<Encoded> {
        loop {
            if let Some(spans) = self.try_recv() {
                return Some(spans);
            }
            // Only this receiver holds the queue: no sender is left.
            if Arc::strong_count(&self.shared) == 1 {
                return None;
            }
            let _ = tokio::time::timeout(POLL, self.shared.wake.notified()).await;
        }
    }

    /// The next request's spans if one is waiting.
    pub fn try_recv(&mut self) -> Option<Encoded> {
        if self.taken.is_empty() {
            let mut queue = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // The emptied buffer goes back, so neither side allocates once
            // both have grown to the load.
            std::mem::swap(&mut *queue, &mut self.taken);
            let spans: usize = self.taken.iter().map(Encoded::len).sum();
            self.shared.spans.fetch_sub(spans, Ordering::Relaxed);
        }
        self.taken.pop_front()
    }

    /// Spans dropped since the last call (the count resets).
    pub fn take_dropped(&self) -> u64 {
        self.shared.dropped.swap(0, Ordering::Relaxed)
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spans(n: usize) -> Encoded {
        Encoded::new(&vec![pb::Span::default(); n])
    }

    #[test]
    fn encoded_spans_are_a_batch_s_spans() {
        let spans: Vec<pb::Span> = ["a", "b"]
            .iter()
            .map(|name| pb::Span {
                name: (*name).into(),
                tenant: "acme".into(),
                ..Default::default()
            })
            .collect();
        let encoded = Encoded::new(&spans);
        assert_eq!(encoded.len(), 2);
        assert_eq!(encoded.decode().unwrap(), spans);
        let batch = pb::SpanBatch {
            sequence: 0,
            spans: spans.clone(),
            dropped_spans: 0,
        };
        assert_eq!(encoded.as_bytes(), batch.encode_to_vec(), "byte for byte");
        assert!(Encoded::new(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_full_outbox_drops_and_counts_every_span() {
        let (outbox, mut receiver) = outbox(2);
        assert!(outbox.send(spans(3)));
        assert!(outbox.send(spans(1)));
        assert!(!outbox.send(spans(4)), "full");
        assert!(!outbox.send(spans(2)), "still full");
        assert_eq!(outbox.dropped(), 6);
        assert_eq!(receiver.take_dropped(), 6);
        assert_eq!(receiver.take_dropped(), 0, "the count resets once taken");
        assert_eq!(receiver.recv().await.unwrap().len(), 3);
        assert!(outbox.send(spans(5)), "room again");
        assert_eq!(receiver.try_recv().unwrap().len(), 1);
        assert_eq!(receiver.try_recv().unwrap().len(), 5);
        assert!(receiver.try_recv().is_none());
    }

    #[tokio::test]
    async fn spans_sent_after_the_reporter_stopped_are_counted_as_dropped() {
        let (outbox, receiver) = outbox(4);
        drop(receiver);
        assert!(!outbox.send(spans(2)));
        assert_eq!(outbox.dropped(), 2);
    }
}
