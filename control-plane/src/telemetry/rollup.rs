//! Live rollups: every stored span batch folded once into cells keyed by
//! (tenant, agent, model, region, node), per 1 s, 1 min and 1 h window of
//! the span's end time.
//!
//! The fold is the hot path of a replica (every span of the fleet passes
//! through it, on every replica), so it allocates only when it meets a new
//! dimension string, window or cell: strings are interned into small ids,
//! cells live in hash maps keyed by those ids with a fast non-cryptographic
//! hasher, and each span's figures are computed once for its three cells.
//! Spans stay wire data here, read in place ([`SpanView`]: borrowed
//! strings and numbers): decoding millions of them into owned structs only
//! to read a few fields would cost more than the fold.

use std::collections::{BTreeMap, HashMap};

use aios_proto::v1 as pb;

use super::{histogram::Histogram, wire::SpanView};

// === Fast maps ===

/// A hash map with foldhash: a few cycles per key where SipHash would cost
/// more than the fold itself, with a proper final mix, so structured keys
/// (sequential trace ids, ids differing only in their high bytes) still
/// spread over the buckets. Keys come from authenticated nodes.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

// === Dimensions ===

/// An interned dimension string; 0 is the empty string.
pub type StrId = u32;

/// Every distinct dimension string seen, once.
#[derive(Debug)]
struct Interner {
    ids: FastMap<Box<str>, StrId>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn new() -> Self {
        let mut interner = Self {
            ids: FastMap::default(),
            names: Vec::new(),
        };
        interner.intern("");
        interner
    }

    fn intern(&mut self, name: &str) -> StrId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        // Ids are never reused; 4 billion distinct names would exhaust memory first.
        let id = self.names.len() as StrId;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    fn lookup(&self, name: &str) -> Option<StrId> {
        self.ids.get(name).copied()
    }

    fn name(&self, id: StrId) -> &str {
        self.names.get(id as usize).map_or("", |name| name)
    }
}

/// What a cell is keyed by, besides its window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dims {
    /// Tenant (empty for node-level figures: dropped spans).
    pub tenant: StrId,
    /// Agent (empty for direct model calls).
    pub agent: StrId,
    /// Model.
    pub model: StrId,
    /// Region.
    pub region: StrId,
    /// Node.
    pub node: StrId,
}

// === Windows ===

/// Rollup window sizes, finest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// 1 s windows, kept 10 minutes.
    Second,
    /// 1 min windows, kept 24 hours.
    Minute,
    /// 1 h windows, kept 7 days.
    Hour,
}

impl Granularity {
    /// Every granularity, finest first.
    pub const ALL: [Self; 3] = [Self::Second, Self::Minute, Self::Hour];

    /// Window length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3600,
        }
    }

    /// How long windows are kept after they end, in seconds.
    pub fn retention(self) -> i64 {
        match self {
            Self::Second => 600,
            Self::Minute => 24 * 3600,
            Self::Hour => 7 * 24 * 3600,
        }
    }

    /// Start of the window holding second `t`.
    pub fn floor(self, t: i64) -> i64 {
        t - t.rem_euclid(self.seconds())
    }

    /// Start of the first window at or after second `t`.
    pub fn ceil(self, t: i64) -> i64 {
        let floor = self.floor(t);
        if floor == t {
            t
        } else {
            floor + self.seconds()
        }
    }

    /// Whether the window starting at `start` is still kept at `now`.
    pub fn keeps(self, start: i64, now: i64) -> bool {
        start + self.seconds() > now - self.retention()
    }

    /// Start of the oldest window still kept at `now`.
    pub fn oldest_kept(self, now: i64) -> i64 {
        self.floor(now - self.retention())
    }

    fn level(self) -> usize {
        match self {
            Self::Second => 0,
            Self::Minute => 1,
            Self::Hour => 2,
        }
    }
}

// === Cells ===

/// Figures of one (dimensions, window).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cell {
    /// Request spans finished.
    pub requests: u64,
    /// Request spans that ended with an error status.
    pub errors: u64,
    /// Latency of request spans.
    pub latency: Histogram,
    /// Input tokens of every span.
    pub input_tokens: u64,
    /// Output tokens of every span.
    pub output_tokens: u64,
    /// Cost of every span, USD.
    pub cost_usd: f64,
    /// Request spans served from a cache.
    pub cache_hits: u64,
    /// Baseline cost minus cost, over spans with a baseline, USD.
    pub savings_usd: f64,
    /// Spans nodes reported dropping.
    pub dropped_spans: u64,
}

