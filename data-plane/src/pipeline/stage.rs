//! The shape every stage shares, and the one function that stacks them.
//!
//! A stage looks at the [`Call`] before the stages inside it run (and may
//! end the request there with an outcome or an error), and at the outcome
//! after they ran. [`StageLayer`] turns any stage into a tower layer, so
//! the pipeline is an ordinary tower stack; [`stack`] is the only place
//! that says which stages run, in which order. A stage that must wrap the
//! inner stages' whole run (await something first, or see their errors) is
//! an [`Around`], made a layer by [`AroundLayer`].

use std::{
    future::Future,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tower::{Layer, Service, ServiceBuilder, util::BoxCloneSyncService};

use super::{
    call::{Call, Outcome},
    error::ExecError,
};

/// What a stage decided before the inner stages.
#[derive(Debug)]
pub enum Flow {
    /// Go on inward.
    Continue,
    /// The request ends here with this outcome (a policy refusal, a cache hit).
    Done(Box<Outcome>),
}

/// A request and how it ended, handed back outward through the stages.
#[derive(Debug)]
pub struct Ran {
    /// The request, with what the stages filled in.
    pub call: Box<Call>,
    /// Its outcome.
    pub outcome: Outcome,
}

/// One stage of the pipeline.
pub trait Stage: Send + Sync + 'static {
    /// Runs before the inner stages.
    fn before(&self, call: &mut Call) -> Result<Flow, ExecError>;

    /// Runs after the inner stages, on their outcome (also when this
    /// stage's own `before` ended the request); it may take back what its
    /// `before` left in the call (the cache key).
    fn after(&self, _call: &mut Call, _outcome: &mut Outcome) {}
}

/// The pipeline as one service.
pub type PipelineService = BoxCloneSyncService<Box<Call>, Ran, ExecError>;

/// Makes a stage a tower layer.
#[derive(Debug)]
pub struct StageLayer<S>(pub Arc<S>);

impl<S> Clone for StageLayer<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: Stage, I> Layer<I> for StageLayer<S> {
    type Service = StageService<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        StageService {
            stage: self.0.clone(),
            inner,
        }
    }
}

/// A stage around the inner services.
#[derive(Debug)]
pub struct StageService<S, I> {
    stage: Arc<S>,
    inner: I,
}

impl<S, I: Clone> Clone for StageService<S, I> {
    fn clone(&self) -> Self {
        Self {
            stage: self.stage.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S, I> Service<Box<Call>> for StageService<S, I>
where
    S: Stage,
    I: Service<Box<Call>, Response = Ran, Error = ExecError> + Clone + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Ran;
    type Error = ExecError;
    type Future = BoxFuture<'static, Result<Ran, ExecError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ExecError>> {
        // Stages never apply backpressure; the inner service is always ready
        // (the agent loop is a plain async function).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut call: Box<Call>) -> Self::Future {
        let stage = self.stage.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let mut ran = match stage.before(&mut call)? {
                Flow::Done(outcome) => Ran {
                    call,
                    outcome: *outcome,
                },
                Flow::Continue => inner.call(call).await?,
            };
            stage.after(&mut ran.call, &mut ran.outcome);
            Ok(ran)
        })
    }
}

/// A stage around the inner stages' whole run: it may await before
/// calling them (an embedding), skip them (a hit), and sees their errors
/// as well as their outcomes (spans). [`Stage`] is the simpler shape; use
/// this only when that one cannot do.
pub trait Around: Send + Sync + 'static {
    /// Runs `call` through `inner` (or not).
    fn around<I>(
        self: Arc<Self>,
        call: Box<Call>,
        inner: I,
    ) -> impl Future<Output = Result<Ran, ExecError>> + Send + 'static
    where
        I: Service<Box<Call>, Response = Ran, Error = ExecError> + Send + 'static,
        I::Future: Send + 'static;
}

/// Makes an [`Around`] a tower layer.
#[derive(Debug)]
pub struct AroundLayer<A>(pub Arc<A>);

