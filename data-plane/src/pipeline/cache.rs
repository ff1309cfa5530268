//! Exact-match response cache: a request whose normalised form (agent and
//! its config version, model, parameters, messages with whitespace
//! normalised) was answered before, in the same tenant, within the TTL, gets
//! the stored answer without a model call.
//!
//! - **Tenant isolation**: the tenant is part of the key verbatim, and a hit
//!   compares the whole normalised request, not only its hash, so neither a
//!   hash collision nor anything else can serve one tenant another's answer.
//!   (The hash, foldhash seeded per process, only picks shard and bucket.)
//! - **Cost**: the key is written once, into one buffer sized up front, and
//!   moved into the cache on a miss; an answer is copied once, when stored.
//! - **Bounds**: entries expire after the TTL; total size (keys plus values,
//!   as the caller measures them) stays under a byte budget, evicting the
//!   oldest entries first. Shards keep lock hold times short.

use std::{
    collections::{HashMap, VecDeque},
    hash::BuildHasher,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    call::{Call, Input, Outcome, Params, Status, StepKind},
    error::ExecError,
    stage::{Flow, Stage},
};

const SHARDS: usize = 16;

/// Hashes keys (a few hundred bytes each) for shards and buckets: foldhash,
/// seeded per process, is several times faster than SipHash there. A hit
/// still compares the whole request, so a collision only costs time.
static KEY_HASH: LazyLock<foldhash::quality::RandomState> = LazyLock::new(Default::default);

/// Builds the normalised form of a request, field by field, in one buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyBuilder {
    bytes: Vec<u8>,
}

impl KeyBuilder {
    /// A builder with room for about `bytes` of fields (no regrowing on the
    /// way when the estimate holds).
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
        }
    }

    /// Adds a field verbatim (names, versions, parameters).
    pub fn field(&mut self, value: impl AsRef<[u8]>) -> &mut Self {
        let value = value.as_ref();
        self.bytes
            .extend_from_slice(&(value.len() as u64).to_le_bytes());
        self.bytes.extend_from_slice(value);
        self
    }

    /// Adds a field that may be absent; absent and empty differ.
    pub fn optional(&mut self, value: Option<impl AsRef<[u8]>>) -> &mut Self {
        match value {
            None => {
                self.bytes.push(0);
                self
            }
            Some(value) => {
                self.bytes.push(1);
                self.field(value)
            }
        }
    }

    /// Adds text with surrounding whitespace trimmed and inner runs of
    /// whitespace (Unicode's, as [`str::split_whitespace`]) collapsed to one
    /// space, written straight into the key.
    pub fn text(&mut self, value: &str) -> &mut Self {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 8]);
        let start = self.bytes.len();
        if is_normal(value.as_bytes()) {
            // Most texts: one line, single spaces; copied as they are.
            self.bytes.extend_from_slice(value.as_bytes());
        } else {
            for word in value.split_whitespace() {
                if self.bytes.len() > start {
                    self.bytes.push(b' ');
                }
                self.bytes.extend_from_slice(word.as_bytes());
            }
        }
        let len = (self.bytes.len() - start) as u64;
        self.bytes[at..start].copy_from_slice(&len.to_le_bytes());
        self
    }

    /// Adds the sampling parameters (limits, temperature, top-p, seed, stops).
    pub fn params(&mut self, params: &Params) -> &mut Self {
        self.optional(params.max_tokens.map(u32::to_le_bytes))
            .optional(params.temperature.map(|t| t.to_bits().to_le_bytes()))
            .optional(params.top_p.map(|p| p.to_bits().to_le_bytes()))
            .optional(params.seed.map(u64::to_le_bytes))
            .field((params.stop.len() as u64).to_le_bytes());
        for stop in &params.stop {
            self.field(stop);
        }
        self
    }

    /// The key for `tenant`. Takes the fields (the builder is left empty):
    /// the key owns them without a copy.
    pub fn build(&mut self, tenant: &str) -> CacheKey {
        let request = std::mem::take(&mut self.bytes);
        CacheKey {
            tenant: tenant.to_string(),
            hash: KEY_HASH.hash_one((tenant, &request)),
            request,
        }
    }
}

/// Whether `text` is already whitespace-normalised: ASCII, no whitespace
/// but single spaces between words. One pass without branches on the
/// bytes' values (they alternate too often between words and spaces).
fn is_normal(text: &[u8]) -> bool {
    let mut space = true; // as if after a space: a leading one is not normal
    let mut normal = true;
    for &b in text {
        let is_space = b == b' ';
        // Other ASCII whitespace (tab, line feed, vertical tab, form feed,
        // carriage return), or non-ASCII (which may be whitespace).
        let other = b.wrapping_sub(0x09) < 5 || b >= 0x80;
        normal &= !(other || (is_space && space));
        space = is_space;
    }
    (normal && !space) || text.is_empty()
}

