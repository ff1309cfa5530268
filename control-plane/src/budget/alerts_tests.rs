#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use super::*;

fn budget(window: pb::BudgetWindow, scope: pb::BudgetScopeKind) -> Budget {
    let resource = pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: "daily".into(),
            tenant: "acme".into(),
            ..Default::default()
        }),
        spec: Some(pb::resource::Spec::Budget(pb::BudgetSpec {
            scope: Some(pb::BudgetScope {
                kind: scope as i32,
                subject: String::new(),
            }),
            window: window as i32,
            limit_usd: 10.0,
            on_exceed: pb::OnExceed::Block as i32,
            alert_threshold_percents: vec![50, 80, 100],
            time_zone: "UTC".into(),
            ..Default::default()
        })),
    };
    match aios_model::validate(&resource).unwrap().spec {
        aios_model::Spec::Budget(b) => b,
        other => panic!("{other:?}"),
    }
}

fn at(rfc3339: &str) -> Timestamp {
    rfc3339.parse().unwrap()
}

fn id(window_start: &str, subject: &str) -> LedgerId {
    let window_start = at(window_start).as_second();
    LedgerId {
        key: format!("/aios/v1/budgets/ledger/acme/daily/{window_start:020}/{subject}"),
        tenant: "acme".into(),
        budget: "daily".into(),
        window_start,
        subject: subject.into(),
    }
}

fn ledger(spent_usd: f64, alerted: &[u32]) -> pb::BudgetLedger {
    pb::BudgetLedger {
        spent_micros: (spent_usd * 1e6) as i64,
        alerted_percents: alerted.to_vec(),
        ..Default::default()
    }
}

#[test]
fn each_recorded_threshold_is_raised_once_and_the_highest_wins() {
    let day = budget(pb::BudgetWindow::Day, pb::BudgetScopeKind::Tenant);
    let ledger_id = id("2026-11-21T00:00:00Z", "");
    let now = at("2026-11-21T10:00:00Z");
    let mut tracker = Tracker::default();

    assert!(
        tracker
            .update(&ledger_id, &ledger(1.0, &[]), Some(day.clone()), now)
            .is_none()
    );
    let first = tracker
        .update(&ledger_id, &ledger(5.5, &[50]), Some(day.clone()), now)
        .unwrap();
    assert_eq!(first.id.name, "budget/daily");
    assert_eq!(first.event.rule, "budget/daily");
    assert_eq!(first.event.state(), pb::AlertState::Firing);
    assert_eq!(first.event.severity(), pb::AlertSeverity::Warning);
    assert_eq!(first.event.metric(), pb::AlertMetric::BudgetSpent);
    assert_eq!((first.event.value, first.event.threshold), (0.55, 0.5));
    assert!(
        first.event.message.contains("50%"),
        "{}",
        first.event.message
    );

    // The same ledger again (another settle, nothing newly crossed).
    assert!(
        tracker
            .update(&ledger_id, &ledger(6.0, &[50]), Some(day.clone()), now)
            .is_none()
    );
    // Spend jumps past two thresholds: one event, for the highest.
    let jump = tracker
        .update(&ledger_id, &ledger(10.0, &[50, 80, 100]), Some(day), now)
        .unwrap();
    assert_eq!(jump.event.threshold, 1.0);
    assert_eq!(jump.event.severity(), pb::AlertSeverity::Critical);
}

#[test]
fn subjects_get_their_own_alert() {
    let per_agent = budget(pb::BudgetWindow::Day, pb::BudgetScopeKind::Agent);
    let now = at("2026-11-21T10:00:00Z");
    let mut tracker = Tracker::default();
    let a = tracker
        .update(
            &id("2026-11-21T00:00:00Z", "support"),
            &ledger(5.0, &[50]),
            Some(per_agent.clone()),
            now,
        )
        .unwrap();
    let b = tracker
        .update(
            &id("2026-11-21T00:00:00Z", "triage"),
            &ledger(5.0, &[50]),
            Some(per_agent),
            now,
        )
        .unwrap();
    assert_eq!(a.id.name, "budget/daily/support");
    assert_eq!(b.id.name, "budget/daily/triage");
    assert_eq!(a.event.scope.unwrap().agent, "support");
    assert!(
        a.event.message.contains("for support"),
        "{}",
        a.event.message
    );
}

