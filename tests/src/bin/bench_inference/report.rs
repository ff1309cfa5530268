//! The readable tables, then one JSON line.

use aios_tests::bench::Machine;
use serde_json::{Value, json};

use crate::{Batched, Options, Results, Single};

// === Spreads ===

/// Median and range of a figure over runs.
#[derive(Clone, Copy, Debug, Default)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n % 2 {
            1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// "median (min–max)".
    fn cell(&self, decimals: usize) -> String {
        format!(
            "{:.*} ({:.*}–{:.*})",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }

    fn json(&self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

/// A single-sequence row's figures over its runs.
#[derive(Clone, Copy, Debug, Default)]
struct SingleFigures {
    load_ms: Spread,
    prefill: Spread,
    decode: Spread,
    prefill_cores: Spread,
    decode_cores: Spread,
    /// Tokens per CPU second of the process: what a run got done with the
    /// CPU it was given, steadier than tokens/s on a shared machine.
    prefill_per_cpu: Spread,
    decode_per_cpu: Spread,
}

impl SingleFigures {
    fn of<'a>(runs: impl Iterator<Item = &'a Single> + Clone) -> Self {
        Self {
            load_ms: Spread::of(runs.clone().map(|r| r.load_s * 1000.0)),
            prefill: Spread::of(runs.clone().map(|r| r.prefill_tokens as f64 / r.prefill_s)),
            decode: Spread::of(runs.clone().map(|r| r.decode_tokens as f64 / r.decode_s)),
            prefill_cores: Spread::of(runs.clone().map(|r| r.prefill_cpu_s / r.prefill_s)),
            decode_cores: Spread::of(runs.clone().map(|r| r.decode_cpu_s / r.decode_s)),
            prefill_per_cpu: Spread::of(
                runs.clone()
                    .map(|r| r.prefill_tokens as f64 / r.prefill_cpu_s),
            ),
            decode_per_cpu: Spread::of(runs.map(|r| r.decode_tokens as f64 / r.decode_cpu_s)),
        }
    }

    fn row(&self, name: &str) -> Vec<String> {
        vec![
            name.into(),
            self.load_ms.cell(0),
            self.prefill.cell(1),
            self.decode.cell(1),
            format!("{:.2}", self.prefill_cores.median),
            format!("{:.2}", self.decode_cores.median),
            format!("{:.1}", self.prefill_per_cpu.median),
            format!("{:.1}", self.decode_per_cpu.median),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "load_ms": self.load_ms.json(),
            "prefill_tok_s": self.prefill.json(),
            "decode_tok_s": self.decode.json(),
            "prefill_cores": self.prefill_cores.json(),
            "decode_cores": self.decode_cores.json(),
            "prefill_tok_per_cpu_s": self.prefill_per_cpu.json(),
            "decode_tok_per_cpu_s": self.decode_per_cpu.json(),
        })
    }
}

/// One concurrency level's figures over runs.
#[derive(Clone, Copy, Debug, Default)]
struct BatchedFigures {
    sequences: usize,
    decode: Spread,
    end_to_end: Spread,
    cores: Spread,
    /// Engine steps (forward passes) per request batch; 0 for llama.cpp.
    steps: Spread,
}

fn batched_figures(runs: &[Vec<Batched>], levels: &[usize]) -> Vec<BatchedFigures> {
    levels
        .iter()
        .enumerate()
        .map(|(i, &sequences)| {
            let rows = runs.iter().filter_map(|run| run.get(i));
            BatchedFigures {
                sequences,
                decode: Spread::of(rows.clone().map(|r| r.decode_tokens as f64 / r.decode_s)),
                end_to_end: Spread::of(rows.clone().map(|r| r.completion_tokens as f64 / r.wall_s)),
                cores: Spread::of(rows.clone().map(|r| r.cpu_s / r.wall_s)),
                steps: Spread::of(rows.map(|r| r.steps as f64)),
            }
        })
        .collect()
}

/// How many tokens two greedy outputs share from the start.
fn agreement(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

// === Printing ===

/// A table: the first column left-aligned, the others right-aligned.
fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let all: Vec<&Vec<String>> = std::iter::once(&header).chain(rows).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            all.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    println!("\n{title}");
    for row in all {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| match i {
                0 => format!("{cell:<w$}"),
                _ => format!("{cell:>w$}"),
            })
            .collect();
        println!("{}", line.join("  "));
    }
}