impl<A> Clone for AroundLayer<A> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<A: Around, I> Layer<I> for AroundLayer<A> {
    type Service = AroundService<A, I>;

    fn layer(&self, inner: I) -> Self::Service {
        AroundService {
            around: self.0.clone(),
            inner,
        }
    }
}

/// An [`Around`] around the inner services.
#[derive(Debug)]
pub struct AroundService<A, I> {
    around: Arc<A>,
    inner: I,
}

impl<A, I: Clone> Clone for AroundService<A, I> {
    fn clone(&self) -> Self {
        Self {
            around: self.around.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<A, I> Service<Box<Call>> for AroundService<A, I>
where
    A: Around,
    I: Service<Box<Call>, Response = Ran, Error = ExecError> + Clone + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Ran;
    type Error = ExecError;
    type Future = BoxFuture<'static, Result<Ran, ExecError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ExecError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Box<Call>) -> Self::Future {
        Box::pin(self.around.clone().around(call, self.inner.clone()))
    }
}

/// Which stages run (all, in production; `bench-overhead` switches them
/// off to measure what they cost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stages {
    /// Authentication. Off: requests run as the `bench` caller.
    pub authenticate: bool,
    /// Rate limits.
    pub rate_limit: bool,
    /// Input guardrails (and output redaction in the agent loop).
    pub guardrails: bool,
    /// Policy.
    pub policy: bool,
    /// Budgets.
    pub budget: bool,
    /// Routing.
    pub route: bool,
    /// The response cache.
    pub cache: bool,
    /// Spans (when the pipeline has a span sink).
    pub span: bool,
}

impl Stages {
    /// Every stage on.
    pub const ALL: Stages = Stages {
        authenticate: true,
        rate_limit: true,
        guardrails: true,
        policy: true,
        budget: true,
        route: true,
        cache: true,
        span: true,
    };
}

/// The stages every request passes, in order, around the agent loop.
#[derive(Clone)]
pub struct StageSet {
    /// Stage 1.
    pub authenticate: StageLayer<super::authn::Authenticate>,
    /// Stage 1a: the request's spans, once it ends (`None` = no sink).
    pub span: Option<AroundLayer<crate::telemetry::SpanStage>>,
    /// Stage 1b: replays answered idempotency keys (no toggle: a no-op
    /// without a key).
    pub idempotency: StageLayer<super::idempotency::Idempotency>,
    /// Stage 2.
    pub rate_limit: StageLayer<super::ratelimit::RateLimiter>,
    /// Stage 3.
    pub guardrails: StageLayer<super::guard::InputGuard>,
    /// Stage 4.
    pub policy: StageLayer<super::policy::PolicyStage>,
    /// Stage 4b.
    pub budget: StageLayer<super::budget::BudgetStage>,
    /// Stage 5.
    pub route: StageLayer<super::route::RouteStage>,
    /// Stage 6.
    pub cache: StageLayer<super::cache::CacheStage>,
}

impl std::fmt::Debug for StageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StageSet")
    }
}

/// The pipeline: the enabled stages, outermost first, around `inner` (the
/// agent loop).
pub fn stack<I>(stages: &StageSet, enabled: Stages, inner: I) -> PipelineService
where
    I: Service<Box<Call>, Response = Ran, Error = ExecError> + Clone + Send + Sync + 'static,
    I::Future: Send + 'static,
{
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .option_layer(enabled.authenticate.then(|| stages.authenticate.clone()))
            .option_layer(stages.span.clone().filter(|_| enabled.span))
            .layer(stages.idempotency.clone())
            .option_layer(enabled.rate_limit.then(|| stages.rate_limit.clone()))
            .option_layer(enabled.guardrails.then(|| stages.guardrails.clone()))
            .option_layer(enabled.policy.then(|| stages.policy.clone()))
            .option_layer(enabled.budget.then(|| stages.budget.clone()))
            .option_layer(enabled.route.then(|| stages.route.clone()))
            .option_layer(enabled.cache.then(|| stages.cache.clone()))
            .service(inner),
    )
}
