use super::*;
use crate::fixtures::{budget_spec, fields, resource};
use crate::{Reference, Spec, validate};

fn budget(s: pb::BudgetSpec) -> Budget {
    match validate(&resource(s)).unwrap().spec {
        Spec::Budget(b) => b,
        other => panic!("{other:?}"),
    }
}

#[test]
fn valid_budget() {
    let v = validate(&resource(budget_spec())).unwrap();
    assert_eq!(
        v.references,
        [
            Reference {
                kind: Kind::Agent,
                name: "support".into(),
                field: "budget.scope.subject".into()
            },
            Reference {
                kind: Kind::RoutingTable,
                name: "cheap".into(),
                field: "budget.degrade_routing_table".into()
            },
        ]
    );
    let Spec::Budget(b) = v.spec else {
        panic!("{:?}", v.spec)
    };
    assert_eq!(b.scope, BudgetScope::Agent(Some("support".into())));
    assert_eq!(b.scope.kind(), BudgetScopeKind::Agent);
    assert_eq!(b.window, BudgetWindow::Month);
    assert_eq!(b.time_zone_name(), "Europe/Paris");
    assert_eq!(b.limit, Usd::from_micros(250_000_000));
    assert_eq!(b.per_request_cap, Some(Usd::from_micros(500_000)));
    assert_eq!(
        b.on_exceed,
        OnExceed::Degrade {
            routing_table: "cheap".into()
        }
    );
    assert_eq!(b.alert_threshold_percents, [50, 80, 100]);
}

#[test]
fn defaults() {
    let b = budget(pb::BudgetSpec {
        scope: Some(pb::BudgetScope {
            kind: pb::BudgetScopeKind::Tenant as i32,
            subject: String::new(),
        }),
        window: pb::BudgetWindow::Day as i32,
        limit_usd: 10.0,
        ..Default::default()
    });
    assert_eq!(b.scope, BudgetScope::Tenant);
    assert_eq!(b.time_zone, TimeZone::UTC);
    assert_eq!(b.time_zone_name(), "UTC");
    assert_eq!(b.per_request_cap, None);
    assert_eq!(b.on_exceed, OnExceed::Block, "unspecified = BLOCK");
    assert!(b.alert_threshold_percents.is_empty());
}

#[test]
fn scope_subjects() {
    let with = |kind: pb::BudgetScopeKind, subject: &str| {
        let mut s = budget_spec();
        s.scope = Some(pb::BudgetScope {
            kind: kind as i32,
            subject: subject.into(),
        });
        s
    };
    assert_eq!(
        budget(with(pb::BudgetScopeKind::User, "Alice@Example.com")).scope,
        BudgetScope::User(Some("Alice@Example.com".into()))
    );
    assert_eq!(
        budget(with(pb::BudgetScopeKind::User, "")).scope,
        BudgetScope::User(None)
    );
    assert_eq!(
        budget(with(pb::BudgetScopeKind::Agent, "")).scope,
        BudgetScope::Agent(None)
    );
    let key = budget(with(pb::BudgetScopeKind::ApiKey, "ci-key"));
    assert_eq!(key.scope, BudgetScope::ApiKey(Some("ci-key".into())));
    assert_eq!(key.scope.subject(), Some("ci-key"));

    for (kind, subject) in [
        (pb::BudgetScopeKind::Tenant, "acme"),
        (pb::BudgetScopeKind::Agent, "Support Bot"),
        (pb::BudgetScopeKind::ApiKey, "ci_key"),
    ] {
        assert_eq!(
            fields(&resource(with(kind, subject))),
            ["budget.scope.subject"],
            "{kind:?} {subject}"
        );
    }
}

#[test]
fn scope_is_required_with_a_known_kind() {
    let mut s = budget_spec();
    s.scope = None;
    assert_eq!(fields(&resource(s)), ["budget.scope"]);
    for kind in [0, 9] {
        let mut s = budget_spec();
        s.scope = Some(pb::BudgetScope {
            kind,
            subject: String::new(),
        });
        assert_eq!(fields(&resource(s)), ["budget.scope.kind"], "{kind}");
    }
}

