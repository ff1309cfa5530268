//! The engine thread: admission, one forward pass per step over every active
//! sequence, sampling, and sequences leaving as they finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use tokio::sync::mpsc::UnboundedSender;

use super::stream::{FinishReason, GenerationEvent};
use super::{Counters, EngineConfig, GenerateRequest};
use crate::InferenceError;
use crate::llama::{LlamaModel, SequenceState};
use crate::sample::Sampler;

/// What the queue carries.
#[derive(Debug)]
pub(super) enum Message {
    /// A request and where its events go.
    Generate(GenerateRequest, UnboundedSender<GenerationEvent>),
    /// Look at the stop flag (sent by `Engine::stop`).
    Wake,
}

/// One sequence in the batch.
struct Active {
    seq: SequenceState,
    prompt: Vec<u32>,
    /// Prompt tokens already fed.
    fed: usize,
    /// The last sampled token, fed at the next step.
    next: u32,
    sampler: Sampler,
    stop_ids: Vec<u32>,
    max_tokens: u32,
    generated: u32,
    events: UnboundedSender<GenerationEvent>,
    finished: bool,
}

impl Active {
    fn prefilling(&self) -> bool {
        self.fed < self.prompt.len()
    }

    fn done(&mut self, reason: FinishReason) {
        let _ = self.events.send(GenerationEvent::Done {
            reason,
            prompt_tokens: u32::try_from(self.prompt.len()).unwrap_or(u32::MAX),
            completion_tokens: self.generated,
        });
        self.finished = true;
    }
}

/// The state the engine thread owns.
pub(super) struct Worker {
    name: String,
    model: LlamaModel,
    config: EngineConfig,
    context: usize,
    pool: rayon::ThreadPool,
    queue: mpsc::Receiver<Message>,
    counters: Arc<Counters>,
    stopping: Arc<AtomicBool>,
    active: Vec<Active>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)] // private constructor, called once
    pub(super) fn new(
        name: String,
        model: LlamaModel,
        config: EngineConfig,
        context: usize,
        pool: rayon::ThreadPool,
        queue: mpsc::Receiver<Message>,
        counters: Arc<Counters>,
        stopping: Arc<AtomicBool>,
    ) -> Self {
        Self {
            name,
            model,
            config,
            context,
            pool,
            queue,
            counters,
            stopping,
            active: Vec::new(),
        }
    }

    /// Runs steps until stopped or every handle is gone.
    pub(super) fn run(mut self) {
        tracing::info!(model = %self.name, threads = self.config.threads, max_batch = self.config.max_batch, "engine started");
        while !self.stopping.load(Ordering::Acquire) {
            if !self.admit() {
                break;
            }
            self.drop_cancelled();
            self.counters
                .active
                .store(self.active.len(), Ordering::Release);
            if self.active.is_empty() {
                continue;
            }
            if let Err(error) = self.step() {
                // Nothing to retry: end every active request (their streams
                // close without `Done`, which callers report as a failure).
                tracing::error!(model = %self.name, %error, "forward pass failed");
                self.active.clear();
            }
            self.active.retain(|a| !a.finished);
            self.counters
                .active
                .store(self.active.len(), Ordering::Release);
        }
        self.counters.active.store(0, Ordering::Release);
        tracing::info!(model = %self.name, "engine stopped");
    }

    /// Takes queued requests while there is room; waits for one when idle.
    /// False when the queue has closed and nothing is left to do.
    fn admit(&mut self) -> bool {
        while self.active.len() < self.config.max_batch {
            let message = if self.active.is_empty() {
                match self.queue.recv() {
                    Ok(m) => m,
                    Err(mpsc::RecvError) => return false,
                }
            } else {
                match self.queue.try_recv() {
                    Ok(m) => m,
                    Err(mpsc::TryRecvError::Empty) => return true,
                    Err(mpsc::TryRecvError::Disconnected) => return true,
                }
            };
            let (request, events) = match message {
                Message::Generate(request, events) => (request, events),
                Message::Wake => return true,
            };
            self.counters.queued.fetch_sub(1, Ordering::AcqRel);
            if events.is_closed() {
                self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.start(request, events) {
                Ok(active) => self.active.push(active),
                Err(error) => tracing::warn!(model = %self.name, %error, "request refused"),
            }
            if self.stopping.load(Ordering::Acquire) {
                return true;
            }
        }
        true
    }

    fn start(
        &self,
        request: GenerateRequest,
        events: UnboundedSender<GenerationEvent>,
    ) -> Result<Active, InferenceError> {
        let wanted = request.prompt.len() + request.params.max_tokens as usize;
        let seq = self.model.new_sequence(wanted.min(self.context))?;
        Ok(Active {
            seq,
            fed: 0,
            next: 0,
            sampler: Sampler::new(request.params.clone()),
            max_tokens: request.params.max_tokens,
            stop_ids: request.stop_ids,
            prompt: request.prompt,
            generated: 0,
            events,
            finished: false,
        })
    }

    /// Requests whose caller went away leave now, freeing slot and cache.
    fn drop_cancelled(&mut self) {
        let before = self.active.len();
        self.active.retain(|a| !a.events.is_closed());
        let gone = before - self.active.len();
        if gone > 0 {
            self.counters
                .cancelled
                .fetch_add(gone as u64, Ordering::Relaxed);
        }
    }

    /// One forward pass over the batch, then sampling.
    fn step(&mut self) -> Result<(), InferenceError> {
        let mut budget = self.config.prefill_chunk;
        let mut seqs: Vec<&mut SequenceState> = Vec::with_capacity(self.active.len());
        let mut tokens: Vec<&[u32]> = Vec::with_capacity(self.active.len());
        // Which active entries are in this pass, and how many prompt tokens each feeds.
        let mut members: Vec<(usize, usize)> = Vec::with_capacity(self.active.len());
        for (i, a) in self.active.iter_mut().enumerate() {
            let Active {
                seq,
                prompt,
                fed,
                next,
                ..
            } = a;
            if *fed < prompt.len() {
                let chunk = (prompt.len() - *fed).min(budget);
                if chunk == 0 {
                    continue;
                }
                budget -= chunk;
                tokens.push(&prompt[*fed..*fed + chunk]);
                members.push((i, chunk));
            } else {
                tokens.push(std::slice::from_ref(next));
                members.push((i, 0));
            }
            seqs.push(seq);
        }
        let model = &self.model;
        let logits = self.pool.install(|| model.forward(&mut seqs, &tokens))?;
        drop(seqs);
        self.counters.steps.fetch_add(1, Ordering::Relaxed);

        for (row, &(i, chunk)) in members.iter().enumerate() {
            let a = &mut self.active[i];
            if chunk > 0 {
                a.fed += chunk;
                self.counters
                    .prompt_tokens
                    .fetch_add(chunk as u64, Ordering::Relaxed);
                if a.prefilling() {
                    continue;
                }
            }
            let token = a.sampler.sample(logits.row(row));
            if a.stop_ids.contains(&token) {
                // Counted before the caller can see the end.
                self.counters.completed.fetch_add(1, Ordering::Relaxed);
                a.done(FinishReason::Stop);
                continue;
            }
            a.generated += 1;
            self.counters
                .generated_tokens
                .fetch_add(1, Ordering::Relaxed);
            if a.events.send(GenerationEvent::Token(token)).is_err() {
                a.finished = true;
                self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            a.next = token;
            if a.generated >= a.max_tokens || a.seq.remaining() == 0 {
                self.counters.completed.fetch_add(1, Ordering::Relaxed);
                a.done(FinishReason::Length);
            }
        }
        Ok(())
    }
}
