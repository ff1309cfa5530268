use std::time::Duration;

use aios_model::{AlertSeverity, validate};

use super::*;

const T: i64 = 1_767_225_600;

fn rule(tenant: &str, name: &str, f: impl FnOnce(&mut pb::AlertRuleSpec)) -> Rule {
    let mut spec = pb::AlertRuleSpec {
        metric: pb::AlertMetric::ErrorRate as i32,
        threshold: 0.05,
        min_requests: 10,
        ..Default::default()
    };
    f(&mut spec);
    let resource = pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            tenant: tenant.into(),
            ..Default::default()
        }),
        spec: Some(pb::resource::Spec::AlertRule(spec)),
    };
    let Spec::AlertRule(spec) = validate(&resource).unwrap().spec else {
        unreachable!()
    };
    Rule {
        id: RuleId {
            tenant: tenant.into(),
            name: name.into(),
        },
        version: 1,
        spec,
    }
}

fn at(requests: u64, value: f64) -> impl FnMut(&Rule) -> Measure {
    move |_| Measure { requests, value }
}

fn states(transitions: &[Transition]) -> Vec<(String, pb::AlertState)> {
    transitions
        .iter()
        .map(|t| (t.id.name.clone(), t.event.state()))
        .collect()
}

#[test]
fn fires_on_the_first_breach_and_resolves_on_the_first_recovery() {
    let rules = [rule("acme", "errors", |_| {})];
    let mut e = Evaluator::new();
    assert!(e.step(&rules, T, at(100, 0.01)).is_empty());
    let fired = e.step(&rules, T + 1, at(100, 0.2));
    assert_eq!(
        states(&fired),
        [("errors".to_string(), pb::AlertState::Firing)]
    );
    let event = &fired[0].event;
    assert_eq!(
        (event.value, event.threshold, event.requests),
        (0.2, 0.05, 100)
    );
    assert_eq!(event.severity(), pb::AlertSeverity::Warning);
    assert_eq!(event.metric(), pb::AlertMetric::ErrorRate);
    assert_eq!(event.time.unwrap().seconds, T + 1);
    assert_eq!(
        event.message,
        "error rate 20.0% > 5.0% over 1m (100 requests)"
    );
    assert_eq!(event.scope.as_ref().unwrap().tenant, "acme");
    assert!(
        e.step(&rules, T + 2, at(100, 0.3)).is_empty(),
        "still firing: no new event"
    );
    let resolved = e.step(&rules, T + 3, at(100, 0.05));
    assert_eq!(
        states(&resolved),
        [("errors".to_string(), pb::AlertState::Resolved)]
    );
    assert!(resolved[0].event.message.contains("5.0% <= 5.0%"));
}

#[test]
fn hold_delays_firing_and_a_recovery_restarts_it() {
    let rules = [rule("acme", "slow", |s| {
        s.metric = pb::AlertMetric::LatencyP95 as i32;
        s.threshold = 1.0;
        s.hold = Some(prost_types::Duration {
            seconds: 3,
            nanos: 0,
        });
    })];
    let mut e = Evaluator::new();
    assert!(e.step(&rules, T, at(50, 2.0)).is_empty());
    assert!(e.step(&rules, T + 2, at(50, 2.0)).is_empty());
    // Recovered before the hold ran out: pending is forgotten.
    assert!(e.step(&rules, T + 3, at(50, 0.5)).is_empty());
    assert!(e.step(&rules, T + 4, at(50, 2.0)).is_empty());
    assert!(e.step(&rules, T + 6, at(50, 2.0)).is_empty());
    assert_eq!(
        states(&e.step(&rules, T + 7, at(50, 2.0))),
        [("slow".to_string(), pb::AlertState::Firing)]
    );
}

#[test]
fn too_few_requests_neither_fire_nor_resolve() {
    let rules = [rule("acme", "errors", |_| {})];
    let mut e = Evaluator::new();
    assert!(e.step(&rules, T, at(3, 1.0)).is_empty(), "3 < min_requests");
    assert_eq!(e.step(&rules, T + 1, at(10, 1.0)).len(), 1);
    assert!(
        e.step(&rules, T + 2, at(0, 0.0)).is_empty(),
        "quiet: stays firing"
    );
    assert_eq!(e.step(&rules, T + 3, at(20, 0.0)).len(), 1);
    // Cost needs no requests: an idle fleet spends nothing.
    let cost = [rule("acme", "spend", |s| {
        s.metric = pb::AlertMetric::CostPerHour as i32;
        s.threshold = 100.0;
        s.min_requests = 1000;
    })];
    assert_eq!(e.step(&cost, T, at(2, 150.0)).len(), 1);
}