#[test]
fn window_is_required_and_known() {
    for window in [0, 5] {
        let mut s = budget_spec();
        s.window = window;
        assert_eq!(fields(&resource(s)), ["budget.window"], "{window}");
    }
}

#[test]
fn time_zone_must_be_an_exact_iana_name() {
    for ok in ["UTC", "America/New_York", "Asia/Kolkata", "Etc/GMT+5"] {
        let mut s = budget_spec();
        s.time_zone = ok.into();
        assert_eq!(budget(s).time_zone_name(), ok);
    }
    for bad in ["Mars/Olympus", "europe/paris", "+02:00", "CEST", " UTC"] {
        let mut s = budget_spec();
        s.time_zone = bad.into();
        assert_eq!(fields(&resource(s)), ["budget.time_zone"], "{bad:?}");
    }
}

#[test]
fn limit_must_be_positive_and_finite() {
    for bad in [0.0, -5.0, f64::NAN, f64::INFINITY, 1e-9, 1e20] {
        let mut s = budget_spec();
        s.limit_usd = bad;
        assert_eq!(fields(&resource(s)), ["budget.limit_usd"], "{bad}");
    }
    let mut s = budget_spec();
    s.limit_usd = 0.0000005;
    assert_eq!(budget(s).limit, Usd::from_micros(1), "rounded half-up");
}

#[test]
fn per_request_cap_is_non_negative_and_survives_rounding() {
    for bad in [-0.01, f64::NAN, 1e-8] {
        let mut s = budget_spec();
        s.per_request_cap_usd = bad;
        assert_eq!(
            fields(&resource(s)),
            ["budget.per_request_cap_usd"],
            "{bad}"
        );
    }
}

#[test]
fn degrade_routing_table_goes_with_degrade_only() {
    let mut s = budget_spec();
    s.degrade_routing_table.clear();
    assert_eq!(
        fields(&resource(s)),
        ["budget.degrade_routing_table"],
        "required for DEGRADE"
    );

    let mut s = budget_spec();
    s.degrade_routing_table = "Cheap!".into();
    assert_eq!(fields(&resource(s)), ["budget.degrade_routing_table"]);

    for action in [
        pb::OnExceed::Unspecified,
        pb::OnExceed::Block,
        pb::OnExceed::AlertOnly,
    ] {
        let mut s = budget_spec();
        s.on_exceed = action as i32;
        assert_eq!(
            fields(&resource(s)),
            ["budget.degrade_routing_table"],
            "{action:?} with a table"
        );
    }

    let mut s = budget_spec();
    s.on_exceed = pb::OnExceed::AlertOnly as i32;
    s.degrade_routing_table.clear();
    assert_eq!(budget(s).on_exceed, OnExceed::AlertOnly);
}

#[test]
fn on_exceed_must_be_known() {
    let mut s = budget_spec();
    s.on_exceed = 7;
    assert_eq!(fields(&resource(s)), ["budget.on_exceed"]);
}

#[test]
fn alert_thresholds_are_1_to_1000_without_repeats() {
    let mut s = budget_spec();
    s.alert_threshold_percents = vec![1, 0, 1000, 1001, 50, 50];
    assert_eq!(
        fields(&resource(s)),
        [
            "budget.alert_threshold_percents[1]",
            "budget.alert_threshold_percents[3]",
            "budget.alert_threshold_percents[5]",
        ]
    );
}

