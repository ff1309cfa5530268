//! Selection: from an analysed request to an ordered list of models.
//!
//! 1. **Tier.** The tier declared for the request's complexity, else the
//!    catch-all tier ([`RoutingTable::tier_for`]). A table with neither
//!    serves the request from the nearest *more* capable tier (a simple
//!    request on the moderate tier: dearer but able), else the nearest
//!    *less* capable one (the only tiers left); the explanation says so.
//! 2. **Constraints.** The table's defaults tightened by the request's:
//!    the smaller of each bound, the union of required capabilities, plus
//!    TOOLS when the request offers tools (and CHAT always). A model is
//!    excluded when the catalog lacks it, it lacks a capability, the
//!    conversation does not fit its context window, its estimated cost is
//!    over the bound, or its p95 latency is over the bound. Latency is
//!    checked only for models the caller has data for: a model with none
//!    is not excluded (a new model would otherwise never get the traffic
//!    that measures it).
//! 3. **Split.** A point on the tier's weight line picks a target: per
//!    user when the table is sticky and the request names a user, else per
//!    request from the request's seed. When the target at the point is
//!    excluded, a second point on the eligible targets' own line picks
//!    again, so users of eligible targets keep theirs and the excluded
//!    target's share spreads by weight. Drained targets (weight 0) get none.
//! 4. **Fallbacks.** The chosen target, then the tier's eligible fallbacks
//!    in order (no repeats), for the reliability layer to walk. With no
//!    eligible target the first eligible fallback leads. Nothing eligible
//!    is an error naming each model and what excluded it.
//!
//! Costs are estimated as input tokens × input price + output tokens ×
//! output price, with output tokens the request's `max_tokens` (capped by
//! the model's own limit), else the model's limit, else
//! [`ASSUMED_OUTPUT_TOKENS`]: an upper bound, as a cost ceiling needs.

use std::{
    fmt::{self, Write as _},
    time::Duration,
};

use aios_model::{Complexity, ModelCapability, RouteConstraints, Usd};
use aios_model::{Model, RouteTier, RoutingTable};

use super::complexity::{Analysis, complexity_name};
use super::savings::cost;

/// Bytes reserved for a route's explanation: most lines fit (e.g.
/// `simple (score 0): 98 tokens → tier simple, sticky 90/10 split → a; fallbacks: b`).
const EXPLANATION_CAPACITY: usize = 192;

/// Output tokens assumed for a cost estimate when neither the request nor
/// the model bounds them.
pub const ASSUMED_OUTPUT_TOKENS: u32 = 4096;

/// Observed p95 latency of a model, by name; `None` = no data for it.
pub type LatencyLookup<'a> = &'a dyn Fn(&str) -> Option<Duration>;

/// What [`route`] needs to know about one request.
pub struct RouteRequest<'a> {
    /// The request's complexity analysis (also the token counts).
    pub analysis: &'a Analysis,
    /// The request's own constraints; they only tighten the table's.
    pub constraints: &'a RouteConstraints,
    /// End user, for sticky splits.
    pub user: Option<&'a str>,
    /// Per-request randomness for non-sticky splits: `rand::random()` in
    /// production, fixed in tests.
    pub seed: u64,
    /// Observed p95 latency per model name, where known; `None` = no
    /// latency data at all (latency bounds exclude nothing).
    pub p95_latency: Option<LatencyLookup<'a>>,
}

impl fmt::Debug for RouteRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteRequest")
            .field("analysis", &self.analysis)
            .field("constraints", &self.constraints)
            .field("user", &self.user)
            .field("seed", &self.seed)
            .field("p95_latency", &self.p95_latency.map(|_| ".."))
            .finish()
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Name of the tier chosen.
    pub tier: String,
    /// The request's complexity.
    pub complexity: Complexity,
    /// Models to try in order: the chosen one, then eligible fallbacks.
    /// Never empty.
    pub candidates: Vec<String>,
    /// Estimated cost of the request on the first candidate (an upper
    /// bound; see the module docs).
    pub estimated_cost: Usd,
    /// Why, in one line, e.g. `moderate (score 3): "summarize", 420 tokens
    /// → tier std, random 80/20 split → b; fallbacks: c`.
    pub explanation: String,
}

impl Route {
    /// The chosen model (the first candidate).
    pub fn model(&self) -> &str {
        self.candidates.first().map_or("", String::as_str)
    }
}

