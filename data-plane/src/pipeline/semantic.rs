//! Semantic cache: a paraphrase of an earlier request is answered with the
//! earlier answer, for agents whose spec turns it on (`semantic_cache`:
//! an embedding model and a minimum cosine similarity).
//!
//! It sits inside the exact-match cache, just around the agent loop, so a
//! request reaches it only after authentication, rate limits, guardrails,
//! policy and routing have passed it, and only when the exact cache missed.
//! The conversation (without the system prompt, which the agent fixes) is
//! embedded by the agent's LOCAL embedding model on this node, and compared
//! with earlier conversations in the same bucket:
//!
//! - **Tenant isolation**: a bucket is one tenant, one agent at one config
//!   version, one routed model and the same parameters; entries of another
//!   bucket are never compared, so no similarity, however high, can serve
//!   one tenant another's answer.
//! - **Only plain answers** are kept (succeeded, no tool calls), as in the
//!   exact cache; a hit costs nothing and says `cache_hit`.
//! - **Bounds**: entries expire with the exact cache's TTL; each bucket
//!   keeps its [`BUCKET_ENTRIES`] newest, the whole cache [`MAX_ENTRIES`].
//! - **Never in the way**: if the embedding model is missing, loading or
//!   overloaded, the request runs as if there were no semantic cache.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use aios_inference::embed::cosine;
use tokio::time::Instant;
use tower::Service;

use super::{
    cache::{KeyBuilder, LookupCounters, cached},
    call::{Call, Input, Outcome, Status, StepKind},
    error::ExecError,
    stage::{Around, Ran},
};
use crate::{
    backend::Role,
    local::{Loaded, LocalModels},
};

/// Entries kept per bucket (newest first out... oldest evicted first).
pub const BUCKET_ENTRIES: usize = 256;
/// Entries kept over all buckets.
pub const MAX_ENTRIES: usize = 16_384;

/// Earlier answers and their embeddings, by bucket.
#[derive(Debug)]
pub struct SemanticIndex {
    ttl: Duration,
    state: Mutex<IndexState>,
}

#[derive(Debug, Default)]
struct IndexState {
    buckets: HashMap<Vec<u8>, VecDeque<Entry>>,
    entries: usize,
    hits: u64,
    misses: u64,
}

#[derive(Debug)]
struct Entry {
    vector: Vec<f32>,
    outcome: Arc<Outcome>,
    inserted: Instant,
}

/// Hits and misses of the semantic cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SemanticStats {
    /// Requests answered from the cache.
    pub hits: u64,
    /// Requests looked up and not found.
    pub misses: u64,
    /// Entries held.
    pub entries: usize,
}

