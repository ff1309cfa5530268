#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::NonZeroU32;

use super::*;
use crate::router::complexity::{Feature, Signal};
use crate::router::testing::{Catalog, Req, excluded, model, table_with_tiers, three_tiers, tier};
use Complexity::{Complex, Moderate, Simple};

// === tier ===

#[test]
fn each_complexity_goes_to_its_tier() {
    let catalog = Catalog::standard();
    let table = three_tiers();
    for (c, tier, models) in [
        (Simple, "small", &["mini"][..]),
        (Moderate, "medium", &["std", "alt"]),
        (Complex, "large", &["big"]),
    ] {
        let r = Req::new(c).route(&table, &catalog).unwrap();
        assert_eq!((r.tier.as_str(), r.complexity), (tier, c));
        assert!(models.contains(&r.model()), "{r:?}");
    }
}

#[test]
fn catch_all_tier_serves_undeclared_complexities() {
    let catalog = Catalog::standard();
    let table = table_with_tiers(vec![
        tier("rest", None, &[("std", 1)], &[]),
        tier("hard", Some(Complex), &[("big", 1)], &[]),
    ]);
    let r = Req::new(Simple).route(&table, &catalog).unwrap();
    assert_eq!(r.tier, "rest");
    assert!(
        r.explanation.contains("→ tier rest (catch-all),"),
        "{}",
        r.explanation
    );
    assert_eq!(
        Req::new(Complex).route(&table, &catalog).unwrap().tier,
        "hard"
    );
}

#[test]
fn without_a_tier_the_nearest_more_capable_serves_else_the_nearest_less() {
    let catalog = Catalog::standard();
    let table = table_with_tiers(vec![
        tier("small", Some(Simple), &[("mini", 1)], &[]),
        tier("large", Some(Complex), &[("big", 1)], &[]),
    ]);
    let r = Req::new(Moderate).route(&table, &catalog).unwrap();
    assert_eq!(r.tier, "large");
    assert!(
        r.explanation
            .contains("tier large (no moderate tier; next more capable)"),
        "{}",
        r.explanation
    );

    let only_small = table_with_tiers(vec![
        tier("small", Some(Simple), &[("mini", 1)], &[]),
        tier("medium", Some(Moderate), &[("std", 1)], &[]),
    ]);
    let r = Req::new(Complex).route(&only_small, &catalog).unwrap();
    assert_eq!(r.tier, "medium");
    assert!(
        r.explanation
            .contains("(no complex tier; next less capable)")
    );

    // Nearest: a simple request on moderate rather than complex.
    let upper = table_with_tiers(vec![
        tier("large", Some(Complex), &[("big", 1)], &[]),
        tier("medium", Some(Moderate), &[("std", 1)], &[]),
    ]);
    assert_eq!(
        Req::new(Simple).route(&upper, &catalog).unwrap().tier,
        "medium"
    );
}

#[test]
fn a_table_without_tiers_is_an_error() {
    let r = Req::new(Simple).route(&table_with_tiers(vec![]), &Catalog::standard());
    assert_eq!(r, Err(RouteError::NoTiers));
}

// === constraints ===

#[test]
fn unknown_models_are_excluded() {
    let catalog = Catalog::standard();
    let table = table_with_tiers(vec![tier("t", None, &[("ghost", 1)], &["mini"])]);
    let r = Req::new(Simple).route(&table, &catalog).unwrap();
    assert_eq!(r.candidates, ["mini"]);
    assert!(
        r.explanation
            .ends_with("; excluded: ghost (not in the catalog)"),
        "{}",
        r.explanation
    );
}