/// Why a model could not serve a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exclusion {
    /// The catalog has no model of that name.
    UnknownModel,
    /// The model lacks a required capability.
    MissingCapability(ModelCapability),
    /// The conversation (plus the output asked for) exceeds its window.
    ContextWindow {
        /// Estimated tokens needed.
        needed: u64,
        /// The model's context window.
        window: u32,
    },
    /// The estimated cost is over the bound.
    OverCost {
        /// The estimate.
        estimated: Usd,
        /// The bound.
        max: Usd,
    },
    /// The observed p95 latency is over the bound.
    OverLatency {
        /// The model's p95.
        p95: Duration,
        /// The bound.
        max: Duration,
    },
    /// A target with weight 0 (named only when nothing else could serve).
    Drained,
}

/// A model and why it was excluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Excluded {
    /// Model name.
    pub model: String,
    /// Why.
    pub reason: Exclusion,
}

/// Why no route exists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The table has no tiers (validated tables always have one).
    #[error("the routing table has no tiers")]
    NoTiers,
    /// Every target and fallback of the tier was excluded.
    #[error("no model of tier '{tier}' can serve the request: {}", List(excluded))]
    NoEligibleModel {
        /// The tier chosen.
        tier: String,
        /// Each model of the tier and why it was excluded.
        excluded: Vec<Excluded>,
    },
}

/// Routes one request with `table` (named `table_name`, which keys sticky
/// splits), looking models up in `models`.
pub fn route<'m>(
    table_name: &str,
    table: &RoutingTable,
    models: &impl Fn(&str) -> Option<&'m Model>,
    request: &RouteRequest<'_>,
) -> Result<Route, RouteError> {
    let complexity = request.analysis.complexity;
    let (tier, tier_choice) = choose_tier(table, complexity).ok_or(RouteError::NoTiers)?;
    let constraints = effective_constraints(
        &table.default_constraints,
        request.constraints,
        request.analysis.tools_offered,
    );
    let check = |name: &str| eligibility(name, models, &constraints, request);

    let mut excluded: Vec<Excluded> = Vec::new();
    let mut eligible: Vec<(&str, u32, Usd)> = Vec::with_capacity(tier.targets.len());
    for target in &tier.targets {
        match check(&target.model) {
            Ok(cost) => eligible.push((&target.model, target.weight, cost)),
            Err(reason) => excluded.push(Excluded {
                model: target.model.clone(),
                reason,
            }),
        }
    }

    let (hash, basis) = match (table.sticky_by_user, request.user) {
        (true, Some(user)) => (sticky_hash(table_name, user), Basis::Sticky),
        (true, None) => (mix(request.seed), Basis::RandomNoUser),
        (false, _) => (mix(request.seed), Basis::Random),
    };
    let pick = split(tier, &eligible, hash);

    let mut candidates: Vec<String> = Vec::with_capacity(1 + tier.fallbacks.len());
    let mut estimated_cost = Usd::ZERO;
    if let Some((i, _)) = pick
        && let Some((name, _, cost)) = eligible.get(i)
    {
        candidates.push((*name).to_string());
        estimated_cost = *cost;
    }
    for fallback in &tier.fallbacks {
        if candidates.contains(fallback) || excluded.iter().any(|e| &e.model == fallback) {
            continue;
        }
        match check(fallback) {
            Ok(cost) => {
                if candidates.is_empty() {
                    estimated_cost = cost;
                }
                candidates.push(fallback.clone());
            }
            Err(reason) => excluded.push(Excluded {
                model: fallback.clone(),
                reason,
            }),
        }
    }
    if candidates.is_empty() {
        excluded.extend(eligible.iter().filter(|(_, weight, _)| *weight == 0).map(
            |(name, _, _)| Excluded {
                model: (*name).to_string(),
                reason: Exclusion::Drained,
            },
        ));
        return Err(RouteError::NoEligibleModel {
            tier: tier.name.clone(),
            excluded,
        });
    }

    let how = match pick {
        None => How::FallbackLeads,
        Some((_, reassigned_from)) => How::Split {
            basis,
            reassigned_from,
        },
    };
    // Sized for a typical line up front: `to_string` grew it four times.
    let mut explanation = String::with_capacity(EXPLANATION_CAPACITY);
    let line = Explanation {
        analysis: request.analysis,
        tier,
        tier_choice,
        how,
        candidates: &candidates,
        excluded: &excluded,
    };
    // Writing to a String cannot fail.
    let _ = write!(explanation, "{line}");
    Ok(Route {
        tier: tier.name.clone(),
        complexity,
        candidates,
        estimated_cost,
        explanation,
    })
}