/// A cache key: the tenant, and the whole normalised request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    tenant: String,
    hash: u64,
    request: Vec<u8>,
}

impl CacheKey {
    fn size(&self) -> usize {
        self.tenant.len() + self.request.len() + 64
    }

    /// The normalised request (the fields, without the tenant).
    pub fn into_bytes(self) -> Vec<u8> {
        self.request
    }
}

/// Hits and misses since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries now held.
    pub entries: usize,
    /// Bytes now held.
    pub bytes: usize,
}

/// A bounded, expiring map from requests to answers of type `V`.
#[derive(Debug)]
pub struct ResponseCache<V> {
    ttl: Duration,
    shard_budget: usize,
    shards: Vec<Mutex<Shard<V>>>,
}

#[derive(Debug)]
struct Shard<V> {
    entries: HashMap<u64, Vec<Entry<V>>, foldhash::fast::RandomState>,
    /// Insertion order, for eviction: (hash, inserted). Within a bucket
    /// entries are in insertion order too, so a slot evicts its bucket's first.
    order: VecDeque<(u64, Instant)>,
    bytes: usize,
    hits: u64,
    misses: u64,
}

#[derive(Debug)]
struct Entry<V> {
    key: CacheKey,
    value: Arc<V>,
    size: usize,
    inserted: Instant,
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::default(),
            order: VecDeque::new(),
            bytes: 0,
            hits: 0,
            misses: 0,
        }
    }
}

impl<V> ResponseCache<V> {
    /// A cache keeping answers for `ttl`, within about `max_bytes` in all.
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self {
            ttl,
            shard_budget: (max_bytes / SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: &CacheKey) -> std::sync::MutexGuard<'_, Shard<V>> {
        self.shards[(key.hash as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The live answer for `key`, if any.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Arc<V>> {
        let ttl = self.ttl;
        let mut shard = self.shard(key);
        let found = shard.entries.get(&key.hash).and_then(|bucket| {
            bucket
                .iter()
                .find(|e| e.key == *key && now.saturating_duration_since(e.inserted) < ttl)
                .map(|e| e.value.clone())
        });
        match found {
            Some(_) => shard.hits += 1,
            None => shard.misses += 1,
        }
        found
    }

    /// Stores `value` (about `value_size` bytes) for `key`, evicting expired
    /// then oldest entries to stay in budget. A value larger than a shard's
    /// budget is not stored.
    pub fn put(&self, key: CacheKey, value: Arc<V>, value_size: usize, now: Instant) {
        let size = key.size() + value_size;
        if size > self.shard_budget {
            return;
        }
        let ttl = self.ttl;
        let budget = self.shard_budget;
        let mut shard = self.shard(&key);
        let hash = key.hash;
        // Replace an entry for the same request.
        shard.remove_where(hash, |e| e.key == key);
        while shard.bytes + size > budget || shard.oldest_expired(now, ttl) {
            let Some((old, _)) = shard.order.pop_front() else {
                break;
            };
            // Oldest first: the first entry of that bucket is the oldest.
            shard.remove_first(old);
        }
        shard.bytes += size;
        shard.order.push_back((hash, now));
        shard.entries.entry(hash).or_default().push(Entry {
            key,
            value,
            size,
            inserted: now,
        });
    }

    /// Counters and sizes over every shard.
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats::default();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            stats.hits += shard.hits;
            stats.misses += shard.misses;
            stats.entries += shard.entries.values().map(Vec::len).sum::<usize>();
            stats.bytes += shard.bytes;
        }
        stats
    }
}

impl<V> Shard<V> {
    fn oldest_expired(&self, now: Instant, ttl: Duration) -> bool {
        self.order
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= ttl)
    }

    fn remove_first(&mut self, hash: u64) {
        if let Some(bucket) = self.entries.get_mut(&hash) {
            if !bucket.is_empty() {
                let entry = bucket.remove(0);
                self.bytes -= entry.size;
            }
            if bucket.is_empty() {
                self.entries.remove(&hash);
            }
        }
    }

    fn remove_where(&mut self, hash: u64, matches: impl Fn(&Entry<V>) -> bool) {
        let Some(bucket) = self.entries.get_mut(&hash) else {
            return;
        };
        if let Some(i) = bucket.iter().position(matches) {
            let entry = bucket.remove(i);
            self.bytes -= entry.size;
            // And its slot in the eviction order.
            if let Some(pos) = self
                .order
                .iter()
                .position(|(h, at)| *h == hash && *at == entry.inserted)
            {
                self.order.remove(pos);
            }
        }
        if bucket.is_empty() {
            self.entries.remove(&hash);
        }
    }
}

