//! The engine task that owns one generation model.
//!
//! - **Admission**: [`Engine::submit`] puts a request on a bounded queue and
//!   returns at once; when the queue is full it fails with
//!   [`InferenceError::Overloaded`] instead of letting latency grow.
//! - **Continuous batching**: one OS thread runs steps. Each step admits
//!   queued requests while fewer than `max_batch` sequences are active, then
//!   runs one forward pass over every active sequence: one token each for
//!   sequences that are decoding, the next prompt chunk for the ones being
//!   prefilled (at most `prefill_chunk` prompt tokens a step, so a long prompt
//!   does not stall the others). Sequences that finish leave at once.
//! - **KV caches** belong to the sequences, preallocated to prompt +
//!   `max_tokens` (capped by the context), and are freed when they leave.
//! - **Cancellation**: dropping the [`GenerationStream`] cancels; the request
//!   leaves at the next step and frees its slot.
//! - **Threads**: the forward pass runs in a rayon pool of `threads` workers
//!   owned by this engine (the engine thread itself only waits and samples),
//!   so every engine's compute is bounded by its own setting.

mod batch;
mod stream;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

pub use stream::{FinishReason, GenerationEvent, GenerationStream};

use crate::InferenceError;
use crate::llama::LlamaModel;
use crate::sample::SamplingParams;

/// How an engine runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Sequences generating at once (the decode batch).
    pub max_batch: usize,
    /// Requests waiting for a batch slot; beyond this, submitting fails with
    /// [`InferenceError::Overloaded`].
    pub queue_capacity: usize,
    /// Compute threads of this engine's pool.
    pub threads: usize,
    /// Positions one sequence may use (prompt and output), when lower than
    /// the model's context length.
    pub max_context: Option<usize>,
    /// Prompt tokens prefilled per step.
    pub prefill_chunk: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            queue_capacity: 64,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_context: None,
            prefill_chunk: 512,
        }
    }
}

/// One generation request, in token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The prompt (already templated and tokenized).
    pub prompt: Vec<u32>,
    /// Sampling and length.
    pub params: SamplingParams,
    /// Tokens that end the generation (end of sequence, end of turn); they are
    /// not emitted nor counted.
    pub stop_ids: Vec<u32>,
}

/// What an engine is doing, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests waiting for a batch slot.
    pub queued: usize,
    /// Sequences in the batch (prefilling or decoding).
    pub active: usize,
    /// Requests that ended with a stop token or at their length limit.
    pub completed: u64,
    /// Requests whose caller went away before the end.
    pub cancelled: u64,
    /// Requests refused because the queue was full.
    pub rejected: u64,
    /// Prompt tokens prefilled.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Forward passes run.
    pub steps: u64,
}

/// A handle to a running engine; cheap to clone. The engine stops when
/// [`Engine::stop`] is called or the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicUsize,
    active: AtomicUsize,
    completed: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    steps: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    name: String,
    queue: mpsc::SyncSender<batch::Message>,
    counters: Arc<Counters>,
    stopping: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    context: usize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The engine thread sees the queue close (or the flag) and exits.
        self.stopping.store(true, Ordering::Release);
    }
}

impl Engine {
    /// Starts the engine thread for `model`; `name` labels errors and logs.
    pub fn start(
        name: &str,
        model: LlamaModel,
        config: EngineConfig,
    ) -> Result<Engine, InferenceError> {
        if config.max_batch == 0 || config.threads == 0 || config.prefill_chunk == 0 {
            return Err(InferenceError::InvalidRequest(
                "max_batch, threads and prefill_chunk must be at least 1".into(),
            ));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name({
                let name = name.to_string();
                move |i| format!("llm-{name}-{i}")
            })
            .build()
            .map_err(|e| InferenceError::Compute(format!("thread pool: {e}")))?;
        let context = config
            .max_context
            .map_or(model.context_length(), |c| c.min(model.context_length()));
        let (queue, jobs) = mpsc::sync_channel(config.queue_capacity);
        let counters = Arc::new(Counters::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let worker = batch::Worker::new(
            name.to_string(),
            model,
            config,
            context,
            pool,
            jobs,
            counters.clone(),
            stopping.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("llm-{name}"))
            .spawn(move || worker.run())
            .map_err(|e| InferenceError::Compute(format!("engine thread: {e}")))?;
        Ok(Engine {
            shared: Arc::new(Shared {
                name: name.to_string(),
                queue,
                counters,
                stopping,
                thread: Mutex::new(Some(thread)),
                context,
            }),
        })
    }

    /// Queues a request; the stream yields its tokens, then one `Done`.
    /// Fails at once with [`InferenceError::Overloaded`] when the queue is full.
    pub fn submit(&self, request: GenerateRequest) -> Result<GenerationStream, InferenceError> {
        let s = &self.shared;
        if s.stopping.load(Ordering::Acquire) {
            return Err(InferenceError::Stopped(s.name.clone()));
        }
        request.params.validate()?;
        if request.prompt.is_empty() {
            return Err(InferenceError::InvalidRequest("the prompt is empty".into()));
        }
        if request.prompt.len() >= s.context {
            return Err(InferenceError::InvalidRequest(format!(
                "the prompt is {} tokens; {} takes at most {} (prompt and output)",
                request.prompt.len(),
                s.name,
                s.context
            )));
        }
        let prompt_tokens = u32::try_from(request.prompt.len()).unwrap_or(u32::MAX);
        let (events, stream) = tokio::sync::mpsc::unbounded_channel();
        // Counted before sending so the engine never sees a negative queue.
        s.counters.queued.fetch_add(1, Ordering::AcqRel);
        match s.queue.try_send(batch::Message::Generate(request, events)) {
            Ok(()) => Ok(GenerationStream::new(stream, prompt_tokens)),
            Err(e) => {
                s.counters.queued.fetch_sub(1, Ordering::AcqRel);
                match e {
                    mpsc::TrySendError::Full(_) => {
                        s.counters.rejected.fetch_add(1, Ordering::Relaxed);
                        Err(InferenceError::Overloaded {
                            model: s.name.clone(),
                            queued: s.counters.queued.load(Ordering::Acquire),
                        })
                    }
                    mpsc::TrySendError::Disconnected(_) => {
                        Err(InferenceError::Stopped(s.name.clone()))
                    }
                }
            }
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EngineStats {
        let c = &self.shared.counters;
        EngineStats {
            queued: c.queued.load(Ordering::Acquire),
            active: c.active.load(Ordering::Acquire),
            completed: c.completed.load(Ordering::Acquire),
            cancelled: c.cancelled.load(Ordering::Acquire),
            rejected: c.rejected.load(Ordering::Acquire),
            prompt_tokens: c.prompt_tokens.load(Ordering::Acquire),
            generated_tokens: c.generated_tokens.load(Ordering::Acquire),
            steps: c.steps.load(Ordering::Acquire),
        }
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Positions one sequence may use (prompt and output).
    pub fn context_length(&self) -> usize {
        self.shared.context
    }

    /// Stops the engine: the running step finishes, then every queued and
    /// active request's stream ends without `Done`. Does not wait.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        // Wake a thread idling on an empty queue (a full queue means it is busy).
        let _ = self.shared.queue.try_send(batch::Message::Wake);
    }

    /// Stops the engine and waits for its thread to exit (blocking).
    pub fn shutdown(&self) {
        self.stop();
        let thread = self.shared.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}
