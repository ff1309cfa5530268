//! Reading the rollups: `GetSummary` over a range, `GetTrace` from the
//! recent-trace index, and `Subscribe`'s summary of each closed window.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, SystemTime},
};

use aios_model::SYSTEM_TENANT;
use aios_proto::v1 as pb;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{
    Telemetry, TelemetryError,
    alerts::Transition,
    ingest::unix_now,
    rollup::{Cell, Filter, Granularity, TenantScope, Totals},
    wire::Encoded,
};
use crate::auth::{AuthError, Principal};

// === Scope and filters ===

/// The tenants a caller asking for `requested` sees: empty = its own;
/// `*` or another tenant only with a platform (`system` tenant) key.
pub fn scope(who: &Principal, requested: &str) -> Result<TenantScope, AuthError> {
    let platform = who.tenant == SYSTEM_TENANT;
    match requested {
        "" => Ok(TenantScope::One(who.tenant.clone())),
        "*" if platform => Ok(TenantScope::All),
        tenant if tenant == who.tenant || platform => Ok(TenantScope::One(tenant.to_string())),
        tenant => Err(AuthError::CrossTenant {
            own: who.tenant.clone(),
            requested: tenant.to_string(),
        }),
    }
}

/// A request's filter, scoped for `who`.
pub fn filter(who: &Principal, filter: Option<pb::SummaryFilter>) -> Result<Filter, AuthError> {
    let filter = filter.unwrap_or_default();
    Ok(Filter {
        tenant: scope(who, &filter.tenant)?,
        agent: filter.agent,
        model: filter.model,
        region: filter.region,
        node: filter.node,
    })
}

/// A rollup granularity from the wire; unspecified is a second.
pub fn granularity(window: i32) -> Result<Granularity, TelemetryError> {
    match pb::RollupWindow::try_from(window) {
        Ok(pb::RollupWindow::Unspecified | pb::RollupWindow::Second) => Ok(Granularity::Second),
        Ok(pb::RollupWindow::Minute) => Ok(Granularity::Minute),
        Ok(pb::RollupWindow::Hour) => Ok(Granularity::Hour),
        Err(_) => Err(TelemetryError::invalid("window", "unknown rollup window")),
    }
}

// === Ranges ===

/// A requested range in Unix seconds; `None` ends default (see
/// [`Telemetry::summary`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Start (inclusive), rounded down to a second.
    pub start: Option<i64>,
    /// End (exclusive), rounded up to a second.
    pub end: Option<i64>,
}

/// Which windows answer a range, and the range they actually cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Start of the first window (inclusive).
    pub start: i64,
    /// End of the last window (exclusive).
    pub end: i64,
    /// The windows, as (granularity, start).
    pub windows: Vec<(Granularity, i64)>,
}

/// Granularities, coarsest first.
const COARSE_FIRST: [Granularity; 3] =
    [Granularity::Hour, Granularity::Minute, Granularity::Second];

/// Covers `[start, end)` at `now` with the coarsest windows that fit inside
/// it and finer ones at its edges, where those are still kept; where they
/// are not, the edge rounds outward to the coarser window. Nothing older
/// than the hourly rollups is covered.
pub fn plan(start: i64, end: i64, now: i64) -> Plan {
    let start = start.max(Granularity::Hour.oldest_kept(now));
    // The current second is the newest window there is.
    let end = end.min(now + 1);
    let mut windows = Vec::new();
    if start >= end {
        return Plan {
            start,
            end: start,
            windows,
        };
    }
    let (start, end) = cover(start, end, 0, now, &mut windows);
    Plan {
        start,
        end,
        windows,
    }
}

fn cover(x: i64, y: i64, level: usize, now: i64, out: &mut Vec<(Granularity, i64)>) -> (i64, i64) {
    let g = COARSE_FIRST[level];
    let len = g.seconds();
    let finer = COARSE_FIRST.get(level + 1).copied();
    // Finer windows can cover from `at` on if the one holding `at` is kept.
    let finer_kept = |at: i64| finer.is_some_and(|f| f.floor(at) >= f.oldest_kept(now));
    let (a, b) = (g.ceil(x), g.floor(y));
    if a >= b {
        if finer_kept(x) {
            return cover(x, y, level + 1, now, out);
        }
        let (s, e) = (g.floor(x), g.ceil(y));
        out.extend((s..e).step_by(len as usize).map(|w| (g, w)));
        return (s, e);
    }
    out.extend((a..b).step_by(len as usize).map(|w| (g, w)));
    let s = match x < a {
        false => a,
        true if finer_kept(x) => cover(x, a, level + 1, now, out).0,
        true => {
            out.push((g, a - len));
            a - len
        }
    };
    let e = match b < y {
        false => b,
        true if finer_kept(b) => cover(b, y, level + 1, now, out).1,
        true => {
            out.push((g, b));
            b + len
        }
    };
    (s, e)
}

