//! Alert rules: conditions on the live rollups, evaluated by the control
//! plane.

use std::time::Duration;

use aios_proto::v1 as pb;

use crate::common::proto_enum;
use crate::convert;
use crate::validate_name;
use crate::violation::Ctx;

/// The window when a rule sets none.
pub const DEFAULT_ALERT_WINDOW: Duration = Duration::from_secs(60);
/// The longest window and hold: the rollups keep seconds and minutes for
/// longer than this, so an hour is always answerable from them.
pub const MAX_ALERT_WINDOW: Duration = Duration::from_secs(3600);
/// The longest node id or region a scope may name.
const MAX_SCOPE_LEN: usize = 253;

/// A condition on the live rollups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRule {
    /// What is measured.
    pub metric: AlertMetric,
    /// Which side of the threshold fires.
    pub comparison: AlertComparison,
    /// In the metric's unit.
    pub threshold: Threshold,
    /// Span of rollups the value is computed over: whole seconds, 1 s–1 h.
    pub window: Duration,
    /// How long the condition holds before the rule fires; at most 1 h.
    pub hold: Duration,
    /// How urgent.
    pub severity: AlertSeverity,
    /// Fewest requests in the window before rates and latency are judged.
    pub min_requests: u64,
    /// Only this agent (empty = any).
    pub agent: String,
    /// Only this model (empty = any).
    pub model: String,
    /// Only this region (empty = any).
    pub region: String,
    /// Only this node (empty = any).
    pub node: String,
    /// Shown with the alert.
    pub description: String,
}

impl AlertRule {
    /// Whether `value` is on the firing side of the threshold.
    pub fn breached(&self, value: f64) -> bool {
        match self.comparison {
            AlertComparison::Above => value > self.threshold.0,
            AlertComparison::Below => value < self.threshold.0,
        }
    }
}

/// A finite, non-negative threshold (so `Eq` is lawful).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Threshold(f64);

impl Eq for Threshold {}

impl Threshold {
    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
}

proto_enum! {
    /// What an alert rule measures.
    pub enum AlertMetric from pb::AlertMetric {
        /// Errored requests / requests, in [0, 1].
        ErrorRate,
        /// Median request latency, seconds.
        LatencyP50,
        /// 95th percentile of request latency, seconds.
        LatencyP95,
        /// 99th percentile of request latency, seconds.
        LatencyP99,
        /// Spend over the window scaled to an hour, USD per hour.
        CostPerHour,
        /// Requests served from a cache / requests, in [0, 1].
        CacheHitRate,
        /// Settled spend in a budget's window / its limit (budget alert
        /// thresholds only; an AlertRule cannot use it).
        BudgetSpent,
    }
}

impl AlertMetric {
    /// The side that fires when a rule does not say.
    pub fn natural_comparison(self) -> AlertComparison {
        match self {
            AlertMetric::CacheHitRate => AlertComparison::Below,
            _ => AlertComparison::Above,
        }
    }

    /// Whether the value is a fraction of requests (bounded by 1).
    pub fn is_rate(self) -> bool {
        matches!(self, AlertMetric::ErrorRate | AlertMetric::CacheHitRate)
    }

    /// Whether the value only means something with requests in the window
    /// (everything but cost, which is zero without requests).
    pub fn needs_requests(self) -> bool {
        !matches!(self, AlertMetric::CostPerHour | AlertMetric::BudgetSpent)
    }

    /// The unit of values and thresholds, for messages.
    pub fn unit(self) -> &'static str {
        match self {
            AlertMetric::ErrorRate | AlertMetric::CacheHitRate => "fraction",
            AlertMetric::LatencyP50 | AlertMetric::LatencyP95 | AlertMetric::LatencyP99 => "s",
            AlertMetric::CostPerHour => "USD/hour",
            AlertMetric::BudgetSpent => "fraction of the limit",
        }
    }
}

proto_enum! {
    /// Which side of the threshold fires.
    pub enum AlertComparison from pb::AlertComparison {
        /// Above the threshold.
        Above,
        /// Below the threshold.
        Below,
    }
}

proto_enum! {
    /// How urgent an alert is.
    pub enum AlertSeverity from pb::AlertSeverity {
        /// For information.
        Info,
        /// Needs attention.
        Warning,
        /// Needs action now.
        Critical,
    }
}

pub(crate) fn convert(ctx: &mut Ctx, s: &pb::AlertRuleSpec, path: &str) -> Option<AlertRule> {
    let metric = convert::required_enum::<AlertMetric>(ctx, s.metric, &format!("{path}.metric"))
        .and_then(|metric| {
            if metric == AlertMetric::BudgetSpent {
                ctx.violation(
                    format!("{path}.metric"),
                    "BUDGET_SPENT is raised by budgets' alert_threshold_percents, not by alert rules",
                );
                return None;
            }
            Some(metric)
        });
    let comparison =
        convert::optional_enum::<AlertComparison>(ctx, s.comparison, &format!("{path}.comparison"));
    let severity = convert::defaulted_enum(
        ctx,
        s.severity,
        AlertSeverity::Warning,
        &format!("{path}.severity"),
    );
    let threshold = threshold(ctx, s.threshold, metric, &format!("{path}.threshold"));
    let window = window(ctx, s.window.as_ref(), &format!("{path}.window"));
    let hold = match &s.hold {
        None => Some(Duration::ZERO),
        Some(d) => {
            let field = format!("{path}.hold");
            convert::duration(ctx, d, &field).and_then(|d| {
                if d > MAX_ALERT_WINDOW {
                    ctx.violation(field, "must be at most 1h");
                    return None;
                }
                Some(d)
            })
        }
    };
    let agent = optional_name(ctx, &s.agent, &format!("{path}.agent"));
    let model = optional_name(ctx, &s.model, &format!("{path}.model"));
    let region = optional_name(ctx, &s.region, &format!("{path}.region"));
    let node = node(ctx, &s.node, &format!("{path}.node"));
    let metric = metric?;
    Some(AlertRule {
        metric,
        comparison: comparison?.unwrap_or(metric.natural_comparison()),
        threshold: threshold?,
        window: window?,
        hold: hold?,
        severity: severity?,
        min_requests: s.min_requests.max(1),
        agent: agent?,
        model: model?,
        region: region?,
        node: node?,
        description: s.description.clone(),
    })
}