#[test]
fn alerts_resolve_when_their_window_ends() {
    let day = budget(pb::BudgetWindow::Day, pb::BudgetScopeKind::Tenant);
    let mut tracker = Tracker::default();
    tracker
        .update(
            &id("2026-11-21T00:00:00Z", ""),
            &ledger(8.0, &[50, 80]),
            Some(day),
            at("2026-11-21T23:00:00Z"),
        )
        .unwrap();
    assert!(tracker.resolve_ended(at("2026-11-21T23:59:59Z")).is_empty());
    let resolved = tracker.resolve_ended(at("2026-11-22T00:00:00Z"));
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].id.name, "budget/daily");
    assert_eq!(resolved[0].event.state(), pb::AlertState::Resolved);
    assert!(tracker.resolve_ended(at("2026-11-23T00:00:00Z")).is_empty());
}

#[test]
fn total_budgets_never_resolve() {
    let total = budget(pb::BudgetWindow::Total, pb::BudgetScopeKind::Tenant);
    let mut tracker = Tracker::default();
    let raised = tracker
        .update(
            &id("1970-01-01T00:00:00Z", ""),
            &ledger(5.0, &[50]),
            Some(total),
            at("2026-11-21T10:00:00Z"),
        )
        .unwrap();
    assert!(
        raised.event.message.contains("in total"),
        "{}",
        raised.event.message
    );
    assert!(tracker.resolve_ended(at("2036-01-01T00:00:00Z")).is_empty());
}

#[test]
fn past_windows_and_budgets_not_in_force_raise_nothing() {
    let day = budget(pb::BudgetWindow::Day, pb::BudgetScopeKind::Tenant);
    let mut tracker = Tracker::default();
    // A late settle into yesterday's ledger.
    assert!(
        tracker
            .update(
                &id("2026-11-20T00:00:00Z", ""),
                &ledger(5.0, &[50]),
                Some(day),
                at("2026-11-21T00:00:01Z"),
            )
            .is_none()
    );
    // A deleted budget; what the ledger recorded still counts as seen.
    let ledger_id = id("2026-11-21T00:00:00Z", "");
    let now = at("2026-11-21T10:00:00Z");
    assert!(
        tracker
            .update(&ledger_id, &ledger(5.0, &[50]), None, now)
            .is_none()
    );
    let day = budget(pb::BudgetWindow::Day, pb::BudgetScopeKind::Tenant);
    assert!(
        tracker
            .update(&ledger_id, &ledger(5.0, &[50]), Some(day), now)
            .is_none()
    );
}

#[test]
fn ledger_keys_parse_back() {
    let kv = KeyValue {
        key: format!(
            "{}acme/daily/{:020}/=bob%2Fx",
            keys::BUDGET_LEDGERS,
            1_763_683_200
        ),
        value: ledger(1.0, &[]).encode_to_vec(),
        create_revision: 1,
        mod_revision: 1,
        version: 1,
        lease: None,
    };
    let (id, ledger) = parse(&kv).unwrap();
    assert_eq!(
        (
            id.tenant.as_str(),
            id.budget.as_str(),
            id.window_start,
            id.subject.as_str()
        ),
        ("acme", "daily", 1_763_683_200, "bob/x")
    );
    assert_eq!(ledger.spent_micros, 1_000_000);
    let garbage = KeyValue {
        key: format!("{}acme/daily", keys::BUDGET_LEDGERS),
        ..kv
    };
    assert!(parse(&garbage).is_none());
}
