//! Alert rules (`AlertRule` resources) evaluated over the rollups.
//!
//! Every replica evaluates every rule once a second, just after a second
//! closes (and the grace for late spans has passed), over the rule's window
//! of closed seconds. Replicas fold the same stored batches, so they reach
//! the same verdicts; each streams its transitions to its own subscribers.
//!
//! A rule is OK, PENDING (breached for less than its `hold`) or FIRING.
//! Only the edges into and out of FIRING are events. A window with fewer
//! than `min_requests` requests changes nothing: a quiet minute neither
//! proves nor disproves an error rate. Rules come from the config cache, so
//! an Apply or Delete takes effect at the next evaluation; a deleted or
//! re-scoped rule that was firing resolves.
//!
//! The state machine ([`Evaluator`]) is pure: it is given the rules, the
//! time and a way to measure, and returns transitions.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use aios_model::{AlertComparison, AlertMetric, AlertRule, Kind, SYSTEM_TENANT, Spec};
use aios_proto::v1 as pb;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Telemetry,
    ingest::unix_now,
    query::TimeRange,
    rollup::{Cell, Filter, TenantScope},
};
use crate::{fleet::cache::Snapshot, store::Revision};

/// Names a rule: its tenant and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId {
    /// Tenant the rule lives in (`system` for fleet-wide rules).
    pub tenant: String,
    /// Its name.
    pub name: String,
}

/// A rule ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Which rule.
    pub id: RuleId,
    /// Its resource version; a change re-evaluates from the current phase.
    pub version: Revision,
    /// The validated spec.
    pub spec: AlertRule,
}

impl Rule {
    /// The rollups the rule reads: its tenant (the whole fleet for platform
    /// rules) and the dimensions it names.
    pub fn filter(&self) -> Filter {
        Filter {
            tenant: match self.id.tenant.as_str() {
                SYSTEM_TENANT => TenantScope::All,
                tenant => TenantScope::One(tenant.to_string()),
            },
            agent: self.spec.agent.clone(),
            model: self.spec.model.clone(),
            region: self.spec.region.clone(),
            node: self.spec.node.clone(),
        }
    }

    fn scope(&self) -> pb::SummaryFilter {
        pb::SummaryFilter {
            tenant: match self.id.tenant.as_str() {
                SYSTEM_TENANT => "*".to_string(),
                tenant => tenant.to_string(),
            },
            agent: self.spec.agent.clone(),
            model: self.spec.model.clone(),
            region: self.spec.region.clone(),
            node: self.spec.node.clone(),
        }
    }
}

/// The alert rules in a config snapshot. A stored rule that no longer
/// validates (written by a newer build) is skipped with a warning.
pub fn rules_of(snapshot: &Snapshot) -> Vec<Rule> {
    snapshot
        .objects
        .values()
        .filter(|object| object.kind == Kind::AlertRule)
        .filter_map(|object| match aios_model::validate(&object.resource) {
            Ok(valid) => match valid.spec {
                Spec::AlertRule(spec) => Some(Rule {
                    id: RuleId {
                        tenant: object.tenant.clone(),
                        name: object.name.clone(),
                    },
                    version: object.version,
                    spec,
                }),
                _ => None,
            },
            Err(error) => {
                tracing::warn!(tenant = %object.tenant, rule = %object.name, %error, "alert rule skipped");
                None
            }
        })
        .collect()
}

// === Measuring ===

/// What a rule's window held.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measure {
    /// Requests in the window.
    pub requests: u64,
    /// The rule's metric, in its unit.
    pub value: f64,
}

impl Measure {
    /// `metric` over `cell`, which covers `window`.
    pub fn of(metric: AlertMetric, cell: &Cell, window: Duration) -> Self {
        let ratio = |part: u64| match cell.requests {
            0 => 0.0,
            requests => part as f64 / requests as f64,
        };
        let quantile = |q: f64| match cell.latency.count() {
            0 => 0.0,
            _ => cell.latency.quantile(q).as_secs_f64(),
        };
        let value = match metric {
            AlertMetric::ErrorRate => ratio(cell.errors),
            AlertMetric::CacheHitRate => ratio(cell.cache_hits),
            AlertMetric::LatencyP50 => quantile(0.50),
            AlertMetric::LatencyP95 => quantile(0.95),
            AlertMetric::LatencyP99 => quantile(0.99),
            AlertMetric::CostPerHour => cell.cost_usd * 3600.0 / window.as_secs_f64().max(1.0),
            // Budgets raise these themselves; no rule measures it.
            AlertMetric::BudgetSpent => 0.0,
        };
        Self {
            requests: cell.requests,
            value,
        }
    }
}

// === The state machine ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Breached since this second, not yet for `hold`.
    Pending { since: i64 },
    /// Firing since this second.
    Firing,
}

/// One rule's transition, with what subscribers need to filter it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Which rule.
    pub id: RuleId,
    /// The event as sent.
    pub event: pb::AlertEvent,
}

