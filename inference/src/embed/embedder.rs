//! The embedder: a thread that owns an [`EmbeddingModel`], behind a bounded
//! queue, so that embedding never runs on the async runtime.
//!
//! Requests carry their own reply channel. The thread takes the oldest
//! request and, while there is room in a batch, whatever else is already
//! queued, so concurrent one-sentence calls share forward passes. A full
//! queue answers [`InferenceError::Overloaded`] at once rather than making
//! callers wait; a caller that gives up before its turn costs nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use super::{Embedding, EmbeddingModel};
use crate::InferenceError;

/// How an [`Embedder`] runs its model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedderConfig {
    /// Most texts in one forward pass (longer requests take several).
    pub max_batch: usize,
    /// Requests that may wait; one more is [`InferenceError::Overloaded`].
    pub queue_capacity: usize,
    /// Threads of the embedder's own rayon pool, where candle's matrix
    /// products and softmax run. Candle's element-wise kernels use its
    /// process-wide pool instead, sized by `CANDLE_NUM_THREADS`
    /// (default: the physical cores).
    pub threads: usize,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            queue_capacity: 64,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Cheap-to-clone async handle to an embedding model running on its own thread.
///
/// The thread stops when [`shutdown`](Self::shutdown) is called or the last
/// handle is dropped, after answering every request queued before then.
#[derive(Debug, Clone)]
pub struct Embedder {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    queue: mpsc::Sender<Job>,
    stopping: AtomicBool,
    /// Closed (its sender dropped) when the thread has exited.
    exited: watch::Receiver<()>,
    dimensions: usize,
    max_tokens: usize,
}

enum Job {
    Embed(Request),
    Stop,
}

struct Request {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Embedding>, InferenceError>>,
}

// === impl Embedder ===

impl Embedder {
    /// Starts a thread named `embed-{name}` that owns `model`.
    ///
    /// `name` is the model's name in errors and logs.
    pub fn start(
        name: impl Into<String>,
        model: EmbeddingModel,
        config: EmbedderConfig,
    ) -> Result<Self, InferenceError> {
        let name = name.into();
        for (field, value) in [
            ("max_batch", config.max_batch),
            ("queue_capacity", config.queue_capacity),
            ("threads", config.threads),
        ] {
            if value == 0 {
                return Err(InferenceError::InvalidRequest(format!(
                    "embedder {name}: {field} must be at least 1"
                )));
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name({
                let name = name.clone();
                move |index| format!("embed-{name}-{index}")
            })
            .build()
            .map_err(|error| InferenceError::Compute(format!("embedder {name}: {error}")))?;
        let (queue, jobs) = mpsc::channel(config.queue_capacity);
        let (alive, exited) = watch::channel(());
        let dimensions = model.dimensions();
        let max_tokens = model.max_tokens();
        let worker = Worker {
            name: name.clone(),
            model,
            pool,
            max_batch: config.max_batch,
        };
        std::thread::Builder::new()
            .name(format!("embed-{name}"))
            .spawn(move || {
                worker.run(jobs);
                drop(alive);
            })
            .map_err(|error| InferenceError::Compute(format!("embedder {name}: {error}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                name,
                queue,
                stopping: AtomicBool::new(false),
                exited,
                dimensions,
                max_tokens,
            }),
        })
    }

    /// Embeds `texts`, one [`Embedding`] per text in input order.
    ///
    /// [`InferenceError::Overloaded`] at once when the queue is full,
    /// [`InferenceError::Stopped`] once the embedder is shutting down.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Embedding>, InferenceError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let stopped = || InferenceError::Stopped(self.shared.name.clone());
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(stopped());
        }
        let (reply, answer) = oneshot::channel();
        match self
            .shared
            .queue
            .try_send(Job::Embed(Request { texts, reply }))
        {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let queue = &self.shared.queue;
                return Err(InferenceError::Overloaded {
                    model: self.shared.name.clone(),
                    queued: queue.max_capacity() - queue.capacity(),
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
        }
        // A dropped reply means the thread is gone (shut down, or it died).
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Stops taking requests, answers those already queued, and returns
    /// when the thread has exited.
    pub async fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        // Behind every queued request; an error means the thread is gone already.
        let _ = self.shared.queue.send(Job::Stop).await;
        let mut exited = self.shared.exited.clone();
        while exited.changed().await.is_ok() {}
    }

    /// The model's name, as given to [`start`](Self::start).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Length of the vectors.
    pub fn dimensions(&self) -> usize {
        self.shared.dimensions
    }

    /// Inputs are cut to this many tokens (see [`EmbeddingModel::load`]).
    pub fn max_tokens(&self) -> usize {
        self.shared.max_tokens
    }
}

// === Worker: the thread ===

struct Worker {
    name: String,
    model: EmbeddingModel,
    pool: rayon::ThreadPool,
    max_batch: usize,
}

impl Worker {
    fn run(self, mut jobs: mpsc::Receiver<Job>) {
        tracing::debug!(model = %self.name, "embedder started");
        while let Some(Job::Embed(first)) = jobs.blocking_recv() {
            let mut texts = first.texts.len();
            let mut requests = vec![first];
            let mut stop = false;
            // Fill the batch with what is already waiting; never wait for more.
            while texts < self.max_batch {
                match jobs.try_recv() {
                    Ok(Job::Embed(request)) => {
                        texts += request.texts.len();
                        requests.push(request);
                    }
                    Ok(Job::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            requests.retain(|request| !request.reply.is_closed());
            self.serve(requests);
            if stop {
                break;
            }
        }
        tracing::debug!(model = %self.name, "embedder stopped");
    }

    /// Embeds the requests' texts together and answers each request. If that
    /// fails, each request is retried alone so one bad input fails only its
    /// own request.
    fn serve(&self, requests: Vec<Request>) {
        if requests.is_empty() {
            return;
        }
        let started = Instant::now();
        let texts: Vec<&str> = requests
            .iter()
            .flat_map(|request| request.texts.iter().map(String::as_str))
            .collect();
        let result = self.embed(&texts);
        tracing::debug!(
            model = %self.name,
            requests = requests.len(),
            texts = texts.len(),
            tokens = result.as_ref().map_or(0, |all| all.iter().map(|e| u64::from(e.tokens)).sum()),
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "embedded"
        );
        match (result, <[Request; 1]>::try_from(requests)) {
            (result, Ok([request])) => {
                let _ = request.reply.send(result);
            }
            (Ok(embeddings), Err(requests)) => {
                let mut embeddings = embeddings.into_iter();
                for request in requests {
                    let own = embeddings.by_ref().take(request.texts.len()).collect();
                    let _ = request.reply.send(Ok(own));
                }
            }
            (Err(_), Err(requests)) => {
                for request in requests {
                    let texts: Vec<&str> = request.texts.iter().map(String::as_str).collect();
                    let _ = request.reply.send(self.embed(&texts));
                }
            }
        }
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, InferenceError> {
        self.pool
            .install(|| self.model.embed(texts, self.max_batch))
    }
}
