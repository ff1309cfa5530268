//! Stage 4b, budgets: which budgets a request counts against, and what
//! happens when one is known to be spent (refuse, or degrade to a cheaper
//! routing table). The money itself moves in the agent loop: each model
//! call reserves its worst case from the request's [`Hold`] before it runs
//! and settles its real cost after (see [`crate::budget`]).

use std::sync::{Arc, Mutex};

use aios_model::{Budget, BudgetScope, OnExceed, Usd};
use tokio::time::Instant;

use super::{
    call::Call,
    error::ExecError,
    stage::{Flow, Stage},
};
use crate::budget::{LedgerKey, Purse, Shortfall};

/// The budget stage.
#[derive(Debug)]
pub struct BudgetStage {
    purse: Purse,
}

impl BudgetStage {
    /// Budgets reserved from and settled into `purse`.
    pub fn new(purse: Purse) -> Self {
        Self { purse }
    }
}

impl Stage for BudgetStage {
    fn before(&self, call: &mut Call) -> Result<Flow, ExecError> {
        let Some(caller) = &call.caller else {
            return Ok(Flow::Continue);
        };
        // The snapshot outlives the call's borrow, so budgets are read in
        // place, not cloned per request.
        let catalog = call.catalog.clone();
        let now = jiff::Timestamp::now();
        let user = caller.user.as_deref().unwrap_or(&call.request.user);
        let mut applies = Vec::new();
        for (name, budget) in catalog.budgets(&caller.tenant) {
            let Some(subject) = subject(budget, user, &call.request.agent, &caller.key_name) else {
                continue;
            };
            let key = LedgerKey {
                tenant: caller.tenant.clone(),
                budget: name.to_string(),
                window_start: budget.window_at(now).start,
                subject: subject.to_string(),
            };
            applies.push((key, budget));
        }
        if applies.is_empty() {
            return Ok(Flow::Continue);
        }
        applies.sort_by(|a, b| a.0.cmp(&b.0));
        // Known to be spent: refuse or degrade now, before routing. A
        // spent DEGRADE budget sends the request through its cheaper table
        // and stops limiting it: the request is counted (settled) against
        // the budget but reserves nothing from it, so the degraded route
        // keeps serving past the limit (BLOCK is the hard cap).
        // Each ledger, with whether its budget limits this request.
        let mut keys = Vec::with_capacity(applies.len());
        for (key, budget) in &applies {
            let short = self.purse.known_short(key, 1);
            keys.push((key.clone(), limits(budget, short)));
            if !short {
                continue;
            }
            match &budget.on_exceed {
                OnExceed::Block => return Err(exhausted(key, 0)),
                OnExceed::Degrade { routing_table } if call.degraded_to.is_none() => {
                    call.degraded_to = Some(routing_table.clone());
                }
                OnExceed::Degrade { .. } | OnExceed::AlertOnly => {}
            }
        }
        let cap = applies
            .iter()
            .zip(&keys)
            .filter(|(_, (_, limits))| *limits)
            .filter_map(|((key, b), _)| Some((b.per_request_cap?, key.clone())))
            .min_by_key(|(cap, _)| *cap);
        call.budget = Some(Arc::new(Hold {
            purse: self.purse.clone(),
            keys,
            cap,
            state: Mutex::new(HoldState::default()),
        }));
        Ok(Flow::Continue)
    }
}

/// Whether `budget` limits a request (reserves before each call), given
/// whether it is known to be spent: BLOCK always, DEGRADE until it is
/// spent (then the degraded route serves, counted but unlimited),
/// ALERT_ONLY never.
fn limits(budget: &Budget, spent: bool) -> bool {
    match budget.on_exceed {
        OnExceed::Block => true,
        OnExceed::Degrade { .. } => !spent,
        OnExceed::AlertOnly => false,
    }
}

