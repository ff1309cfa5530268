//! Budgets: spend limits over calendar windows.

use aios_proto::v1 as pb;
use jiff::tz::TimeZone;

use crate::common::proto_enum;
use crate::convert;
use crate::violation::Ctx;
use crate::{Kind, Usd, validate_name};

/// A spend limit. Money is integer micro-USD, rounded from the wire's doubles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Whose spend counts.
    pub scope: BudgetScope,
    /// The calendar window spend is summed over.
    pub window: BudgetWindow,
    /// The zone windows align to (UTC when the field is empty). Only names
    /// in the IANA database bundled with this build are accepted, spelled
    /// exactly as there (`Europe/Paris`, not `europe/paris`), so the control
    /// plane and every node agree on the same rules.
    pub time_zone: TimeZone,
    /// Limit per window; > 0.
    pub limit: Usd,
    /// Most one request may spend; `None` = no cap.
    pub per_request_cap: Option<Usd>,
    /// What happens once the limit is reached.
    pub on_exceed: OnExceed,
    /// Alert thresholds in percent of the limit, each 1-1000, sorted
    /// ascending, no repeats (each fires once per window, so a repeat could
    /// never fire).
    pub alert_threshold_percents: Vec<u32>,
}

impl Budget {
    /// The IANA name of the time zone (`UTC` by default).
    pub fn time_zone_name(&self) -> &str {
        self.time_zone.iana_name().unwrap_or("UTC")
    }

    /// The window that contains `now`, aligned to the calendar of the
    /// budget's time zone. Both planes compute it the same way, so a node
    /// and the control plane agree on which window a spend belongs to.
    pub fn window_at(&self, now: jiff::Timestamp) -> Window {
        let zoned = now.to_zoned(self.time_zone.clone());
        let bounds = match self.window {
            BudgetWindow::Total => return Window::TOTAL,
            BudgetWindow::Hour => zoned
                .with()
                .minute(0)
                .second(0)
                .subsec_nanosecond(0)
                .build()
                .and_then(|start| {
                    let end = start.checked_add(jiff::Span::new().hours(1))?;
                    Ok((start, end))
                }),
            BudgetWindow::Day => zoned.start_of_day().and_then(|start| {
                let end = start.tomorrow()?.start_of_day()?;
                Ok((start, end))
            }),
            BudgetWindow::Month => zoned
                .first_of_month()
                .and_then(|first| first.start_of_day())
                .and_then(|start| {
                    let end = start.last_of_month()?.tomorrow()?.start_of_day()?;
                    Ok((start, end))
                }),
        };
        match bounds {
            Ok((start, end)) => Window {
                start: start.timestamp().as_second(),
                end: Some(end.timestamp().as_second()),
            },
            // Only at the ends of jiff's range (years -9999 and 9999).
            Err(_) => Window::TOTAL,
        }
    }
}

/// One window of a budget: spend is summed from `start` until `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// Start, Unix seconds (inclusive); 0 for TOTAL budgets.
    pub start: i64,
    /// End, Unix seconds (exclusive); `None` for TOTAL budgets.
    pub end: Option<i64>,
}

impl Window {
    /// The one window of a TOTAL budget.
    pub const TOTAL: Window = Window {
        start: 0,
        end: None,
    };
}

/// Whose spend a budget counts. The subject is `None` when the spec leaves it
/// empty: each user/agent/key then separately gets the whole limit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BudgetScope {
    /// All spend of the tenant.
    Tenant,
    /// Spend of one end user (free-form id), or of each user.
    User(Option<String>),
    /// Spend of one agent (a reference to an Agent), or of each agent.
    Agent(Option<String>),
    /// Spend made with one API key (by name), or with each key. Not recorded
    /// as a reference: platform keys of the `system` tenant spend in other
    /// tenants, so the key need not live in the budget's tenant.
    ApiKey(Option<String>),
}

impl BudgetScope {
    /// The dimension, without the subject.
    pub fn kind(&self) -> BudgetScopeKind {
        match self {
            BudgetScope::Tenant => BudgetScopeKind::Tenant,
            BudgetScope::User(_) => BudgetScopeKind::User,
            BudgetScope::Agent(_) => BudgetScopeKind::Agent,
            BudgetScope::ApiKey(_) => BudgetScopeKind::ApiKey,
        }
    }

    /// The subject, if the budget names one.
    pub fn subject(&self) -> Option<&str> {
        match self {
            BudgetScope::Tenant => None,
            BudgetScope::User(s) | BudgetScope::Agent(s) | BudgetScope::ApiKey(s) => s.as_deref(),
        }
    }
}

proto_enum! {
    /// Calendar-aligned windows, in the budget's time zone.
    pub enum BudgetWindow from pb::BudgetWindow {
        /// From the top of each hour.
        Hour,
        /// From local midnight.
        Day,
        /// From local midnight on the 1st of each month.
        Month,
        /// Never resets.
        Total,
    }
}

/// What a node does once the limit is reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OnExceed {
    /// Refuse requests (also what UNSPECIFIED means).
    Block,
    /// Once spent, route through this cheaper routing table; degraded
    /// requests are counted but no longer limited.
    Degrade {
        /// Name of the routing table (a recorded reference).
        routing_table: String,
    },
    /// Let requests through and alert; spend may exceed the limit.
    AlertOnly,
}

