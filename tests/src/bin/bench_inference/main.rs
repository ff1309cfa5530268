//! bench-inference: our generation engine against llama.cpp on the same GGUF,
//! with the same threads, on the same machine.
//!
//! 1. One sequence, aios and llama.cpp alternating run by run (and which one
//!    goes first alternating too, to cancel drift), after one unrecorded
//!    warm-up round:
//!    - load: `LlamaModel::load` with the default options (Q4_1 runs as
//!      stored) and, as a second row, with the legacy types re-quantized to
//!      Q8 (`Requantize::Legacy`); llama.cpp's `llama_model_load_from_file`
//!      (its default mmap, and reading into memory);
//!    - prefill: the prompt in one forward pass, to the first token's logits;
//!    - decode: `--decode-tokens` greedy steps, EOS not looked for, each step
//!      with its argmax.
//! 2. Aggregate decode tokens/s with 1, 4 and 8 concurrent sequences: ours
//!    through the `Engine` (continuous batching), llama.cpp with as many
//!    sequences in each `llama_decode`.
//!
//! The prompt is a fixed English request in the GGUF's chat template, about
//! `--prompt-tokens` tokens by aios' tokenizer; llama.cpp gets the same ids.
//!
//! cargo run --release -p aios-tests --bin bench-inference -- [--threads N] [--prompt-tokens N]
//!     [--decode-tokens N] [--runs N] [--batched-runs N] [--concurrency 1,4,8] [--no-q8]
//!     [--no-llama-cpp] [--llama-cpp-python PATH] [--omp-wait-policy passive|active|unset]
//!     [--model PATH]
//!
//! llama.cpp runs through scripts/reference/llama_cpp_bench.py with the
//! python of the venv scripts/llama-cpp-venv.sh builds (default
//! target/llama-cpp-venv/bin/python), its CPU extra buffer types off (that
//! path crashed in one of our VMs) and `OMP_WAIT_POLICY=passive` (see
//! BENCHMARKS.md: on a shared machine its spinning OpenMP threads collapse).
//! Without the venv that part is skipped, and the report says so.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark program: printing is its job

mod llama_cpp;
mod ours;
mod prompt;
mod report;

use std::path::{Path, PathBuf};

use aios_inference::files;
use aios_inference::llama::Requantize;
use aios_runtime::cli::{EXIT_FAILURE, exit_config, exit_with};
use aios_tests::bench::{Args, Machine, positive, positive_list};
use anyhow::{Context, Result, bail};
use serde_json::Value;

use llama_cpp::{LlamaCpp, LlamaSingle};

// === What a run measures ===

/// One single-sequence run of either engine.
#[derive(Clone, Debug, Default)]
pub(crate) struct Single {
    pub load_s: f64,
    pub prefill_s: f64,
    pub prefill_tokens: usize,
    /// CPU seconds of the whole process (every thread) during the prefill.
    pub prefill_cpu_s: f64,
    pub decode_s: f64,
    pub decode_tokens: usize,
    pub decode_cpu_s: f64,
    /// The prefill's token, then one per decode step.
    pub generated: Vec<u32>,
}

/// Concurrent sequences decoding together.
#[derive(Clone, Debug)]
pub(crate) struct Batched {
    pub sequences: usize,
    /// Tokens generated while every sequence was decoding, and how long that took.
    pub decode_tokens: usize,
    pub decode_s: f64,
    /// All tokens generated, and the time from submitting to the last one
    /// (prefills included); llama.cpp's: the decode steps again.
    pub completion_tokens: usize,
    pub wall_s: f64,
    /// CPU seconds of the process over the decode (llama.cpp) or the whole
    /// request (ours).
    pub cpu_s: f64,
    /// Engine steps (forward passes); 0 for llama.cpp.
    pub steps: u64,
}

/// CPU seconds this process has used (user + system, every thread), from
/// /proc at its 10 ms tick.
pub(crate) fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    (ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)) / 100.0
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// === Options ===