// === Summaries ===

/// Merged figures over `[start, end)` (Unix seconds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Start of the range covered.
    pub start: i64,
    /// End of the range covered.
    pub end: i64,
    /// The figures.
    pub totals: Totals,
}

impl Summary {
    /// The wire form.
    pub fn to_proto(&self) -> pb::Summary {
        let all = &self.totals.all;
        let ratio = |part: u64| match all.requests {
            0 => 0.0,
            requests => part as f64 / requests as f64,
        };
        pb::Summary {
            window_start: Some(timestamp(self.start)),
            window_end: Some(timestamp(self.end)),
            requests: all.requests,
            errors: all.errors,
            error_rate: ratio(all.errors),
            latency_p50: quantile(all, 0.50),
            latency_p95: quantile(all, 0.95),
            latency_p99: quantile(all, 0.99),
            input_tokens: all.input_tokens,
            output_tokens: all.output_tokens,
            cost_usd: all.cost_usd,
            cache_hits: all.cache_hits,
            cache_hit_rate: ratio(all.cache_hits),
            savings_usd: all.savings_usd,
            dropped_spans: all.dropped_spans,
            per_agent: self
                .totals
                .per_agent
                .iter()
                .map(|(agent, cell)| pb::AgentBreakdown {
                    agent: agent.clone(),
                    requests: cell.requests,
                    errors: cell.errors,
                    latency_p95: quantile(cell, 0.95),
                    input_tokens: cell.input_tokens,
                    output_tokens: cell.output_tokens,
                    cost_usd: cell.cost_usd,
                    cache_hits: cell.cache_hits,
                    savings_usd: cell.savings_usd,
                })
                .collect(),
        }
    }
}

fn timestamp(unix_seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_seconds,
        nanos: 0,
    }
}

/// A latency quantile; unset when there were no requests.
fn quantile(cell: &Cell, q: f64) -> Option<prost_types::Duration> {
    match cell.latency.count() {
        0 => None,
        _ => prost_types::Duration::try_from(cell.latency.quantile(q)).ok(),
    }
}

impl Telemetry {
    /// `GetSummary`: merges `filter`'s cells over `range` (default: the
    /// hour up to now), from the windows [`plan`] picks.
    pub fn summary(&self, filter: &Filter, range: TimeRange) -> Result<Summary, TelemetryError> {
        let now = unix_now() as i64;
        let end = range.end.unwrap_or(now + 1);
        let start = range.start.unwrap_or(end - 3600);
        if start >= end {
            return Err(TelemetryError::invalid(
                "start_time",
                "must be before end_time",
            ));
        }
        let plan = plan(start, end, now);
        let totals = self.shared.rollups().totals(filter, &plan.windows);
        Ok(Summary {
            start: plan.start,
            end: plan.end,
            totals,
        })
    }

    /// The summary of one window of `granularity` starting at `start`.
    pub fn window_summary(&self, filter: &Filter, granularity: Granularity, start: i64) -> Summary {
        Summary {
            start,
            end: start + granularity.seconds(),
            totals: self
                .shared
                .rollups()
                .totals(filter, &[(granularity, start)]),
        }
    }

    /// `GetTrace`: the spans of a recent trace that `scope` may see, by
    /// start time.
    pub fn trace(
        &self,
        trace_id: &str,
        scope: TenantScope,
    ) -> Result<Vec<pb::Span>, TelemetryError> {
        let id = super::traces::parse_trace_id(trace_id).ok_or_else(|| {
            TelemetryError::invalid("trace_id", "must be 32 lowercase hex characters")
        })?;
        let spans = self.shared.traces().get(&id, &Filter::tenant(scope));
        match spans.is_empty() {
            true => Err(TelemetryError::TraceNotFound(trace_id.to_string())),
            false => Ok(spans),
        }
    }

