//! Fixtures shared by the router's tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use aios_model::{Complexity, ModelCapability, RouteConstraints, Usd};
use aios_model::{Model, ModelProvider, RouteTier, RoutingTable, WeightedTarget};

use super::complexity::{Analysis, Feature, Signal};
use super::select::{Exclusion, Route, RouteError, RouteRequest, route};
use Complexity::{Complex, Moderate, Simple};

/// A remote chat + tools model; `provider_model` doubles as its catalog
/// name in these tests. Prices in micro-USD per Mtok.
pub(crate) fn model(name: &str, input_price: i64, output_price: i64) -> Model {
    Model {
        provider: ModelProvider::Openai,
        provider_model: name.to_string(),
        endpoint: None,
        api_key_env: None,
        api_key_file: None,
        path: None,
        capabilities: vec![ModelCapability::Chat, ModelCapability::Tools],
        input_price_per_mtok: Usd::from_micros(input_price),
        output_price_per_mtok: Usd::from_micros(output_price),
        context_window_tokens: None,
        max_output_tokens: None,
        timeout: Duration::from_secs(60),
    }
}

/// A table with these tiers, not sticky, no baseline, no constraints.
pub(crate) fn table_with_tiers(tiers: Vec<RouteTier>) -> RoutingTable {
    RoutingTable {
        tiers,
        sticky_by_user: false,
        baseline_model: None,
        default_constraints: RouteConstraints::default(),
    }
}

/// A tier serving `complexity` with `(model, weight)` targets.
pub(crate) fn tier(
    name: &str,
    complexity: Option<Complexity>,
    targets: &[(&str, u32)],
    fallbacks: &[&str],
) -> RouteTier {
    RouteTier {
        name: name.to_string(),
        complexity,
        targets: targets
            .iter()
            .map(|(model, weight)| WeightedTarget {
                model: (*model).to_string(),
                weight: *weight,
            })
            .collect(),
        fallbacks: fallbacks.iter().map(|f| (*f).to_string()).collect(),
    }
}

/// An analysis of `complexity` with `input_tokens` of conversation.
pub(crate) fn analysis(complexity: Complexity, input_tokens: u32) -> Analysis {
    Analysis {
        complexity,
        score: 0,
        features: vec![Feature {
            signal: Signal::Length(input_tokens),
            weight: 0,
        }],
        input_tokens,
        tools_offered: false,
        max_tokens: None,
    }
}

/// A catalog: name → model.
pub(crate) struct Catalog(pub(crate) HashMap<String, Model>);

impl Catalog {
    pub(crate) fn new(models: Vec<Model>) -> Self {
        Self(
            models
                .into_iter()
                .map(|m| (m.provider_model.clone(), m))
                .collect(),
        )
    }

    /// mini $0.15/$0.60, std $1/$4, big $5/$20, alt $1/$4; all chat + tools.
    pub(crate) fn standard() -> Self {
        Self::new(vec![
            model("mini", 150_000, 600_000),
            model("std", 1_000_000, 4_000_000),
            model("big", 5_000_000, 20_000_000),
            model("alt", 1_000_000, 4_000_000),
        ])
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Model> {
        self.0.get(name)
    }
}

/// Three tiers: small → mini, medium → 80 std / 20 alt (fallbacks big,
/// mini), large → big (fallback std).
pub(crate) fn three_tiers() -> RoutingTable {
    table_with_tiers(vec![
        tier("small", Some(Simple), &[("mini", 1)], &["std"]),
        tier(
            "medium",
            Some(Moderate),
            &[("std", 80), ("alt", 20)],
            &["big", "mini"],
        ),
        tier("large", Some(Complex), &[("big", 1)], &["std"]),
    ])
}

/// A request to route, with everything owned.
pub(crate) struct Req {
    pub(crate) analysis: Analysis,
    pub(crate) constraints: RouteConstraints,
    pub(crate) user: Option<String>,
    pub(crate) seed: u64,
    pub(crate) latency: HashMap<String, Duration>,
}

impl Req {
    pub(crate) fn new(complexity: Complexity) -> Self {
        Self {
            analysis: analysis(complexity, 1_000),
            constraints: RouteConstraints::default(),
            user: None,
            seed: 0,
            latency: HashMap::new(),
        }
    }

    pub(crate) fn route(
        &self,
        table: &RoutingTable,
        catalog: &Catalog,
    ) -> Result<Route, RouteError> {
        self.route_named("support", table, catalog)
    }

    pub(crate) fn route_named(
        &self,
        name: &str,
        table: &RoutingTable,
        catalog: &Catalog,
    ) -> Result<Route, RouteError> {
        let latency = |m: &str| self.latency.get(m).copied();
        let request = RouteRequest {
            analysis: &self.analysis,
            constraints: &self.constraints,
            user: self.user.as_deref(),
            seed: self.seed,
            p95_latency: (!self.latency.is_empty()).then_some(&latency as &dyn Fn(&str) -> _),
        };
        route(name, table, &|m| catalog.get(m), &request)
    }
}

pub(crate) fn excluded(err: RouteError) -> Vec<(String, Exclusion)> {
    match err {
        RouteError::NoEligibleModel { excluded, .. } => {
            excluded.into_iter().map(|e| (e.model, e.reason)).collect()
        }
        other => panic!("{other:?}"),
    }
}