impl Transition {
    /// Whether a subscriber with `filter` sees this: its tenant's rules and,
    /// for platform callers, fleet-wide ones, when the scopes overlap.
    pub fn visible(&self, filter: &Filter, platform: bool) -> bool {
        let tenant = match (self.id.tenant.as_str(), &filter.tenant) {
            (SYSTEM_TENANT, _) => platform,
            (_, TenantScope::All) => true,
            (rule, TenantScope::One(tenant)) => rule == tenant,
        };
        let overlap = |a: &str, b: &str| a.is_empty() || b.is_empty() || a == b;
        let Some(scope) = &self.event.scope else {
            return tenant;
        };
        tenant
            && overlap(&scope.agent, &filter.agent)
            && overlap(&scope.model, &filter.model)
            && overlap(&scope.region, &filter.region)
            && overlap(&scope.node, &filter.node)
    }
}

/// The phases of every rule that is not OK.
#[derive(Debug, Default)]
pub struct Evaluator {
    phases: HashMap<RuleId, (Phase, Rule)>,
}

impl Evaluator {
    /// An evaluator with every rule OK.
    pub fn new() -> Self {
        Self::default()
    }

    /// Evaluates `rules` at second `now` (the end of the window just
    /// closed), measuring each with `measure`. Firing rules missing from
    /// `rules` resolve.
    pub fn step(
        &mut self,
        rules: &[Rule],
        now: i64,
        mut measure: impl FnMut(&Rule) -> Measure,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let live: HashMap<&RuleId, &Rule> = rules.iter().map(|r| (&r.id, r)).collect();
        self.phases.retain(|id, (phase, old)| {
            // Re-scoped rules resolve too: their alert was about other figures.
            let kept = live.get(id).is_some_and(|rule| same_scope(rule, old));
            if !kept && *phase == Phase::Firing {
                out.push(resolved_by_change(old, now, live.contains_key(id)));
            }
            kept
        });
        for rule in rules {
            let m = measure(rule);
            if rule.spec.metric.needs_requests() && m.requests < rule.spec.min_requests {
                continue;
            }
            let breached = rule.spec.breached(m.value);
            let hold = rule.spec.hold.as_secs() as i64;
            match (self.phases.get(&rule.id).map(|(p, _)| *p), breached) {
                (None, false) => {}
                (None, true) if hold == 0 => {
                    out.push(transition(rule, pb::AlertState::Firing, m, now));
                    self.phases
                        .insert(rule.id.clone(), (Phase::Firing, rule.clone()));
                }
                (None, true) => {
                    self.phases.insert(
                        rule.id.clone(),
                        (Phase::Pending { since: now }, rule.clone()),
                    );
                }
                (Some(Phase::Pending { since }), true) => {
                    let phase = if now - since >= hold {
                        out.push(transition(rule, pb::AlertState::Firing, m, now));
                        Phase::Firing
                    } else {
                        Phase::Pending { since }
                    };
                    self.phases.insert(rule.id.clone(), (phase, rule.clone()));
                }
                (Some(Phase::Firing), true) => {
                    self.phases
                        .insert(rule.id.clone(), (Phase::Firing, rule.clone()));
                }
                (Some(Phase::Pending { .. }), false) => {
                    self.phases.remove(&rule.id);
                }
                (Some(Phase::Firing), false) => {
                    out.push(transition(rule, pb::AlertState::Resolved, m, now));
                    self.phases.remove(&rule.id);
                }
            }
        }
        out
    }
}

fn same_scope(a: &Rule, b: &Rule) -> bool {
    let (a, b) = (&a.spec, &b.spec);
    a.metric == b.metric
        && a.agent == b.agent
        && a.model == b.model
        && a.region == b.region
        && a.node == b.node
}

fn transition(rule: &Rule, state: pb::AlertState, m: Measure, now: i64) -> Transition {
    let spec = &rule.spec;
    let side = match spec.comparison {
        AlertComparison::Above => ">",
        AlertComparison::Below => "<",
    };
    let verdict = match state {
        pb::AlertState::Firing => side,
        _ => match spec.comparison {
            AlertComparison::Above => "<=",
            AlertComparison::Below => ">=",
        },
    };
    let mut message = format!(
        "{} {} {verdict} {} over {} ({} requests)",
        metric_name(spec.metric),
        show(spec.metric, m.value),
        show(spec.metric, spec.threshold.get()),
        window_name(spec.window),
        m.requests,
    );
    if !spec.description.is_empty() {
        message.push_str(": ");
        message.push_str(&spec.description);
    }
    Transition {
        id: rule.id.clone(),
        event: pb::AlertEvent {
            rule: rule.id.name.clone(),
            severity: spec.severity.to_proto() as i32,
            state: state as i32,
            message,
            value: m.value,
            threshold: spec.threshold.get(),
            time: Some(prost_types::Timestamp {
                seconds: now,
                nanos: 0,
            }),
            scope: Some(rule.scope()),
            metric: spec.metric.to_proto() as i32,
            requests: m.requests,
        },
    }
}