    /// `Subscribe`: one summary as each window of `granularity` closes
    /// (after a grace for late spans), matching spans as they are folded
    /// when `include_spans`, and with `alerts` the transitions of the alert
    /// rules visible to it, after a FIRING event for each rule firing now.
    /// A subscriber that falls behind the span feed skips spans; it never
    /// slows ingest.
    pub fn subscribe(
        &self,
        filter: Filter,
        granularity: Granularity,
        include_spans: bool,
        alerts: Option<AlertAudience>,
    ) -> BoxStream<'static, Result<pb::SubscribeResponse, Status>> {
        use pb::subscribe_response::Event;
        let now = unix_now() as i64;
        let mut pending = VecDeque::new();
        let alerts = alerts.map(|audience| {
            let (firing, receiver) = self.shared.alerts.follow();
            pending.extend(
                firing
                    .iter()
                    .filter(|t| t.visible(&filter, audience.platform))
                    .map(|t| pb::SubscribeResponse {
                        event: Some(Event::Alert(t.event.clone())),
                    }),
            );
            (receiver, audience)
        });
        let subscription = Subscription {
            grace: self.settings.close_grace,
            spans: include_spans.then(|| self.shared.spans.subscribe()),
            alerts,
            telemetry: self.clone(),
            filter,
            granularity,
            pending,
            next_close: granularity.floor(now) + granularity.seconds(),
            cancel: self.shutdown.clone(),
        };
        futures::stream::unfold(Some(subscription), |subscription| async move {
            let mut subscription = subscription?;
            match subscription.next().await {
                Ok(event) => Some((Ok(event), Some(subscription))),
                Err(status) => Some((Err(status), None)),
            }
        })
        .boxed()
    }
}

// === Subscriptions ===

/// Who receives alert transitions on a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertAudience {
    /// A platform (`system` tenant) caller, who also sees fleet-wide rules.
    pub platform: bool,
}

impl AlertAudience {
    /// The audience of `who`.
    pub fn of(who: &Principal) -> Self {
        Self {
            platform: who.tenant == SYSTEM_TENANT,
        }
    }
}

/// One `Subscribe` stream's state.
struct Subscription {
    telemetry: Telemetry,
    filter: Filter,
    granularity: Granularity,
    grace: Duration,
    spans: Option<broadcast::Receiver<Arc<Encoded>>>,
    alerts: Option<(broadcast::Receiver<Arc<Transition>>, AlertAudience)>,
    /// Events ready to send; at most one folded batch's spans and a rollup.
    pending: VecDeque<pb::SubscribeResponse>,
    /// End of the next window to report, Unix seconds.
    next_close: i64,
    cancel: CancellationToken,
}

impl Subscription {
    async fn next(&mut self) -> Result<pb::SubscribeResponse, Status> {
        use pb::subscribe_response::Event;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let due = SystemTime::UNIX_EPOCH
                + Duration::from_secs(self.next_close.max(0) as u64)
                + self.grace;
            let wait = due
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(TelemetryError::ShuttingDown.into()),
                _ = tokio::time::sleep(wait) => {
                    let len = self.granularity.seconds();
                    let summary = self
                        .telemetry
                        .window_summary(&self.filter, self.granularity, self.next_close - len);
                    self.pending.push_back(pb::SubscribeResponse {
                        event: Some(Event::Rollup(summary.to_proto())),
                    });
                    // A subscriber that was not reading skips to the latest
                    // closed window rather than replaying every one it missed.
                    let latest = self.granularity.floor(unix_now() as i64);
                    self.next_close = (self.next_close + len).max(latest);
                }
                batch = recv(&mut self.spans) => match batch {
                    Ok(batch) => self.pending.extend(
                        batch
                            .views()
                            .filter(|(_, span)| self.filter.admits(span, &batch.node))
                            .filter_map(|(index, _)| batch.span(index))
                            .map(|span| pb::SubscribeResponse {
                                event: Some(Event::Span(span)),
                            }),
                    ),
                    Err(RecvError::Lagged(skipped)) => {
                        metrics::counter!("aios_telemetry_subscriber_skipped_batches_total")
                            .increment(skipped);
                        tracing::debug!(skipped, "slow subscriber skipped span batches");
                    }
                    Err(RecvError::Closed) => self.spans = None,
                },
                transition = recv_alert(&mut self.alerts) => match transition {
                    Ok((transition, audience)) => {
                        if transition.visible(&self.filter, audience.platform) {
                            self.pending.push_back(pb::SubscribeResponse {
                                event: Some(Event::Alert(transition.event.clone())),
                            });
                        }
                    }
                    Err(RecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "slow subscriber skipped alert transitions");
                    }
                    Err(RecvError::Closed) => self.alerts = None,
                },
            }
        }
    }
}

