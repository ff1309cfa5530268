//! Node settings of local inference: the `--inference-*` flags and the
//! config file's `inference` section.

use std::{num::NonZeroUsize, time::Duration};

use aios_runtime::config::ConfigError;
use serde::Deserialize;

/// The engines that run this node's LOCAL models.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[command(next_help_heading = "Local inference")]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InferenceArgs {
    /// Device of local models: `cpu`, or `cuda` / `cuda:N` in a build with
    /// the `cuda` feature (default cpu).
    #[arg(long, env = "AIOS_INFERENCE_DEVICE", value_name = "DEVICE")]
    pub inference_device: Option<String>,
    /// Compute threads per local model (default: the CPUs this process may use).
    #[arg(long, env = "AIOS_INFERENCE_THREADS", value_name = "N")]
    pub inference_threads: Option<usize>,
    /// Sequences a generation model decodes together (default 8).
    #[arg(long, env = "AIOS_INFERENCE_MAX_BATCH", value_name = "N")]
    pub inference_max_batch: Option<usize>,
    /// Requests that may wait per local model; more are refused with
    /// RESOURCE_EXHAUSTED (default 64).
    #[arg(long, env = "AIOS_INFERENCE_QUEUE", value_name = "N")]
    pub inference_queue: Option<usize>,
    /// What an hour of this node's inference device costs, in USD. Local
    /// calls cost this over the measured throughput (default 0.10).
    #[arg(long, env = "AIOS_DEVICE_COST_PER_HOUR", value_name = "USD")]
    pub device_cost_per_hour: Option<f64>,
}

/// Where local models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU.
    Cpu,
    /// A CUDA GPU, by ordinal.
    Cuda(usize),
}

impl DeviceChoice {
    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(ordinal)) => Ok(Self::Cuda(ordinal)),
                _ => Err("expected cpu, cuda or cuda:N".into()),
            },
        }
    }

    /// `cpu` or `cuda:N`.
    pub fn name(self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Cuda(ordinal) => format!("cuda:{ordinal}"),
        }
    }
}

/// Validated local-inference settings (see [`InferenceArgs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// The device.
    pub device: DeviceChoice,
    /// Compute threads per model, ≥ 1.
    pub threads: NonZeroUsize,
    /// Sequences decoded together, 1-256.
    pub max_batch: usize,
    /// Waiting requests per model, ≥ 1.
    pub queue: usize,
    /// USD per device-hour, ≥ 0 and finite.
    pub device_cost_per_hour: f64,
    /// How long a model may take to load before its requests fail
    /// (UNAVAILABLE, retried elsewhere).
    pub load_wait: Duration,
}

// `device_cost_per_hour` is finite (validated), so equality is total.
impl Eq for Inference {}

impl Default for Inference {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Cpu,
            threads: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            max_batch: 8,
            queue: 64,
            device_cost_per_hour: 0.10,
            load_wait: Duration::from_secs(30),
        }
    }
}

impl Inference {
    /// Flags over file over defaults, each checked.
    pub fn resolve(flags: InferenceArgs, file: Option<InferenceArgs>) -> Result<Self, ConfigError> {
        let file = file.unwrap_or_default();
        let d = Self::default();
        let device = match flags.inference_device.or(file.inference_device) {
            None => d.device,
            Some(text) => {
                let device = DeviceChoice::parse(&text)
                    .map_err(|e| ConfigError::invalid("--inference-device", &text, e))?;
                if matches!(device, DeviceChoice::Cuda(_)) && !cfg!(feature = "cuda") {
                    return Err(ConfigError::invalid(
                        "--inference-device",
                        &text,
                        "this build has no CUDA support: build with `--features cuda`",
                    ));
                }
                device
            }
        };
        let threads = match flags.inference_threads.or(file.inference_threads) {
            None => d.threads,
            Some(n) => NonZeroUsize::new(n)
                .filter(|n| n.get() <= 1024)
                .ok_or_else(|| ConfigError::invalid("--inference-threads", n, "must be 1-1024"))?,
        };
        let max_batch = flags
            .inference_max_batch
            .or(file.inference_max_batch)
            .unwrap_or(d.max_batch);
        if !(1..=256).contains(&max_batch) {
            return Err(ConfigError::invalid(
                "--inference-max-batch",
                max_batch,
                "must be 1-256",
            ));
        }
        let queue = flags
            .inference_queue
            .or(file.inference_queue)
            .unwrap_or(d.queue);
        if !(1..=100_000).contains(&queue) {
            return Err(ConfigError::invalid(
                "--inference-queue",
                queue,
                "must be 1-100000",
            ));
        }
        let cost = flags
            .device_cost_per_hour
            .or(file.device_cost_per_hour)
            .unwrap_or(d.device_cost_per_hour);
        if !cost.is_finite() || cost < 0.0 {
            return Err(ConfigError::invalid(
                "--device-cost-per-hour",
                cost,
                "must be a finite number ≥ 0",
            ));
        }
        Ok(Self {
            device,
            threads,
            max_batch,
            queue,
            device_cost_per_hour: cost,
            load_wait: d.load_wait,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!(DeviceChoice::parse("cpu"), Ok(DeviceChoice::Cpu));
        assert_eq!(DeviceChoice::parse("cuda"), Ok(DeviceChoice::Cuda(0)));
        assert_eq!(DeviceChoice::parse("cuda:1"), Ok(DeviceChoice::Cuda(1)));
        assert!(DeviceChoice::parse("gpu").is_err());
        assert!(DeviceChoice::parse("cuda:x").is_err());
    }

    #[test]
    fn flags_win_over_the_file_and_bad_values_name_their_flag() {
        let file = InferenceArgs {
            inference_threads: Some(3),
            inference_max_batch: Some(4),
            ..InferenceArgs::default()
        };
        let flags = InferenceArgs {
            inference_threads: Some(2),
            ..InferenceArgs::default()
        };
        let resolved = Inference::resolve(flags, Some(file)).unwrap();
        assert_eq!((resolved.threads.get(), resolved.max_batch), (2, 4));

        let bad = |args: InferenceArgs| Inference::resolve(args, None).unwrap_err().to_string();
        let zero_threads = InferenceArgs {
            inference_threads: Some(0),
            ..InferenceArgs::default()
        };
        assert!(bad(zero_threads).contains("--inference-threads"));
        let negative_cost = InferenceArgs {
            device_cost_per_hour: Some(-1.0),
            ..InferenceArgs::default()
        };
        assert!(bad(negative_cost).contains("--device-cost-per-hour"));
        let gpu = InferenceArgs {
            inference_device: Some("gpu".into()),
            ..InferenceArgs::default()
        };
        assert!(bad(gpu).contains("--inference-device"));
        if !cfg!(feature = "cuda") {
            let cuda = InferenceArgs {
                inference_device: Some("cuda:0".into()),
                ..InferenceArgs::default()
            };
            assert!(bad(cuda).contains("--features cuda"));
        }
    }
}
