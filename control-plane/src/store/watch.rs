//! A watch that survives compaction.
//!
//! A store watch from a compacted revision ends with
//! [`WatchMessage::Compacted`]: the history the watcher needed is gone, so
//! resuming from a later revision would silently skip changes. Instead,
//! [`resyncing_watch`] lists every key under the prefix at a fresh revision,
//! hands the watcher that snapshot ([`Update::Resync`]) so it can rebuild its
//! state, and watches again from the snapshot's revision.
//!
//! [`follow`] builds on it for state kept in memory from every key under a
//! prefix (live approvals, budget ledgers): it also survives a failed watch,
//! by listing the prefix again.

use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use tokio_util::sync::CancellationToken;

use super::{
    Event, KeyValue, Range, RangeRequest, Revision, SharedStore, StoreError, WatchMessage,
    WatchStream,
};

/// Pause before listing again after a watch failed.
const RELIST_AFTER: Duration = Duration::from_secs(1);

/// What a resyncing watch yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Changes, in revision order.
    Events(Vec<Event>),
    /// History was compacted: this is the whole state under the prefix at
    /// `revision`. Replace (do not merge) what was built so far.
    Resync {
        /// Every key under the prefix.
        kvs: Vec<KeyValue>,
        /// Revision the listing observed; events that follow are newer.
        revision: Revision,
        /// The compact revision that forced the resync.
        compact_revision: Revision,
    },
}

struct State {
    store: SharedStore,
    prefix: String,
    /// Next revision the watcher has not seen.
    next: Revision,
    current: Option<WatchStream>,
    done: bool,
}

/// Watches `prefix` from `start_revision` (0 = from now), resyncing on
/// compaction. The stream ends after yielding an error.
pub fn resyncing_watch(
    store: SharedStore,
    prefix: String,
    start_revision: Revision,
) -> BoxStream<'static, Result<Update, StoreError>> {
    let state = State {
        store,
        prefix,
        next: start_revision,
        current: None,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        let item = state.next_update().await;
        state.done = item.is_err();
        Some((item, state))
    })
    .boxed()
}

impl State {
    async fn next_update(&mut self) -> Result<Update, StoreError> {
        if self.next == 0 {
            // Pin "now" to a revision, so a re-watch after the backend's
            // stream ends resumes exactly where this one started.
            self.next = self.store.revision().await? + 1;
        }
        loop {
            let stream = match &mut self.current {
                Some(stream) => stream,
                None => self
                    .current
                    .insert(self.store.watch(&self.prefix, self.next).await?),
            };
            match stream.next().await {
                Some(Ok(WatchMessage::Events(events))) => {
                    if let Some(last) = events.last() {
                        self.next = last.kv.mod_revision + 1;
                    }
                    return Ok(Update::Events(events));
                }
                Some(Ok(WatchMessage::Compacted { compact_revision })) => {
                    self.current = None;
                    let listing = self
                        .store
                        .range(RangeRequest::prefix(self.prefix.clone()))
                        .await?;
                    self.next = listing.revision + 1;
                    return Ok(Update::Resync {
                        kvs: listing.kvs,
                        revision: listing.revision,
                        compact_revision,
                    });
                }
                Some(Err(error)) => {
                    self.current = None;
                    return Err(error);
                }
                // The backend closed the stream (e.g. a reconnect): watch again
                // from the next unseen revision; nothing is skipped.
                None => self.current = None,
            }
        }
    }
}

/// State kept from every key under a prefix, for [`follow`].
pub trait Follower: Send + 'static {
    /// The whole prefix as it is now: replace (do not merge) what was
    /// built so far.
    fn replace(&mut self, kvs: &[KeyValue]);
    /// One change, in revision order.
    fn apply(&mut self, event: &Event);
}

/// Keeps `follower` up to date with `prefix` from `listing` (a range read
/// of the prefix the follower was built from) until `shutdown`. A
/// compaction or a failed watch hands it a fresh listing, so no change is
/// missed.
pub async fn follow(
    store: SharedStore,
    prefix: String,
    listing: Range,
    mut follower: impl Follower,
    shutdown: CancellationToken,
) {
    let mut updates = resyncing_watch(store.clone(), prefix.clone(), listing.revision + 1);
    loop {
        let update = tokio::select! {
            _ = shutdown.cancelled() => return,
            update = updates.next() => update,
        };
        match update {
            Some(Ok(Update::Events(events))) => {
                for event in &events {
                    follower.apply(event);
                }
            }
            Some(Ok(Update::Resync { kvs, .. })) => follower.replace(&kvs),
            Some(Err(error)) => {
                tracing::warn!(%prefix, %error, "store watch failed; listing again");
                let listing = loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RELIST_AFTER) => {}
                    }
                    match store.range(RangeRequest::prefix(prefix.clone())).await {
                        Ok(listing) => break listing,
                        Err(error) => tracing::warn!(%prefix, %error, "store listing failed"),
                    }
                };
                follower.replace(&listing.kvs);
                updates = resyncing_watch(store.clone(), prefix.clone(), listing.revision + 1);
            }
            None => return,
        }
    }
}