/// The RESOLVED event of a firing rule that was deleted or re-scoped.
fn resolved_by_change(rule: &Rule, now: i64, still_exists: bool) -> Transition {
    let mut t = transition(
        rule,
        pb::AlertState::Resolved,
        Measure {
            requests: 0,
            value: 0.0,
        },
        now,
    );
    t.event.message = match still_exists {
        true => format!("rule {} changed what it measures", rule.id.name),
        false => format!("rule {} was deleted", rule.id.name),
    };
    t
}

/// `90s`, `5m`, `1h`.
fn window_name(window: Duration) -> String {
    match window.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn metric_name(metric: AlertMetric) -> &'static str {
    match metric {
        AlertMetric::ErrorRate => "error rate",
        AlertMetric::LatencyP50 => "latency p50",
        AlertMetric::LatencyP95 => "latency p95",
        AlertMetric::LatencyP99 => "latency p99",
        AlertMetric::CostPerHour => "cost",
        AlertMetric::CacheHitRate => "cache hit rate",
        AlertMetric::BudgetSpent => "budget spent",
    }
}

fn show(metric: AlertMetric, value: f64) -> String {
    match metric {
        AlertMetric::ErrorRate | AlertMetric::CacheHitRate | AlertMetric::BudgetSpent => {
            format!("{:.1}%", value * 100.0)
        }
        AlertMetric::LatencyP50 | AlertMetric::LatencyP95 | AlertMetric::LatencyP99 => {
            format!("{value:.3}s")
        }
        AlertMetric::CostPerHour => format!("${value:.2}/h"),
    }
}

// === The board and the task ===

/// Firing alerts and the stream of transitions, shared by the evaluator
/// and the subscribers.
#[derive(Debug)]
pub struct AlertBoard {
    events: broadcast::Sender<Arc<Transition>>,
    firing: Mutex<BTreeMap<RuleId, Arc<Transition>>>,
}

impl AlertBoard {
    /// A board with nothing firing; subscribers lagging by more than
    /// `buffer` transitions skip some.
    pub fn new(buffer: usize) -> Self {
        Self {
            events: broadcast::channel(buffer.max(1)).0,
            firing: Mutex::default(),
        }
    }

    /// The FIRING events of the rules firing now, and a receiver of every
    /// later transition (taken together, so none falls between).
    pub fn follow(&self) -> (Vec<Arc<Transition>>, broadcast::Receiver<Arc<Transition>>) {
        let firing = self.firing();
        (firing.values().cloned().collect(), self.events.subscribe())
    }

    /// Records and streams `transitions`: a FIRING one stays on the board
    /// (new subscribers get it first) until a later transition of the same
    /// id resolves it.
    pub(crate) fn publish(&self, transitions: Vec<Transition>) {
        if transitions.is_empty() {
            return;
        }
        let mut firing = self.firing();
        for t in transitions {
            let t = Arc::new(t);
            match t.event.state() {
                pb::AlertState::Firing => {
                    tracing::warn!(tenant = %t.id.tenant, rule = %t.id.name, "alert firing: {}", t.event.message);
                    firing.insert(t.id.clone(), t.clone());
                }
                _ => {
                    tracing::info!(tenant = %t.id.tenant, rule = %t.id.name, "alert resolved: {}", t.event.message);
                    firing.remove(&t.id);
                }
            }
            // No receivers is fine: nobody is subscribed.
            let _ = self.events.send(t);
        }
        metrics::gauge!("aios_alerts_firing").set(firing.len() as f64);
    }

    fn firing(&self) -> std::sync::MutexGuard<'_, BTreeMap<RuleId, Arc<Transition>>> {
        self.firing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Evaluates the rules in `config` once a second until `shutdown`.
pub(crate) async fn run(
    telemetry: Telemetry,
    mut config: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
) {
    let mut evaluator = Evaluator::new();
    let mut rules = rules_of(&config.borrow_and_update());
    let grace = telemetry.settings.close_grace;
    loop {
        // Just after the next second closes, plus the grace for late spans.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let next = Duration::from_secs(now.as_secs() + 1) + grace;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(next.saturating_sub(now)) => {}
        }
        if config.has_changed().unwrap_or(false) {
            rules = rules_of(&config.borrow_and_update());
        }
        let end = unix_now() as i64;
        let transitions = evaluator.step(&rules, end, |rule| {
            let window = rule.spec.window;
            let range = TimeRange {
                start: Some(end - window.as_secs() as i64),
                end: Some(end),
            };
            match telemetry.summary(&rule.filter(), range) {
                Ok(summary) => Measure::of(rule.spec.metric, &summary.totals.all, window),
                // Unreachable: the range is never empty.
                Err(_) => Measure {
                    requests: 0,
                    value: 0.0,
                },
            }
        });
        telemetry.shared.alerts.publish(transitions);
    }
}

#[cfg(test)]
#[path = "alerts_tests.rs"]
mod tests;
