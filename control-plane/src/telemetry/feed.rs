//! The store watch that feeds this replica's rollups, recent-trace index and
//! live subscribers with every stored batch, exactly once.
//!
//! Exactly once without remembering keys: the feed folds a batch record
//! only if its `mod_revision` is above the highest revision already folded.
//! The start-up listing folds what it saw at its first page's revision;
//! the watch then delivers everything after, in order; a compaction resync
//! folds only the records written while history was gone. Deletes (lease
//! expiry) change nothing: rollups outlive the raw batches.
//!
//! Batches are folded as their nodes encoded them ([`Encoded`]): spans are
//! read in place for the rollups and the trace index, and decoded only for
//! a `GetTrace` or a subscriber. The replica that took a batch already read
//! it: ingest hands it over ([`Handoff`]) keyed by its record key, and the
//! feed folds that instead of reading the record again. Other replicas read
//! the record.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{
    Shared,
    ingest::unix_now,
    wire::{Encoded, SpanView},
};
use crate::{
    keys,
    store::{
        EventKind, KeyValue, RangeRequest, Revision, SharedStore, StoreError,
        watch::{Update, resyncing_watch},
    },
};

/// Records read per page at start-up.
const PAGE: usize = 256;
/// Pause before watching again after the store failed.
const RETRY: Duration = Duration::from_millis(500);

// === Handoff ===

/// Batches this replica is storing whole, by record key, for its feed to
/// fold without reading the record. Ingest offers a batch before writing
/// it (the watch may deliver the record before the write call returns) and
/// withdraws it unless the write commits; the feed claims it by key.
#[derive(Debug, Default)]
pub(crate) struct Handoff(Mutex<HashMap<String, Encoded>>);

impl Handoff {
    /// Offers `batch`, to be stored whole at record `key`. Dropping the
    /// returned guard withdraws it.
    pub(crate) fn offer(&self, key: String, batch: Encoded) -> Handing<'_> {
        self.lock().insert(key.clone(), batch);
        Handing {
            handoff: self,
            key: Some(key),
        }
    }

    /// The batch offered for record `key`, if any.
    fn claim(&self, key: &str) -> Option<Encoded> {
        self.lock().remove(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Encoded>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An offered batch; withdrawn when dropped unless kept.
#[derive(Debug)]
pub(crate) struct Handing<'a> {
    handoff: &'a Handoff,
    key: Option<String>,
}

impl Handing<'_> {
    /// The record was written: the batch stays for the feed.
    pub(crate) fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for Handing<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.handoff.claim(&key);
        }
    }
}

// === The feed ===

/// Folds every batch record in the store; returns the revision folded up to.
pub(crate) async fn load(store: &SharedStore, shared: &Shared) -> Result<Revision, StoreError> {
    let mut request = RangeRequest {
        prefix: keys::TELEMETRY_BATCHES.to_string(),
        after: String::new(),
        limit: PAGE,
    };
    let mut pinned = None;
    loop {
        let page = store.range(request.clone()).await?;
        // Later pages may hold records newer than the first page's revision:
        // the watch from that revision delivers those, so they wait for it.
        let pinned = *pinned.get_or_insert(page.revision);
        fold(
            shared,
            page.kvs.iter().filter(|kv| kv.mod_revision <= pinned),
        );
        match page.kvs.last() {
            Some(last) if page.more => request.after.clone_from(&last.key),
            _ => break,
        }
    }
    let revision = pinned.unwrap_or_default();
    shared.folded.send_replace(revision);
    Ok(revision)
}

