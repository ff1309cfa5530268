//! Lease deadlines, kept in memory, and the task that expires them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use super::{Inner, blocking, lock, txn::Effect};
use crate::store::{LeaseId, StoreError};

// === lease clocks ===

#[derive(Clone, Copy)]
pub(super) struct LeaseClock {
    pub(super) ttl: Duration,
    pub(super) deadline: Instant,
}

impl LeaseClock {
    pub(super) fn start(ttl: Duration) -> Self {
        Self {
            ttl,
            deadline: Instant::now() + ttl,
        }
    }
}

pub(super) type LeaseMap = HashMap<LeaseId, LeaseClock>;

// === expiry ===

impl Inner {
    /// Expires `id` if its deadline has passed. The deadline is checked and
    /// the lease forgotten under the lease-map lock, so a racing keep-alive
    /// either renews it first or fails with `LeaseNotFound`.
    fn expire(&self, id: LeaseId) -> Result<(), StoreError> {
        let mut taken = None;
        let result = self.write(|t| {
            let clock = {
                let mut leases = lock(&self.leases);
                match leases.get(&id) {
                    Some(clock) if clock.deadline <= Instant::now() => leases.remove(&id),
                    _ => None,
                }
            };
            let Some(clock) = clock else {
                return Ok(((), Effect::Abort));
            };
            taken = Some(clock);
            Ok(((), t.revoke(id)?.unwrap_or(Effect::Commit)))
        });
        if let (Err(_), Some(clock)) = (&result, taken) {
            // Not revoked: keep it due, so the next round retries.
            lock(&self.leases).insert(id, clock);
        }
        result
    }
}

/// Expires leases until the store is dropped. It upgrades its weak
/// reference only when something is due, so an idle store closes promptly.
pub(super) async fn reap(store: Weak<Inner>, leases: Arc<Mutex<LeaseMap>>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let due: Vec<LeaseId> = lock(&leases)
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            continue;
        }
        let Some(inner) = store.upgrade() else { return };
        let expired = blocking(inner, move |inner| {
            due.into_iter().try_for_each(|id| inner.expire(id))
        })
        .await;
        if let Err(error) = expired {
            tracing::warn!(%error, "lease expiry failed; retrying");
        }
    }
}