#[test]
fn required_capabilities_exclude_models_lacking_them() {
    let mut catalog = Catalog::standard();
    let mut text_only = model("text", 100_000, 100_000);
    text_only.capabilities = vec![ModelCapability::Chat];
    catalog.0.insert("text".into(), text_only);
    let table = table_with_tiers(vec![tier("t", None, &[("text", 1)], &["mini"])]);

    // No requirement: the text-only model serves.
    assert_eq!(
        Req::new(Simple).route(&table, &catalog).unwrap().model(),
        "text"
    );

    // Required by the request.
    let mut req = Req::new(Simple);
    req.constraints.required_capabilities = vec![ModelCapability::Tools];
    let r = req.route(&table, &catalog).unwrap();
    assert_eq!(r.candidates, ["mini"]);
    assert!(r.explanation.contains("excluded: text (lacks tools)"));

    // Implied by offering tools.
    let mut req = Req::new(Simple);
    req.analysis.tools_offered = true;
    assert_eq!(req.route(&table, &catalog).unwrap().model(), "mini");

    // Required by the table; nobody has vision.
    let mut table = table;
    table.default_constraints.required_capabilities = vec![ModelCapability::Vision];
    let err = Req::new(Simple).route(&table, &catalog).unwrap_err();
    assert_eq!(
        excluded(err),
        [
            (
                "text".into(),
                Exclusion::MissingCapability(ModelCapability::Vision)
            ),
            (
                "mini".into(),
                Exclusion::MissingCapability(ModelCapability::Vision)
            ),
        ]
    );
}

#[test]
fn chat_is_always_required() {
    let mut catalog = Catalog::standard();
    let mut embedder = model("embed", 10_000, 0);
    embedder.capabilities = vec![ModelCapability::Embeddings];
    catalog.0.insert("embed".into(), embedder);
    let table = table_with_tiers(vec![tier("t", None, &[("embed", 1)], &[])]);
    let err = Req::new(Simple).route(&table, &catalog).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no model of tier 't' can serve the request: embed (lacks chat)"
    );
}

#[test]
fn max_cost_excludes_models_estimated_over_it() {
    // 1000 input tokens, max_tokens 500: mini 150 + 300 = 450 µ$; std
    // 1000 + 2000 = 3000 µ$; big 5000 + 10000 = 15000 µ$.
    let catalog = Catalog::standard();
    let table = table_with_tiers(vec![tier("t", None, &[("big", 1)], &["std", "mini"])]);
    let mut req = Req::new(Complex);
    req.analysis.max_tokens = Some(500);
    let r = req.route(&table, &catalog).unwrap();
    assert_eq!(r.estimated_cost, Usd::from_micros(15_000));

    req.constraints.max_cost = Some(Usd::from_micros(3_000));
    let r = req.route(&table, &catalog).unwrap();
    assert_eq!(r.candidates, ["std", "mini"]);
    assert_eq!(r.estimated_cost, Usd::from_micros(3_000));
    assert!(
        r.explanation
            .contains("big (est. cost $0.015 > max $0.003)"),
        "{}",
        r.explanation
    );

    // The table's default is tighter than the request's: it wins.
    let mut table = table;
    table.default_constraints.max_cost = Some(Usd::from_micros(1_000));
    let r = req.route(&table, &catalog).unwrap();
    assert_eq!(r.candidates, ["mini"]);
}

#[test]
fn cost_estimate_uses_max_tokens_capped_by_the_model_else_its_limit_else_the_assumption() {
    let mut catalog = Catalog::standard();
    let mut capped = model("capped", 0, 1_000_000);
    capped.max_output_tokens = NonZeroU32::new(100);
    catalog.0.insert("capped".into(), capped);
    let table = table_with_tiers(vec![tier("t", None, &[("capped", 1)], &[])]);
    let other = table_with_tiers(vec![tier("t", None, &[("std", 1)], &[])]);

    let mut req = Req::new(Simple);
    req.analysis.input_tokens = 0;
    // No max_tokens: the model's limit (100 × $1/Mtok = 100 µ$).
    assert_eq!(
        req.route(&table, &catalog).unwrap().estimated_cost,
        Usd::from_micros(100)
    );
    // No limit either: the assumption (4096 × $4/Mtok).
    assert_eq!(
        req.route(&other, &catalog).unwrap().estimated_cost,
        Usd::from_micros(i64::from(ASSUMED_OUTPUT_TOKENS) * 4)
    );
    // max_tokens over the model's limit is capped by it.
    req.analysis.max_tokens = Some(1_000);
    assert_eq!(
        req.route(&table, &catalog).unwrap().estimated_cost,
        Usd::from_micros(100)
    );
    req.analysis.max_tokens = Some(10);
    assert_eq!(
        req.route(&table, &catalog).unwrap().estimated_cost,
        Usd::from_micros(10)
    );
}

