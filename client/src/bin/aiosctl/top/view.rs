//! What `aiosctl top` shows, as plain data and pure functions: the state
//! folded from the `Subscribe` stream ([`View`]) and the frame it renders
//! to ([`View::render`]), so both are tested without a terminal.
//!
//! The header is the last closed window of the whole filter (the rollup
//! itself). The rows break it down by one dimension: by agent from the
//! rollup's own `per_agent`; by model, node, region or tenant from the
//! request spans streamed alongside (the rollup carries no such
//! breakdown). Each row also keeps totals since `top` started, so a quiet
//! agent stays on screen after its last request: by agent from
//! `GetSummary` since the first window, otherwise from the spans.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use aios_client::telemetry::is_request;
use aios_proto::v1::{
    AgentBreakdown, AlertEvent, AlertSeverity, AlertState, Span, SpanStatusCode, Summary,
    SummaryFilter,
};

use crate::output::{count, duration, percent, usd};

/// What the rows break the traffic down by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dimension {
    Agent,
    Model,
    Node,
    Region,
    Tenant,
}

impl Dimension {
    fn header(self) -> &'static str {
        match self {
            Self::Agent => "AGENT",
            Self::Model => "MODEL",
            Self::Node => "NODE",
            Self::Region => "REGION",
            Self::Tenant => "TENANT",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Model => "model",
            Self::Node => "node",
            Self::Region => "region",
            Self::Tenant => "tenant",
        }
    }

    /// Whether the rows come from spans (the rollup breaks down only by agent).
    pub fn needs_spans(self) -> bool {
        self != Self::Agent
    }

    fn of(self, span: &Span) -> &str {
        match self {
            Self::Agent => &span.agent,
            Self::Model => &span.model,
            Self::Node => &span.node,
            Self::Region => &span.region,
            Self::Tenant => &span.tenant,
        }
    }
}

/// What the rows are ordered by (in the last window, descending).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Requests,
    Cost,
    P95,
    Errors,
}

/// The state of the stream, shown at the end of the title line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    Connecting,
    Live,
    Reconnecting { attempt: u32, error: String },
}

// === Rows ===

/// One row's figures over one window.
#[derive(Clone, Debug, Default, PartialEq)]
struct Figures {
    requests: u64,
    errors: u64,
    p95: Option<Duration>,
    tokens: u64,
    cost_usd: f64,
    cache_hits: u64,
}

/// One row's figures since `top` started.
#[derive(Clone, Debug, Default, PartialEq)]
struct Totals {
    requests: u64,
    cost_usd: f64,
}

/// Request spans and costs of one dimension value within one second.
#[derive(Clone, Debug, Default)]
struct Bucket {
    requests: u64,
    errors: u64,
    cache_hits: u64,
    latencies: Vec<Duration>,
    tokens: u64,
    cost_usd: f64,
}

impl Bucket {
    fn add(&mut self, span: &Span) {
        if is_request(span) {
            self.requests += 1;
            self.errors += u64::from(is_error(span));
            self.cache_hits += u64::from(span.cache_hit);
            self.latencies.push(Duration::from_nanos(
                span.end_time_unix_nano
                    .saturating_sub(span.start_time_unix_nano),
            ));
        }
        self.tokens += span.input_tokens + span.output_tokens;
        self.cost_usd += finite(span.cost_usd);
    }

    fn merge(&mut self, other: Bucket) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.cache_hits += other.cache_hits;
        self.latencies.extend(other.latencies);
        self.tokens += other.tokens;
        self.cost_usd += other.cost_usd;
    }

    fn figures(mut self) -> Figures {
        self.latencies.sort_unstable();
        // Nearest rank, as the rollups' histogram reads it (to its 0.8%).
        let rank = (self.latencies.len() as f64 * 0.95).ceil() as usize;
        Figures {
            requests: self.requests,
            errors: self.errors,
            p95: self.latencies.get(rank.saturating_sub(1)).copied(),
            tokens: self.tokens,
            cost_usd: self.cost_usd,
            cache_hits: self.cache_hits,
        }
    }
}

fn is_error(span: &Span) -> bool {
    span.status
        .as_ref()
        .is_some_and(|s| s.code == SpanStatusCode::Error as i32)
}

fn finite(usd: f64) -> f64 {
    if usd.is_finite() { usd } else { 0.0 }
}

