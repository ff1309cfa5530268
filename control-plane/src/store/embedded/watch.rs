//! Watches: history replay spliced with live commits.

use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use super::{
    COMPACT_REVISION, Committed, Context, HISTORY, Inner, META, blocking, decode, meta_get,
    records::{HistoryEntry, to_event},
};
use crate::store::{Event, Revision, StoreError, WatchMessage};

/// Live commits buffered per watcher before it lags and falls back to history.
/// Small under test so the fallback runs in every watch test.
pub(super) const LIVE_CAPACITY: usize = if cfg!(test) { 4 } else { 1024 };
/// Revisions read per history transaction when a watch replays.
const REPLAY_BATCH: usize = 256;

// === watch ===

enum Replay {
    Compacted(Revision),
    /// Events under the prefix from the revisions read; `last` is the
    /// newest revision read (`None`: history holds nothing that new yet).
    Batch {
        last: Option<Revision>,
        events: Vec<Event>,
    },
}

pub(super) struct Watch {
    pub(super) inner: Arc<Inner>,
    pub(super) prefix: String,
    pub(super) live: broadcast::Receiver<Arc<Committed>>,
    /// Oldest revision not yet delivered.
    pub(super) next: Revision,
    pub(super) replaying: bool,
}

impl Watch {
    pub(super) async fn next_message(&mut self) -> Option<Result<WatchMessage, StoreError>> {
        loop {
            if self.replaying {
                let (prefix, from) = (self.prefix.clone(), self.next);
                match blocking(self.inner.clone(), move |inner| inner.replay(&prefix, from)).await {
                    Err(error) => return Some(Err(error)),
                    Ok(Replay::Compacted(compact_revision)) => {
                        return Some(Ok(WatchMessage::Compacted { compact_revision }));
                    }
                    // Caught up: anything newer arrives live (we subscribed first).
                    Ok(Replay::Batch { last: None, .. }) => self.replaying = false,
                    Ok(Replay::Batch {
                        last: Some(last),
                        events,
                    }) => {
                        self.next = last + 1;
                        if !events.is_empty() {
                            return Some(Ok(WatchMessage::Events(events)));
                        }
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(commit) if commit.revision < self.next => {}
                // Missed a revision without a Lagged error: history has it.
                Ok(commit) if commit.revision > self.next => self.replaying = true,
                Ok(commit) => {
                    self.next = commit.revision + 1;
                    let events: Vec<Event> = commit
                        .events
                        .iter()
                        .filter(|e| e.kv.key.starts_with(&self.prefix))
                        .cloned()
                        .collect();
                    if !events.is_empty() {
                        return Some(Ok(WatchMessage::Events(events)));
                    }
                }
                Err(RecvError::Lagged(_)) => self.replaying = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

// === history replay ===

impl Inner {
    fn replay(&self, prefix: &str, from: Revision) -> Result<Replay, StoreError> {
        self.read(|txn| {
            let compact_revision =
                meta_get(&txn.open_table(META).ctx("open meta")?, COMPACT_REVISION)?;
            if from < compact_revision {
                return Ok(Replay::Compacted(compact_revision));
            }
            let history = txn.open_table(HISTORY).ctx("open history")?;
            let (mut last, mut events) = (None, Vec::new());
            for entry in history
                .range(from..)
                .ctx("read history")?
                .take(REPLAY_BATCH)
            {
                let (revision, record) = entry.ctx("read history")?;
                last = Some(revision.value());
                let record: HistoryEntry = decode(record.value())?;
                events.extend(
                    record
                        .events
                        .into_iter()
                        .filter(|e| e.key.starts_with(prefix))
                        .map(to_event),
                );
            }
            Ok(Replay::Batch { last, events })
        })
    }
}
