//! `Embed`: texts to vectors with one of the tenant's embedding models.
//!
//! The same gates as an execution where they apply: the API key
//! (authenticate), the key's and user's rate limits (requests now, tokens
//! once counted), then the model: it must be in the caller's tenant, have
//! the EMBEDDINGS capability, and be LOCAL (the node computes embeddings
//! itself; remote embedding providers are not wired up). The cost is the
//! model's list price when it has one, else the device time it took.

use std::time::Duration;

use aios_model::{Kind, ModelCapability, ModelProvider, Spec, Usd};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use super::{Catalog, Pipeline, authn, error::ExecError};
use crate::local::Loaded;
use crate::telemetry::{Clock, RequestInfo, TRACEPARENT, TraceContext, span::OP_EMBEDDINGS};

/// Most texts per request.
pub const MAX_INPUTS: usize = 2048;
/// Most bytes per text (longer texts would be truncated by the model anyway).
pub const MAX_INPUT_BYTES: usize = 64 << 10;
/// Deadline when the caller sets none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// What to embed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmbedRequest {
    /// Model name in the caller's tenant.
    pub model: String,
    /// Texts, 1-[`MAX_INPUTS`].
    pub inputs: Vec<String>,
    /// End user, for per-user limits.
    pub user: String,
}

/// The vectors, in input order, and what they cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedded {
    /// The model that computed them.
    pub model: String,
    /// One unit-length vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model ran on (what is billed).
    pub input_tokens: u64,
    /// Inputs that were longer than the model takes and were truncated.
    pub truncated: Vec<usize>,
    /// Cost of the call.
    pub cost: Usd,
}

impl Pipeline {
    /// Embeds `request.inputs` with `request.model`, as the key in
    /// `metadata` may; `timeout` is the caller's deadline.
    pub async fn embed(
        &self,
        metadata: &MetadataMap,
        request: EmbedRequest,
        timeout: Option<Duration>,
    ) -> Result<Embedded, ExecError> {
        let trace = TraceContext::join(metadata.get(TRACEPARENT).and_then(|v| v.to_str().ok()));
        self.embed_traced(trace, metadata, request, timeout).await
    }

    /// [`Pipeline::embed`] as span `trace` (joined by the edge). A request
    /// that fails before its key is known (malformed, bad key) gets no
    /// span: there is no tenant to bill.
    pub async fn embed_traced(
        &self,
        trace: TraceContext,
        metadata: &MetadataMap,
        request: EmbedRequest,
        timeout: Option<Duration>,
    ) -> Result<Embedded, ExecError> {
        let received = Instant::now();
        let deadline = received + timeout.unwrap_or(DEFAULT_DEADLINE);
        validate(&request)?;
        let catalog = self.catalog.load();
        let caller =
            authn::authenticate(&catalog, metadata, &request.user, jiff::Timestamp::now())?;
        let model = request.model.clone();
        let result = self.embed_as(&catalog, &caller, request, deadline).await;
        if let Some(spans) = &self.spans {
            let info = RequestInfo {
                trace,
                clock: Clock::at(received),
                tenant: caller.tenant.clone(),
                agent: String::new(),
                action: OP_EMBEDDINGS.to_string(),
                temperature: None,
                max_tokens: None,
            };
            let ended = match &result {
                Ok(embedded) => Ok((embedded.input_tokens, embedded.cost)),
                Err(error) => Err(error),
            };
            spans.embedding(&info, &model, ended);
        }
        result
    }