/// Spans folded per second of their end and dimension value, waiting for
/// the rollup of their window.
type Seconds = BTreeMap<i64, HashMap<String, Bucket>>;

/// Seconds of spans kept ahead of the last rollup (a node's clock may run fast).
const SECONDS_AHEAD: usize = 120;

// === The view ===

/// Everything a frame shows.
#[derive(Debug)]
pub struct View {
    by: Dimension,
    sort: SortKey,
    /// `tenant acme, model mini`: what the subscription covers.
    scope: String,
    connection: Connection,
    /// The last rollup.
    last: Option<Summary>,
    /// Rows of the last window.
    rows: BTreeMap<String, Figures>,
    /// Rows since start.
    totals: BTreeMap<String, Totals>,
    /// When the first window started (Unix seconds).
    since: Option<i64>,
    /// Spans not yet in a rollup's window (only when rows come from spans).
    seconds: Seconds,
    /// End of the last rollup's window (Unix seconds).
    closed: i64,
    /// Requests the rows counted in the last window, when they come from
    /// spans (a subscriber that falls behind skips spans).
    counted: u64,
    /// Firing alerts by rule and scope.
    alerts: BTreeMap<String, AlertEvent>,
    /// Connected nodes in scope; `None` when unknown.
    nodes: Option<usize>,
}

impl View {
    pub fn new(by: Dimension, sort: SortKey, filter: &SummaryFilter) -> Self {
        Self {
            by,
            sort,
            scope: scope(filter),
            connection: Connection::Connecting,
            last: None,
            rows: BTreeMap::new(),
            totals: BTreeMap::new(),
            since: None,
            seconds: Seconds::new(),
            closed: i64::MIN,
            counted: 0,
            alerts: BTreeMap::new(),
            nodes: None,
        }
    }

    pub fn set_connection(&mut self, connection: Connection) {
        if connection != Connection::Live {
            // Spans of a broken stream would wait for a rollup that never comes.
            self.seconds.clear();
        }
        self.connection = connection;
    }

    pub fn set_nodes(&mut self, nodes: Option<usize>) {
        self.nodes = nodes;
    }

    /// A closed window: the header's figures, and the rows (from its
    /// `per_agent`, or from the spans that ended in it).
    pub fn rollup(&mut self, summary: Summary) {
        let start = summary.window_start.map_or(0, |t| t.seconds);
        let end = summary.window_end.map_or(start + 1, |t| t.seconds);
        self.since.get_or_insert(start);
        self.closed = end;
        self.connection = Connection::Live;
        self.rows = if self.by.needs_spans() {
            let mut rows: HashMap<String, Bucket> = HashMap::new();
            let later = self.seconds.split_off(&end);
            for (_, buckets) in std::mem::replace(&mut self.seconds, later) {
                for (key, bucket) in buckets {
                    rows.entry(key).or_default().merge(bucket);
                }
            }
            rows.into_iter().map(|(k, b)| (k, b.figures())).collect()
        } else {
            let rows: BTreeMap<String, Figures> = summary
                .per_agent
                .iter()
                .map(|agent| {
                    let figures = Figures {
                        requests: agent.requests,
                        errors: agent.errors,
                        p95: agent.latency_p95.and_then(|d| Duration::try_from(d).ok()),
                        tokens: agent.input_tokens + agent.output_tokens,
                        cost_usd: agent.cost_usd,
                        cache_hits: agent.cache_hits,
                    };
                    (label(&agent.agent), figures)
                })
                .collect();
            for (key, figures) in &rows {
                let totals = self.totals.entry(key.clone()).or_default();
                totals.requests += figures.requests;
                totals.cost_usd += figures.cost_usd;
            }
            rows
        };
        self.counted = self.rows.values().map(|f| f.requests).sum();
        self.last = Some(summary);
    }

    /// When the first window started (Unix seconds): what the totals count from.
    pub fn since(&self) -> Option<i64> {
        self.since
    }

    /// Totals per agent since [`View::since`], as `GetSummary` merged them
    /// (by agent, the rows' totals add up each window's figures, which
    /// miss a span folded after its window's rollup was sent; the summary
    /// read a little later has it).
    pub fn agent_totals(&mut self, per_agent: &[AgentBreakdown]) {
        if self.by.needs_spans() {
            return;
        }
        for agent in per_agent {
            self.totals.insert(
                label(&agent.agent),
                Totals {
                    requests: agent.requests,
                    cost_usd: agent.cost_usd,
                },
            );
        }
    }

