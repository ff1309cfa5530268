//! The node's side of budgets: allowances leased from the control plane,
//! reserved before each model call and settled after it.
//!
//! A [`Purse`] keeps one [`Ledger`] per (tenant, budget, window, subject).
//! A model call reserves from what the node holds ([`Purse::reserve`]) and
//! settles the real cost afterwards ([`Purse::settle`]); both are a few
//! arithmetic operations under one mutex. The [`reporter`] task talks to
//! the control plane, at most a few times a second and never per request:
//! one `BudgetService.Allowances` call carries, for each ledger, the spend
//! settled since the last call, unused allowance to give back, and more
//! allowance wanted. A call that finds too little held posts its shortfall,
//! wakes the reporter and waits for the answer (bounded), so a budget with
//! money left rarely refuses anyone.
//!
//! Strictness: the node only reserves from allowances it holds, a call's
//! output is capped to what its reservation pays for, and an allowance
//! stops being spendable a margin before its lease lapses on the control
//! plane. See ARCHITECTURE.md ("Budgets").

pub mod reporter;

use std::{
    cell::Cell,
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// How long a call waits for more allowance before giving up.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// An allowance stops being spendable this long before its lease lapses
/// (at least; a fifth of the TTL when that is more).
const LAPSE_MARGIN: Duration = Duration::from_secs(1);
/// A ledger unused this long gives back what it holds.
const IDLE_RELEASE: Duration = Duration::from_secs(2);
/// A ledger unused this long, holding nothing, is forgotten.
const FORGET: Duration = Duration::from_secs(60);
/// Allowance kept beyond immediate needs: this long of recent spending.
const KEEP_SPENDING_FOR: Duration = Duration::from_millis(500);

/// Which ledger: `(tenant, budget, window start, subject)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LedgerKey {
    /// Tenant of the budget.
    pub tenant: String,
    /// Budget name.
    pub budget: String,
    /// Window start, Unix seconds (0 for TOTAL).
    pub window_start: i64,
    /// Subject, for budgets counting each user/agent/key separately.
    pub subject: String,
}

/// One ledger as this node sees it. Amounts are micro-USD.
#[derive(Debug)]
struct Ledger {
    /// What the control plane last said this node holds.
    held: i64,
    /// Reserved by calls in flight.
    reserved: i64,
    /// Settled and not yet sent.
    unsent_spent: i64,
    /// What the calls waiting for more allowance want in all.
    waiting: i64,
    /// The line in flight (or to resend after a failure).
    sending: Option<Sent>,
    /// Last seq used.
    seq: u64,
    /// When the allowance stops being spendable (`None` = never granted).
    spendable_until: Option<Instant>,
    /// What the control plane last said is left to lease.
    remaining: i64,
    /// What the control plane last said is spent, fleet-wide.
    spent: i64,
    /// The budget's limit, from the last answer.
    limit: i64,
    /// Answers received.
    answers: u64,
    /// The last answer refused more (window closed, budget gone): its text.
    refusal: Option<String>,
    /// Last reservation or settle.
    last_use: Instant,
    /// Spend over recent intervals, micro-USD per second (smoothed).
    rate: f64,
    /// Spend since the rate was last updated.
    spent_since_rate: i64,
    /// When the rate was last updated.
    rate_at: Instant,
    /// The most reserved at once recently (halved each rate update unless
    /// reached again): a node serving a few calls a second keeps one call's
    /// worst case, not just what calls end up spending, so the next call
    /// does not wait for the control plane.
    peak_reserved: i64,
}

/// A line being sent: its content must not change until answered.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sent {
    seq: u64,
    spent: i64,
    release: i64,
    want: i64,
    at: Instant,
}

impl Ledger {
    fn new(now: Instant) -> Self {
        Self {
            held: 0,
            reserved: 0,
            unsent_spent: 0,
            waiting: 0,
            sending: None,
            seq: 0,
            spendable_until: None,
            remaining: 0,
            spent: 0,
            limit: 0,
            answers: 0,
            refusal: None,
            last_use: now,
            rate: 0.0,
            spent_since_rate: 0,
            rate_at: now,
            peak_reserved: 0,
        }
    }

    /// What a call may still reserve.
    fn available(&self, now: Instant) -> i64 {
        if self.spendable_until.is_none_or(|until| until <= now) {
            return 0;
        }
        let in_flight = self.sending.as_ref().map_or(0, |s| s.spent + s.release);
        (self.held - self.reserved - self.unsent_spent - in_flight).max(0)
    }

