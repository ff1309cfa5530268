//! The ledger arithmetic, pure: one [`pb::BudgetLedger`] (a budget's spend
//! in one window, for one subject) and the lines nodes send against it.
//!
//! Invariant for budgets that enforce their limit: `spent + Σ live
//! allowances ≤ limit` after every line. Nodes only spend from allowances
//! they hold, so settled spend never passes the limit either. A lapsed
//! allowance (not renewed within its TTL) stops counting as reserved; its
//! entry is kept, empty, so a resent line is still recognised by its seq.

use aios_proto::v1 as pb;

/// How long an empty, lapsed allowance entry is kept for its seq.
pub const FORGET_AFTER_MS: i64 = 60 * 60 * 1000;

/// One line from a node, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// `{node_id}/{incarnation}`.
    pub holder: String,
    /// Per-holder sequence; applied only when above the stored one.
    pub seq: u64,
    /// Settled real cost, micro-USD (≥ 0).
    pub spent: i64,
    /// Allowance handed back, micro-USD (≥ 0).
    pub release: i64,
    /// More allowance wanted, micro-USD (≥ 0).
    pub want: i64,
}

/// What the budget allows for this line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terms {
    /// The limit, micro-USD.
    pub limit: i64,
    /// Whether allowances may be leased (the window is current and the
    /// budget enforces its limit); otherwise `want` is ignored.
    pub leasable: bool,
    /// Now, Unix milliseconds.
    pub now_ms: i64,
    /// Allowance lifetime, milliseconds.
    pub ttl_ms: i64,
}

/// The ledger after a line, as the node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The holder's allowance now, micro-USD.
    pub held: i64,
    /// `limit - spent - live allowances`, never below 0.
    pub remaining: i64,
    /// Settled spend of the window.
    pub spent: i64,
    /// False when the line was a resend of one already applied.
    pub fresh: bool,
    /// Alert thresholds (percent) this line's spend crossed.
    pub crossed: Vec<u32>,
}

/// Applies `line` to `ledger` under `terms`; `thresholds` are the budget's
/// soft alert percentages (sorted).
pub fn apply(
    ledger: &mut pb::BudgetLedger,
    line: &Line,
    terms: Terms,
    thresholds: &[u32],
) -> Applied {
    lapse(ledger, terms.now_ms);
    let entry = ledger.allowances.entry(line.holder.clone()).or_default();
    if line.seq <= entry.seq {
        let held = entry.held_micros;
        return Applied {
            held,
            remaining: remaining(ledger, terms.limit, terms.now_ms),
            spent: ledger.spent_micros,
            fresh: false,
            crossed: Vec::new(),
        };
    }
    entry.seq = line.seq;
    // Real spend is recorded in full even when a node spent more than it
    // held (its estimate was wrong); the allowance cannot go below zero.
    let spent = line.spent.max(0);
    entry.held_micros = (entry.held_micros - spent).max(0);
    entry.held_micros -= line.release.clamp(0, entry.held_micros);
    let before = ledger.spent_micros;
    ledger.spent_micros = ledger.spent_micros.saturating_add(spent);

    if terms.leasable && line.want > 0 {
        let free = remaining(ledger, terms.limit, terms.now_ms);
        let grant = line.want.min(free);
        if let Some(entry) = ledger.allowances.get_mut(&line.holder) {
            entry.held_micros += grant;
        }
    }
    if let Some(entry) = ledger.allowances.get_mut(&line.holder) {
        entry.expire_unix_ms = terms.now_ms.saturating_add(terms.ttl_ms);
    }
    let crossed = crossed(ledger, before, terms.limit, thresholds);
    Applied {
        held: ledger
            .allowances
            .get(&line.holder)
            .map_or(0, |e| e.held_micros),
        remaining: remaining(ledger, terms.limit, terms.now_ms),
        spent: ledger.spent_micros,
        fresh: true,
        crossed,
    }
}

/// Allowances live at `now_ms`, micro-USD.
pub fn reserved(ledger: &pb::BudgetLedger, now_ms: i64) -> i64 {
    ledger
        .allowances
        .values()
        .filter(|a| a.expire_unix_ms > now_ms)
        .map(|a| a.held_micros)
        .fold(0i64, i64::saturating_add)
}

/// What is left to lease at `now_ms`, never below 0.
pub fn remaining(ledger: &pb::BudgetLedger, limit: i64, now_ms: i64) -> i64 {
    limit
        .saturating_sub(ledger.spent_micros)
        .saturating_sub(reserved(ledger, now_ms))
        .max(0)
}

/// Empties lapsed allowances and forgets long-lapsed empty entries.
fn lapse(ledger: &mut pb::BudgetLedger, now_ms: i64) {
    for allowance in ledger.allowances.values_mut() {
        if allowance.expire_unix_ms <= now_ms {
            allowance.held_micros = 0;
        }
    }
    ledger
        .allowances
        .retain(|_, a| a.held_micros > 0 || now_ms - a.expire_unix_ms < FORGET_AFTER_MS);
}

/// Thresholds crossed by spend going from `before` to the ledger's spend;
/// each is recorded so it fires once per window.
fn crossed(ledger: &mut pb::BudgetLedger, before: i64, limit: i64, thresholds: &[u32]) -> Vec<u32> {
    if limit <= 0 {
        return Vec::new();
    }
    let reached = |spent: i64, percent: u32| {
        i128::from(spent) * 100 >= i128::from(limit) * i128::from(percent)
    };
    let mut crossed = Vec::new();
    for &percent in thresholds {
        if reached(ledger.spent_micros, percent)
            && !reached(before, percent)
            && !ledger.alerted_percents.contains(&percent)
        {
            ledger.alerted_percents.push(percent);
            crossed.push(percent);
        }
    }
    crossed
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
