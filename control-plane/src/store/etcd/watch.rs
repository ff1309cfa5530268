//! One etcd watch stream, turned into [`WatchMessage`]s.

use etcd_client::{EventType, WatchResponse};

use super::{
    call::{Call, map_error},
    convert::{key_value, utf8_key},
};
use crate::store::{Event, EventKind, KeyValue, StoreError, WatchMessage};

// === Watch stream ===

/// One watch stream. Dropping it drops the etcd stream, which resets the
/// HTTP/2 stream, and etcd cancels the watcher.
pub(super) struct WatchState {
    pub(super) stream: etcd_client::WatchStream,
    /// The creation response, read before `watch` returned.
    pub(super) pending: Option<WatchResponse>,
    pub(super) done: bool,
}

impl WatchState {
    pub(super) async fn next(mut self) -> Option<(Result<WatchMessage, StoreError>, Self)> {
        while !self.done {
            let response = match self.pending.take() {
                Some(response) => response,
                None => match self.stream.message().await {
                    Ok(Some(response)) => response,
                    // etcd closed the stream; a resyncing watch watches again.
                    Ok(None) => return None,
                    Err(error) => {
                        self.done = true;
                        return Some((Err(map_error(&error, Call::read("watch"))), self));
                    }
                },
            };
            if let Some((item, last)) = watch_step(&response) {
                self.done = last;
                return Some((item, self));
            }
        }
        None
    }
}

/// What one etcd response yields, and whether the stream ends after it;
/// `None` for responses without events (creation, progress).
///
/// Every response is checked, not only the first: etcd 3.4 confirms a
/// watch from a compacted revision as created and cancels it in a later one.
fn watch_step(response: &WatchResponse) -> Option<(Result<WatchMessage, StoreError>, bool)> {
    let compact_revision = response.compact_revision();
    if compact_revision > 0 {
        return Some((Ok(WatchMessage::Compacted { compact_revision }), true));
    }
    if response.canceled() {
        let reason = response.cancel_reason();
        return Some((
            Err(StoreError::Unavailable(format!("watch canceled: {reason}"))),
            true,
        ));
    }
    if response.events().is_empty() {
        return None;
    }
    // etcd never splits a revision across responses (without `fragment`),
    // so one response is one message, already in revision order.
    match response.events().iter().map(event).collect() {
        Ok(events) => Some((Ok(WatchMessage::Events(events)), false)),
        Err(error) => Some((Err(error), true)),
    }
}

fn event(event: &etcd_client::Event) -> Result<Event, StoreError> {
    let missing = || StoreError::Internal("etcd watch event without a key".into());
    let kv = event.kv().ok_or_else(missing)?;
    Ok(match event.event_type() {
        EventType::Put => Event {
            kind: EventKind::Put,
            kv: key_value(kv.clone())?,
        },
        // A delete is the key and the delete's revision; zeros elsewhere.
        EventType::Delete => Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: utf8_key(kv.key().to_vec())?,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: kv.mod_revision(),
                version: 0,
                lease: None,
            },
        },
    })
}