impl Cell {
    /// Adds `other`'s figures.
    pub fn merge(&mut self, other: &Cell) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency.merge(&other.latency);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_usd += other.cost_usd;
        self.cache_hits = self.cache_hits.saturating_add(other.cache_hits);
        self.savings_usd += other.savings_usd;
        self.dropped_spans = self.dropped_spans.saturating_add(other.dropped_spans);
    }

    /// Whether any request, token or cost was seen (dropped spans alone do
    /// not make an agent worth listing).
    pub fn has_activity(&self) -> bool {
        self.requests > 0 || self.input_tokens > 0 || self.output_tokens > 0 || self.cost_usd != 0.0
    }

    fn add(&mut self, span: &Figures) {
        if span.request {
            self.requests = self.requests.saturating_add(1);
            self.errors = self.errors.saturating_add(u64::from(span.error));
            self.cache_hits = self.cache_hits.saturating_add(u64::from(span.cache_hit));
            self.latency.record_nanos(span.latency_nanos);
        }
        self.input_tokens = self.input_tokens.saturating_add(span.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(span.output_tokens);
        self.cost_usd += span.cost_usd;
        self.savings_usd += span.savings_usd;
    }
}

/// What one span adds to each of its cells, computed once.
struct Figures {
    request: bool,
    error: bool,
    cache_hit: bool,
    latency_nanos: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
    savings_usd: f64,
}

/// Request spans are whole executions: the agent invocation, or an
/// embeddings call. Their children (model and tool calls) are not requests.
pub fn is_request(span: &pb::Span) -> bool {
    is_request_operation(&span.operation)
}

/// Whether spans of `operation` are request spans (see [`is_request`]).
pub fn is_request_operation(operation: &str) -> bool {
    matches!(operation, "invoke_agent" | "embeddings")
}

impl Figures {
    fn of(span: &SpanView<'_>) -> Self {
        // A node's bad number must not poison every sum it lands in.
        let finite = |usd: f64| if usd.is_finite() { usd } else { 0.0 };
        let cost_usd = finite(span.cost_usd);
        let baseline = finite(span.baseline_cost_usd);
        Self {
            request: is_request_operation(span.operation),
            error: span.status_code == pb::SpanStatusCode::Error as i32,
            cache_hit: span.cache_hit,
            latency_nanos: span
                .end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano),
            input_tokens: span.input_tokens,
            output_tokens: span.output_tokens,
            cost_usd,
            savings_usd: if baseline > 0.0 {
                baseline - cost_usd
            } else {
                0.0
            },
        }
    }
}

// === Filters ===

/// Which tenants a query covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantScope {
    /// One tenant.
    One(String),
    /// Every tenant, and node-level figures (platform keys).
    All,
}

/// Restricts rollups and spans to some dimensions; empty fields match any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Tenants.
    pub tenant: TenantScope,
    /// Agent name.
    pub agent: String,
    /// Model name.
    pub model: String,
    /// Region.
    pub region: String,
    /// Node id.
    pub node: String,
}

impl Filter {
    /// Everything in `tenant`.
    pub fn tenant(tenant: TenantScope) -> Self {
        Self {
            tenant,
            agent: String::new(),
            model: String::new(),
            region: String::new(),
            node: String::new(),
        }
    }

    /// Whether `span` is in scope.
    pub fn matches(&self, span: &pb::Span) -> bool {
        self.admits(&SpanView::of(span), "")
    }

    /// Whether `span`, from a batch sent by `sender` (its node when it
    /// names none), is in scope.
    pub fn admits(&self, span: &SpanView<'_>, sender: &str) -> bool {
        let field = |want: &str, have: &str| want.is_empty() || want == have;
        let tenant = match &self.tenant {
            TenantScope::All => true,
            TenantScope::One(tenant) => tenant == span.tenant,
        };
        let node = if span.node.is_empty() {
            sender
        } else {
            span.node
        };
        tenant
            && field(&self.agent, span.agent)
            && field(&self.model, span.model)
            && field(&self.region, span.region)
            && field(&self.node, node)
    }
}

/// A [`Filter`] in interned ids: `None` fields match any.
struct Wanted([Option<StrId>; 5]);

impl Wanted {
    fn matches(&self, dims: &Dims) -> bool {
        let have = [dims.tenant, dims.agent, dims.model, dims.region, dims.node];
        self.0
            .iter()
            .zip(have)
            .all(|(want, have)| want.is_none_or(|want| want == have))
    }
}

/// Merged figures of a filter over some windows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    /// Everything that matched.
    pub all: Cell,
    /// The same per agent with activity, by descending cost (then name).
    pub per_agent: Vec<(String, Cell)>,
}

// === impl Rollups ===

/// Every cell of every kept window in this replica.
#[derive(Debug)]
pub struct Rollups {
    strings: Interner,
    /// Per granularity (finest first): window start (Unix seconds) → cells.
    levels: [BTreeMap<i64, FastMap<Dims, Cell>>; 3],
    /// Consecutive spans mostly share their dimensions: the last ones seen.
    last: Option<Dims>,
    /// Second of the last prune.
    pruned_at: i64,
}

impl Default for Rollups {
    fn default() -> Self {
        Self::new()
    }
}

impl Rollups {
    /// Empty rollups.
    pub fn new() -> Self {
        Self {
            strings: Interner::new(),
            levels: Default::default(),
            last: None,
            pruned_at: i64::MIN,
        }
    }