/// Follows the store from `folded` + 1 until `shutdown`. A failed watch is
/// retried from the last revision folded, after a pause.
pub(crate) async fn follow(
    store: SharedStore,
    shared: Arc<Shared>,
    mut folded: Revision,
    shutdown: CancellationToken,
) {
    loop {
        let mut updates = resyncing_watch(
            store.clone(),
            keys::TELEMETRY_BATCHES.to_string(),
            folded + 1,
        );
        loop {
            let update = tokio::select! {
                _ = shutdown.cancelled() => return,
                update = updates.next() => update,
            };
            match update {
                Some(Ok(update)) => apply(&shared, update, &mut folded),
                Some(Err(error)) => {
                    tracing::warn!(%error, "telemetry watch failed; retrying");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Folds what `update` adds beyond `folded`, and moves `folded` on.
fn apply(shared: &Shared, update: Update, folded: &mut Revision) {
    let done = *folded;
    match update {
        Update::Events(events) => {
            let puts = events
                .iter()
                .filter(|event| event.kind == EventKind::Put && event.kv.mod_revision > done)
                .map(|event| &event.kv);
            fold(shared, puts);
            if let Some(last) = events.last() {
                *folded = done.max(last.kv.mod_revision);
            }
        }
        Update::Resync {
            kvs,
            revision,
            compact_revision,
        } => {
            tracing::info!(
                revision,
                compact_revision,
                "telemetry watch resynced after compaction; folding batches written meanwhile"
            );
            fold(shared, kvs.iter().filter(|kv| kv.mod_revision > done));
            *folded = done.max(revision);
        }
    }
    shared.folded.send_replace(*folded);
}

/// Reads batch records (or takes them from the handoff), folds them into
/// the rollups, indexes their traces and offers them to subscribers.
fn fold<'a>(shared: &Shared, kvs: impl Iterator<Item = &'a KeyValue>) {
    let batches: Vec<Arc<Encoded>> = kvs
        .filter_map(|kv| shared.handoff.claim(&kv.key).or_else(|| read(kv)))
        .map(Arc::new)
        .collect();
    if batches.is_empty() {
        return;
    }
    // Reading the spans is the costly part: done before any lock is taken.
    let views: Vec<Vec<(usize, SpanView<'_>)>> = batches
        .iter()
        .map(|batch| batch.views().collect())
        .collect();
    let now = unix_now() as i64;
    {
        let mut rollups = shared.rollups_mut();
        for (batch, spans) in batches.iter().zip(&views) {
            rollups.fold(
                &batch.node,
                batch.unix_minute,
                spans.iter().map(|&(_, span)| span),
                batch.layout.dropped_spans,
                now,
            );
        }
    }
    {
        let mut traces = shared.traces();
        for (batch, spans) in batches.iter().zip(&views) {
            traces.add(batch, spans);
        }
    }
    drop(views);
    if shared.spans.receiver_count() > 0 {
        for batch in batches.into_iter().filter(|batch| batch.len() > 0) {
            // No receiver left is fine: subscribers come and go.
            let _ = shared.spans.send(batch);
        }
    }
}

/// A batch record's batch; `None` (logged) for anything else.
fn read(kv: &KeyValue) -> Option<Encoded> {
    let Some(key) = keys::parse_telemetry_batch(&kv.key) else {
        tracing::warn!(key = %kv.key, "unexpected key under the telemetry batches; ignored");
        return None;
    };
    match Encoded::read(key.node, key.unix_minute, kv.value.clone().into()) {
        Ok(batch) => Some(batch),
        Err(error) => {
            tracing::error!(
                key = %kv.key,
                field = %error.field,
                error = %error.why,
                "undecodable span batch in the store; not folded"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use aios_proto::v1 as pb;
    use prost::Message;

    use super::*;
    use crate::{
        keys::BatchKey,
        store::Event,
        telemetry::{Filter, Granularity, TelemetrySettings, TenantScope},
    };

    fn record(sequence: u64, revision: Revision) -> KeyValue {
        let span = pb::Span {
            tenant: "acme".into(),
            operation: "invoke_agent".into(),
            end_time_unix_nano: unix_now() * 1_000_000_000,
            ..Default::default()
        };
        let key = BatchKey {
            unix_minute: unix_now() / 60,
            node: "n1",
            incarnation: "i",
            sequence,
            part: None,
        };
        KeyValue {
            key: key.key(),
            value: pb::SpanBatch {
                sequence,
                spans: vec![span],
                dropped_spans: 0,
            }
            .encode_to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        }
    }

    fn requests(shared: &Shared) -> u64 {
        let now = unix_now() as i64;
        let hour = [(Granularity::Hour, Granularity::Hour.floor(now))];
        let all = Filter::tenant(TenantScope::All);
        shared.rollups().totals(&all, &hour).all.requests
    }

    #[test]
    fn a_compaction_resync_folds_only_what_was_missed() {
        let settings = TelemetrySettings::new(Duration::from_secs(3600));
        let shared = Shared::new(&settings);
        let mut folded = 0;
        let put = |kv: KeyValue| Event {
            kind: EventKind::Put,
            kv,
        };
        apply(
            &shared,
            Update::Events(vec![put(record(1, 5))]),
            &mut folded,
        );
        assert_eq!((folded, requests(&shared)), (5, 1));
        // History from 6 on was compacted: the listing holds the record
        // already folded, one written meanwhile, and none deleted since.
        apply(
            &shared,
            Update::Resync {
                kvs: vec![record(1, 5), record(2, 8)],
                revision: 9,
                compact_revision: 7,
            },
            &mut folded,
        );
        assert_eq!((folded, requests(&shared)), (9, 2));
        // Expiry deletes change nothing; a redelivered put is not refolded.
        let delete = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                mod_revision: 10,
                ..record(1, 0)
            },
        };
        apply(&shared, Update::Events(vec![delete]), &mut folded);
        apply(
            &shared,
            Update::Events(vec![put(record(2, 8))]),
            &mut folded,
        );
        assert_eq!((folded, requests(&shared)), (10, 2));
        assert_eq!(*shared.folded.borrow(), 10);
    }

    #[test]
    fn a_batch_handed_over_is_folded_without_decoding_its_record() {
        let settings = TelemetrySettings::new(Duration::from_secs(3600));
        let shared = Shared::new(&settings);
        let mut folded = 0;
        let put = |kv: KeyValue| Event {
            kind: EventKind::Put,
            kv,
        };
        let minute = unix_now() / 60;
        let batch =
            |sequence| Encoded::read("n1", minute, record(sequence, 0).value.into()).unwrap();
        // The record's bytes are not a batch: only the handoff can fold it.
        let garbage = |sequence, revision| KeyValue {
            value: b"not a batch".to_vec(),
            ..record(sequence, revision)
        };
        let kept = shared.handoff.offer(garbage(1, 5).key, batch(1));
        kept.keep();
        apply(
            &shared,
            Update::Events(vec![put(garbage(1, 5))]),
            &mut folded,
        );
        assert_eq!((folded, requests(&shared)), (5, 1));
        assert!(shared.handoff.lock().is_empty(), "claimed once");
        // A write that did not commit withdraws its offer.
        drop(shared.handoff.offer(garbage(2, 0).key, batch(2)));
        assert!(shared.handoff.lock().is_empty());
        // The feed may claim before the write returns; keeping it then is harmless.
        let early = shared.handoff.offer(record(3, 0).key, batch(3));
        apply(
            &shared,
            Update::Events(vec![put(record(3, 8))]),
            &mut folded,
        );
        early.keep();
        assert!(shared.handoff.lock().is_empty());
        assert_eq!((folded, requests(&shared)), (8, 2));
    }
}