/// The cache stage: answers repeated conversations from the cache.
#[derive(Debug)]
pub struct CacheStage {
    cache: ResponseCache<Outcome>,
    counters: LookupCounters,
}

impl CacheStage {
    /// A stage keeping answers for `ttl` within `max_bytes`.
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self {
            cache: ResponseCache::new(ttl, max_bytes),
            counters: LookupCounters::new("aios_cache_lookups_total"),
        }
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }
}

/// A cache's `{result="hit"|"miss"}` lookup counter and the savings
/// counter, made once (and shown as 0 until the first lookup).
#[derive(Debug)]
pub(super) struct LookupCounters {
    hit: metrics::Counter,
    pub(super) miss: metrics::Counter,
    saved: metrics::Counter,
}

impl LookupCounters {
    pub(super) fn new(name: &'static str) -> Self {
        let counters = Self {
            hit: metrics::counter!(name, "result" => "hit"),
            miss: metrics::counter!(name, "result" => "miss"),
            saved: metrics::counter!("aios_cache_saved_micro_usd_total"),
        };
        for counter in [&counters.hit, &counters.miss, &counters.saved] {
            counter.increment(0);
        }
        counters
    }

    /// A hit that saved `cost`.
    pub(super) fn hit(&self, cost: aios_model::Usd) {
        self.hit.increment(1);
        self.saved.increment(cost.micros().max(0) as u64);
    }
}

/// The normalised form of a routed conversation: agent (and its config
/// version, so a changed prompt misses), model, parameters, messages.
/// `None` for a request that executes an approval: an approved request
/// runs (and claims its approval); it is neither answered nor remembered.
fn key_of(call: &Call) -> Option<CacheKey> {
    if call.claim.is_some() {
        return None;
    }
    let Input::Messages(messages) = &call.request.input else {
        return None;
    };
    let route = call.route.as_ref()?;
    let agent = call
        .catalog
        .get(aios_model::Kind::Agent, call.tenant(), &call.request.agent)?;
    let params = &call.request.params;
    // Each field adds its 8-byte length; the estimate need not be exact.
    let size = 128
        + call.request.agent.len()
        + route.model().len()
        + params.stop.iter().map(|s| s.len() + 8).sum::<usize>()
        + messages
            .iter()
            .map(|m| {
                32 + m.content.len()
                    + m.tool_call_id.as_ref().map_or(0, String::len)
                    + m.tool_calls
                        .iter()
                        .map(|c| 24 + c.id.len() + c.name.len() + c.arguments_json.len())
                        .sum::<usize>()
            })
            .sum::<usize>();
    let mut key = KeyBuilder::with_capacity(size);
    key.field(&call.request.agent)
        .field(agent.version.to_le_bytes())
        .field(route.model())
        .params(params);
    key.field((messages.len() as u64).to_le_bytes());
    for message in messages {
        key.field([message.role as u8])
            .text(&message.content)
            .field((message.tool_calls.len() as u64).to_le_bytes());
        for tool_call in &message.tool_calls {
            key.field(&tool_call.id)
                .field(&tool_call.name)
                .field(&tool_call.arguments_json);
        }
        key.optional(message.tool_call_id.as_ref());
    }
    Some(key.build(call.tenant()))
}

/// What the cache keeps of an answer: what a hit serves (no usage or
/// steps: nothing runs on a hit) and the first run's cost, which a hit
/// saves. Copied once, here; the request's own outcome goes on outward.
pub(super) fn cached(outcome: &Outcome) -> Outcome {
    Outcome {
        status: outcome.status,
        output: outcome.output.clone(),
        messages: outcome.messages.clone(),
        model: outcome.model.clone(),
        usage: Default::default(),
        cost: outcome.cost,
        cache_hit: true,
        route: outcome.route.clone(),
        steps: Vec::new(),
        forensic: outcome.forensic,
        criticality: outcome.criticality,
        error: outcome.error.clone(),
    }
}

impl Stage for CacheStage {
    fn before(&self, call: &mut Call) -> Result<Flow, ExecError> {
        let Some(key) = key_of(call) else {
            return Ok(Flow::Continue);
        };
        match self.cache.get(&key, Instant::now()) {
            Some(hit) => {
                self.counters.hit(hit.cost);
                let mut outcome = (*hit).clone();
                // Nothing was spent this time.
                outcome.cost = aios_model::Usd::ZERO;
                Ok(Flow::Done(Box::new(outcome)))
            }
            None => {
                self.counters.miss.increment(1);
                call.cache_key = Some(key);
                Ok(Flow::Continue)
            }
        }
    }