#[test]
fn every_bad_field_is_reported_at_once() {
    let s = pb::BudgetSpec {
        scope: None,
        window: 0,
        time_zone: "Nowhere/City".into(),
        limit_usd: -1.0,
        per_request_cap_usd: f64::NAN,
        on_exceed: pb::OnExceed::Degrade as i32,
        degrade_routing_table: String::new(),
        alert_threshold_percents: vec![0],
    };
    assert_eq!(
        fields(&resource(s)),
        [
            "budget.scope",
            "budget.window",
            "budget.time_zone",
            "budget.limit_usd",
            "budget.per_request_cap_usd",
            "budget.degrade_routing_table",
            "budget.alert_threshold_percents[0]",
        ]
    );
}

fn windowed(window: pb::BudgetWindow, time_zone: &str) -> Budget {
    budget(pb::BudgetSpec {
        window: window as i32,
        time_zone: time_zone.into(),
        ..budget_spec()
    })
}

/// `(start, end)` of the window around `at`, as RFC 3339 instants.
fn bounds(b: &Budget, at: &str) -> (String, String) {
    let now: jiff::Timestamp = at.parse().unwrap();
    let w = b.window_at(now);
    let show = |s: i64| jiff::Timestamp::from_second(s).unwrap().to_string();
    (show(w.start), w.end.map(show).unwrap_or_default())
}

#[test]
fn hour_windows_start_at_the_top_of_the_hour() {
    let b = windowed(pb::BudgetWindow::Hour, "");
    assert_eq!(
        bounds(&b, "2026-11-21T10:59:59.999Z"),
        ("2026-11-21T10:00:00Z".into(), "2026-11-21T11:00:00Z".into())
    );
    // The boundary belongs to the next window.
    assert_eq!(
        bounds(&b, "2026-11-21T11:00:00Z"),
        ("2026-11-21T11:00:00Z".into(), "2026-11-21T12:00:00Z".into())
    );
    // A zone with a half-hour offset aligns to its own hours.
    let india = windowed(pb::BudgetWindow::Hour, "Asia/Kolkata");
    assert_eq!(
        bounds(&india, "2026-11-21T10:10:00Z"),
        ("2026-11-21T09:30:00Z".into(), "2026-11-21T10:30:00Z".into())
    );
}

#[test]
fn day_windows_follow_local_midnight_across_daylight_saving() {
    let b = windowed(pb::BudgetWindow::Day, "Europe/Paris");
    // Winter: UTC+1.
    assert_eq!(
        bounds(&b, "2026-11-21T22:59:59Z"),
        ("2026-11-20T23:00:00Z".into(), "2026-11-21T23:00:00Z".into())
    );
    assert_eq!(
        bounds(&b, "2026-11-21T23:00:00Z"),
        ("2026-11-21T23:00:00Z".into(), "2026-11-22T23:00:00Z".into())
    );
    // 2026-03-29 has 23 hours in Paris (clocks go forward).
    assert_eq!(
        bounds(&b, "2026-03-29T12:00:00Z"),
        ("2026-03-28T23:00:00Z".into(), "2026-03-29T22:00:00Z".into())
    );
}

#[test]
fn month_windows_run_from_the_first_to_the_first() {
    let b = windowed(pb::BudgetWindow::Month, "UTC");
    assert_eq!(
        bounds(&b, "2028-02-29T23:59:59Z"),
        ("2028-02-01T00:00:00Z".into(), "2028-03-01T00:00:00Z".into())
    );
    assert_eq!(
        bounds(&b, "2026-12-31T23:00:00Z"),
        ("2026-12-01T00:00:00Z".into(), "2027-01-01T00:00:00Z".into())
    );
    let tokyo = windowed(pb::BudgetWindow::Month, "Asia/Tokyo");
    assert_eq!(
        bounds(&tokyo, "2026-11-30T15:00:00Z"),
        ("2026-11-30T15:00:00Z".into(), "2026-12-31T15:00:00Z".into())
    );
}

#[test]
fn total_budgets_have_one_window() {
    let b = windowed(pb::BudgetWindow::Total, "");
    let now: jiff::Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
    assert_eq!(b.window_at(now), Window::TOTAL);
}