#[derive(Debug)]
pub(crate) struct Options {
    pub model: Option<PathBuf>,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub runs: usize,
    pub batched_runs: usize,
    pub concurrency: Vec<usize>,
    pub q8: bool,
    pub llama_cpp: bool,
    pub python: PathBuf,
    pub omp_wait_policy: Option<String>,
}

fn parse_args() -> Options {
    let mut options = Options {
        model: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        prompt_tokens: 200,
        decode_tokens: 128,
        runs: 5,
        batched_runs: 3,
        concurrency: vec![1, 4, 8],
        q8: true,
        llama_cpp: true,
        python: llama_cpp::default_python(),
        omp_wait_policy: Some("passive".into()),
    };
    let mut args = Args::from_env();
    while let Some(arg) = args.next() {
        let mut value = || args.value(&arg);
        match arg.as_str() {
            "--model" => options.model = Some(value().into()),
            "--threads" => options.threads = positive(&arg, &value()),
            "--prompt-tokens" => options.prompt_tokens = positive(&arg, &value()),
            "--decode-tokens" => {
                options.decode_tokens = positive(&arg, &value());
                if options.decode_tokens < 2 {
                    exit_config("--decode-tokens: at least 2 (a decode rate needs two steps)");
                }
            }
            "--runs" => options.runs = positive(&arg, &value()),
            "--batched-runs" => options.batched_runs = positive(&arg, &value()),
            "--concurrency" => {
                options.concurrency = positive_list(&arg, &value(), "e.g. 1,4,8");
            }
            "--no-q8" => options.q8 = false,
            "--no-llama-cpp" => options.llama_cpp = false,
            "--llama-cpp-python" => options.python = value().into(),
            "--omp-wait-policy" => {
                options.omp_wait_policy = match value().as_str() {
                    "unset" => None,
                    policy @ ("passive" | "active" | "PASSIVE" | "ACTIVE") => Some(policy.into()),
                    other => exit_config(&format!(
                        "--omp-wait-policy {other}: expected passive, active or unset"
                    )),
                }
            }
            other => exit_config(&format!(
                "unknown option {other}; see the header of tests/src/bin/bench_inference/main.rs"
            )),
        }
    }
    options
}

// === The runs ===

/// Everything measured, for the report.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub prompt_tokens: usize,
    pub prompt_words: usize,
    pub load_average_start: String,
    pub load_average_end: String,
    pub ours: Vec<Single>,
    pub ours_q8: Vec<Single>,
    pub llama: Vec<LlamaSingle>,
    /// llama.cpp's build and settings, as its script reports them.
    pub llama_about: Option<Value>,
    /// Why llama.cpp did not run, when it did not.
    pub llama_skipped: Option<String>,
    /// Per run, one row per concurrency.
    pub engine: Vec<Vec<Batched>>,
    pub llama_batched: Vec<Vec<Batched>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Ours,
    OursQ8,
    LlamaCpp,
}

fn run(options: &Options, results: &mut Results) -> Result<()> {
    let model = match &options.model {
        Some(path) => path.clone(),
        None => files::model_file(files::SMOLLM2_GGUF)?,
    };
    let prompt = prompt::build(&model, options.prompt_tokens)?;
    results.prompt_tokens = prompt.ids.len();
    results.prompt_words = prompt.words;
    let ids = &prompt.ids;
    let llama = LlamaCpp {
        python: options.python.clone(),
        model: model.clone(),
        threads: options.threads,
        decode_tokens: options.decode_tokens,
        omp_wait_policy: options.omp_wait_policy.clone(),
    };
    let llama = match options.llama_cpp {
        false => {
            results.llama_skipped = Some("--no-llama-cpp".into());
            None
        }
        true => match llama.unavailable() {
            Some(why) => {
                eprintln!("llama.cpp: SKIPPED: {why}");
                results.llama_skipped = Some(why);
                None
            }
            None => Some(llama),
        },
    };
    eprintln!(
        "{}: prompt {} tokens, decode {} tokens, {} threads",
        model.display(),
        ids.len(),
        options.decode_tokens,
        options.threads
    );
    one_sequence(options, &model, ids, llama.as_ref(), results)?;
    concurrent(options, &model, ids, llama.as_ref(), results)
}