fn threshold(
    ctx: &mut Ctx,
    value: f64,
    metric: Option<AlertMetric>,
    path: &str,
) -> Option<Threshold> {
    if !value.is_finite() || value < 0.0 {
        ctx.violation(path, "must be a finite number >= 0");
        return None;
    }
    if metric.is_some_and(AlertMetric::is_rate) && value > 1.0 {
        ctx.violation(
            path,
            format!("{value} is out of range: rates are fractions in [0, 1] (5% is 0.05)"),
        );
        return None;
    }
    Some(Threshold(value))
}

fn window(ctx: &mut Ctx, d: Option<&prost_types::Duration>, path: &str) -> Option<Duration> {
    let window = convert::positive_duration(ctx, d, DEFAULT_ALERT_WINDOW, path)?;
    if window.subsec_nanos() != 0 {
        ctx.violation(path, "must be whole seconds (the rollups' finest window)");
        return None;
    }
    if window > MAX_ALERT_WINDOW {
        ctx.violation(path, "must be at most 1h");
        return None;
    }
    Some(window)
}

/// An empty name (any), or a valid one.
fn optional_name(ctx: &mut Ctx, name: &str, path: &str) -> Option<String> {
    if name.is_empty() {
        return Some(String::new());
    }
    match validate_name(name) {
        Ok(()) => Some(name.to_string()),
        Err(reason) => {
            ctx.violation(path, reason);
            None
        }
    }
}

/// Node ids are chosen by operators (host names, pod names): any printable
/// text without spaces, bounded.
fn node(ctx: &mut Ctx, node: &str, path: &str) -> Option<String> {
    if node.len() > MAX_SCOPE_LEN {
        ctx.violation(path, format!("must be at most {MAX_SCOPE_LEN} bytes"));
        return None;
    }
    if node.chars().any(|c| c.is_control() || c.is_whitespace()) {
        ctx.violation(path, "must not contain spaces or control characters");
        return None;
    }
    Some(node.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{fields, resource};
    use crate::{Invalid, Spec, validate};

    fn spec(f: impl FnOnce(&mut pb::AlertRuleSpec)) -> pb::Resource {
        let mut spec = pb::AlertRuleSpec {
            metric: pb::AlertMetric::ErrorRate as i32,
            threshold: 0.05,
            ..Default::default()
        };
        f(&mut spec);
        resource(spec)
    }

    fn rule(f: impl FnOnce(&mut pb::AlertRuleSpec)) -> Result<AlertRule, Invalid> {
        match validate(&spec(f))?.spec {
            Spec::AlertRule(rule) => Ok(rule),
            other => panic!("{other:?}"),
        }
    }

    fn violations(f: impl FnOnce(&mut pb::AlertRuleSpec)) -> Vec<String> {
        fields(&spec(f))
    }

    #[test]
    fn defaults_fill_what_a_rule_leaves_out() {
        let r = rule(|_| {}).unwrap();
        assert_eq!(r.comparison, AlertComparison::Above);
        assert_eq!(r.window, DEFAULT_ALERT_WINDOW);
        assert_eq!(r.hold, Duration::ZERO);
        assert_eq!(r.severity, AlertSeverity::Warning);
        assert_eq!(r.min_requests, 1);
        let cache = rule(|s| {
            s.metric = pb::AlertMetric::CacheHitRate as i32;
            s.threshold = 0.2;
        })
        .unwrap();
        assert_eq!(cache.comparison, AlertComparison::Below);
        assert!(cache.breached(0.1) && !cache.breached(0.3));
    }

    #[test]
    fn budget_spent_is_for_budgets_only() {
        let fields = violations(|s| s.metric = pb::AlertMetric::BudgetSpent as i32);
        assert_eq!(fields, ["alert_rule.metric"]);
    }

    #[test]
    fn every_bad_field_is_named() {
        let fields = violations(|s| {
            s.metric = 0;
            s.threshold = f64::NAN;
            s.window = Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            });
            s.hold = Some(prost_types::Duration {
                seconds: 7200,
                nanos: 0,
            });
            s.severity = 99;
            s.agent = "Not A Name".into();
            s.node = "a b".into();
        });
        for field in [
            "alert_rule.metric",
            "alert_rule.threshold",
            "alert_rule.window",
            "alert_rule.hold",
            "alert_rule.severity",
            "alert_rule.agent",
            "alert_rule.node",
        ] {
            assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
        }
    }

    #[test]
    fn rates_are_fractions_and_windows_are_bounded() {
        assert_eq!(violations(|s| s.threshold = 5.0), ["alert_rule.threshold"]);
        assert!(
            rule(|s| {
                s.metric = pb::AlertMetric::CostPerHour as i32;
                s.threshold = 100.0;
            })
            .is_ok()
        );
        let window = |seconds| {
            move |s: &mut pb::AlertRuleSpec| {
                s.window = Some(prost_types::Duration { seconds, nanos: 0 })
            }
        };
        assert_eq!(violations(window(3601)), ["alert_rule.window"]);
        assert_eq!(violations(window(0)), ["alert_rule.window"]);
        assert_eq!(rule(window(3600)).unwrap().window, MAX_ALERT_WINDOW);
    }
}
