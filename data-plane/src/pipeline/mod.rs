//! The execution pipeline: one ordered stack of stages per request, built
//! by [`stage::stack`] (see ARCHITECTURE.md, "One request's path"):
//!
//! authenticate → idempotency → rate limit → input guardrails → policy → route → cache →
//! agent loop (models through retries, breakers and fallbacks; output
//! guardrails; cost).
//!
//! Every stage reads the same [`Catalog`] (the config snapshot and its
//! indexes), taken once when the request arrives.

pub mod agent_loop;
pub mod authn;
pub mod backends;
pub mod budget;
pub mod cache;
pub mod call;
pub mod catalog;
pub mod embed;
pub mod error;
pub mod guard;
pub mod idempotency;
pub mod policy;
pub mod ratelimit;
pub mod route;
pub mod semantic;
pub mod stage;

#[cfg(test)]
pub(crate) mod testing;

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tonic::metadata::MetadataMap;
use tower::{Service, ServiceExt};

pub use authn::Caller;
pub use backends::{BackendFactory, Backends, NodeProviders, RemoteProviders};
pub use call::{Event, ExecRequest, Input, Outcome, Params, Status};
pub use catalog::{Catalog, CatalogHandle};
pub use error::ExecError;
pub use ratelimit::RateLimiter;
pub use stage::Stages;

use crate::{
    reliability::{BreakerConfig, Breakers, Reliability, RetryPolicy},
    telemetry::{SpanSink, SpanStage, TraceContext},
};

/// Deadline of a request whose caller and agent set none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// How the pipeline is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which stages run.
    pub stages: Stages,
    /// How long cached answers live.
    pub cache_ttl: Duration,
    /// Bytes the cache may hold.
    pub cache_max_bytes: usize,
    /// Retries per model.
    pub retry: RetryPolicy,
    /// Circuit breakers per model.
    pub breakers: BreakerConfig,
    /// Tenant of requests when authentication is switched off (benchmarks).
    pub unauthenticated_tenant: Option<String>,
    /// The node's LOCAL models: embeddings (`Embed`, the semantic cache).
    /// `None` = none (benchmarks and tests with their own backends).
    pub local: Option<Arc<crate::local::LocalModels>>,
    /// Where requests' spans go. `None` = no spans.
    pub spans: Option<SpanSink>,
    /// The node's budget allowances (see [`crate::budget`]).
    pub purse: crate::budget::Purse,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stages: Stages::ALL,
            cache_ttl: Duration::from_secs(300),
            cache_max_bytes: 64 << 20,
            retry: RetryPolicy {
                // Four attempts per model: with two models and a provider
                // failing 30% of calls transiently, 99.99% of requests succeed.
                max_attempts: 4,
                ..RetryPolicy::default()
            },
            breakers: BreakerConfig::default(),
            unauthenticated_tenant: None,
            local: None,
            spans: None,
            purse: crate::budget::Purse::new(),
        }
    }
}

/// The node's pipeline; cheap to clone.
#[derive(Clone, Debug)]
pub struct Pipeline {
    service: stage::PipelineService,
    catalog: CatalogHandle,
    cache: Arc<cache::CacheStage>,
    semantic: Arc<semantic::SemanticIndex>,
    local: Option<Arc<crate::local::LocalModels>>,
    rate_limiter: Arc<RateLimiter>,
    /// Where `Embed` spans go (executions' go through the span stage).
    spans: Option<SpanSink>,
}

impl Pipeline {
    /// A pipeline over `catalog`, calling models built by `factory`.
    pub fn new(
        catalog: CatalogHandle,
        factory: Arc<dyn BackendFactory>,
        settings: Settings,
    ) -> Self {
        let cache = Arc::new(cache::CacheStage::new(
            settings.cache_ttl,
            settings.cache_max_bytes,
        ));
        let rate_limiter = Arc::new(RateLimiter::default());
        let semantic = Arc::new(semantic::SemanticIndex::new(settings.cache_ttl));
        let spans = settings.spans.clone().filter(|_| settings.stages.span);
        let stages = stage::StageSet {
            authenticate: stage::StageLayer(Arc::new(authn::Authenticate)),
            span: spans
                .clone()
                .map(|sink| SpanStage::layer(sink, settings.unauthenticated_tenant.as_deref())),
            idempotency: stage::StageLayer(Arc::new(idempotency::Idempotency::default())),
            rate_limit: stage::StageLayer(rate_limiter.clone()),
            guardrails: stage::StageLayer(Arc::new(guard::InputGuard)),
            policy: stage::StageLayer(Arc::new(policy::PolicyStage)),
            budget: stage::StageLayer(Arc::new(budget::BudgetStage::new(settings.purse.clone()))),
            route: stage::StageLayer(Arc::new(route::RouteStage)),
            cache: stage::StageLayer(cache.clone()),
        };
        let inner = agent_loop::AgentLoop::new(
            Backends::new(factory),
            Reliability::new(settings.retry, Breakers::new(settings.breakers)),
            settings.stages.guardrails,
            settings.unauthenticated_tenant.clone(),
        );
        // The semantic cache sits just around the agent loop (inside the
        // exact cache), where the node has local models to embed with.
        let semantic_layer = match (&settings.local, settings.stages.cache) {
            (Some(local), true) => Some(stage::AroundLayer(Arc::new(
                semantic::SemanticStage::new(semantic.clone(), local.clone()),
            ))),
            _ => None,
        };
        let inner = tower::ServiceBuilder::new()
            .option_layer(semantic_layer)
            .service(inner);
        Self {
            service: stage::stack(&stages, settings.stages, inner),
            catalog,
            cache,
            semantic,
            local: settings.local,
            rate_limiter,
            spans,
        }
    }

    /// Runs `request`. `timeout` is the caller's (gRPC `grpc-timeout`);
    /// `events` receives tokens and steps for `ExecuteStream`. The trace is
    /// joined from `metadata`'s `traceparent`; edges that answer with the
    /// trace join it themselves and call [`Pipeline::execute_traced`].
    pub async fn execute(
        &self,
        mut metadata: MetadataMap,
        request: ExecRequest,
        timeout: Option<Duration>,
        events: Option<mpsc::Sender<Event>>,
    ) -> Result<Outcome, ExecError> {
        let trace = TraceContext::join_metadata(&mut metadata);
        self.execute_traced(trace, metadata, request, timeout, events)
            .await
    }

    /// [`Pipeline::execute`] as span `trace` (already joined, and set as
    /// `traceparent` in `metadata`, by the edge).
    pub async fn execute_traced(
        &self,
        trace: TraceContext,
        metadata: MetadataMap,
        request: ExecRequest,
        timeout: Option<Duration>,
        events: Option<mpsc::Sender<Event>>,
    ) -> Result<Outcome, ExecError> {
        let received = Instant::now();
        let call = Box::new(call::Call {
            catalog: self.catalog.load(),
            metadata,
            trace,
            request,
            received,
            deadline: received + timeout.unwrap_or(DEFAULT_DEADLINE),
            caller_deadline: timeout.is_some(),
            caller: None,
            admitted: None,
            claim: None,
            budget: None,
            degraded_to: None,
            route: None,
            cache_key: None,
            flags: Vec::new(),
            events,
        });
        let mut service = self.service.clone();
        let ran = service.ready().await?.call(call).await?;
        Ok(ran.outcome)
    }

    /// Cache hits and misses so far.
    pub fn cache_stats(&self) -> cache::CacheStats {
        self.cache.stats()
    }

    /// Semantic-cache hits and misses so far.
    pub fn semantic_stats(&self) -> semantic::SemanticStats {
        self.semantic.stats()
    }
}
