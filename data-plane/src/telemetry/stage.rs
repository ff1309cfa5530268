//! The span stage: a tower layer just inside authentication that notes
//! what the request span needs when a request arrives and hands its spans
//! to the outbox when it ends, however it ends (an outcome or an error).
//! It is not a [`crate::pipeline::stage::Stage`]: a stage never sees the
//! errors of the stages inside it.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::span::{Clock, Ended, RequestInfo, SpanSink};
use crate::pipeline::{ExecError, Input, call::Call, stage::Ran};

/// Makes the span stage a tower layer.
#[derive(Clone, Debug)]
pub struct SpanLayer {
    sink: Arc<SpanSink>,
    /// Tenant of requests when authentication is switched off (benchmarks).
    unauthenticated_tenant: Option<Arc<str>>,
}

impl SpanLayer {
    /// Spans into `sink`; requests without a caller count for
    /// `unauthenticated_tenant` (or get no span without one).
    pub fn new(sink: SpanSink, unauthenticated_tenant: Option<&str>) -> Self {
        Self {
            sink: Arc::new(sink),
            unauthenticated_tenant: unauthenticated_tenant.map(Arc::from),
        }
    }
}

impl<I> Layer<I> for SpanLayer {
    type Service = SpanService<I>;

    fn layer(&self, inner: I) -> Self::Service {
        SpanService {
            layer: self.clone(),
            inner,
        }
    }
}

/// The span stage around the inner services.
#[derive(Clone, Debug)]
pub struct SpanService<I> {
    layer: SpanLayer,
    inner: I,
}

impl<I> Service<Box<Call>> for SpanService<I>
where
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
        let info = request_info(&call, self.layer.unauthenticated_tenant.as_deref());
        let sink = self.layer.sink.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let result = inner.call(call).await;
            if let Some(info) = info {
                match &result {
                    Ok(ran) => sink.execution(&info, Ended::Outcome(&ran.outcome, &ran.call.flags)),
                    Err(error) => sink.execution(&info, Ended::Error(error)),
                }
            }
            result
        })
    }
}

/// What the request span needs; `None` without a tenant to bill.
fn request_info(call: &Call, unauthenticated_tenant: Option<&str>) -> Option<RequestInfo> {
    let tenant = match &call.caller {
        Some(caller) => caller.tenant.as_str(),
        None => unauthenticated_tenant?,
    };
    let request = &call.request;
    Some(RequestInfo {
        trace: call.trace,
        clock: Clock::at(call.received),
        tenant: tenant.to_string(),
        agent: request.agent.clone(),
        action: match &request.input {
            Input::Messages(_) => super::span::OP_CHAT.to_string(),
            Input::Action { name, .. } => name.clone(),
        },
        temperature: request.params.temperature,
        max_tokens: request.params.max_tokens,
    })
}