    /// A span (when rows come from spans): counted in its row's totals at
    /// once, and in the window its end falls in when that window's rollup
    /// comes (a span later than that is in the totals only).
    pub fn span(&mut self, span: &Span) {
        if !self.by.needs_spans() {
            return;
        }
        let key = label(self.by.of(span));
        let totals = self.totals.entry(key.clone()).or_default();
        totals.requests += u64::from(is_request(span));
        totals.cost_usd += finite(span.cost_usd);
        let second = (span.end_time_unix_nano / 1_000_000_000) as i64;
        if second < self.closed {
            return;
        }
        self.seconds
            .entry(second)
            .or_default()
            .entry(key)
            .or_default()
            .add(span);
        while self.seconds.len() > SECONDS_AHEAD {
            self.seconds.pop_first();
        }
    }

    /// An alert transition: firing alerts are listed until resolved.
    pub fn alert(&mut self, alert: AlertEvent) {
        let key = format!(
            "{} {}",
            alert.rule,
            alert.scope.as_ref().map_or(String::new(), scope)
        );
        match AlertState::try_from(alert.state) {
            Ok(AlertState::Firing) => {
                self.alerts.insert(key, alert);
            }
            _ => {
                self.alerts.remove(&key);
            }
        }
    }

    /// The frame's lines. `size` (rows, columns) bounds it to a terminal:
    /// the table is cut to fit, lines to its width; without one (a pipe, a
    /// file) every row is shown.
    pub fn render(&self, size: Option<(usize, usize)>) -> Vec<String> {
        let mut lines = self.header();
        lines.push(String::new());
        let mut rows = self.table_rows();
        let header = self.table_header();
        let mut cut = 0;
        if let Some((height, _)) = size {
            // The table's header, and the terminal's last line left free so
            // the screen does not scroll.
            let room = height.saturating_sub(lines.len() + 2);
            if rows.len() > room {
                let keep = room.saturating_sub(1);
                cut = rows.len() - keep;
                rows.truncate(keep);
            }
        }
        lines.extend(
            crate::output::table(&header, &rows)
                .lines()
                .map(String::from),
        );
        if cut > 0 {
            lines.push(format!("… {cut} more"));
        }
        if let Some((_, width)) = size {
            for line in &mut lines {
                if line.chars().count() > width {
                    *line = line.chars().take(width).collect();
                }
            }
        }
        lines
    }

    fn header(&self) -> Vec<String> {
        let status = match &self.connection {
            Connection::Connecting => "connecting…",
            Connection::Live => "live",
            Connection::Reconnecting { .. } => "reconnecting…",
        };
        let window = self.last.as_ref().map_or("-".to_string(), |s| {
            format!(
                "{}–{} UTC",
                clock(s.window_start.map_or(0, |t| t.seconds)),
                clock(s.window_end.map_or(0, |t| t.seconds))
            )
        });
        // The status comes first: a narrow terminal cuts lines at the end.
        let mut lines = vec![format!(
            "aiosctl top · {status} · {} · by {} · window {window} · totals since {}",
            self.scope,
            self.by.name(),
            self.since.map_or("-".into(), clock),
        )];
        if let Connection::Reconnecting { attempt, error } = &self.connection {
            lines.push(format!("Reconnecting (attempt {attempt}): {error}"));
        }
        let s = self.last.clone().unwrap_or_default();
        let seconds = window_seconds(&s);
        let quantile = |q: Option<prost_types::Duration>| {
            q.and_then(|d| Duration::try_from(d).ok())
                .map_or("-".into(), duration)
        };
        lines.push(format!(
            "Requests {}/s · errors {} ({}) · latency p50 {} p95 {} p99 {}",
            count(s.requests as f64 / seconds),
            percent(s.error_rate),
            s.errors,
            quantile(s.latency_p50),
            quantile(s.latency_p95),
            quantile(s.latency_p99),
        ));
        let mut usage = format!(
            "Tokens {}/s · cost {}/h · savings {}/h · cache hits {} · nodes {}",
            count((s.input_tokens + s.output_tokens) as f64 / seconds),
            usd(s.cost_usd * 3600.0 / seconds),
            usd(s.savings_usd * 3600.0 / seconds),
            percent(s.cache_hit_rate),
            self.nodes.map_or("-".into(), |n| n.to_string()),
        );
        if s.dropped_spans > 0 {
            usage.push_str(&format!(" · {} spans dropped by nodes", s.dropped_spans));
        }
        lines.push(usage);
        if !self.alerts.is_empty() {
            let firing: Vec<String> = self.alerts.values().map(alert).collect();
            lines.push(format!("Alerts firing: {}", firing.join("; ")));
        }
        if self.by.needs_spans() && self.counted < s.requests {
            lines.push(format!(
                "Rows by {} count {} of the window's {} requests (spans arrived late or were skipped)",
                self.by.name(),
                self.counted,
                s.requests
            ));
        }
        lines
    }