#[test]
fn context_window_excludes_models_the_conversation_does_not_fit() {
    let mut catalog = Catalog::standard();
    let mut small = model("small-ctx", 0, 0);
    small.context_window_tokens = NonZeroU32::new(2_000);
    catalog.0.insert("small-ctx".into(), small);
    let table = table_with_tiers(vec![tier("t", None, &[("small-ctx", 1)], &["big"])]);

    let mut req = Req::new(Simple);
    req.analysis.input_tokens = 1_500;
    assert_eq!(req.route(&table, &catalog).unwrap().model(), "small-ctx");
    req.analysis.max_tokens = Some(600);
    let r = req.route(&table, &catalog).unwrap();
    assert_eq!(r.candidates, ["big"]);
    assert!(
        r.explanation
            .contains("small-ctx (needs ~2100 tokens, context window 2000)")
    );
}

#[test]
fn max_latency_excludes_only_models_with_data_over_it() {
    let catalog = Catalog::standard();
    let table = table_with_tiers(vec![tier("t", None, &[("big", 1)], &["std", "mini"])]);
    let mut req = Req::new(Complex);
    req.constraints.max_latency = Some(Duration::from_secs(2));
    // No latency data at all: nothing excluded.
    assert_eq!(
        req.route(&table, &catalog).unwrap().candidates,
        ["big", "std", "mini"]
    );
    // big is slow, std fast, mini unmeasured (kept).
    req.latency.insert("big".into(), Duration::from_secs(5));
    req.latency.insert("std".into(), Duration::from_millis(800));
    let r = req.route(&table, &catalog).unwrap();
    assert_eq!(r.candidates, ["std", "mini"]);
    assert!(
        r.explanation.contains("big (p95 latency 5s > max 2s)"),
        "{}",
        r.explanation
    );
    // Equal to the bound is within it.
    req.latency.insert("big".into(), Duration::from_secs(2));
    assert_eq!(req.route(&table, &catalog).unwrap().model(), "big");
}

#[test]
fn request_constraints_only_tighten() {
    let table = RouteConstraints {
        max_cost: Some(Usd::from_micros(100)),
        max_latency: None,
        required_capabilities: vec![ModelCapability::Vision],
    };
    let request = RouteConstraints {
        max_cost: Some(Usd::from_micros(500)),
        max_latency: Some(Duration::from_secs(3)),
        required_capabilities: vec![ModelCapability::Tools, ModelCapability::Vision],
    };
    assert_eq!(
        effective_constraints(&table, &request, false),
        RouteConstraints {
            max_cost: Some(Usd::from_micros(100)),
            max_latency: Some(Duration::from_secs(3)),
            required_capabilities: vec![ModelCapability::Vision, ModelCapability::Tools],
        }
    );
    let none = RouteConstraints::default();
    assert_eq!(
        effective_constraints(&none, &none, true).required_capabilities,
        [ModelCapability::Tools]
    );
    assert_eq!(effective_constraints(&none, &none, false), none);
}

// === fallbacks ===