impl SemanticIndex {
    /// An index whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, IndexState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most similar live answer in `bucket` at or above `min`, with
    /// its similarity.
    pub fn lookup(
        &self,
        bucket: &[u8],
        vector: &[f32],
        min: f64,
        now: Instant,
    ) -> Option<(Arc<Outcome>, f32)> {
        let mut state = self.state();
        let ttl = self.ttl;
        let best = state.buckets.get(bucket).and_then(|entries| {
            entries
                .iter()
                .filter(|e| now.saturating_duration_since(e.inserted) < ttl)
                .map(|e| (e, cosine(&e.vector, vector)))
                .filter(|(_, similarity)| f64::from(*similarity) >= min)
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(e, similarity)| (e.outcome.clone(), similarity))
        });
        match best {
            Some(_) => state.hits += 1,
            None => state.misses += 1,
        }
        best
    }

    /// Keeps `outcome` for conversations like `vector` in `bucket`.
    pub fn insert(&self, bucket: Vec<u8>, vector: Vec<f32>, outcome: Arc<Outcome>, now: Instant) {
        let ttl = self.ttl;
        let mut state = self.state();
        let state = &mut *state;
        let entries = state.buckets.entry(bucket).or_default();
        let before = entries.len();
        entries.retain(|e| now.saturating_duration_since(e.inserted) < ttl);
        while entries.len() >= BUCKET_ENTRIES {
            entries.pop_front();
        }
        entries.push_back(Entry {
            vector,
            outcome,
            inserted: now,
        });
        state.entries = state.entries + entries.len() - before;
        if state.entries > MAX_ENTRIES {
            // Rare: drop every expired entry, then the oldest bucket's oldest.
            for entries in state.buckets.values_mut() {
                entries.retain(|e| now.saturating_duration_since(e.inserted) < ttl);
            }
            state.buckets.retain(|_, entries| !entries.is_empty());
            while state.buckets.values().map(VecDeque::len).sum::<usize>() > MAX_ENTRIES {
                let oldest = state
                    .buckets
                    .iter()
                    .filter_map(|(k, entries)| entries.front().map(|e| (k.clone(), e.inserted)))
                    .min_by_key(|(_, at)| *at)
                    .map(|(k, _)| k);
                let Some(key) = oldest else { break };
                if let Some(entries) = state.buckets.get_mut(&key) {
                    entries.pop_front();
                    if entries.is_empty() {
                        state.buckets.remove(&key);
                    }
                }
            }
            state.entries = state.buckets.values().map(VecDeque::len).sum();
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SemanticStats {
        let state = self.state();
        SemanticStats {
            hits: state.hits,
            misses: state.misses,
            entries: state.entries,
        }
    }
}

/// The semantic cache, around the agent loop (made a layer by
/// [`AroundLayer`](super::stage::AroundLayer)).
#[derive(Debug)]
pub struct SemanticStage {
    index: Arc<SemanticIndex>,
    local: Arc<LocalModels>,
    counters: LookupCounters,
}

impl SemanticStage {
    /// Answers from `index`, embedding with `local`'s models.
    pub fn new(index: Arc<SemanticIndex>, local: Arc<LocalModels>) -> Self {
        Self {
            index,
            local,
            counters: LookupCounters::new("aios_semantic_cache_lookups_total"),
        }
    }
}

impl Around for SemanticStage {
    async fn around<I>(self: Arc<Self>, call: Box<Call>, mut inner: I) -> Result<Ran, ExecError>
    where
        I: Service<Box<Call>, Response = Ran, Error = ExecError> + Send + 'static,
        I::Future: Send + 'static,
    {
        let Some(lookup) = prepare(&self.local, &call).await else {
            return inner.call(call).await;
        };
        let now = Instant::now();
        if let Some((hit, similarity)) =
            self.index
                .lookup(&lookup.bucket, &lookup.vector, lookup.min, now)
        {
            self.counters.hit(hit.cost);
            tracing::debug!(similarity, "semantic cache hit");
            let mut outcome = (*hit).clone();
            outcome.cost = aios_model::Usd::ZERO;
            return Ok(Ran { call, outcome });
        }
        self.counters.miss.increment(1);
        let ran = inner.call(call).await?;
        let plain = ran.outcome.status == Status::Succeeded
            && !ran.outcome.cache_hit
            && ran.outcome.steps.iter().all(|s| s.kind == StepKind::Model);
        if plain {
            self.index.insert(
                lookup.bucket,
                lookup.vector,
                Arc::new(cached(&ran.outcome)),
                Instant::now(),
            );
        }
        Ok(ran)
    }
}

/// What a lookup needs: the bucket, the conversation's embedding, the
/// agent's threshold.
struct Lookup {
    bucket: Vec<u8>,
    vector: Vec<f32>,
    min: f64,
}

/// The lookup for `call`, or `None` when the semantic cache does not apply
/// (not a conversation, agent without it, a request that executes an
/// approval: that one runs) or cannot (embedding failed).
async fn prepare(local: &LocalModels, call: &Call) -> Option<Lookup> {
    if call.claim.is_some() {
        return None;
    }
    let Input::Messages(messages) = &call.request.input else {
        return None;
    };
    let tenant = call.caller.as_ref()?.tenant.as_str();
    let route = call.route.as_ref()?;
    let applied = call
        .catalog
        .get(aios_model::Kind::Agent, tenant, &call.request.agent)?;
    let aios_model::Spec::Agent(agent) = &applied.validated.spec else {
        return None;
    };
    let settings = agent.semantic_cache.as_ref()?;
    let model = call
        .catalog
        .get(aios_model::Kind::Model, tenant, &settings.embedding_model)?;
    let aios_model::Spec::Model(model) = &model.validated.spec else {
        return None;
    };
    let text = conversation(messages);
    let embedded = match local.get(model.path.as_deref()?).await {
        Ok(Loaded::Embed(model)) => model
            .embedder
            .embed(vec![text])
            .await
            .map_err(|e| e.to_string()),
        Ok(Loaded::Chat(_)) => Err("not an embedding model".into()),
        Err(reason) => Err(reason),
    };
    let vector = match embedded {
        Ok(mut vectors) if vectors.len() == 1 => vectors.pop()?.vector,
        Ok(_) => return None,
        Err(reason) => {
            tracing::debug!(
                model = settings.embedding_model,
                reason,
                "semantic cache skipped: cannot embed"
            );
            return None;
        }
    };
    let mut key = KeyBuilder::default();
    key.field(tenant)
        .field(&call.request.agent)
        .field(applied.version.to_le_bytes())
        .field(route.model())
        .params(&call.request.params);
    Some(Lookup {
        bucket: key.build(tenant).into_bytes(),
        vector,
        min: settings.min_similarity,
    })
}

/// The conversation as one text: each non-system message on its own line,
/// prefixed by its role after the first (a single question embeds as itself).
fn conversation(messages: &[crate::backend::ChatMessage]) -> String {
    let turns: Vec<&crate::backend::ChatMessage> =
        messages.iter().filter(|m| m.role != Role::System).collect();
    if let [only] = turns.as_slice() {
        return only.content.clone();
    }
    turns
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
                Role::System => "system",
            };
            format!("{role}: {}", m.content)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(output: &str) -> Arc<Outcome> {
        Arc::new(Outcome {
            output: output.into(),
            status: Status::Succeeded,
            ..Outcome::empty()
        })
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    #[test]
    fn the_most_similar_entry_above_the_threshold_answers_in_its_bucket_only() {
        let index = SemanticIndex::new(Duration::from_secs(60));
        let now = Instant::now();
        index.insert(b"acme".to_vec(), unit(&[1.0, 0.0]), outcome("A"), now);
        index.insert(b"acme".to_vec(), unit(&[0.0, 1.0]), outcome("B"), now);
        let (hit, similarity) = index.lookup(b"acme", &unit(&[0.9, 0.2]), 0.9, now).unwrap();
        assert_eq!(hit.output, "A");
        assert!(similarity > 0.95);
        // Below the threshold: a miss.
        assert!(
            index
                .lookup(b"acme", &unit(&[1.0, 1.0]), 0.9, now)
                .is_none()
        );
        // Another bucket (tenant) never sees acme's entries.
        assert!(
            index
                .lookup(b"other", &unit(&[1.0, 0.0]), 0.5, now)
                .is_none()
        );
        let stats = index.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 2));
    }

    #[test]
    fn entries_expire_and_buckets_stay_bounded() {
        let index = SemanticIndex::new(Duration::from_secs(60));
        let now = Instant::now();
        index.insert(b"b".to_vec(), unit(&[1.0, 0.0]), outcome("old"), now);
        let later = now + Duration::from_secs(61);
        assert!(index.lookup(b"b", &unit(&[1.0, 0.0]), 0.9, later).is_none());
        for i in 0..BUCKET_ENTRIES + 10 {
            index.insert(b"b".to_vec(), unit(&[1.0, i as f32]), outcome("x"), later);
        }
        assert_eq!(index.stats().entries, BUCKET_ENTRIES);
    }

    #[test]
    fn a_single_question_embeds_as_itself() {
        use crate::backend::ChatMessage;
        let messages = vec![
            ChatMessage::text(Role::System, "be brief"),
            ChatMessage::text(Role::User, "What is the capital of France?"),
        ];
        assert_eq!(conversation(&messages), "What is the capital of France?");
        let mut longer = messages.clone();
        longer.push(ChatMessage::text(Role::Assistant, "Paris."));
        longer.push(ChatMessage::text(Role::User, "And of Spain?"));
        assert_eq!(
            conversation(&longer),
            "user: What is the capital of France?\nassistant: Paris.\nuser: And of Spain?"
        );
    }
}