    /// Allowance worth keeping beyond what calls reserved: a little of
    /// recent spending, or as much as calls recently reserved at once if
    /// more (calls reserve their worst case, often many times what they
    /// spend), never more than a tenth of what the fleet has left (a scarce
    /// budget is not hoarded by one node).
    fn keep(&self, now: Instant) -> i64 {
        if now.duration_since(self.last_use) >= IDLE_RELEASE {
            return 0;
        }
        let rate = (self.rate * KEEP_SPENDING_FOR.as_secs_f64()) as i64;
        rate.max(self.peak_reserved)
            .min((self.limit - self.spent).max(0) / 10)
    }

    /// Whether the budget itself (not allowances in flight elsewhere) is
    /// too spent to pay `min`, as last answered.
    fn spent_out(&self, min: i64) -> bool {
        self.answers > 0 && (self.limit - self.spent < min.max(1) || self.refusal.is_some())
    }
}

/// Why a reservation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// The budget has too little left (the control plane said so).
    Exhausted {
        /// The ledger that could not cover the call.
        key: LedgerKey,
        /// Left to lease, fleet-wide, when last asked.
        remaining: i64,
    },
    /// No answer from the control plane in time.
    Unanswered {
        /// The ledger that could not cover the call.
        key: LedgerKey,
    },
}

/// A waiting call's want, posted on its enforced ledgers: withdrawn when
/// the call is granted or refused, or when it is dropped while waiting (its
/// request was cancelled), so an abandoned call neither keeps the node
/// asking for (and holding) allowance nor hides a spent budget from
/// [`Purse::known_short`].
struct Posted<'a> {
    purse: &'a Purse,
    keys: &'a [(LedgerKey, bool)],
    amount: i64,
    /// Posted and not yet withdrawn.
    active: Cell<bool>,
}

impl Posted<'_> {
    /// Withdraws the want, if posted, from `ledgers` (the purse's, locked).
    fn withdraw(&self, ledgers: &mut HashMap<LedgerKey, Ledger>) {
        if !self.active.replace(false) {
            return;
        }
        for (key, _) in self.keys.iter().filter(|(_, enforce)| *enforce) {
            if let Some(ledger) = ledgers.get_mut(key) {
                ledger.waiting -= self.amount;
            }
        }
    }
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        if self.active.get() {
            self.withdraw(&mut self.purse.ledgers());
        }
    }
}

/// The node's allowances. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Purse {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ledgers: Mutex<HashMap<LedgerKey, Ledger>>,
    /// Wakes the reporter (a call is short of allowance).
    wake: Notify,
    /// Wakes waiting calls (an answer arrived).
    answered: Notify,
}

impl Default for Purse {
    fn default() -> Self {
        Self::new()
    }
}