pub(crate) fn convert(ctx: &mut Ctx, s: &pb::BudgetSpec, path: &str) -> Option<Budget> {
    let scope = scope(ctx, s.scope.as_ref(), &format!("{path}.scope"));
    let window = convert::required_enum(ctx, s.window, &format!("{path}.window"));
    let time_zone = time_zone(ctx, &s.time_zone, &format!("{path}.time_zone"));

    let limit_path = format!("{path}.limit_usd");
    let limit = convert::usd_non_negative(ctx, s.limit_usd, &limit_path).and_then(|limit| {
        if limit.is_zero() {
            ctx.violation(&limit_path, "must be > 0 (at least 0.000001)");
            None
        } else {
            Some(limit)
        }
    });
    let per_request_cap = convert::usd_zero_is_none(
        ctx,
        s.per_request_cap_usd,
        &format!("{path}.per_request_cap_usd"),
    );
    let on_exceed = on_exceed(ctx, s, path);

    let mut thresholds: Vec<u32> = Vec::with_capacity(s.alert_threshold_percents.len());
    let mut thresholds_ok = true;
    for (i, &p) in s.alert_threshold_percents.iter().enumerate() {
        let field = format!("{path}.alert_threshold_percents[{i}]");
        if !(1..=1000).contains(&p) {
            ctx.violation(field, format!("{p} is out of range: each must be 1-1000"));
            thresholds_ok = false;
        } else if thresholds.contains(&p) {
            ctx.violation(field, format!("duplicate threshold {p}"));
            thresholds_ok = false;
        } else {
            thresholds.push(p);
        }
    }
    thresholds.sort_unstable();

    Some(Budget {
        scope: scope?,
        window: window?,
        time_zone: time_zone?,
        limit: limit?,
        per_request_cap: per_request_cap?,
        on_exceed: on_exceed?,
        alert_threshold_percents: thresholds_ok.then_some(thresholds)?,
    })
}

fn scope(ctx: &mut Ctx, scope: Option<&pb::BudgetScope>, path: &str) -> Option<BudgetScope> {
    let Some(scope) = scope else {
        ctx.violation(path, "is required");
        return None;
    };
    let kind = convert::required_enum::<BudgetScopeKind>(ctx, scope.kind, &format!("{path}.kind"))?;
    let subject_path = format!("{path}.subject");
    let subject = (!scope.subject.is_empty()).then(|| scope.subject.clone());
    match kind {
        BudgetScopeKind::Tenant => {
            if subject.is_some() {
                ctx.violation(subject_path, "must be empty for a TENANT budget");
                return None;
            }
            Some(BudgetScope::Tenant)
        }
        BudgetScopeKind::User => Some(BudgetScope::User(subject)),
        BudgetScopeKind::Agent => match subject {
            None => Some(BudgetScope::Agent(None)),
            Some(name) => ctx
                .reference(Kind::Agent, &name, subject_path)
                .map(|n| BudgetScope::Agent(Some(n))),
        },
        BudgetScopeKind::ApiKey => match subject {
            None => Some(BudgetScope::ApiKey(None)),
            Some(name) => match validate_name(&name) {
                Ok(()) => Some(BudgetScope::ApiKey(Some(name))),
                Err(reason) => {
                    ctx.violation(subject_path, reason);
                    None
                }
            },
        },
    }
}

proto_enum! {
    /// The dimension a budget groups spend by ([`BudgetScope`] without its
    /// subject).
    pub enum BudgetScopeKind from pb::BudgetScopeKind {
        /// All spend of the tenant.
        Tenant,
        /// Spend of an end user.
        User,
        /// Spend of an agent.
        Agent,
        /// Spend made with an API key.
        ApiKey,
    }
}

fn time_zone(ctx: &mut Ctx, name: &str, path: &str) -> Option<TimeZone> {
    if name.is_empty() {
        return Some(TimeZone::UTC);
    }
    match jiff::tz::db().get(name) {
        Ok(tz) if tz.iana_name() == Some(name) => Some(tz),
        Ok(tz) => {
            ctx.violation(
                path,
                format!(
                    "'{name}' must be spelled exactly as in the IANA database ('{}')",
                    tz.iana_name().unwrap_or_default()
                ),
            );
            None
        }
        Err(_) => {
            ctx.violation(
                path,
                format!("'{name}' is not an IANA time zone (e.g. `Europe/Paris`, `UTC`)"),
            );
            None
        }
    }
}

fn on_exceed(ctx: &mut Ctx, s: &pb::BudgetSpec, path: &str) -> Option<OnExceed> {
    let field = format!("{path}.on_exceed");
    let table_path = format!("{path}.degrade_routing_table");
    let action = match pb::OnExceed::try_from(s.on_exceed) {
        Ok(a) => a,
        Err(_) => {
            ctx.violation(field, format!("unknown value {}", s.on_exceed));
            return None;
        }
    };
    let plain = |ctx: &mut Ctx, result: OnExceed| {
        if s.degrade_routing_table.is_empty() {
            Some(result)
        } else {
            ctx.violation(&table_path, "must be empty unless on_exceed is DEGRADE");
            None
        }
    };
    match action {
        pb::OnExceed::Unspecified | pb::OnExceed::Block => plain(ctx, OnExceed::Block),
        pb::OnExceed::AlertOnly => plain(ctx, OnExceed::AlertOnly),
        pb::OnExceed::Degrade if s.degrade_routing_table.is_empty() => {
            ctx.violation(&table_path, "is required when on_exceed is DEGRADE");
            None
        }
        pb::OnExceed::Degrade => ctx
            .reference(
                Kind::RoutingTable,
                &s.degrade_routing_table,
                table_path.clone(),
            )
            .map(|routing_table| OnExceed::Degrade { routing_table }),
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
