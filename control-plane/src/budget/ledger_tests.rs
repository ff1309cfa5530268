#![allow(clippy::unwrap_used)]

use super::*;

const LIMIT: i64 = 1_000;
const TTL: i64 = 10_000;

fn terms(now_ms: i64) -> Terms {
    Terms {
        limit: LIMIT,
        leasable: true,
        now_ms,
        ttl_ms: TTL,
    }
}

fn line(holder: &str, seq: u64, spent: i64, release: i64, want: i64) -> Line {
    Line {
        holder: holder.into(),
        seq,
        spent,
        release,
        want,
    }
}

#[test]
fn grants_never_exceed_what_is_left() {
    let mut ledger = pb::BudgetLedger::default();
    let a = apply(&mut ledger, &line("a/1", 1, 0, 0, 700), terms(0), &[]);
    assert_eq!((a.held, a.remaining), (700, 300));
    let b = apply(&mut ledger, &line("b/1", 1, 0, 0, 700), terms(1), &[]);
    assert_eq!((b.held, b.remaining), (300, 0));
    // Settling moves spend out of the allowance; nothing new appears.
    let a = apply(&mut ledger, &line("a/1", 2, 650, 0, 0), terms(2), &[]);
    assert_eq!((a.held, a.spent, a.remaining), (50, 650, 0));
    // Released allowance is free for others.
    let a = apply(&mut ledger, &line("a/1", 3, 0, 50, 0), terms(3), &[]);
    assert_eq!((a.held, a.remaining), (0, 50));
    let b = apply(&mut ledger, &line("b/1", 2, 300, 0, 100), terms(4), &[]);
    assert_eq!((b.held, b.spent, b.remaining), (50, 950, 0));
    assert!(ledger.spent_micros + reserved(&ledger, 4) <= LIMIT);
}

#[test]
fn a_resent_line_is_applied_once() {
    let mut ledger = pb::BudgetLedger::default();
    apply(&mut ledger, &line("a/1", 1, 0, 0, 500), terms(0), &[]);
    let first = apply(&mut ledger, &line("a/1", 2, 200, 0, 0), terms(1), &[]);
    let again = apply(&mut ledger, &line("a/1", 2, 200, 0, 0), terms(2), &[]);
    assert!(first.fresh);
    assert!(!again.fresh);
    assert_eq!(ledger.spent_micros, 200);
    assert_eq!(again.held, 300);
}

#[test]
fn lapsed_allowances_come_back_and_late_spend_still_counts() {
    let mut ledger = pb::BudgetLedger::default();
    apply(&mut ledger, &line("crashed/1", 1, 0, 0, 800), terms(0), &[]);
    let other = apply(&mut ledger, &line("b/1", 1, 0, 0, 800), terms(TTL - 1), &[]);
    assert_eq!(other.held, 200);
    // After the TTL the crashed process's allowance is free again.
    let other = apply(&mut ledger, &line("b/1", 2, 0, 0, 600), terms(TTL), &[]);
    assert_eq!((other.held, other.remaining), (800, 200));
    // The lapsed entry is kept for its seq: a resend is still recognised.
    let resent = apply(
        &mut ledger,
        &line("crashed/1", 1, 0, 0, 800),
        terms(TTL + 1),
        &[],
    );
    assert!(!resent.fresh);
    assert_eq!(resent.held, 0);
    // ...and forgotten an hour later.
    apply(
        &mut ledger,
        &line("b/1", 3, 0, 0, 0),
        terms(TTL + FORGET_AFTER_MS),
        &[],
    );
    assert!(!ledger.allowances.contains_key("crashed/1"));
}

#[test]
fn renewing_extends_the_lease() {
    let mut ledger = pb::BudgetLedger::default();
    apply(&mut ledger, &line("a/1", 1, 0, 0, 400), terms(0), &[]);
    apply(&mut ledger, &line("a/1", 2, 0, 0, 0), terms(TTL - 1), &[]);
    assert_eq!(reserved(&ledger, TTL + 1), 400);
    assert_eq!(reserved(&ledger, 2 * TTL), 0);
}

#[test]
fn a_past_window_settles_but_leases_nothing() {
    let mut ledger = pb::BudgetLedger::default();
    let closed = Terms {
        leasable: false,
        ..terms(0)
    };
    let a = apply(&mut ledger, &line("a/1", 1, 120, 0, 500), closed, &[]);
    assert_eq!((a.held, a.spent, a.remaining), (0, 120, 880));
}

#[test]
fn spend_beyond_the_allowance_is_recorded_in_full() {
    let mut ledger = pb::BudgetLedger::default();
    apply(&mut ledger, &line("a/1", 1, 0, 0, 100), terms(0), &[]);
    let a = apply(&mut ledger, &line("a/1", 2, 150, 0, 0), terms(1), &[]);
    assert_eq!((a.held, a.spent), (0, 150));
}

#[test]
fn each_threshold_fires_once_when_crossed() {
    let mut ledger = pb::BudgetLedger::default();
    let th = [50, 80, 100];
    apply(&mut ledger, &line("a/1", 1, 0, 0, 1_000), terms(0), &th);
    let a = apply(&mut ledger, &line("a/1", 2, 499, 0, 0), terms(1), &th);
    assert!(a.crossed.is_empty());
    let a = apply(&mut ledger, &line("a/1", 3, 301, 0, 0), terms(2), &th);
    assert_eq!(a.crossed, [50, 80]);
    let a = apply(&mut ledger, &line("a/1", 4, 200, 0, 0), terms(3), &th);
    assert_eq!(a.crossed, [100]);
    let a = apply(&mut ledger, &line("a/1", 5, 0, 0, 0), terms(4), &th);
    assert!(a.crossed.is_empty());
}
