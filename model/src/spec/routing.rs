//! Routing tables: tiers by complexity, weighted targets, fallbacks.

use std::collections::BTreeSet;

use aios_proto::v1 as pb;

use crate::common::RouteConstraints;
use crate::convert;
use crate::names::{reference_list, validate_name};
use crate::violation::Ctx;
use crate::{Complexity, Kind};

/// Chooses a model per request: by complexity to a tier, then by weight to a
/// target, with fallbacks on failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingTable {
    /// At least one; at most one per complexity (and one catch-all); names
    /// unique.
    pub tiers: Vec<RouteTier>,
    /// A given user always gets the same target within a tier.
    pub sticky_by_user: bool,
    /// Model savings are computed against (a recorded reference); `None` =
    /// no savings reported.
    pub baseline_model: Option<String>,
    /// Constraints on every request; requests may only tighten them.
    pub default_constraints: RouteConstraints,
}

impl RoutingTable {
    /// The tier serving `complexity`: the tier declared for it, else the
    /// catch-all tier (declared with no complexity), else none.
    pub fn tier_for(&self, complexity: Option<Complexity>) -> Option<&RouteTier> {
        complexity
            .and_then(|c| self.tiers.iter().find(|t| t.complexity == Some(c)))
            .or_else(|| self.tiers.iter().find(|t| t.complexity.is_none()))
    }
}

/// The models serving one complexity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTier {
    /// Tier name, unique in the table. The contract gives no syntax; the
    /// strict reading is resource-name syntax (it is shown in RouteDecision
    /// and in metrics).
    pub name: String,
    /// The complexity served; `None` = the catch-all tier.
    pub complexity: Option<Complexity>,
    /// Models to split traffic over, no model twice, at least one with
    /// weight > 0, weights summing to at most `u32::MAX`.
    pub targets: Vec<WeightedTarget>,
    /// Models tried in order when the chosen target fails, no repeats.
    pub fallbacks: Vec<String>,
}

impl RouteTier {
    /// The sum of the weights; > 0.
    pub fn total_weight(&self) -> u32 {
        self.targets
            .iter()
            .map(|t| t.weight)
            .fold(0, u32::saturating_add)
    }

    /// The target owning `point` in `[0, total_weight)` of the weight line
    /// (drained targets own none of it); `None` when `point` is past the end.
    pub fn target_at(&self, point: u32) -> Option<&WeightedTarget> {
        let mut end: u32 = 0;
        self.targets.iter().find(|t| {
            end = end.saturating_add(t.weight);
            point < end
        })
    }
}

/// One model of a tier and its share of traffic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WeightedTarget {
    /// Model name (a recorded reference).
    pub model: String,
    /// Relative weight; 0 = drained.
    pub weight: u32,
}

pub(crate) fn convert(ctx: &mut Ctx, s: &pb::RoutingTableSpec, path: &str) -> Option<RoutingTable> {
    let tiers_path = format!("{path}.tiers");
    let mut tiers = Some(Vec::with_capacity(s.tiers.len()));
    if s.tiers.is_empty() {
        ctx.violation(&tiers_path, "at least one tier is required");
        tiers = None;
    }
    let mut names = BTreeSet::new();
    let mut complexities = BTreeSet::new();
    for (i, tier) in s.tiers.iter().enumerate() {
        let tier_path = format!("{tiers_path}[{i}]");
        let tier = route_tier(ctx, tier, &tier_path, &mut names, &mut complexities);
        tiers = tiers.zip(tier).map(|(mut all, t)| {
            all.push(t);
            all
        });
    }

    let baseline_model = if s.baseline_model.is_empty() {
        Some(None)
    } else {
        ctx.reference(
            Kind::Model,
            &s.baseline_model,
            format!("{path}.baseline_model"),
        )
        .map(Some)
    };
    let default_constraints = match &s.default_constraints {
        None => Some(RouteConstraints::default()),
        Some(c) => RouteConstraints::convert(ctx, c, &format!("{path}.default_constraints")),
    };
    Some(RoutingTable {
        tiers: tiers?,
        sticky_by_user: s.sticky_by_user,
        baseline_model: baseline_model?,
        default_constraints: default_constraints?,
    })
}

fn route_tier(
    ctx: &mut Ctx,
    t: &pb::RouteTier,
    path: &str,
    names: &mut BTreeSet<String>,
    complexities: &mut BTreeSet<Option<Complexity>>,
) -> Option<RouteTier> {
    let before = ctx.violations.len();
    let name_path = format!("{path}.name");
    match validate_name(&t.name) {
        Err(reason) => ctx.violation(name_path, reason),
        Ok(()) if !names.insert(t.name.clone()) => {
            ctx.violation(name_path, format!("duplicate tier name '{}'", t.name));
        }
        Ok(()) => {}
    }

    let complexity_path = format!("{path}.complexity");
    let complexity = convert::optional_enum::<Complexity>(ctx, t.complexity, &complexity_path);
    if let Some(c) = complexity
        && !complexities.insert(c)
    {
        let which = c.map_or("the catch-all (unspecified) complexity".to_string(), |c| {
            c.to_proto().as_str_name().to_string()
        });
        ctx.violation(
            complexity_path,
            format!("another tier already serves {which}"),
        );
    }

    let targets_path = format!("{path}.targets");
    let mut targets = Vec::with_capacity(t.targets.len());
    let mut seen = BTreeSet::new();
    let mut total: u32 = 0;
    for (j, target) in t.targets.iter().enumerate() {
        let target_path = format!("{targets_path}[{j}]");
        let model_path = format!("{target_path}.model");
        let model = if target.model.is_empty() || !seen.contains(&target.model) {
            ctx.reference(Kind::Model, &target.model, model_path)
        } else {
            ctx.violation(model_path, format!("duplicate target '{}'", target.model));
            None
        };
        if let Some(model) = &model {
            seen.insert(model.clone());
        }
        match total.checked_add(target.weight) {
            Some(sum) => total = sum,
            None => ctx.violation(
                format!("{target_path}.weight"),
                format!("the weights of a tier must sum to at most {}", u32::MAX),
            ),
        }
        if let Some(model) = model {
            targets.push(WeightedTarget {
                model,
                weight: target.weight,
            });
        }
    }
    if t.targets.is_empty() {
        ctx.violation(&targets_path, "at least one target is required");
    } else if t.targets.iter().all(|t| t.weight == 0) {
        ctx.violation(&targets_path, "at least one target needs weight > 0");
    }

    let fallbacks = reference_list(ctx, Kind::Model, &t.fallbacks, &format!("{path}.fallbacks"));

    (ctx.violations.len() == before).then_some(RouteTier {
        name: t.name.clone(),
        complexity: complexity.flatten(),
        targets,
        fallbacks,
    })
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