    /// Embeds for an authenticated `caller`.
    async fn embed_as(
        &self,
        catalog: &Catalog,
        caller: &authn::Caller,
        request: EmbedRequest,
        deadline: Instant,
    ) -> Result<Embedded, ExecError> {
        self.rate_limiter.admit(caller, Instant::now())?;
        let not_found = || ExecError::NotFound {
            kind: "Model",
            name: request.model.clone(),
        };
        let applied = catalog
            .get(Kind::Model, &caller.tenant, &request.model)
            .ok_or_else(not_found)?;
        let Spec::Model(model) = &applied.validated.spec else {
            return Err(not_found());
        };
        if !model.has(ModelCapability::Embeddings) {
            return Err(ExecError::invalid(
                "model",
                format!(
                    "model {} has no EMBEDDINGS capability: it cannot embed",
                    request.model
                ),
            ));
        }
        let (ModelProvider::Local, Some(path)) = (model.provider, model.path.as_deref()) else {
            return Err(ExecError::invalid(
                "model",
                format!(
                    "model {} is remote: this node computes embeddings with LOCAL models only",
                    request.model
                ),
            ));
        };
        let local = self
            .local
            .as_ref()
            .ok_or_else(|| ExecError::Unavailable("this node runs no local models".into()))?;
        let loaded = tokio::time::timeout_at(deadline, local.get(path))
            .await
            .map_err(|_| deadline_passed())?
            .map_err(|reason| {
                ExecError::Unavailable(format!("model {}: {reason}", request.model))
            })?;
        let Loaded::Embed(embedder) = loaded else {
            return Err(ExecError::invalid(
                "model",
                format!("model {} is a generation model", request.model),
            ));
        };
        let call = embedder.meter.start();
        let embedded = tokio::time::timeout_at(deadline, embedder.embedder.embed(request.inputs))
            .await
            .map_err(|_| deadline_passed())?
            .map_err(|error| match error {
                aios_inference::InferenceError::Overloaded { .. } => ExecError::RateLimited {
                    subject: format!("model:{}/{}", caller.tenant, request.model),
                    description: error.to_string(),
                    retry_after: Duration::from_millis(100),
                },
                aios_inference::InferenceError::InvalidRequest(reason) => {
                    ExecError::invalid("inputs", reason)
                }
                other => ExecError::Unavailable(format!("model {}: {other}", request.model)),
            })?;
        let input_tokens: u64 = embedded.iter().map(|e| u64::from(e.tokens)).sum();
        let device_cost = call.finish(input_tokens);
        self.rate_limiter
            .charge_tokens(caller, input_tokens, Instant::now());
        let cost = match model.input_price_per_mtok.is_zero() {
            true => device_cost,
            false => crate::router::cost(model, input_tokens, 0),
        };
        let truncated = embedded
            .iter()
            .enumerate()
            .filter(|(_, e)| e.truncated)
            .map(|(i, _)| i)
            .collect();
        Ok(Embedded {
            model: request.model,
            vectors: embedded.into_iter().map(|e| e.vector).collect(),
            input_tokens,
            truncated,
            cost,
        })
    }
}

/// What a key can name in an OpenAI-compatible request: agents (as chat
/// "models") and embedding models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The name to use as `model`.
    pub id: String,
    /// `agent` or `embeddings`.
    pub kind: &'static str,
}

impl Pipeline {
    /// The agents the key in `metadata` may run and its tenant's embedding
    /// models, sorted by name.
    pub fn served(&self, metadata: &MetadataMap) -> Result<Vec<Listed>, ExecError> {
        let catalog = self.catalog.load();
        let caller = authn::authenticate(&catalog, metadata, "", jiff::Timestamp::now())?;
        let mut listed: Vec<Listed> = catalog
            .config()
            .resources
            .iter()
            .filter(|(key, _)| key.tenant == caller.tenant)
            .filter_map(|(key, applied)| match &applied.validated.spec {
                Spec::Agent(agent) if !agent.disabled && caller.may_run(&key.name) => {
                    Some(Listed {
                        id: key.name.clone(),
                        kind: "agent",
                    })
                }
                Spec::Model(model) if model.has(ModelCapability::Embeddings) => Some(Listed {
                    id: key.name.clone(),
                    kind: "embeddings",
                }),
                _ => None,
            })
            .collect();
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(listed)
    }
}

fn deadline_passed() -> ExecError {
    ExecError::DeadlineExceeded("the deadline passed before the embeddings were computed".into())
}

/// Checks the request's shape; every problem is listed.
fn validate(request: &EmbedRequest) -> Result<(), ExecError> {
    let mut problems = Vec::new();
    if request.model.is_empty() {
        problems.push(("model".to_string(), "is required".to_string()));
    }
    match request.inputs.len() {
        0 => problems.push(("inputs".into(), "at least one text is required".into())),
        n if n > MAX_INPUTS => problems.push((
            "inputs".into(),
            format!("{n} texts; at most {MAX_INPUTS} per request"),
        )),
        _ => {}
    }
    for (i, input) in request.inputs.iter().enumerate() {
        if input.len() > MAX_INPUT_BYTES {
            problems.push((
                format!("inputs[{i}]"),
                format!("{} bytes; at most {MAX_INPUT_BYTES}", input.len()),
            ));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(ExecError::Invalid(problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = EmbedRequest {
            model: "minilm".into(),
            inputs: vec!["hello".into()],
            user: String::new(),
        };
        assert_eq!(validate(&ok), Ok(()));
        let empty = EmbedRequest::default();
        let Err(ExecError::Invalid(problems)) = validate(&empty) else {
            panic!("expected invalid");
        };
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["model", "inputs"]);
        let big = EmbedRequest {
            inputs: vec!["x".into(), "y".repeat(MAX_INPUT_BYTES + 1)],
            ..ok.clone()
        };
        let Err(ExecError::Invalid(problems)) = validate(&big) else {
            panic!("expected invalid");
        };
        assert_eq!(problems[0].0, "inputs[1]");
        let many = EmbedRequest {
            inputs: vec![String::new(); MAX_INPUTS + 1],
            ..ok
        };
        assert!(validate(&many).is_err());
    }
}