    /// The last window's figures, then the totals since the first one.
    fn table_header(&self) -> [&'static str; 9] {
        [
            self.by.header(),
            "REQ/S",
            "ERR%",
            "P95",
            "TOK/S",
            "COST/H",
            "CACHE%",
            "REQS",
            "COST",
        ]
    }

    /// Every key seen since start, busiest first by the sort key.
    fn table_rows(&self) -> Vec<Vec<String>> {
        let seconds = self.last.as_ref().map_or(1.0, window_seconds);
        let idle = Figures::default();
        let mut keys: Vec<(&String, &Figures, Totals)> = self
            .totals
            .iter()
            .map(|(key, totals)| (key, self.rows.get(key).unwrap_or(&idle), totals.clone()))
            .collect();
        let sort = self.sort;
        keys.sort_by(|(ka, a, ta), (kb, b, tb)| {
            let by = match sort {
                SortKey::Requests => b.requests.cmp(&a.requests),
                SortKey::Cost => b.cost_usd.total_cmp(&a.cost_usd),
                SortKey::P95 => b.p95.cmp(&a.p95),
                SortKey::Errors => b.errors.cmp(&a.errors),
            };
            by.then(tb.requests.cmp(&ta.requests)).then(ka.cmp(kb))
        });
        keys.into_iter()
            .map(|(key, f, totals)| {
                let ratio = |part: u64| match f.requests {
                    0 => "-".to_string(),
                    n => percent(part as f64 / n as f64),
                };
                vec![
                    key.clone(),
                    count(f.requests as f64 / seconds),
                    ratio(f.errors),
                    f.p95.map_or("-".into(), duration),
                    count(f.tokens as f64 / seconds),
                    usd(f.cost_usd * 3600.0 / seconds),
                    ratio(f.cache_hits),
                    totals.requests.to_string(),
                    usd(totals.cost_usd),
                ]
            })
            .collect()
    }
}

/// Length of a summary's window, to turn its figures into rates.
fn window_seconds(summary: &Summary) -> f64 {
    match (summary.window_start, summary.window_end) {
        (Some(a), Some(b)) if b.seconds > a.seconds => (b.seconds - a.seconds) as f64,
        _ => 1.0,
    }
}

/// A dimension value as a row label; empty (say, embeddings without an
/// agent) as `(none)`.
fn label(value: &str) -> String {
    match value {
        "" => "(none)".into(),
        value => value.to_string(),
    }
}

/// `tenant acme, model mini`; `the key's tenant` when nothing is set.
fn scope(filter: &SummaryFilter) -> String {
    let tenant = match filter.tenant.as_str() {
        "" => "the key's tenant".to_string(),
        "*" => "all tenants".to_string(),
        tenant => format!("tenant {tenant}"),
    };
    let mut parts = vec![tenant];
    for (name, value) in [
        ("agent", &filter.agent),
        ("model", &filter.model),
        ("region", &filter.region),
        ("node", &filter.node),
    ] {
        if !value.is_empty() {
            parts.push(format!("{name} {value}"));
        }
    }
    parts.join(", ")
}

/// `error_rate_high (critical): error rate above 5%`.
fn alert(alert: &AlertEvent) -> String {
    let severity = match AlertSeverity::try_from(alert.severity) {
        Ok(AlertSeverity::Info) => "info",
        Ok(AlertSeverity::Warning) => "warning",
        Ok(AlertSeverity::Critical) => "critical",
        Ok(AlertSeverity::Unspecified) | Err(_) => "unknown",
    };
    match alert.message.as_str() {
        "" => format!("{} ({severity})", alert.rule),
        message => format!("{} ({severity}): {message}", alert.rule),
    }
}

/// `HH:MM:SS` of a Unix second, UTC.
fn clock(unix_seconds: i64) -> String {
    let day = unix_seconds.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", day / 3600, day / 60 % 60, day % 60)
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
