//! llama.cpp's side: scripts/reference/llama_cpp_bench.py in the venv that
//! scripts/llama-cpp-venv.sh builds, one process per run, fed the same
//! prompt ids; it prints one JSON object.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{Batched, Single};

/// The repository's root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The venv's python that scripts/llama-cpp-venv.sh makes by default.
pub(crate) fn default_python() -> PathBuf {
    root().join("target/llama-cpp-venv/bin/python")
}

/// How to run the script.
#[derive(Debug)]
pub(crate) struct LlamaCpp {
    pub python: PathBuf,
    pub model: PathBuf,
    pub threads: usize,
    pub decode_tokens: usize,
    /// `OMP_WAIT_POLICY` for llama.cpp's OpenMP threads; `None` leaves the
    /// environment's (libgomp's default: spin, then sleep).
    pub omp_wait_policy: Option<String>,
}

/// One single-sequence run, with what only llama.cpp reports.
#[derive(Debug)]
pub(crate) struct LlamaSingle {
    pub single: Single,
    /// Load with the weights read into memory (LLAMA_LOAD_MODE_NONE).
    pub load_read_s: f64,
    /// Context creation (KV cache, compute buffers).
    pub context_s: f64,
    /// llama.cpp's own timers (llama_perf_context), in tokens/s.
    pub perf_prefill_tok_s: f64,
    pub perf_decode_tok_s: f64,
}

impl LlamaCpp {
    /// Why llama.cpp cannot run here, if it cannot.
    pub(crate) fn unavailable(&self) -> Option<String> {
        let hint = "build the venv with scripts/llama-cpp-venv.sh (llama-cpp-python from PyPI's source package; minutes on two cores) or pass --llama-cpp-python PATH";
        if !self.python.is_file() {
            return Some(format!("no python at {}: {hint}", self.python.display()));
        }
        let imports = Command::new(&self.python)
            .args(["-c", "import llama_cpp, numpy"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match imports {
            Ok(status) if status.success() => None,
            _ => Some(format!(
                "{} cannot import llama_cpp and numpy: {hint}",
                self.python.display()
            )),
        }
    }

    /// Load, prefill and decode at one sequence, in a fresh process.
    pub(crate) fn single(&self, prompt: &[u32]) -> Result<(LlamaSingle, Value)> {
        let out = self.call(prompt, &[])?;
        let s = &out["single"];
        let single = Single {
            load_s: num(s, "load_s")?,
            prefill_s: num(s, "prefill_s")?,
            prefill_tokens: num(s, "prefill_tokens")? as usize,
            prefill_cpu_s: num(s, "prefill_cpu_s")?,
            decode_s: num(s, "decode_s")?,
            decode_tokens: num(s, "decode_tokens")? as usize,
            decode_cpu_s: num(s, "decode_cpu_s")?,
            generated: s["generated"]
                .as_array()
                .context("no generated ids")?
                .iter()
                .filter_map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect(),
        };
        let perf = &s["perf"];
        let rate = |tokens: &str, ms: &str| -> Result<f64> {
            Ok(num(perf, tokens)? / (num(perf, ms)? / 1000.0))
        };
        let run = LlamaSingle {
            single,
            load_read_s: num(s, "load_read_s")?,
            context_s: num(s, "context_s")?,
            perf_prefill_tok_s: rate("prompt_eval_tokens", "prompt_eval_ms")?,
            perf_decode_tok_s: rate("eval_tokens", "eval_ms")?,
        };
        Ok((run, about(&out)))
    }

    /// Aggregate decode at each number of sequences, in one fresh process.
    pub(crate) fn batched(&self, prompt: &[u32], levels: &[usize]) -> Result<Vec<Batched>> {
        let list: Vec<String> = levels.iter().map(ToString::to_string).collect();
        let out = self.call(prompt, &["--concurrency".into(), list.join(",")])?;
        let rows = out["batched"].as_array().context("no batched results")?;
        rows.iter()
            .map(|row| {
                Ok(Batched {
                    sequences: num(row, "sequences")? as usize,
                    decode_tokens: num(row, "tokens")? as usize,
                    decode_s: num(row, "decode_s")?,
                    completion_tokens: num(row, "tokens")? as usize,
                    wall_s: num(row, "decode_s")?,
                    cpu_s: num(row, "cpu_s")?,
                    steps: 0,
                })
            })
            .collect()
    }

    fn call(&self, prompt: &[u32], extra: &[String]) -> Result<Value> {
        let script = root().join("scripts/reference/llama_cpp_bench.py");
        let mut command = Command::new(&self.python);
        command
            .arg(&script)
            .arg("--model")
            .arg(&self.model)
            .args(["--threads", &self.threads.to_string()])
            .args(["--decode-tokens", &self.decode_tokens.to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match &self.omp_wait_policy {
            Some(policy) => command.env("OMP_WAIT_POLICY", policy),
            None => command.env_remove("OMP_WAIT_POLICY"),
        };
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.python.display()))?;
        let input = json!({ "prompt": prompt }).to_string();
        child
            .stdin
            .take()
            .context("no stdin to the script")?
            .write_all(input.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "{} failed ({}); its errors are above",
                script.display(),
                output.status
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).map_err(|e| anyhow!("the script printed {line:?}: {e}"))
    }
}

/// The build and settings the script reports.
fn about(out: &Value) -> Value {
    json!({
        "llama_cpp_python": out["llama_cpp_python"],
        "system_info": out["system_info"],
        "omp_wait_policy": out["omp_wait_policy"],
        "extra_buffer_types": out["extra_buffer_types"],
    })
}

fn num(value: &Value, key: &str) -> Result<f64> {
    value[key]
        .as_f64()
        .with_context(|| format!("llama_cpp_bench.py's output has no number {key:?}"))
}
