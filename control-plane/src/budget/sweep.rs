//! Old ledgers go. A ledger is one key per budget, subject and window, so
//! per-user hourly budgets would grow the store without bound. Every
//! replica sweeps once an hour (from a random offset): a ledger whose
//! window ended more than `--budget-ledger-retention` ago (default 90 days)
//! is deleted by compare-and-swap on its revision ([`store::sweep`]), so a
//! late settle that lands meanwhile keeps it until the next sweep. `GetStatus` reads only current windows, so
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
    store::{self, KeyValue, SharedStore, StoreError},
};

/// How long a ledger is kept after its window ends (the default of
/// `--budget-ledger-retention`).
pub const DEFAULT_LEDGER_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// How often each replica sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// The longest budget window (a month), for ledgers of deleted budgets.
const LONGEST_WINDOW: i64 = 31 * 86_400;

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
    store::sweep::delete_expired(store, keys::BUDGET_LEDGERS, |kv| {
        expired(kv, snapshot, now, retention).then(Vec::new)
    })
    .await
}

/// Sweeps every [`SWEEP_EVERY`] until `shutdown`.
pub(super) async fn run(
    ledgers: std::sync::Arc<super::Ledgers>,
    retention: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    store::sweep::every(SWEEP_EVERY, "budget ledgers", shutdown, || {
        let snapshot = ledgers.cache.current();
        let now = super::now(&ledgers.clock);
        let store = ledgers.store.clone();
        async move { sweep(&store, &snapshot, now, retention).await }
    })
    .await;
}

#[cfg(test)]
#[path = "sweep_tests.rs"]
mod tests;