/// The next folded batch; never, without a receiver.
async fn recv(
    spans: &mut Option<broadcast::Receiver<Arc<Encoded>>>,
) -> Result<Arc<Encoded>, RecvError> {
    match spans {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// The next alert transition; never, without a receiver.
async fn recv_alert(
    alerts: &mut Option<(broadcast::Receiver<Arc<Transition>>, AlertAudience)>,
) -> Result<(Arc<Transition>, AlertAudience), RecvError> {
    match alerts {
        Some((receiver, audience)) => Ok((receiver.recv().await?, *audience)),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    const NOW: i64 = 1_767_225_600 + 2 * 3600 + 37 * 60 + 12; // 02:37:12

    fn seconds_of(plan: &Plan, g: Granularity) -> usize {
        plan.windows.iter().filter(|(w, _)| *w == g).count()
    }

    #[test]
    fn the_last_hour_uses_minutes_then_the_kept_seconds() {
        let plan = plan(NOW - 3600, NOW + 1, NOW);
        // 01:37:12 is older than the seconds kept: rounds out to 01:37:00.
        assert_eq!(plan.start, NOW - 3600 - 12);
        assert_eq!(plan.end, NOW + 1);
        assert_eq!(seconds_of(&plan, Granularity::Hour), 0);
        assert_eq!(seconds_of(&plan, Granularity::Minute), 60);
        assert_eq!(seconds_of(&plan, Granularity::Second), 13);
        let mut covered: Vec<(i64, i64)> = plan
            .windows
            .iter()
            .map(|&(g, s)| (s, s + g.seconds()))
            .collect();
        covered.sort_unstable();
        assert!(
            covered.windows(2).all(|w| w[0].1 == w[1].0),
            "no gaps or overlaps"
        );
        assert_eq!(
            (covered[0].0, covered.last().unwrap().1),
            (plan.start, plan.end)
        );
    }

    #[test]
    fn whole_hours_inside_a_long_range_are_read_as_hours() {
        let day = plan(NOW - 24 * 3600, NOW + 1, NOW);
        assert_eq!(seconds_of(&day, Granularity::Hour), 23);
        assert!(seconds_of(&day, Granularity::Minute) >= 23 + 37);
        // Older than the hourly rollups: clamped to what is kept.
        let month = plan(NOW - 30 * 24 * 3600, NOW + 1, NOW);
        assert_eq!(month.start, Granularity::Hour.oldest_kept(NOW));
        // A recent few seconds are read second by second.
        let recent = plan(NOW - 5, NOW, NOW);
        assert_eq!(
            (recent.start, recent.end, recent.windows.len()),
            (NOW - 5, NOW, 5)
        );
        assert!(
            plan(NOW + 10, NOW + 20, NOW).windows.is_empty(),
            "the future is empty"
        );
    }

    #[test]
    fn tenants_see_their_own_and_platform_keys_see_all() {
        let who = |tenant: &str| Principal {
            tenant: tenant.into(),
            key_name: "k".into(),
            role: Role::Viewer,
        };
        assert_eq!(
            scope(&who("acme"), "").unwrap(),
            TenantScope::One("acme".into())
        );
        assert_eq!(
            scope(&who("acme"), "acme").unwrap(),
            TenantScope::One("acme".into())
        );
        assert!(matches!(
            scope(&who("acme"), "globex"),
            Err(AuthError::CrossTenant { .. })
        ));
        assert!(matches!(
            scope(&who("acme"), "*"),
            Err(AuthError::CrossTenant { .. })
        ));
        assert_eq!(scope(&who(SYSTEM_TENANT), "*").unwrap(), TenantScope::All);
        assert_eq!(
            scope(&who(SYSTEM_TENANT), "globex").unwrap(),
            TenantScope::One("globex".into())
        );
    }
}
