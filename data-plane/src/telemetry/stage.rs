//! The span stage, just inside authentication: it notes what the request
//! span needs when a request arrives and hands its spans to the outbox when
//! it ends, however it ends (an outcome or an error). It is an [`Around`],
//! not a [`crate::pipeline::stage::Stage`]: a stage never sees the errors
//! of the stages inside it.

use std::sync::Arc;

use tower::Service;

use super::span::{Clock, Ended, RequestInfo, SpanSink};
use crate::pipeline::{
    ExecError, Input,
    call::Call,
    stage::{Around, AroundLayer, Ran},
};

/// The span stage (made a layer by [`AroundLayer`]).
#[derive(Debug)]
pub struct SpanStage {
    sink: SpanSink,
    /// Tenant of requests when authentication is switched off (benchmarks).
    unauthenticated_tenant: Option<Box<str>>,
}

impl SpanStage {
    /// Spans into `sink`; requests without a caller count for
    /// `unauthenticated_tenant` (or get no span without one).
    pub fn layer(sink: SpanSink, unauthenticated_tenant: Option<&str>) -> AroundLayer<Self> {
        AroundLayer(Arc::new(Self {
            sink,
            unauthenticated_tenant: unauthenticated_tenant.map(Box::from),
        }))
    }
}

impl Around for SpanStage {
    async fn around<I>(self: Arc<Self>, call: Box<Call>, mut inner: I) -> Result<Ran, ExecError>
    where
        I: Service<Box<Call>, Response = Ran, Error = ExecError> + Send + 'static,
        I::Future: Send + 'static,
    {
        let info = request_info(&call, self.unauthenticated_tenant.as_deref());
        let result = inner.call(call).await;
        if let Some(info) = info {
            match &result {
                Ok(ran) => self
                    .sink
                    .execution(&info, Ended::Outcome(&ran.outcome, &ran.call.flags)),
                Err(error) => self.sink.execution(&info, Ended::Error(error)),
            }
        }
        result
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
