//! Deleting what has outlived its retention: the keys under a prefix that
//! a predicate calls expired, each deleted only if it has not changed since
//! it was read (compare-and-swap on its revision), so a write that lands
//! meanwhile keeps it until the next sweep and replicas racing each other
//! delete it once. Budget ledgers and closed approvals use it.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{Compare, KeyValue, Op, RangeRequest, SharedStore, StoreError, TxnOutcome};

/// Keys read per page.
const PAGE: usize = 500;
/// Deletes per transaction (the store's limit is 128 operations).
const OPS_PER_TXN: usize = 100;

/// Deletes every key under `prefix` that `expired` says may go, with the
/// companion keys it names (an index entry, say: deleted whether or not
/// they changed); returns how many keys under `prefix` went.
pub async fn delete_expired(
    store: &SharedStore,
    prefix: &str,
    mut expired: impl FnMut(&KeyValue) -> Option<Vec<String>>,
) -> Result<usize, StoreError> {
    let mut deleted = 0;
    let mut after = String::new();
    loop {
        let page = store
            .range(RangeRequest {
                prefix: prefix.to_string(),
                after: after.clone(),
                limit: PAGE,
            })
            .await?;
        let mut batch = Batch::default();
        for kv in &page.kvs {
            let Some(companions) = expired(kv) else {
                continue;
            };
            if batch.ops.len() + 1 + companions.len() > OPS_PER_TXN {
                deleted += batch.commit(store).await?;
            }
            batch.add(kv, companions);
        }
        deleted += batch.commit(store).await?;
        match (page.more, page.kvs.last()) {
            (true, Some(last)) => after = last.key.clone(),
            _ => return Ok(deleted),
        }
    }
}

/// Deletes gathered for one transaction.
#[derive(Default)]
struct Batch {
    compares: Vec<Compare>,
    ops: Vec<Op>,
    keys: usize,
}

impl Batch {
    fn add(&mut self, kv: &KeyValue, companions: Vec<String>) {
        self.compares.push(Compare::ModRevision {
            key: kv.key.clone(),
            equals: kv.mod_revision,
        });
        self.ops.push(Op::Delete {
            key: kv.key.clone(),
        });
        self.ops
            .extend(companions.into_iter().map(|key| Op::Delete { key }));
        self.keys += 1;
    }

    /// Commits and empties the batch; returns the keys deleted. A key
    /// written meanwhile fails the whole batch: the next sweep tries again.
    async fn commit(&mut self, store: &SharedStore) -> Result<usize, StoreError> {
        let batch = std::mem::take(self);
        if batch.ops.is_empty() {
            return Ok(0);
        }
        Ok(match store.txn(batch.compares, batch.ops).await? {
            TxnOutcome::Committed { .. } => batch.keys,
            _ => 0,
        })
    }
}

/// Runs `sweep` every `period` until `shutdown`, the first time after a
/// random part of it, so replicas started together do not sweep together.
/// `what` names the keys in logs.
pub async fn every<F, Fut>(period: Duration, what: &str, shutdown: CancellationToken, mut sweep: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, StoreError>>,
{
    let mut next = tokio::time::Instant::now() + period.mul_f64(rand::random::<f64>());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next += period;
        match sweep().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted {what} past their retention"),
            Err(error) => tracing::warn!(%error, "sweeping {what} failed; trying again later"),
        }
    }
}