/// The subject `budget` counts this request under, or `None` when it does
/// not count it.
fn subject<'a>(budget: &Budget, user: &'a str, agent: &'a str, key: &'a str) -> Option<&'a str> {
    let (named, actual) = match &budget.scope {
        BudgetScope::Tenant => return Some(""),
        BudgetScope::User(named) => (named, user),
        BudgetScope::Agent(named) => (named, agent),
        BudgetScope::ApiKey(named) => (named, key),
    };
    match named {
        Some(named) => (named == actual).then_some(""),
        // Each user counts separately; requests without one are not counted.
        None => (!actual.is_empty()).then_some(actual),
    }
}

/// The error for a budget that cannot cover a call.
pub fn exhausted(key: &LedgerKey, remaining: i64) -> ExecError {
    let who = match key.subject.is_empty() {
        true => String::new(),
        false => format!(" for {}", key.subject),
    };
    ExecError::BudgetExhausted {
        subject: quota_subject(key),
        description: format!(
            "budget {}{who} has {} left in this window, too little for this request",
            key.budget,
            Usd::from_micros(remaining)
        ),
    }
}

/// The QuotaFailure subject of a ledger: `budget:TENANT/NAME[/SUBJECT]`.
fn quota_subject(key: &LedgerKey) -> String {
    match key.subject.is_empty() {
        true => format!("budget:{}/{}", key.tenant, key.budget),
        false => format!("budget:{}/{}/{}", key.tenant, key.budget, key.subject),
    }
}

/// The money one request has reserved and spent, across the budgets it
/// counts against. Whatever is still reserved when it is dropped goes back.
#[derive(Debug)]
pub struct Hold {
    purse: Purse,
    /// Ledgers, with whether each enforces (ALERT_ONLY ledgers only settle).
    keys: Vec<(LedgerKey, bool)>,
    /// The smallest per-request cap among enforcing budgets, and its
    /// budget's ledger.
    cap: Option<(Usd, LedgerKey)>,
    state: Mutex<HoldState>,
}

#[derive(Debug, Default)]
struct HoldState {
    /// Reserved and not settled, micro-USD.
    reserved: i64,
    /// Settled so far, micro-USD.
    spent: i64,
}

/// What a model call may spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Reserved for this call, micro-USD.
    pub amount: i64,
}

impl Hold {
    fn state(&self) -> std::sync::MutexGuard<'_, HoldState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves for one model call: `bound` (its worst case), or as much as
    /// is left if that still covers `min` (its input and one token).
    pub async fn reserve(
        &self,
        bound: Usd,
        min: Usd,
        wait_until: Instant,
    ) -> Result<Grant, ExecError> {
        let spent = self.state().spent;
        let mut bound = bound.micros();
        let min = min.micros();
        if let Some((cap, key)) = &self.cap {
            let left = cap.micros() - spent;
            if left < min {
                return Err(ExecError::BudgetExhausted {
                    subject: quota_subject(key),
                    description: format!(
                        "the request needs at least {} more; the per-request cap is {cap}",
                        Usd::from_micros(min)
                    ),
                });
            }
            bound = bound.min(left);
        }
        match self.purse.reserve(&self.keys, bound, min, wait_until).await {
            Ok(amount) => {
                self.state().reserved += amount;
                Ok(Grant { amount })
            }
            Err(Shortfall::Exhausted { key, remaining }) => Err(exhausted(&key, remaining)),
            Err(Shortfall::Unanswered { key }) => Err(ExecError::Unavailable(format!(
                "budget {}/{}: no allowance from the control plane in time; retry",
                key.tenant, key.budget
            ))),
        }
    }

    /// Settles one call: `grant` was reserved for it, `cost` is what it
    /// really cost.
    pub fn settle(&self, grant: Grant, cost: Usd) {
        {
            let mut state = self.state();
            state.reserved -= grant.amount;
            state.spent += cost.micros();
        }
        self.purse.settle(&self.keys, grant.amount, cost.micros());
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let reserved = self.state().reserved;
        if reserved > 0 {
            self.purse.settle(&self.keys, reserved, 0);
        }
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