/// Part 1: a warm-up round, then `--runs` rounds of every side, the order
/// reversed every other round.
fn one_sequence(
    options: &Options,
    model: &Path,
    ids: &[u32],
    llama: Option<&LlamaCpp>,
    results: &mut Results,
) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .thread_name(|i| format!("bench-{i}"))
        .build()?;
    let mut sides = vec![Side::Ours];
    if options.q8 {
        sides.push(Side::OursQ8);
    }
    if llama.is_some() {
        sides.push(Side::LlamaCpp);
    }
    for round in 0..=options.runs {
        let mut order = sides.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut line = match round {
            0 => "warm-up:".to_string(),
            n => format!("run {n}:"),
        };
        let recorded = round > 0;
        for side in order {
            let ours =
                |requantize| ours::single(model, requantize, ids, options.decode_tokens, &pool);
            let single = match side {
                Side::Ours => ours(Requantize::default())?,
                Side::OursQ8 => ours(Requantize::Legacy)?,
                Side::LlamaCpp => {
                    let llama = llama.context("llama.cpp is not available")?;
                    let (run, about) = llama.single(ids)?;
                    results.llama_about = Some(about);
                    let single = run.single.clone();
                    if recorded {
                        results.llama.push(run);
                    }
                    single
                }
            };
            line.push_str(&format!(
                " {side:?} load {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s;",
                single.load_s * 1000.0,
                single.prefill_tokens as f64 / single.prefill_s,
                single.decode_tokens as f64 / single.decode_s
            ));
            match (recorded, side) {
                (true, Side::Ours) => results.ours.push(single),
                (true, Side::OursQ8) => results.ours_q8.push(single),
                _ => {}
            }
        }
        eprintln!("{line} load average {}", load_average());
    }
    Ok(())
}

/// Part 2: every concurrency level on our engine, then on llama.cpp (the
/// order reversed every other round).
fn concurrent(
    options: &Options,
    model: &Path,
    ids: &[u32],
    llama: Option<&LlamaCpp>,
    results: &mut Results,
) -> Result<()> {
    let most = options.concurrency.iter().copied().max().unwrap_or(1);
    let engine = ours::EngineBench::start(model, options.threads, most.max(8))?;
    // Warm-up: buffers sized for the widest batch (its decode rate is not used).
    engine.run(ids, most, options.decode_tokens.min(16))?;
    for round in 1..=options.batched_runs {
        let mut order = [Side::Ours, Side::LlamaCpp];
        if round % 2 == 0 {
            order.reverse();
        }
        for side in order {
            match (side, llama) {
                (Side::Ours, _) => {
                    let rows = options
                        .concurrency
                        .iter()
                        .map(|&n| engine.run(ids, n, options.decode_tokens))
                        .collect::<Result<Vec<_>>>()?;
                    if rows.iter().any(|r| r.decode_tokens == 0) {
                        bail!("no engine step had every sequence decoding: raise --decode-tokens");
                    }
                    eprintln!("batched run {round}: ours {}", rates(&rows));
                    results.engine.push(rows);
                }
                (_, Some(llama)) => {
                    let rows = llama.batched(ids, &options.concurrency)?;
                    eprintln!("batched run {round}: llama.cpp {}", rates(&rows));
                    results.llama_batched.push(rows);
                }
                (_, None) => {}
            }
        }
    }
    engine.shutdown();
    Ok(())
}

/// "N seq: R tok/s" for a progress line.
fn rates(rows: &[Batched]) -> String {
    let rates: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} seq {:.1} tok/s",
                r.sequences,
                r.decode_tokens as f64 / r.decode_s
            )
        })
        .collect();
    rates.join(", ")
}

fn main() {
    let options = parse_args();
    let machine = Machine::read();
    let mut results = Results {
        load_average_start: load_average(),
        ..Results::default()
    };
    let outcome = run(&options, &mut results);
    results.load_average_end = load_average();
    if !results.ours.is_empty() {
        report::report(&options, &machine, &results);
    }
    if let Err(error) = outcome {
        exit_with(EXIT_FAILURE, &format!("{error:#}"));
    }
}