    fn after(&self, call: &mut Call, outcome: &mut Outcome) {
        // The key moves into the cache: the call is done with it.
        let Some(key) = call.cache_key.take() else {
            return;
        };
        // Only plain answers: a run that called tools may have had effects.
        let plain = outcome.status == Status::Succeeded
            && !outcome.cache_hit
            && outcome.steps.iter().all(|s| s.kind == StepKind::Model);
        if plain {
            let size = outcome.output.len()
                + outcome
                    .messages
                    .iter()
                    .map(|m| m.content.len() + 64)
                    .sum::<usize>()
                + 256;
            self.cache
                .put(key, Arc::new(cached(outcome)), size, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(tenant: &str, text: &str) -> CacheKey {
        KeyBuilder::default()
            .field("agent")
            .text(text)
            .build(tenant)
    }

    #[test]
    fn a_hit_needs_the_same_tenant_and_the_same_normalised_request() {
        let cache = ResponseCache::new(Duration::from_secs(60), 1 << 20);
        let now = Instant::now();
        cache.put(key("acme", "What is  2+2?"), Arc::new("4"), 1, now);
        assert_eq!(
            cache.get(&key("acme", " What is 2+2? "), now).as_deref(),
            Some(&"4"),
            "whitespace is normalised"
        );
        assert!(
            cache.get(&key("globex", "What is 2+2?"), now).is_none(),
            "another tenant never sees it"
        );
        assert!(cache.get(&key("acme", "What is 2+3?"), now).is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 1));
    }

    #[test]
    fn text_is_the_words_with_one_space_between() {
        // Against the definition, on texts made of words and every kind of
        // whitespace (ASCII, Unicode, and look-alikes that are not).
        let pieces = [
            "a", "bc", "é", "日本", " ", "  ", "\t", "\n", "\r\n", "\u{0B}", "\u{0C}", "\u{85}",
            "\u{A0}", "\u{2003}", "\u{3000}", "\u{1C}", "\u{200B}",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5_000 {
            let mut text = String::new();
            for _ in 0..state % 12 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            let words: Vec<&str> = text.split_whitespace().collect();
            let expected = KeyBuilder::default().field(words.join(" ")).build("t");
            let got = KeyBuilder::default().text(&text).build("t");
            assert_eq!(got, expected, "{text:?}");
            state = state.wrapping_add(1);
        }
    }

    #[test]
    fn absent_and_empty_fields_differ() {
        let absent = KeyBuilder::default().optional(None::<&str>).build("t");
        let empty = KeyBuilder::default().optional(Some("")).build("t");
        assert_ne!(absent, empty);
    }

    #[test]
    fn field_boundaries_are_part_of_the_key() {
        let a = KeyBuilder::default().field("ab").field("c").build("t");
        let b = KeyBuilder::default().field("a").field("bc").build("t");
        assert_ne!(a, b);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = ResponseCache::new(Duration::from_secs(10), 1 << 20);
        let now = Instant::now();
        cache.put(key("acme", "q"), Arc::new(1), 1, now);
        assert!(
            cache
                .get(&key("acme", "q"), now + Duration::from_secs(9))
                .is_some()
        );
        assert!(
            cache
                .get(&key("acme", "q"), now + Duration::from_secs(10))
                .is_none()
        );
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_first() {
        // One shard's budget is max_bytes / 16.
        let cache = ResponseCache::new(Duration::from_secs(60), 16 * 1000);
        let now = Instant::now();
        let mut stored = Vec::new();
        for i in 0..200 {
            let k = key("acme", &format!("question {i}"));
            cache.put(k.clone(), Arc::new(i), 100, now + Duration::from_millis(i));
            stored.push(k);
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 16 * 1000, "{stats:?}");
        let later = now + Duration::from_secs(1);
        assert!(cache.get(&stored[199], later).is_some(), "newest kept");
        assert!(cache.get(&stored[0], later).is_none(), "oldest evicted");
        // Too big for any shard: not stored.
        cache.put(key("acme", "huge"), Arc::new(0), 10_000, now);
        assert!(cache.get(&key("acme", "huge"), now).is_none());
    }

    #[test]
    fn replacing_an_entry_keeps_the_size_exact() {
        let cache = ResponseCache::new(Duration::from_secs(60), 1 << 20);
        let now = Instant::now();
        cache.put(key("acme", "q"), Arc::new(1), 10, now);
        let before = cache.stats().bytes;
        cache.put(key("acme", "q"), Arc::new(2), 10, now);
        assert_eq!(cache.stats().bytes, before);
        assert_eq!(cache.stats().entries, 1);
        assert_eq!(cache.get(&key("acme", "q"), now).as_deref(), Some(&2));
    }
}
