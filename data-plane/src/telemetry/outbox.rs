//! Where the request path leaves finished spans: a bounded queue to the
//! reporter. Sending never waits and, below a batch's worth of spans, never
//! wakes the reporter either: a wake-up per request (a futex call when the
//! reporter's thread is parked) cost more than building the spans, so the
//! reporter looks every [`POLL`] and is woken only when a batch is ready.
//! When the reporter falls behind and the queue is full, the spans are
//! dropped and counted, and the count rides on the next batch
//! (`SpanBatch.dropped_spans`).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use aios_proto::v1 as pb;
use tokio::sync::Notify;

/// Requests' spans the outbox holds before it drops (one entry per request).
pub const DEFAULT_OUTBOX_CAPACITY: usize = 8192;

/// How often the reporter looks at the outbox when nobody woke it.
pub const POLL: Duration = Duration::from_millis(50);

/// Spans waiting that make a sender wake the reporter (a batch's worth).
const WAKE_AT: usize = 1000;

/// The sending side, held by the pipeline; cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The reporter's side.
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<Vec<pb::Span>>>,
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
        OutboxReceiver { shared },
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
    pub async fn recv(&mut self) -> Option<Vec<pb::Span>> {
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
    pub fn try_recv(&mut self) -> Option<Vec<pb::Span>> {
        let mut queue = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let spans = queue.pop_front()?;
        self.shared.spans.fetch_sub(spans.len(), Ordering::Relaxed);
        Some(spans)
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