/// The table's constraints tightened by the request's: the smaller of each
/// bound, the union of capabilities (table's first), plus TOOLS when the
/// request offers tools.
pub fn effective_constraints(
    table: &RouteConstraints,
    request: &RouteConstraints,
    tools_offered: bool,
) -> RouteConstraints {
    fn stricter<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    let mut required = table.required_capabilities.clone();
    let implied = tools_offered.then_some(ModelCapability::Tools);
    for c in request.required_capabilities.iter().copied().chain(implied) {
        if !required.contains(&c) {
            required.push(c);
        }
    }
    RouteConstraints {
        max_cost: stricter(table.max_cost, request.max_cost),
        max_latency: stricter(table.max_latency, request.max_latency),
        required_capabilities: required,
    }
}

// === tier ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TierChoice {
    Declared,
    CatchAll,
    MoreCapable,
    LessCapable,
}

fn choose_tier(table: &RoutingTable, c: Complexity) -> Option<(&RouteTier, TierChoice)> {
    if let Some(tier) = table.tier_for(Some(c)) {
        let how = if tier.complexity == Some(c) {
            TierChoice::Declared
        } else {
            TierChoice::CatchAll
        };
        return Some((tier, how));
    }
    let served = |pick: fn(Complexity, Complexity) -> bool| {
        table
            .tiers
            .iter()
            .filter_map(|t| Some((t.complexity?, t)))
            .filter(move |(tc, _)| pick(*tc, c))
    };
    served(|tc, c| tc > c)
        .min_by_key(|(tc, _)| *tc)
        .map(|(_, t)| (t, TierChoice::MoreCapable))
        .or_else(|| {
            served(|tc, c| tc < c)
                .max_by_key(|(tc, _)| *tc)
                .map(|(_, t)| (t, TierChoice::LessCapable))
        })
}

// === constraints ===

fn eligibility<'m>(
    name: &str,
    models: &impl Fn(&str) -> Option<&'m Model>,
    constraints: &RouteConstraints,
    request: &RouteRequest<'_>,
) -> Result<Usd, Exclusion> {
    let model = models(name).ok_or(Exclusion::UnknownModel)?;
    let required =
        std::iter::once(&ModelCapability::Chat).chain(&constraints.required_capabilities);
    if let Some(missing) = required.copied().find(|c| !model.has(*c)) {
        return Err(Exclusion::MissingCapability(missing));
    }

    let input = u64::from(request.analysis.input_tokens);
    let model_limit = model.max_output_tokens.map(|n| n.get());
    let asked = request
        .analysis
        .max_tokens
        .map(|n| model_limit.map_or(n, |limit| n.min(limit)));
    if let Some(window) = model.context_window_tokens {
        let needed = input.saturating_add(u64::from(asked.unwrap_or(1)));
        if needed > u64::from(window.get()) {
            return Err(Exclusion::ContextWindow {
                needed,
                window: window.get(),
            });
        }
    }
    let output = asked.or(model_limit).unwrap_or(ASSUMED_OUTPUT_TOKENS);
    let estimated = cost(model, input, u64::from(output));
    if let Some(max) = constraints.max_cost
        && estimated > max
    {
        return Err(Exclusion::OverCost { estimated, max });
    }
    if let Some(max) = constraints.max_latency
        && let Some(p95) = request.p95_latency.and_then(|latency| latency(name))
        && p95 > max
    {
        return Err(Exclusion::OverLatency { p95, max });
    }
    Ok(estimated)
}

// === split ===

/// Picks among `eligible` (name, weight, cost): the index, and the target
/// first drawn when it was excluded. `None` when no eligible target has
/// weight.
fn split<'t>(
    tier: &'t RouteTier,
    eligible: &[(&str, u32, Usd)],
    hash: u64,
) -> Option<(usize, Option<&'t str>)> {
    let drawn = tier.target_at(scale(hash, tier.total_weight()))?;
    if let Some(i) = eligible.iter().position(|(name, ..)| *name == drawn.model) {
        return Some((i, None));
    }
    let total = eligible
        .iter()
        .map(|(_, weight, _)| *weight)
        .fold(0, u32::saturating_add);
    // A second, independent point: reusing `hash` would send every user
    // of the excluded target to the same neighbour.
    let mut point = scale(mix(hash ^ REDRAW), total);
    for (i, (_, weight, _)) in eligible.iter().enumerate() {
        if point < *weight {
            return Some((i, Some(drawn.model.as_str())));
        }
        point -= weight;
    }
    None
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const REDRAW: u64 = 0x5bd1_e995_2c6f_a9b3;

/// The split hash of a user within a table: FNV-1a (64-bit) over the table
/// name, a 0xFF separator (never in UTF-8, so `("ab","c")` ≠ `("a","bc")`)
/// and the user id, finished with [`mix`]. Both halves are fixed
/// algorithms with fixed constants, so a user lands on the same target on
/// every node, process and release; the tests pin values. Different tables
/// hash the same user independently.
fn sticky_hash(table_name: &str, user: &str) -> u64 {
    let bytes = table_name
        .bytes()
        .chain(std::iter::once(0xFF))
        .chain(user.bytes());
    mix(bytes.fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    }))
}