    /// Folds one stored batch's `spans`, taken from `node` in
    /// `unix_minute` with `dropped_spans` reported, at wall clock second
    /// `now`. Spans in windows no longer kept are skipped.
    pub fn fold<'a>(
        &mut self,
        node: &str,
        unix_minute: u64,
        spans: impl IntoIterator<Item = SpanView<'a>>,
        dropped_spans: u64,
        now: i64,
    ) {
        if now > self.pruned_at {
            self.prune(now);
        }
        let mut newest: Option<SpanView<'a>> = None;
        for span in spans {
            let dims = self.dims(&span, node);
            let figures = Figures::of(&span);
            let end = seconds(span.end_time_unix_nano);
            for granularity in Granularity::ALL {
                if let Some(cell) = self.cell(granularity, end, dims, now) {
                    cell.add(&figures);
                }
            }
            if newest.is_none_or(|n| span.end_time_unix_nano > n.end_time_unix_nano) {
                newest = Some(span);
            }
        }
        if dropped_spans > 0 {
            // Drops are the node's, not a tenant's: the batch's node, the
            // window of its newest span (else the minute it was taken).
            let (end, region) = match newest {
                Some(span) => (seconds(span.end_time_unix_nano), span.region),
                None => ((unix_minute as i64).saturating_mul(60), ""),
            };
            let dims = Dims {
                region: self.strings.intern(region),
                node: self.strings.intern(node),
                ..Dims::default()
            };
            for granularity in Granularity::ALL {
                if let Some(cell) = self.cell(granularity, end, dims, now) {
                    cell.dropped_spans = cell.dropped_spans.saturating_add(dropped_spans);
                }
            }
        }
    }

    /// Drops windows no longer kept at `now`.
    pub fn prune(&mut self, now: i64) {
        for granularity in Granularity::ALL {
            let level = &mut self.levels[granularity.level()];
            let kept = level.split_off(&(granularity.oldest_kept(now)));
            *level = kept;
        }
        self.pruned_at = now;
    }

    /// Merges the cells matching `filter` in `windows`.
    pub fn totals(&self, filter: &Filter, windows: &[(Granularity, i64)]) -> Totals {
        let Some(wanted) = self.wanted(filter) else {
            return Totals::default();
        };
        let mut all = Cell::default();
        let mut agents: FastMap<StrId, Cell> = FastMap::default();
        for &(granularity, start) in windows {
            let Some(cells) = self.levels[granularity.level()].get(&start) else {
                continue;
            };
            for (dims, cell) in cells.iter().filter(|(dims, _)| wanted.matches(dims)) {
                all.merge(cell);
                agents.entry(dims.agent).or_default().merge(cell);
            }
        }
        let mut per_agent: Vec<(String, Cell)> = agents
            .into_iter()
            .filter(|(_, cell)| cell.has_activity())
            .map(|(agent, cell)| (self.strings.name(agent).to_string(), cell))
            .collect();
        per_agent.sort_by(|(a, x), (b, y)| y.cost_usd.total_cmp(&x.cost_usd).then(a.cmp(b)));
        Totals { all, per_agent }
    }

    /// Number of windows kept per granularity (finest first).
    pub fn windows(&self) -> [usize; 3] {
        self.levels.each_ref().map(BTreeMap::len)
    }

    fn cell(
        &mut self,
        granularity: Granularity,
        end: i64,
        dims: Dims,
        now: i64,
    ) -> Option<&mut Cell> {
        let start = granularity.floor(end);
        if !granularity.keeps(start, now) {
            return None;
        }
        let window = self.levels[granularity.level()].entry(start).or_default();
        Some(window.entry(dims).or_default())
    }

    fn dims(&mut self, span: &SpanView<'_>, node: &str) -> Dims {
        let node = if span.node.is_empty() {
            node
        } else {
            span.node
        };
        if let Some(last) = self.last {
            let s = &self.strings;
            if s.name(last.tenant) == span.tenant
                && s.name(last.agent) == span.agent
                && s.name(last.model) == span.model
                && s.name(last.region) == span.region
                && s.name(last.node) == node
            {
                return last;
            }
        }
        let dims = Dims {
            tenant: self.strings.intern(span.tenant),
            agent: self.strings.intern(span.agent),
            model: self.strings.intern(span.model),
            region: self.strings.intern(span.region),
            node: self.strings.intern(node),
        };
        self.last = Some(dims);
        dims
    }

    /// The filter in ids; `None` when it names a string never seen (nothing
    /// can match).
    fn wanted(&self, filter: &Filter) -> Option<Wanted> {
        let id = |name: &str| match name {
            "" => Some(None),
            name => self.strings.lookup(name).map(Some),
        };
        let tenant = match &filter.tenant {
            TenantScope::All => None,
            TenantScope::One(tenant) => Some(self.strings.lookup(tenant)?),
        };
        Some(Wanted([
            tenant,
            id(&filter.agent)?,
            id(&filter.model)?,
            id(&filter.region)?,
            id(&filter.node)?,
        ]))
    }
}

/// Unix seconds of a nanosecond timestamp.
fn seconds(unix_nanos: u64) -> i64 {
    (unix_nanos / 1_000_000_000) as i64
}

#[cfg(test)]
#[path = "rollup_tests.rs"]
mod tests;
