//! Generation speed on the SmolLM2 GGUF: load time (with and without
//! re-quantization to Q8), prefill and single-sequence decode, then engine
//! throughput at several concurrencies.
//!
//! `cargo run --release -p aios-inference --example generate_bench -- [threads] [decode tokens]`
#![allow(clippy::print_stderr)] // a benchmark program: its report is its output

use std::time::Instant;

use aios_inference::engine::{Engine, EngineConfig, GenerateRequest, GenerationEvent};
use aios_inference::files;
use aios_inference::llama::{LlamaModel, LoadOptions, Requantize};
use aios_inference::sample::{SamplingParams, argmax};
use candle_core::Device;

type Error = Box<dyn std::error::Error>;

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 200 + (i * 131 + salt * 977) % 40_000)
        .collect()
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let decode_tokens: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(128);
    let path = files::model_file(files::SMOLLM2_GGUF)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    eprintln!(
        "threads={threads} decode_tokens={decode_tokens} load avg: {}",
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );

    for requantize in [Requantize::Never, Requantize::Legacy] {
        let options = LoadOptions { requantize };
        let t = Instant::now();
        let model = pool.install(|| LlamaModel::load(&path, &options, &Device::Cpu))?;
        let load = t.elapsed();
        let p = prompt(200, 1);
        let mut seq = model.new_sequence(200 + decode_tokens + 1)?;
        let (c0, t) = (cpu_seconds(), Instant::now());
        let logits = pool.install(|| model.prefill(&mut seq, &p))?;
        let (prefill, prefill_cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c0);
        let mut next = argmax(&logits);
        let (c0, t) = (cpu_seconds(), Instant::now());
        for _ in 0..decode_tokens {
            let logits = pool.install(|| model.decode(&mut [&mut seq], &[next]))?;
            next = argmax(logits.row(0));
        }
        let (decode, decode_cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c0);
        eprintln!(
            "{requantize:?}: load {:.2}s | prefill 200: {:.1} tok/s ({:.2}s wall, {:.2}s cpu) | decode x1: {:.1} tok/s ({:.2}s wall, {:.2}s cpu)",
            load.as_secs_f64(),
            200.0 / prefill,
            prefill,
            prefill_cpu,
            decode_tokens as f64 / decode,
            decode,
            decode_cpu
        );
    }

    let model = LlamaModel::load(&path, &LoadOptions::default(), &Device::Cpu)?;
    let config = EngineConfig {
        max_batch: 8,
        queue_capacity: 16,
        threads,
        ..EngineConfig::default()
    };
    let engine = Engine::start("bench", model, config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for concurrency in [1usize, 4, 8] {
        let (c0, t) = (cpu_seconds(), Instant::now());
        let generated = runtime.block_on(async {
            let mut streams = Vec::new();
            for i in 0..concurrency {
                streams.push(engine.submit(GenerateRequest {
                    prompt: prompt(32, i as u32 + 10),
                    params: SamplingParams {
                        max_tokens: decode_tokens as u32,
                        ..SamplingParams::default()
                    },
                    stop_ids: vec![],
                })?);
            }
            let mut total = 0u64;
            for mut s in streams {
                while let Some(event) = s.next().await {
                    if let GenerationEvent::Done {
                        completion_tokens, ..
                    } = event
                    {
                        total += u64::from(completion_tokens);
                    }
                }
            }
            Ok::<u64, Error>(total)
        })?;
        let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c0);
        eprintln!(
            "engine concurrency {concurrency}: {generated} tokens in {wall:.2}s = {:.1} tok/s aggregate ({cpu:.2}s cpu)",
            generated as f64 / wall
        );
    }
    eprintln!("stats: {:?}", engine.stats());
    engine.shutdown();
    Ok(())
}