/// SplitMix64's finaliser: spreads every input bit over the output, so
/// consecutive seeds and FNV's weak high bits both give uniform points.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A point in `[0, n)` from a hash (multiply-shift on the top 32 bits: no
/// modulo bias worth naming for weights below 2^32). `n == 0` gives 0.
fn scale(hash: u64, n: u32) -> u32 {
    // (< 2^32) × (< 2^32) >> 32 < n: always fits.
    u32::try_from(((hash >> 32) * u64::from(n)) >> 32).unwrap_or(0)
}

// === explanation ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Basis {
    Sticky,
    Random,
    RandomNoUser,
}

#[derive(Clone, Copy, Debug)]
enum How<'a> {
    Split {
        basis: Basis,
        reassigned_from: Option<&'a str>,
    },
    FallbackLeads,
}

struct Explanation<'a> {
    analysis: &'a Analysis,
    tier: &'a RouteTier,
    tier_choice: TierChoice,
    how: How<'a>,
    candidates: &'a [String],
    excluded: &'a [Excluded],
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Strings go out through `write_str`, not `write!` (a route is
        // explained on every request); numbers and lists still use `write!`.
        self.analysis.fmt(f)?;
        f.write_str(" → tier ")?;
        f.write_str(&self.tier.name)?;
        let c = complexity_name(self.analysis.complexity);
        match self.tier_choice {
            TierChoice::Declared => {}
            TierChoice::CatchAll => f.write_str(" (catch-all)")?,
            TierChoice::MoreCapable => write!(f, " (no {c} tier; next more capable)")?,
            TierChoice::LessCapable => write!(f, " (no {c} tier; next less capable)")?,
        }
        let live = self.tier.targets.iter().filter(|t| t.weight > 0).count();
        match self.how {
            How::FallbackLeads => f.write_str(", no eligible target, first eligible fallback")?,
            How::Split { .. } if live <= 1 => f.write_str(", single target")?,
            How::Split {
                basis,
                reassigned_from,
            } => {
                f.write_str(match basis {
                    Basis::Sticky => ", sticky ",
                    Basis::Random => ", random ",
                    Basis::RandomNoUser => ", random (no user) ",
                })?;
                for (i, t) in self.tier.targets.iter().enumerate() {
                    if i > 0 {
                        f.write_str("/")?;
                    }
                    write!(f, "{}", t.weight)?;
                }
                f.write_str(" split")?;
                if let Some(from) = reassigned_from {
                    write!(f, ", redrawn from excluded {from}")?;
                }
            }
        }
        let (first, rest) = self
            .candidates
            .split_first()
            .map_or(("", &[][..]), |(a, b)| (a.as_str(), b));
        f.write_str(" → ")?;
        f.write_str(first)?;
        for (i, fallback) in rest.iter().enumerate() {
            f.write_str(if i == 0 { "; fallbacks: " } else { ", " })?;
            f.write_str(fallback)?;
        }
        if !self.excluded.is_empty() {
            write!(f, "; excluded: {}", List(self.excluded))?;
        }
        Ok(())
    }
}

/// `a (lacks tools), b (est. $0.02 > max $0.01)`.
struct List<'a>(&'a [Excluded]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} ({})", e.model, e.reason)?;
        }
        Ok(())
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::UnknownModel => f.write_str("not in the catalog"),
            Exclusion::MissingCapability(c) => write!(f, "lacks {}", capability_name(*c)),
            Exclusion::ContextWindow { needed, window } => {
                write!(f, "needs ~{needed} tokens, context window {window}")
            }
            Exclusion::OverCost { estimated, max } => {
                write!(f, "est. cost {estimated} > max {max}")
            }
            Exclusion::OverLatency { p95, max } => {
                write!(f, "p95 latency {p95:?} > max {max:?}")
            }
            Exclusion::Drained => f.write_str("drained"),
        }
    }
}

fn capability_name(c: ModelCapability) -> &'static str {
    match c {
        ModelCapability::Chat => "chat",
        ModelCapability::Tools => "tools",
        ModelCapability::Vision => "vision",
        ModelCapability::Embeddings => "embeddings",
    }
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "split_tests.rs"]
mod split_tests;