impl Purse {
    /// An empty purse.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                ledgers: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                answered: Notify::new(),
            }),
        }
    }

    fn ledgers(&self) -> std::sync::MutexGuard<'_, HashMap<LedgerKey, Ledger>> {
        // A panic while holding the lock leaves plain numbers; keep going.
        self.inner
            .ledgers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the node knows `key` cannot cover `amount`: the control
    /// plane said nothing is left, recently, and the node holds too little.
    /// Used to degrade or refuse before routing; a reservation still
    /// decides for real.
    pub fn known_short(&self, key: &LedgerKey, amount: i64) -> bool {
        let now = Instant::now();
        let ledgers = self.ledgers();
        ledgers.get(key).is_some_and(|l| {
            l.spent_out(amount) && l.available(now) < amount.max(1) && l.waiting == 0
        })
    }

    /// Reserves `amount` from every ledger in `keys` (the budgets a call
    /// counts against), or as much as all of them can give if that is at
    /// least `min`. Waits for the control plane (until `wait_until`, at most
    /// [`MAX_WAIT`]) when the node holds too little. Returns the amount
    /// reserved from each.
    pub async fn reserve(
        &self,
        keys: &[(LedgerKey, bool)],
        amount: i64,
        min: i64,
        wait_until: Instant,
    ) -> Result<i64, Shortfall> {
        let amount = amount.max(0);
        let min = min.clamp(0, amount);
        let wait_until = wait_until.min(Instant::now() + MAX_WAIT);
        // Answers each short ledger must see before the call gives up.
        let mut awaited: Option<Vec<(LedgerKey, u64)>> = None;
        // What this call added to its ledgers' waiting; withdrawn however
        // the call ends, also when it is dropped while waiting.
        let posted = Posted {
            purse: self,
            keys,
            amount,
            active: Cell::new(false),
        };
        loop {
            let notified = self.inner.answered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            {
                let mut ledgers = self.ledgers();
                for (key, _) in keys {
                    ledgers
                        .entry(key.clone())
                        .or_insert_with(|| Ledger::new(now))
                        .last_use = now;
                }
                let enforced = || keys.iter().filter(|(_, enforce)| *enforce);
                let can = enforced()
                    .map(|(key, _)| ledgers.get(key).map_or(0, |l| l.available(now)))
                    .min()
                    .unwrap_or(amount);
                let answered = awaited.as_ref().is_some_and(|awaited| {
                    awaited.iter().all(|(key, answers)| {
                        ledgers.get(key).is_none_or(|l| l.answers >= *answers)
                    })
                });
                // A short ledger whose budget is spent (not merely reserved by
                // calls in flight, which settle and free it soon).
                let dry = enforced()
                    .filter_map(|(key, _)| ledgers.get(key).map(|l| (key, l)))
                    .find(|(_, l)| l.available(now) < amount && l.spent_out(min))
                    .map(|(key, l)| Shortfall::Exhausted {
                        key: key.clone(),
                        remaining: l.remaining,
                    });
                // The most this call could ever get in this window: what its
                // budgets have left, fleet-wide, as last answered.
                let ceiling = enforced()
                    .filter_map(|(key, _)| ledgers.get(key))
                    .filter(|l| l.answers > 0)
                    .map(|l| l.limit - l.spent)
                    .min()
                    .unwrap_or(i64::MAX);
                let take = |ledgers: &mut HashMap<LedgerKey, Ledger>, take: i64| {
                    posted.withdraw(ledgers);
                    for (key, _) in keys.iter().filter(|(_, enforce)| *enforce) {
                        if let Some(ledger) = ledgers.get_mut(key) {
                            ledger.reserved += take;
                            ledger.peak_reserved = ledger.peak_reserved.max(ledger.reserved);
                        }
                    }
                    Ok(take)
                };
                let give_up = |ledgers: &mut HashMap<LedgerKey, Ledger>, shortfall: Shortfall| {
                    posted.withdraw(ledgers);
                    Err(shortfall)
                };
                if can >= amount {
                    return take(&mut ledgers, amount);
                }
                let late = now >= wait_until;
                if answered || late {
                    match dry {
                        // All that is left: a smaller call may still fit.
                        Some(_) if can >= min && can > 0 => return take(&mut ledgers, can),
                        Some(shortfall) => return give_up(&mut ledgers, shortfall),
                        // Nearly spent, and the rest is all here: more will
                        // not come, so waiting would only delay the call.
                        None if can >= min && can > 0 && can >= ceiling => {
                            return take(&mut ledgers, can);
                        }
                        None if late && can >= min && can > 0 => return take(&mut ledgers, can),
                        None if late => {
                            let short = enforced()
                                .filter_map(|(key, _)| ledgers.get(key).map(|l| (key, l)))
                                .min_by_key(|(_, l)| l.available(now))
                                .map(|(key, l)| (key.clone(), l.answers, l.remaining));
                            let shortfall = match short {
                                // Answered, but everything left is reserved by
                                // calls in flight that did not settle in time.
                                Some((key, answers, remaining)) if answers > 0 => {
                                    Shortfall::Exhausted { key, remaining }
                                }
                                Some((key, ..)) => Shortfall::Unanswered { key },
                                None => Shortfall::Unanswered {
                                    key: keys[0].0.clone(),
                                },
                            };
                            return give_up(&mut ledgers, shortfall);
                        }
                        // Granted less than asked while money is left (others
                        // hold it for calls in flight): wait for the next answer.
                        None => {
                            let mut list = Vec::new();
                            for (key, _) in enforced() {
                                if let Some(l) = ledgers.get(key) {
                                    list.push((
                                        key.clone(),
                                        l.answers + 1 + u64::from(l.sending.is_some()),
                                    ));
                                }
                            }
                            awaited = Some(list);
                            self.inner.wake.notify_one();
                        }
                    }
                }
                if awaited.is_none() {
                    // Join the waiting calls of every ledger; the answer to
                    // the next line (which asks for what they all want) is
                    // the one to wait for.
                    let mut list = Vec::new();
                    for (key, _) in enforced() {
                        if let Some(ledger) = ledgers.get_mut(key) {
                            ledger.waiting += amount;
                            let in_flight = u64::from(ledger.sending.is_some());
                            list.push((key.clone(), ledger.answers + 1 + in_flight));
                        }
                    }
                    posted.active.set(true);
                    awaited = Some(list);
                    self.inner.wake.notify_one();
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    }

    /// Gives back `reserved` (unused) and records `cost` as spent, on every
    /// ledger in `keys`. ALERT_ONLY ledgers record the cost only.
    pub fn settle(&self, keys: &[(LedgerKey, bool)], reserved: i64, cost: i64) {
        let now = Instant::now();
        let mut ledgers = self.ledgers();
        let mut wake = false;
        for (key, enforce) in keys {
            let ledger = ledgers
                .entry(key.clone())
                .or_insert_with(|| Ledger::new(now));
            if *enforce {
                ledger.reserved = (ledger.reserved - reserved).max(0);
            }
            ledger.unsent_spent += cost.max(0);
            ledger.spent_since_rate += cost.max(0);
            ledger.last_use = now;
            wake |= cost > 0;
        }
        drop(ledgers);
        if wake {
            self.inner.wake.notify_one();
        }
    }

    /// The lines to send now: every ledger with something to say, each
    /// with a new seq (or the unanswered line again, unchanged).
    fn lines(&self, ttl: Option<Duration>) -> Vec<(LedgerKey, Sent)> {
        let now = Instant::now();
        let mut ledgers = self.ledgers();
        ledgers.retain(|_, l| {
            l.held > 0
                || l.reserved > 0
                || l.unsent_spent > 0
                || l.waiting > 0
                || l.sending.is_some()
                || now.duration_since(l.last_use) < FORGET
        });
        let mut lines = Vec::new();
        for (key, ledger) in ledgers.iter_mut() {
            let elapsed = now.duration_since(ledger.rate_at);
            if elapsed >= Duration::from_millis(250) {
                let sample = ledger.spent_since_rate as f64 / elapsed.as_secs_f64();
                ledger.rate = 0.5 * ledger.rate + 0.5 * sample;
                ledger.spent_since_rate = 0;
                ledger.rate_at = now;
                ledger.peak_reserved = (ledger.peak_reserved / 2).max(ledger.reserved);
            }
            if let Some(sent) = &ledger.sending {
                lines.push((key.clone(), sent.clone()));
                continue;
            }
            let free = ledger.available(now);
            // Waiting calls take from what is free as it comes; what they
            // want beyond it is asked for.
            let short = (ledger.waiting - free).max(0);
            let release = match ledger.waiting > 0 {
                true => 0,
                false => (free - ledger.keep(now)).max(0),
            };
            // Renew a held allowance once half its life is gone.
            let renew = ledger.held > 0
                && ttl.is_some_and(|ttl| {
                    ledger
                        .spendable_until
                        .is_some_and(|until| until.saturating_duration_since(now) < ttl / 2)
                });
            let want = match short > 0 {
                // The shortfall and a little more, for the next calls.
                true => short + ledger.keep(now),
                false => 0,
            };
            if ledger.unsent_spent == 0 && release == 0 && want == 0 && !renew {
                continue;
            }
            ledger.seq += 1;
            let sent = Sent {
                seq: ledger.seq,
                spent: ledger.unsent_spent,
                release,
                want,
                at: now,
            };
            ledger.unsent_spent = 0;
            ledger.sending = Some(sent.clone());
            lines.push((key.clone(), sent));
        }
        lines
    }

    /// Records the control plane's answer to `lines`.
    fn answered(&self, lines: &[(LedgerKey, Sent)], grants: &[aios_proto::v1::AllowanceGrant]) {
        let mut ledgers = self.ledgers();
        for ((key, sent), grant) in lines.iter().zip(grants) {
            let Some(ledger) = ledgers.get_mut(key) else {
                continue;
            };
            if ledger.sending.as_ref() != Some(sent) {
                continue;
            }
            ledger.sending = None;
            ledger.answers += 1;
            ledger.held = grant.held_micros;
            ledger.remaining = grant.remaining_micros;
            ledger.spent = grant.spent_micros;
            ledger.limit = grant.limit_micros;
            let ttl = Duration::from_millis(u64::try_from(grant.ttl_ms).unwrap_or(0));
            let margin = LAPSE_MARGIN.max(ttl / 5);
            ledger.spendable_until =
                (grant.held_micros > 0).then(|| sent.at + ttl.saturating_sub(margin));
            ledger.refusal = (!grant.error.is_empty()).then(|| grant.error.clone());
        }
        drop(ledgers);
        self.inner.answered.notify_waiters();
    }

    /// Calls waiting for an answer give up on this round (the control
    /// plane could not be reached); they retry or fail by their deadline.
    fn unanswered(&self) {
        self.inner.answered.notify_waiters();
    }

    /// The node is stopping: the next lines give back everything held.
    fn closing(&self) {
        let mut ledgers = self.ledgers();
        for ledger in ledgers.values_mut() {
            ledger.last_use = Instant::now() - IDLE_RELEASE;
        }
    }

    /// Waits until a call posts a shortfall or settles spend.
    async fn woken(&self) {
        self.inner.wake.notified().await;
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