fn ratio(ours: f64, theirs: f64) -> String {
    match theirs > 0.0 {
        true => format!("{:.2}", ours / theirs),
        false => "—".into(),
    }
}

pub(crate) fn report(options: &Options, machine: &Machine, results: &Results) {
    let ours = SingleFigures::of(results.ours.iter());
    let ours_q8 = SingleFigures::of(results.ours_q8.iter());
    let llama = SingleFigures::of(results.llama.iter().map(|r| &r.single));
    let llama_read_ms = Spread::of(results.llama.iter().map(|r| r.load_read_s * 1000.0));
    let llama_context_ms = Spread::of(results.llama.iter().map(|r| r.context_s * 1000.0));
    let llama_perf_prefill = Spread::of(results.llama.iter().map(|r| r.perf_prefill_tok_s));
    let llama_perf_decode = Spread::of(results.llama.iter().map(|r| r.perf_decode_tok_s));
    let has_llama = !results.llama.is_empty();

    println!(
        "bench-inference: prompt {} tokens ({} words of the article), {} decode tokens, {} threads, {} runs (one sequence) and {} (batched), after a warm-up",
        results.prompt_tokens,
        results.prompt_words,
        options.decode_tokens,
        options.threads,
        options.runs,
        options.batched_runs
    );
    println!("machine: {} CPUs, {}", machine.nproc, machine.cpu);
    println!(
        "load average (1, 5, 15 min): {} at the start, {} at the end",
        results.load_average_start, results.load_average_end
    );
    match (&results.llama_skipped, &results.llama_about) {
        (Some(why), _) => println!("llama.cpp: SKIPPED: {why}"),
        (None, Some(about)) => println!(
            "llama.cpp: llama-cpp-python {}, extra buffer types off, OMP_WAIT_POLICY={}; {}",
            about["llama_cpp_python"].as_str().unwrap_or("?"),
            about["omp_wait_policy"].as_str().unwrap_or("(unset)"),
            about["system_info"].as_str().unwrap_or("")
        ),
        (None, None) => {}
    }

    let mut rows = vec![ours.row("aios (Q4_1 as stored: default)")];
    if !results.ours_q8.is_empty() {
        rows.push(ours_q8.row("aios (re-quantized to Q8)"));
    }
    if has_llama {
        rows.push(llama.row("llama.cpp (mmap)"));
    }
    print_table(
        "1. one sequence: median (min–max) over runs; cores = process CPU time / wall time (medians)",
        &[
            "engine",
            "load ms",
            "prefill tok/s",
            "decode tok/s",
            "prefill cores",
            "decode cores",
            "prefill tok/CPU-s",
            "decode tok/CPU-s",
        ],
        &rows,
    );
    if has_llama {
        println!(
            "llama.cpp: load reading into memory {} ms, context {} ms; its own timers (llama_perf_context): prefill {} tok/s, decode {} tok/s",
            llama_read_ms.cell(0),
            llama_context_ms.cell(0),
            llama_perf_prefill.cell(1),
            llama_perf_decode.cell(1)
        );
        let mut rows = Vec::new();
        for (name, figures) in [("aios (default)", &ours), ("aios (Q8)", &ours_q8)] {
            if figures.decode.median == 0.0 {
                continue;
            }
            rows.push(vec![
                name.to_string(),
                ratio(figures.load_ms.median, llama.load_ms.median),
                ratio(figures.load_ms.median, llama_read_ms.median),
                ratio(figures.prefill.median, llama.prefill.median),
                ratio(figures.decode.median, llama.decode.median),
                ratio(figures.prefill_per_cpu.median, llama.prefill_per_cpu.median),
                ratio(figures.decode_per_cpu.median, llama.decode_per_cpu.median),
            ]);
        }
        print_table(
            "2. aios / llama.cpp, medians (tok/s: above 1 is faster; load: below 1 is faster)",
            &[
                "",
                "load / mmap load",
                "load / read load",
                "prefill",
                "decode",
                "prefill per CPU-s",
                "decode per CPU-s",
            ],
            &rows,
        );
        if let (Some(a), Some(b)) = (results.ours.first(), results.llama.first()) {
            let theirs = &b.single.generated;
            let q8 = results
                .ours_q8
                .first()
                .map(|q| format!(", aios Q8: {}", agreement(&q.generated, theirs)))
                .unwrap_or_default();
            println!(
                "greedy tokens (first run) equal to llama.cpp's from the start: aios: {} of {}{q8}",
                agreement(&a.generated, theirs),
                a.generated.len().min(theirs.len())
            );
        }
    }

    let engine = batched_figures(&results.engine, &options.concurrency);
    let llama_batched = batched_figures(&results.llama_batched, &options.concurrency);
    let base = engine.first().map_or(0.0, |f| f.decode.median);
    let theirs = |i: usize| {
        llama_batched
            .get(i)
            .filter(|_| !results.llama_batched.is_empty())
    };
    let rows: Vec<Vec<String>> = engine
        .iter()
        .enumerate()
        .map(|(i, ours)| {
            vec![
                ours.sequences.to_string(),
                ours.decode.cell(1),
                format!("{:.1}", ours.decode.median / ours.sequences as f64),
                ratio(ours.decode.median, base),
                ours.end_to_end.cell(1),
                format!("{:.0}", ours.steps.median),
                theirs(i).map_or("—".into(), |t| t.decode.cell(1)),
                theirs(i).map_or("—".into(), |t| ratio(ours.decode.median, t.decode.median)),
            ]
        })
        .collect();
    if !results.engine.is_empty() {
        print_table(
            "3. concurrent sequences: aggregate decode tok/s while all decode (ours: the Engine; llama.cpp: one llama_decode per step for all); end to end = with the prefills",
            &[
                "sequences",
                "aios decode tok/s",
                "per sequence",
                "vs first row",
                "aios end to end",
                "aios steps",
                "llama.cpp decode tok/s",
                "aios / llama.cpp",
            ],
            &rows,
        );
    }

    let batched_json = |figures: &[BatchedFigures]| -> Value {
        figures
            .iter()
            .map(|f| {
                json!({
                    "sequences": f.sequences,
                    "decode_tok_s": f.decode.json(),
                    "end_to_end_tok_s": f.end_to_end.json(),
                    "cores": f.cores.json(),
                    "steps": f.steps.json(),
                })
            })
            .collect()
    };
    let summary = json!({
        "bench": "inference",
        "machine": { "cpu": machine.cpu, "nproc": machine.nproc },
        "load_average": { "start": results.load_average_start, "end": results.load_average_end },
        "threads": options.threads,
        "prompt_tokens": results.prompt_tokens,
        "decode_tokens": options.decode_tokens,
        "runs": options.runs,
        "batched_runs": options.batched_runs,
        "single": {
            "aios": ours.json(),
            "aios_q8": (!results.ours_q8.is_empty()).then(|| ours_q8.json()),
            "llama_cpp": has_llama.then(|| json!({
                "figures": llama.json(),
                "load_read_ms": llama_read_ms.json(),
                "context_ms": llama_context_ms.json(),
                "perf_prefill_tok_s": llama_perf_prefill.json(),
                "perf_decode_tok_s": llama_perf_decode.json(),
            })),
        },
        "ratios": has_llama.then(|| json!({
            "load_vs_mmap": ours.load_ms.median / llama.load_ms.median,
            "load_vs_read": ours.load_ms.median / llama_read_ms.median,
            "prefill": ours.prefill.median / llama.prefill.median,
            "decode": ours.decode.median / llama.decode.median,
            "prefill_per_cpu_s": ours.prefill_per_cpu.median / llama.prefill_per_cpu.median,
            "decode_per_cpu_s": ours.decode_per_cpu.median / llama.decode_per_cpu.median,
        })),
        // The first recorded run's greedy tokens (the prefill's, then one per step).
        "greedy": {
            "aios": results.ours.first().map(|r| &r.generated),
            "aios_q8": results.ours_q8.first().map(|r| &r.generated),
            "llama_cpp": results.llama.first().map(|r| &r.single.generated),
        },
        "batched": {
            "aios": (!results.engine.is_empty()).then(|| batched_json(&engine)),
            "llama_cpp": (!results.llama_batched.is_empty()).then(|| batched_json(&llama_batched)),
        },
        "llama_cpp": results.llama_about,
        "llama_cpp_skipped": results.llama_skipped,
    });
    println!("{summary}");
}
