//! Where the request path leaves finished spans: a bounded channel to the
//! reporter. Sending never waits; when the reporter falls behind and the
//! channel is full, the spans are dropped and counted, and the count rides
//! on the next batch (`SpanBatch.dropped_spans`).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aios_proto::v1 as pb;
use tokio::sync::mpsc;

/// Requests' spans the outbox holds before it drops (one entry per request).
pub const DEFAULT_OUTBOX_CAPACITY: usize = 8192;

/// The sending side, held by the pipeline; cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Vec<pb::Span>>,
    dropped: Arc<AtomicU64>,
}

/// The reporter's side.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Vec<pb::Span>>,
    dropped: Arc<AtomicU64>,
}

/// An outbox holding up to `capacity` requests' spans.
pub fn outbox(capacity: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    (
        Outbox {
            tx,
            dropped: dropped.clone(),
        },
        OutboxReceiver { rx, dropped },
    )
}

// === impl Outbox ===

impl Outbox {
    /// Hands one request's spans to the reporter without waiting; returns
    /// false (and counts them as dropped) when the outbox is full or the
    /// reporter is gone.
    pub fn send(&self, spans: Vec<pb::Span>) -> bool {
        if spans.is_empty() {
            return true;
        }
        match self.tx.try_send(spans) {
            Ok(()) => true,
            Err(
                mpsc::error::TrySendError::Full(spans) | mpsc::error::TrySendError::Closed(spans),
            ) => {
                self.dropped
                    .fetch_add(spans.len() as u64, Ordering::Relaxed);
                metrics::counter!("aios_telemetry_spans_dropped_total", "where" => "outbox")
                    .increment(spans.len() as u64);
                false
            }
        }
    }

    /// Spans dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

// === impl OutboxReceiver ===

impl OutboxReceiver {
    /// The next request's spans; `None` once every [`Outbox`] is gone.
    pub async fn recv(&mut self) -> Option<Vec<pb::Span>> {
        self.rx.recv().await
    }

    /// The next request's spans if one is waiting.
    pub fn try_recv(&mut self) -> Option<Vec<pb::Span>> {
        self.rx.try_recv().ok()
    }

    /// Spans dropped since the last call (the count resets).
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spans(n: usize) -> Vec<pb::Span> {
        vec![pb::Span::default(); n]
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
