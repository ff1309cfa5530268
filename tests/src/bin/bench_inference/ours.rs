//! Our side: the model called directly for one sequence, and the engine
//! (continuous batching) for concurrent ones.

use std::path::Path;
use std::time::Instant;

use aios_inference::engine::{
    Engine, EngineConfig, FinishReason, GenerateRequest, GenerationEvent, GenerationStream,
};
use aios_inference::llama::{LlamaModel, LoadOptions, Requantize};
use aios_inference::sample::{SamplingParams, argmax};
use anyhow::{Result, bail};
use candle_core::Device;
use rayon::ThreadPool;

use crate::{Batched, Single, cpu_seconds};

// === One sequence ===

/// Load, prefill and `decode_tokens` greedy steps (EOS not looked for), on
/// `pool`'s threads, as llama_cpp_bench.py times llama.cpp.
pub(crate) fn single(
    model_path: &Path,
    requantize: Requantize,
    prompt: &[u32],
    decode_tokens: usize,
    pool: &ThreadPool,
) -> Result<Single> {
    let options = LoadOptions { requantize };
    let started = Instant::now();
    let model = pool.install(|| LlamaModel::load(model_path, &options, &Device::Cpu))?;
    let load_s = started.elapsed().as_secs_f64();
    pool.install(|| {
        // One token through a throwaway sequence first (the pool's threads
        // awake, buffers allocated), as the script warms llama.cpp.
        let mut warm = model.new_sequence(1)?;
        model.prefill(&mut warm, &prompt[..1])?;
        drop(warm);

        let mut seq = model.new_sequence(prompt.len() + decode_tokens + 1)?;
        let (cpu, started) = (cpu_seconds(), Instant::now());
        let mut next = argmax(&model.prefill(&mut seq, prompt)?);
        let prefill_s = started.elapsed().as_secs_f64();
        let prefill_cpu_s = cpu_seconds() - cpu;

        let mut generated = Vec::with_capacity(decode_tokens + 1);
        generated.push(next);
        let (cpu, started) = (cpu_seconds(), Instant::now());
        for _ in 0..decode_tokens {
            next = argmax(model.decode(&mut [&mut seq], &[next])?.row(0));
            generated.push(next);
        }
        Ok(Single {
            load_s,
            prefill_s,
            prefill_tokens: prompt.len(),
            prefill_cpu_s,
            decode_s: started.elapsed().as_secs_f64(),
            decode_tokens,
            decode_cpu_s: cpu_seconds() - cpu,
            generated,
        })
    })
}

// === Concurrent sequences, through the engine ===

/// An engine on the model (default load options) and a runtime to read its
/// streams on.
#[derive(Debug)]
pub(crate) struct EngineBench {
    engine: Engine,
    runtime: tokio::runtime::Runtime,
}

/// One stream's token arrival times and its end.
#[derive(Debug)]
struct Arrivals {
    times: Vec<Instant>,
    reason: FinishReason,
    completion_tokens: u32,
}

impl EngineBench {
    pub(crate) fn start(model_path: &Path, threads: usize, max_batch: usize) -> Result<Self> {
        let model = LlamaModel::load(model_path, &LoadOptions::default(), &Device::Cpu)?;
        let config = EngineConfig {
            max_batch,
            queue_capacity: max_batch.max(64),
            threads,
            ..EngineConfig::default()
        };
        let engine = Engine::start("bench", model, config)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self { engine, runtime })
    }

    /// `sequences` identical greedy requests submitted together, each for
    /// exactly `decode_tokens` tokens (no stop ids).
    ///
    /// The decode rate counts only the steps in which every sequence was
    /// decoding: from the last sequence's first token (every prefill done)
    /// to the first sequence's last token (none finished yet). Prefills
    /// share a step's `prefill_chunk` tokens, so the sequences start (and
    /// finish) a few steps apart.
    pub(crate) fn run(
        &self,
        prompt: &[u32],
        sequences: usize,
        decode_tokens: usize,
    ) -> Result<Batched> {
        let request = GenerateRequest {
            prompt: prompt.to_vec(),
            params: SamplingParams {
                max_tokens: u32::try_from(decode_tokens)?,
                ..SamplingParams::default()
            },
            stop_ids: Vec::new(),
        };
        let steps_before = self.engine.stats().steps;
        let (cpu, started) = (cpu_seconds(), Instant::now());
        let streams = (0..sequences)
            .map(|_| self.engine.submit(request.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let arrivals = self
            .runtime
            .block_on(futures::future::join_all(streams.into_iter().map(collect)));
        let wall_s = started.elapsed().as_secs_f64();
        let cpu_s = cpu_seconds() - cpu;
        let arrivals = arrivals.into_iter().collect::<Result<Vec<_>>>()?;
        for a in &arrivals {
            if a.reason != FinishReason::Length || a.completion_tokens as usize != decode_tokens {
                bail!(
                    "a generation ended with {:?} after {} tokens, not at its length ({decode_tokens})",
                    a.reason,
                    a.completion_tokens
                );
            }
        }
        let first = |a: &Arrivals| a.times.first().copied();
        let last = |a: &Arrivals| a.times.last().copied();
        let start = arrivals.iter().filter_map(first).max();
        let end = arrivals.iter().filter_map(last).min();
        let (Some(start), Some(end)) = (start, end) else {
            bail!("no tokens came back");
        };
        // Empty (zero tokens in zero seconds) when the first sequence
        // finished before the last one's prefill: too few decode tokens.
        let in_window = arrivals
            .iter()
            .flat_map(|a| &a.times)
            .filter(|t| **t > start && **t <= end)
            .count();
        Ok(Batched {
            sequences,
            decode_tokens: in_window,
            decode_s: end.saturating_duration_since(start).as_secs_f64(),
            completion_tokens: arrivals.iter().map(|a| a.completion_tokens as usize).sum(),
            wall_s,
            cpu_s,
            steps: self.engine.stats().steps - steps_before,
        })
    }

    pub(crate) fn shutdown(self) {
        self.engine.shutdown();
    }
}

async fn collect(mut stream: GenerationStream) -> Result<Arrivals> {
    let mut times = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            GenerationEvent::Token(_) => times.push(Instant::now()),
            GenerationEvent::Done {
                reason,
                completion_tokens,
                ..
            } => {
                return Ok(Arrivals {
                    times,
                    reason,
                    completion_tokens,
                });
            }
        }
    }
    bail!("the engine stopped before the end of a generation")
}
