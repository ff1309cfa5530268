use std::time::Duration;

use super::*;
use crate::fixtures::{dur, fields, resource, routing_table_spec};
use crate::{Reference, Spec, Usd, validate};

fn table(s: pb::RoutingTableSpec) -> RoutingTable {
    match validate(&resource(s)).unwrap().spec {
        Spec::RoutingTable(t) => t,
        other => panic!("{other:?}"),
    }
}

fn target(model: &str, weight: u32) -> pb::WeightedTarget {
    pb::WeightedTarget {
        model: model.into(),
        weight,
    }
}

#[test]
fn valid_routing_table() {
    let v = validate(&resource(routing_table_spec())).unwrap();
    let refs: Vec<(Kind, &str, &str)> = v
        .references
        .iter()
        .map(|r: &Reference| (r.kind, r.name.as_str(), r.field.as_str()))
        .collect();
    assert_eq!(
        refs,
        [
            (
                Kind::Model,
                "smollm2",
                "routing_table.tiers[0].targets[0].model"
            ),
            (
                Kind::Model,
                "gpt-4o-mini",
                "routing_table.tiers[0].fallbacks[0]"
            ),
            (
                Kind::Model,
                "gpt-4o-mini",
                "routing_table.tiers[1].targets[0].model"
            ),
            (
                Kind::Model,
                "claude-haiku",
                "routing_table.tiers[1].targets[1].model"
            ),
            (Kind::Model, "gpt-4o", "routing_table.baseline_model"),
        ]
    );
    let Spec::RoutingTable(t) = v.spec else {
        panic!("{:?}", v.spec)
    };
    assert!(t.sticky_by_user);
    assert_eq!(t.baseline_model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        t.default_constraints.max_cost,
        Some(Usd::from_micros(50_000))
    );
    assert_eq!(
        t.default_constraints.max_latency,
        Some(Duration::from_secs(10))
    );
    assert_eq!(t.tiers[0].complexity, Some(Complexity::Simple));
    assert_eq!(t.tiers[1].complexity, None);
    assert_eq!(t.tiers[1].total_weight(), 100);
}

#[test]
fn tier_for_falls_back_to_the_catch_all() {
    let t = table(routing_table_spec());
    let name = |c| t.tier_for(c).map(|t| t.name.as_str());
    assert_eq!(name(Some(Complexity::Simple)), Some("simple"));
    assert_eq!(name(Some(Complexity::Complex)), Some("default"));
    assert_eq!(name(None), Some("default"));

    let mut s = routing_table_spec();
    s.tiers.remove(1);
    let t = table(s);
    assert!(t.tier_for(Some(Complexity::Complex)).is_none());
    assert!(t.tier_for(None).is_none());
}

#[test]
fn target_at_walks_the_weight_line_skipping_drained_targets() {
    let mut s = routing_table_spec();
    s.tiers[1].targets = vec![target("a", 3), target("drained", 0), target("b", 1)];
    let t = table(s);
    let tier = &t.tiers[1];
    let model = |p| tier.target_at(p).map(|t| t.model.as_str());
    assert_eq!(tier.total_weight(), 4);
    assert_eq!(model(0), Some("a"));
    assert_eq!(model(2), Some("a"));
    assert_eq!(model(3), Some("b"));
    assert_eq!(model(4), None);
}

#[test]
fn at_least_one_tier() {
    let mut s = routing_table_spec();
    s.tiers.clear();
    assert_eq!(fields(&resource(s)), ["routing_table.tiers"]);
}

#[test]
fn tier_names_are_valid_and_unique() {
    let mut s = routing_table_spec();
    s.tiers[0].name.clear();
    assert_eq!(fields(&resource(s)), ["routing_table.tiers[0].name"]);
    let mut s = routing_table_spec();
    s.tiers[1].name = "simple".into();
    assert_eq!(fields(&resource(s)), ["routing_table.tiers[1].name"]);
}

#[test]
fn one_tier_per_complexity_and_one_catch_all() {
    let mut s = routing_table_spec();
    s.tiers[1].complexity = pb::Complexity::Simple as i32;
    assert_eq!(fields(&resource(s)), ["routing_table.tiers[1].complexity"]);

    let mut s = routing_table_spec();
    s.tiers[0].complexity = 0;
    assert_eq!(
        fields(&resource(s)),
        ["routing_table.tiers[1].complexity"],
        "two catch-all tiers"
    );

    let mut s = routing_table_spec();
    s.tiers[0].complexity = 42;
    assert_eq!(fields(&resource(s)), ["routing_table.tiers[0].complexity"]);
}

#[test]
fn targets_need_models_and_some_weight() {
    let mut s = routing_table_spec();
    s.tiers[0].targets.clear();
    assert_eq!(fields(&resource(s)), ["routing_table.tiers[0].targets"]);

    let mut s = routing_table_spec();
    s.tiers[1].targets = vec![target("a", 0), target("b", 0)];
    assert_eq!(fields(&resource(s)), ["routing_table.tiers[1].targets"]);

    let mut s = routing_table_spec();
    s.tiers[1].targets = vec![
        target("", 1),
        target("Bad", 1),
        target("ok", 1),
        target("ok", 1),
    ];
    assert_eq!(
        fields(&resource(s)),
        [
            "routing_table.tiers[1].targets[0].model",
            "routing_table.tiers[1].targets[1].model",
            "routing_table.tiers[1].targets[3].model",
        ]
    );
}

#[test]
fn weights_must_sum_within_u32() {
    let mut s = routing_table_spec();
    s.tiers[1].targets = vec![target("a", u32::MAX), target("b", 0)];
    assert_eq!(table(s).tiers[1].total_weight(), u32::MAX);

    let mut s = routing_table_spec();
    s.tiers[1].targets = vec![target("a", u32::MAX), target("b", 1)];
    assert_eq!(
        fields(&resource(s)),
        ["routing_table.tiers[1].targets[1].weight"]
    );
}

#[test]
fn fallbacks_and_baseline_are_model_names() {
    let mut s = routing_table_spec();
    s.tiers[0].fallbacks = vec!["a".into(), "a".into(), "B".into()];
    s.baseline_model = "gpt 4o".into();
    assert_eq!(
        fields(&resource(s)),
        [
            "routing_table.tiers[0].fallbacks[1]",
            "routing_table.tiers[0].fallbacks[2]",
            "routing_table.baseline_model",
        ]
    );
}

#[test]
fn default_constraints_are_checked_in_place() {
    let mut s = routing_table_spec();
    s.default_constraints = Some(pb::RouteConstraints {
        max_cost_usd: f64::NAN,
        max_latency: dur(-1),
        required_capabilities: vec![pb::ModelCapability::Vision as i32, 0],
    });
    assert_eq!(
        fields(&resource(s)),
        [
            "routing_table.default_constraints.max_cost_usd",
            "routing_table.default_constraints.max_latency",
            "routing_table.default_constraints.required_capabilities[1]",
        ]
    );
}

#[test]
fn violations_across_tiers_are_all_reported() {
    let mut s = routing_table_spec();
    s.tiers[0].name = "X".into();
    s.tiers[1].targets[0].model = "Y".into();
    s.tiers[1].fallbacks = vec!["".into()];
    assert_eq!(
        fields(&resource(s)),
        [
            "routing_table.tiers[0].name",
            "routing_table.tiers[1].targets[0].model",
            "routing_table.tiers[1].fallbacks[0]",
        ]
    );
}
