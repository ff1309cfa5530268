//! Old ledgers go. A ledger is one key per budget, subject and window, so
//! per-user hourly budgets would grow the store without bound. Every
//! replica sweeps once an hour (from a random offset): a ledger whose
//! window ended more than `--budget-ledger-retention` ago (default 90 days)
//! is deleted by compare-and-swap on its revision, so a late settle that
//! lands meanwhile keeps it until the next sweep, and replicas racing
//! each other delete it once. `GetStatus` reads only current windows, so
//! this changes no answer.
//!
//! Ledgers of a budget no longer in force (deleted) are dated by their
//! window start: they go once the retention plus the longest window (31
//! days) has passed since it. A deleted TOTAL budget's one ledger is kept,
//! since its window never ends.

use std::time::Duration;

use jiff::Timestamp;

use super::{alerts, in_force};
use crate::{
    fleet::cache::Snapshot,
    keys,
    store::{Compare, KeyValue, Op, RangeRequest, SharedStore, StoreError, TxnOutcome},
};

/// How long a ledger is kept after its window ends (the default of
/// `--budget-ledger-retention`).
pub const DEFAULT_LEDGER_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// How often each replica sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// The longest budget window (a month), for ledgers of deleted budgets.
const LONGEST_WINDOW: i64 = 31 * 86_400;
/// Keys read per page, and deleted per transaction.
const PAGE: usize = 500;
const DELETES_PER_TXN: usize = 100;

/// Whether the ledger at `kv` may go at `now`.
fn expired(kv: &KeyValue, snapshot: &Snapshot, now: Timestamp, retention: Duration) -> bool {
    let Some(id) = alerts::ledger_id(&kv.key) else {
        return false;
    };
    let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let cutoff = now.as_second().saturating_sub(retention);
    match in_force(snapshot, &id.tenant, &id.budget) {
        Some(budget) => {
            let Ok(start) = Timestamp::from_second(id.window_start) else {
                return false;
            };
            budget.window_at(start).end.is_some_and(|end| end <= cutoff)
        }
        None => id.window_start != 0 && id.window_start.saturating_add(LONGEST_WINDOW) <= cutoff,
    }
}

/// Deletes every expired ledger; returns how many went.
pub async fn sweep(
    store: &SharedStore,
    snapshot: &Snapshot,
    now: Timestamp,
    retention: Duration,
) -> Result<usize, StoreError> {
    let mut deleted = 0;
    let mut after = String::new();
    loop {
        let page = store
            .range(RangeRequest {
                prefix: keys::BUDGET_LEDGERS.to_string(),
                after: after.clone(),
                limit: PAGE,
            })
            .await?;
        let expired: Vec<&KeyValue> = page
            .kvs
            .iter()
            .filter(|kv| expired(kv, snapshot, now, retention))
            .collect();
        for chunk in expired.chunks(DELETES_PER_TXN) {
            let compares = chunk
                .iter()
                .map(|kv| Compare::ModRevision {
                    key: kv.key.clone(),
                    equals: kv.mod_revision,
                })
                .collect();
            let ops = chunk
                .iter()
                .map(|kv| Op::Delete {
                    key: kv.key.clone(),
                })
                .collect();
            // A ledger written meanwhile fails the whole chunk: the next
            // sweep tries again.
            if let TxnOutcome::Committed { .. } = store.txn(compares, ops).await? {
                deleted += chunk.len();
            }
        }
        match (page.more, page.kvs.last()) {
            (true, Some(last)) => after = last.key.clone(),
            _ => return Ok(deleted),
        }
    }
}

/// Sweeps every [`SWEEP_EVERY`] until `shutdown`, first after a random
/// part of it (so replicas started together do not sweep together).
pub(super) async fn run(
    ledgers: std::sync::Arc<super::Ledgers>,
    retention: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let offset = SWEEP_EVERY.mul_f64(rand::random::<f64>());
    let mut next = tokio::time::Instant::now() + offset;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next += SWEEP_EVERY;
        let snapshot = ledgers.cache.current();
        match sweep(
            &ledgers.store,
            &snapshot,
            super::now(&ledgers.clock),
            retention,
        )
        .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted budget ledgers past their retention"),
            Err(error) => tracing::warn!(%error, "budget ledger sweep failed; next one in an hour"),
        }
    }
}

#[cfg(test)]
#[path = "sweep_tests.rs"]
mod tests;