#[test]
fn cache_hit_rate_fires_below_its_threshold() {
    let rules = [rule("acme", "cold-cache", |s| {
        s.metric = pb::AlertMetric::CacheHitRate as i32;
        s.threshold = 0.2;
    })];
    let mut e = Evaluator::new();
    assert!(e.step(&rules, T, at(100, 0.5)).is_empty());
    let fired = e.step(&rules, T + 1, at(100, 0.1));
    assert_eq!(fired[0].event.state(), pb::AlertState::Firing);
    assert!(fired[0].event.message.contains("10.0% < 20.0%"));
}

#[test]
fn deleting_or_rescoping_a_firing_rule_resolves_it() {
    let errors = rule("acme", "errors", |_| {});
    let spend = rule("acme", "spend", |s| {
        s.metric = pb::AlertMetric::CostPerHour as i32;
        s.threshold = 0.5;
    });
    let mut e = Evaluator::new();
    assert_eq!(
        e.step(&[errors.clone(), spend.clone()], T, at(100, 9.0))
            .len(),
        2
    );
    // A new threshold that still holds keeps it firing, silently.
    let mut raised = errors.clone();
    raised.spec = rule("acme", "errors", |s| s.threshold = 0.5).spec;
    raised.version = 2;
    assert!(
        e.step(&[raised, spend.clone()], T + 1, at(100, 0.9))
            .is_empty()
    );
    // Re-scoped to one agent: the old alert resolves.
    let rescoped = rule("acme", "errors", |s| s.agent = "support".into());
    let out = e.step(&[rescoped, spend], T + 2, at(100, 0.0));
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].event.message.contains("changed what it measures"));
    assert_eq!(
        states(&out),
        [
            ("errors".to_string(), pb::AlertState::Resolved),
            ("spend".to_string(), pb::AlertState::Resolved)
        ]
    );
    e.step(&[rule("acme", "gone", |_| {})], T + 3, at(100, 1.0));
    let out = e.step(&[], T + 4, at(100, 1.0));
    assert_eq!(
        states(&out),
        [("gone".to_string(), pb::AlertState::Resolved)]
    );
    assert!(out[0].event.message.contains("was deleted"));
}

#[test]
fn subscribers_see_their_tenant_and_platform_callers_see_fleet_rules() {
    let mut e = Evaluator::new();
    let fleet = rule(SYSTEM_TENANT, "fleet-errors", |_| {});
    let acme = rule("acme", "support-errors", |s| s.agent = "support".into());
    let out = e.step(&[fleet, acme], T, at(100, 1.0));
    let (fleet, acme) = (&out[0], &out[1]);
    assert_eq!(fleet.event.scope.as_ref().unwrap().tenant, "*");
    let mut filter = Filter::tenant(TenantScope::One("acme".into()));
    assert!(
        !fleet.visible(&filter, false),
        "tenant keys do not see the fleet"
    );
    assert!(fleet.visible(&filter, true));
    assert!(acme.visible(&filter, false));
    filter.agent = "billing".into();
    assert!(!acme.visible(&filter, false), "another agent");
    filter.agent = "support".into();
    assert!(acme.visible(&filter, false));
    let globex = Filter::tenant(TenantScope::One("globex".into()));
    assert!(!acme.visible(&globex, true), "another tenant's rule");
    assert!(acme.visible(&Filter::tenant(TenantScope::All), true));
}

#[test]
fn measures_read_the_cell_in_the_metric_unit() {
    let mut cell = Cell {
        requests: 200,
        errors: 10,
        cache_hits: 50,
        cost_usd: 2.5,
        ..Cell::default()
    };
    for _ in 0..200 {
        cell.latency.record_nanos(2_000_000_000);
    }
    let minute = Duration::from_secs(60);
    let m = |metric| Measure::of(metric, &cell, minute).value;
    assert_eq!(m(AlertMetric::ErrorRate), 0.05);
    assert_eq!(m(AlertMetric::CacheHitRate), 0.25);
    assert_eq!(m(AlertMetric::CostPerHour), 150.0);
    assert!((m(AlertMetric::LatencyP95) - 2.0).abs() < 0.02);
    let empty = Measure::of(AlertMetric::LatencyP99, &Cell::default(), minute);
    assert_eq!((empty.requests, empty.value), (0, 0.0));
    assert_eq!(
        AlertSeverity::Warning.to_proto(),
        pb::AlertSeverity::Warning
    );
}
