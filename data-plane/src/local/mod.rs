//! LOCAL models: run on this node by `aios-inference` engines.
//!
//! [`LocalModels`] follows the node's config: when a Model with provider
//! LOCAL appears, the file or directory at its `path` is loaded on a
//! blocking thread (a GGUF file becomes a generation [`Engine`], a
//! directory a BERT [`Embedder`]), once per path however many tenants name
//! it; when no Model names a path any more, its engine is stopped. Requests
//! that arrive while a model loads wait for it (up to
//! [`Inference::load_wait`]); a model that failed to load fails its calls
//! with the reason.
//!
//! What is loaded is advertised to the control plane ([`LocalModels::capabilities`]),
//! so operators see which node serves which model.
//!
//! [`Engine`]: aios_inference::engine::Engine
//! [`Embedder`]: aios_inference::embed::Embedder

pub mod chat;
pub mod meter;
pub mod settings;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use aios_inference::embed::{Embedder, EmbedderConfig, EmbeddingModel};
use aios_model::{Model, ModelCapability, ModelProvider, Spec};
use aios_proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use chat::{ChatModel, LocalBackend};
pub use meter::Meter;
pub use settings::{DeviceChoice, Inference};

use crate::fleet::{NodeConfig, NodeConfigHandle};

/// Files a model directory must hold (a BERT-family sentence-transformer).
pub const MODEL_DIR_FILES: [&str; 3] = ["model.safetensors", "config.json", "tokenizer.json"];

/// A loaded model.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// A generation model (GGUF).
    Chat(Arc<ChatModel>),
    /// An embedding model (BERT directory).
    Embed(Arc<EmbedModel>),
}

/// A loaded embedding model and what its calls cost.
#[derive(Debug)]
pub struct EmbedModel {
    /// The model's thread and queue.
    pub embedder: Embedder,
    /// Measured throughput, for device-time pricing.
    pub meter: Meter,
}

/// Where a path's model stands.
#[derive(Debug, Clone)]
enum Slot {
    /// Loading; the receiver sees `Some` once done.
    Loading(watch::Receiver<Option<Result<Loaded, String>>>),
    /// Loaded, or why not.
    Done(Result<Loaded, String>),
}

/// The node's local models, by path.
#[derive(Debug)]
pub struct LocalModels {
    settings: Inference,
    slots: Mutex<HashMap<String, Slot>>,
    /// `tenant/name` of every LOCAL Model, by path.
    names: Mutex<HashMap<String, BTreeSet<String>>>,
    capabilities: watch::Sender<pb::NodeCapabilities>,
}

impl LocalModels {
    /// No models yet; `base` is what the node advertises besides them.
    pub fn new(settings: Inference, base: pb::NodeCapabilities) -> Arc<Self> {
        let mut base = base;
        if let DeviceChoice::Cuda(_) = settings.device {
            base.gpu = true;
            base.gpu_name = settings.device.name();
        }
        Arc::new(Self {
            settings,
            slots: Mutex::default(),
            names: Mutex::default(),
            capabilities: watch::channel(base).0,
        })
    }

    /// The node's settings for local inference.
    pub fn settings(&self) -> &Inference {
        &self.settings
    }

    /// What the node advertises: its hardware and the models loaded now.
    pub fn capabilities(&self) -> watch::Receiver<pb::NodeCapabilities> {
        self.capabilities.subscribe()
    }

