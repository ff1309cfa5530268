//! Stage 1b, idempotency: a request carrying an idempotency key that this
//! node already answered (same tenant, same key, within a day) gets the
//! first outcome again instead of running twice; a retried "refund the
//! order" must not refund it twice.
//!
//! Scope: per node. Concurrent duplicates both run (the first to finish is
//! kept), and a retry that lands on another node runs again; callers that
//! need fleet-wide exactly-once for side effects use approvals, which bind
//! an execution to one approved run. Errors are not remembered, so a request
//! that failed with, say, UNAVAILABLE can be retried with the same key.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    cache::{CacheKey, KeyBuilder, ResponseCache},
    call::{Call, Outcome},
    error::ExecError,
    stage::{Flow, Stage},
};

/// How long an outcome is kept for its key.
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);
/// Bytes of outcomes kept.
pub const MAX_BYTES: usize = 32 << 20;

/// The idempotency stage.
#[derive(Debug)]
pub struct Idempotency {
    outcomes: ResponseCache<Outcome>,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self {
            outcomes: ResponseCache::new(KEEP_FOR, MAX_BYTES),
        }
    }
}

fn key_of(call: &Call) -> Option<CacheKey> {
    let key = &call.request.idempotency_key;
    let caller = call.caller.as_ref()?;
    (!key.is_empty()).then(|| {
        KeyBuilder::default()
            .field("idempotency")
            .field(&call.request.agent)
            .field(key)
            .build(&caller.tenant)
    })
}

impl Stage for Idempotency {
    fn before(&self, call: &mut Call) -> Result<Flow, ExecError> {
        let Some(key) = key_of(call) else {
            return Ok(Flow::Continue);
        };
        match self.outcomes.get(&key, Instant::now()) {
            Some(first) => {
                metrics::counter!("aios_idempotent_replays_total").increment(1);
                Ok(Flow::Done(Box::new((*first).clone())))
            }
            None => Ok(Flow::Continue),
        }
    }

    fn after(&self, call: &mut Call, outcome: &mut Outcome) {
        let Some(key) = key_of(call) else {
            return;
        };
        if self.outcomes.get(&key, Instant::now()).is_some() {
            return; // a replay, or a concurrent duplicate finished first
        }
        let size = outcome.output.len()
            + outcome
                .messages
                .iter()
                .map(|m| m.content.len() + 64)
                .sum::<usize>()
            + 512;
        self.outcomes
            .put(key, Arc::new(outcome.clone()), size, Instant::now());
    }
}
