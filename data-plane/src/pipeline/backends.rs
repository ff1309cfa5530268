//! One backend per Model resource, built on first use and rebuilt when the
//! model's config version changes. Provider keys are read from the node's
//! environment or a file (the variable or path the Model names) when the
//! backend is built; they never leave the node.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use aios_model::{Model, ModelProvider};

use super::{catalog::Catalog, error::ExecError};
use crate::backend::{
    Backend,
    anthropic::{AnthropicBackend, AnthropicConfig},
    http::{DEFAULT_CONNECT_TIMEOUT, HttpClient, ProviderKey},
    openai::{OpenAiBackend, OpenAiConfig},
};

/// Builds the backend of a model.
pub trait BackendFactory: Send + Sync + fmt::Debug {
    /// A backend for `model` (named `name` in `tenant`), or why not.
    fn build(&self, tenant: &str, name: &str, model: &Model) -> Result<Arc<dyn Backend>, String>;
}

/// Remote providers over HTTP, sharing one connection pool.
#[derive(Debug, Clone)]
pub struct RemoteProviders {
    client: HttpClient,
}

impl RemoteProviders {
    /// With a fresh connection pool.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            client: HttpClient::new(DEFAULT_CONNECT_TIMEOUT).map_err(|e| e.to_string())?,
        })
    }
}

impl BackendFactory for RemoteProviders {
    fn build(&self, _: &str, name: &str, model: &Model) -> Result<Arc<dyn Backend>, String> {
        let key = match (&model.api_key_env, &model.api_key_file) {
            (Some(var), _) => Some(ProviderKey::new(std::env::var(var).map_err(|_| {
                format!("model {name}: environment variable {var} is not set on this node")
            })?)),
            (None, Some(path)) => Some(ProviderKey::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("model {name}: cannot read {path}: {e}"))?
                    .trim()
                    .to_string(),
            )),
            (None, None) => None,
        };
        let client = self.client.clone();
        let backend: Arc<dyn Backend> = match model.provider {
            ModelProvider::Openai | ModelProvider::OpenaiCompatible => Arc::new(
                OpenAiBackend::with_client(OpenAiConfig::from_model(model, key), client)
                    .map_err(|e| format!("model {name}: {e}"))?,
            ),
            ModelProvider::Anthropic => Arc::new(
                AnthropicBackend::with_client(AnthropicConfig::from_model(model, key), client)
                    .map_err(|e| format!("model {name}: {e}"))?,
            ),
            ModelProvider::Local => {
                return Err(format!(
                    "model {name}: LOCAL models are served by NodeProviders, not RemoteProviders"
                ));
            }
        };
        Ok(backend)
    }
}

/// What a node serves: remote providers over HTTP and its LOCAL models.
#[derive(Debug, Clone)]
pub struct NodeProviders {
    remote: RemoteProviders,
    local: Arc<crate::local::LocalModels>,
}

impl NodeProviders {
    /// Remote calls through `remote`, local ones through `local`.
    pub fn new(remote: RemoteProviders, local: Arc<crate::local::LocalModels>) -> Self {
        Self { remote, local }
    }
}

impl BackendFactory for NodeProviders {
    fn build(&self, tenant: &str, name: &str, model: &Model) -> Result<Arc<dyn Backend>, String> {
        match (model.provider, model.path.as_deref()) {
            (ModelProvider::Local, Some(path)) => Ok(Arc::new(crate::local::LocalBackend::new(
                self.local.clone(),
                path.to_string(),
                model.max_output_tokens.map(std::num::NonZeroU32::get),
            ))),
            _ => self.remote.build(tenant, name, model),
        }
    }
}

/// By tenant and model name: the config version built, the backend, and
/// the model's settings (shared, so a request takes them without a copy).
type Built = HashMap<String, HashMap<String, (i64, Arc<dyn Backend>, Arc<Model>)>>;

/// The node's backends, by tenant and model name.
#[derive(Debug)]
pub struct Backends {
    factory: Arc<dyn BackendFactory>,
    built: Mutex<Built>,
}

impl Backends {
    /// Backends made by `factory`.
    pub fn new(factory: Arc<dyn BackendFactory>) -> Self {
        Self {
            factory,
            built: Mutex::default(),
        }
    }

    /// The backend of model `name` in `tenant` and its settings, as the
    /// catalog has them now.
    pub fn get(
        &self,
        catalog: &Catalog,
        tenant: &str,
        name: &str,
    ) -> Result<(Arc<dyn Backend>, Arc<Model>), ExecError> {
        let applied = catalog
            .get(aios_model::Kind::Model, tenant, name)
            .ok_or_else(|| ExecError::Unavailable(format!("model {name} is not on this node")))?;
        let aios_model::Spec::Model(model) = &applied.validated.spec else {
            return Err(ExecError::Internal(format!("{name} is not a model")));
        };
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((version, backend, settings)) = built.get(tenant).and_then(|m| m.get(name))
            && *version == applied.version
        {
            return Ok((backend.clone(), settings.clone()));
        }
        let backend = self
            .factory
            .build(tenant, name, model)
            .map_err(ExecError::Unavailable)?;
        let settings = Arc::new(model.clone());
        built.entry(tenant.to_string()).or_default().insert(
            name.to_string(),
            (applied.version, backend.clone(), settings.clone()),
        );
        Ok((backend, settings))
    }
}