    /// Loads what `config` names until `shutdown`: now, and on every change.
    pub fn follow(self: &Arc<Self>, config: &NodeConfigHandle, shutdown: CancellationToken) {
        self.sync(&config.current());
        let mut changes = config.subscribe();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
                let snapshot = changes.borrow_and_update().clone();
                this.sync(&snapshot);
            }
            this.stop_all();
        });
    }

    /// Starts loading every LOCAL model path `config` names that is not
    /// loaded, and unloads the paths it no longer names.
    pub fn sync(self: &Arc<Self>, config: &NodeConfig) {
        let mut wanted: HashMap<String, (Model, BTreeSet<String>)> = HashMap::new();
        for (key, applied) in &config.resources {
            let Spec::Model(model) = &applied.validated.spec else {
                continue;
            };
            let (ModelProvider::Local, Some(path)) = (model.provider, model.path.as_deref()) else {
                continue;
            };
            let entry = wanted
                .entry(path.to_string())
                .or_insert_with(|| (model.clone(), BTreeSet::new()));
            entry.1.insert(format!("{}/{}", key.tenant, key.name));
        }
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = slots
            .keys()
            .filter(|path| !wanted.contains_key(*path))
            .cloned()
            .collect();
        for path in gone {
            if let Some(slot) = slots.remove(&path) {
                tracing::info!(path, "local model no longer configured: unloading");
                stop(slot);
            }
        }
        for (path, (model, _)) in &wanted {
            if !slots.contains_key(path) {
                slots.insert(
                    path.clone(),
                    self.start_loading(path.clone(), model.clone()),
                );
            }
        }
        drop(slots);
        *self.names.lock().unwrap_or_else(|p| p.into_inner()) = wanted
            .into_iter()
            .map(|(path, (_, names))| (path, names))
            .collect();
        self.advertise();
    }

    /// The model at `path`, waiting while it loads (up to the load wait).
    pub async fn get(&self, path: &str) -> Result<Loaded, String> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned();
        match slot {
            None => Err(format!("no local model is configured at {path}")),
            Some(Slot::Done(result)) => result,
            Some(Slot::Loading(mut done)) => {
                let wait = done.wait_for(Option::is_some);
                match tokio::time::timeout(self.settings.load_wait, wait).await {
                    Ok(Ok(result)) => result.clone().unwrap_or_else(|| Err("not loaded".into())),
                    Ok(Err(_)) => Err(format!("loading {path} was abandoned")),
                    Err(_) => Err(format!(
                        "{path} is still loading after {:?}",
                        self.settings.load_wait
                    )),
                }
            }
        }
    }

    fn start_loading(self: &Arc<Self>, path: String, model: Model) -> Slot {
        let (done, loading) = watch::channel(None);
        let this = Arc::downgrade(self);
        let settings = self.settings.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let load_path = path.clone();
            let result = tokio::task::spawn_blocking(move || load(&load_path, &model, &settings))
                .await
                .unwrap_or_else(|e| Err(format!("loading panicked: {e}")));
            match &result {
                Ok(_) => tracing::info!(
                    path,
                    seconds = started.elapsed().as_secs_f64(),
                    "local model loaded"
                ),
                Err(error) => tracing::warn!(path, %error, "local model failed to load"),
            }
            let Some(this) = this.upgrade() else {
                return;
            };
            let mut slots = this.slots.lock().unwrap_or_else(|p| p.into_inner());
            // Still wanted (not unloaded or replaced meanwhile)?
            let current = matches!(slots.get(&path), Some(Slot::Loading(rx)) if rx.same_channel(&done.subscribe()));
            if current {
                slots.insert(path.clone(), Slot::Done(result.clone()));
            } else if let Ok(loaded) = &result {
                stop(Slot::Done(Ok(loaded.clone())));
            }
            drop(slots);
            let _ = done.send(Some(result));
            this.advertise();
        });
        Slot::Loading(loading)
    }

    /// Publishes `tenant/name` of every model whose path is loaded.
    fn advertise(&self) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let mut loaded: Vec<String> = names
            .iter()
            .filter(|(path, _)| matches!(slots.get(*path), Some(Slot::Done(Ok(_)))))
            .flat_map(|(_, names)| names.iter().cloned())
            .collect();
        loaded.sort();
        drop((slots, names));
        self.capabilities.send_if_modified(|caps| {
            let changed = caps.models_loaded != loaded;
            caps.models_loaded = loaded;
            changed
        });
    }

    fn stop_all(&self) {
        let slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|p| p.into_inner()));
        for slot in slots.into_values() {
            stop(slot);
        }
    }
}

/// Stops a loaded model's engine (its queued requests fail as stopped).
fn stop(slot: Slot) {
    if let Slot::Done(Ok(loaded)) = slot {
        match loaded {
            Loaded::Chat(model) => model.stop(),
            Loaded::Embed(model) => {
                tokio::spawn(async move { model.embedder.shutdown().await });
            }
        }
    }
}

/// Loads `model` from `path` (blocking: reads and prepares the weights).
fn load(path: &str, model: &Model, settings: &Inference) -> Result<Loaded, String> {
    let device = device(settings.device)?;
    let is_dir = std::fs::metadata(path)
        .map_err(|e| format!("cannot load {path}: {e}"))?
        .is_dir();
    let embeddings = model.has(ModelCapability::Embeddings);
    match (is_dir, embeddings) {
        (true, true) => {
            let loaded = EmbeddingModel::load(std::path::Path::new(path), &device)
                .map_err(|e| e.to_string())?;
            let config = EmbedderConfig {
                queue_capacity: settings.queue,
                threads: settings.threads.get(),
                ..EmbedderConfig::default()
            };
            let embedder = Embedder::start(path, loaded, config).map_err(|e| e.to_string())?;
            Ok(Loaded::Embed(Arc::new(EmbedModel {
                embedder,
                meter: Meter::new(settings.device_cost_per_hour),
            })))
        }
        (false, false) => ChatModel::load(path, settings, &device)
            .map(|m| Loaded::Chat(Arc::new(m)))
            .map_err(|e| e.to_string()),
        (true, false) => Err(format!(
            "{path} is a directory (an embedding model): give the model the EMBEDDINGS capability, or point it at a GGUF file to chat"
        )),
        (false, true) => Err(format!(
            "{path} is a GGUF file (a generation model): embeddings need a directory with {}",
            MODEL_DIR_FILES.join(", ")
        )),
    }
}

/// The candle device for `choice`.
fn device(choice: DeviceChoice) -> Result<candle_core::Device, String> {
    match choice {
        DeviceChoice::Cpu => Ok(candle_core::Device::Cpu),
        DeviceChoice::Cuda(ordinal) => candle_core::Device::new_cuda(ordinal)
            .map_err(|e| format!("cannot use CUDA device {ordinal}: {e}")),
    }
}