#[test]
fn candidates_are_the_chosen_target_then_eligible_fallbacks_in_order() {
    let mut catalog = Catalog::standard();
    let table = table_with_tiers(vec![tier(
        "t",
        None,
        &[("std", 1)],
        &["big", "std", "ghost", "mini"],
    )]);
    let r = Req::new(Simple).route(&table, &catalog).unwrap();
    // std is not repeated; ghost is not in the catalog.
    assert_eq!(r.candidates, ["std", "big", "mini"]);
    assert!(
        r.explanation
            .contains("→ std; fallbacks: big, mini; excluded: ghost (not in the catalog)"),
        "{}",
        r.explanation
    );

    // With no eligible target the first eligible fallback leads.
    catalog.0.remove("std");
    let r = Req::new(Simple).route(&table, &catalog).unwrap();
    assert_eq!(r.candidates, ["big", "mini"]);
    assert_eq!(
        r.estimated_cost,
        cost(&catalog.0["big"], 1_000, u64::from(ASSUMED_OUTPUT_TOKENS))
    );
    assert!(
        r.explanation
            .contains("no eligible target, first eligible fallback → big"),
        "{}",
        r.explanation
    );
}

#[test]
fn nothing_eligible_names_each_model_and_its_reason() {
    let catalog = Catalog::standard();
    let table = table_with_tiers(vec![tier(
        "t",
        None,
        &[("big", 1), ("mini", 0)],
        &["ghost", "std"],
    )]);
    let mut req = Req::new(Complex);
    req.constraints.max_cost = Some(Usd::from_micros(1));
    let err = req.route(&table, &catalog).unwrap_err();
    let text = err.to_string();
    assert_eq!(
        text,
        "no model of tier 't' can serve the request: \
         big (est. cost $0.08692 > max $0.000001), \
         mini (est. cost $0.002608 > max $0.000001), \
         ghost (not in the catalog), \
         std (est. cost $0.017384 > max $0.000001)"
    );

    // A drained target that is the only eligible model is named as such.
    req.constraints.max_cost = None;
    let only_drained = table_with_tiers(vec![tier("t", None, &[("ghost", 1), ("mini", 0)], &[])]);
    assert_eq!(
        excluded(req.route(&only_drained, &catalog).unwrap_err()),
        [
            ("ghost".into(), Exclusion::UnknownModel),
            ("mini".into(), Exclusion::Drained),
        ]
    );
}

// === explanation ===

#[test]
fn explanation_reads_as_one_line() {
    let catalog = Catalog::standard();
    let table = three_tiers();
    let mut req = Req::new(Moderate);
    req.analysis.score = 3;
    req.analysis.features = vec![
        Feature {
            signal: Signal::Keyword("summarize"),
            weight: 3,
        },
        Feature {
            signal: Signal::Length(420),
            weight: 0,
        },
    ];
    let r = req.route(&table, &catalog).unwrap();
    let chosen = r.model().to_string();
    let fallbacks = "big, mini";
    assert_eq!(
        r.explanation,
        format!(
            "moderate (score 3): \"summarize\", 420 tokens → tier medium, random 80/20 split → {chosen}; fallbacks: {fallbacks}"
        )
    );
}

#[test]
fn route_from_a_real_analysis() {
    let catalog = Catalog::standard();
    let table = three_tiers();
    let analysis = crate::router::analyze(
        [(crate::backend::Role::User, "What is the capital of France?")],
        false,
        Some(50),
    );
    let request = RouteRequest {
        analysis: &analysis,
        constraints: &RouteConstraints::default(),
        user: Some("alice"),
        seed: 1,
        p95_latency: None,
    };
    let r = route("support", &table, &|m| catalog.get(m), &request).unwrap();
    assert_eq!((r.tier.as_str(), r.model()), ("small", "mini"));
    assert!(
        r.explanation.starts_with("simple (score "),
        "{}",
        r.explanation
    );
    assert!(
        r.explanation
            .ends_with("→ tier small, single target → mini; fallbacks: std"),
        "{}",
        r.explanation
    );
    // 8 input tokens, 50 output: 8 × 0.15 + 50 × 0.6 = 31.2 → 31 µ$.
    assert_eq!(r.estimated_cost, Usd::from_micros(31));
}
