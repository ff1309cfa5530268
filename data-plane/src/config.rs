//! The data plane's static configuration: one typed struct, merged from
//! defaults, the optional file, `AIOS_*` variables and flags, and validated
//! before anything starts.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use aios_runtime::{
    ConfigError, ListenAddr, Secret,
    cli::{CommonArgs, CommonFile, ProcessConfig},
    logging::LogFormat,
};
use clap::Parser;
use serde::Deserialize;

pub use crate::local::settings::{DeviceChoice, Inference, InferenceArgs};

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7080";
/// Default OpenAI-compatible HTTP listen address.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7081";
/// Default admin HTTP listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7082";
/// Default control plane.
pub const DEFAULT_CONTROL_PLANE: &str = "http://127.0.0.1:7070";
/// Default region.
pub const DEFAULT_REGION: &str = "local";
/// Default state directory (last good config, telemetry spill).
pub const DEFAULT_STATE_DIR: &str = "aios-state/data-plane";

/// `aios-data-plane` command line. Every flag also reads `AIOS_<FLAG>`.
#[derive(Debug, Parser)]
#[command(
    name = "aios-data-plane",
    version,
    about = "An aios data-plane node: runs agents and LLM inference under fleet policy."
)]
pub struct Cli {
    /// gRPC listen address (AgentService, health, reflection).
    #[arg(long, env = "AIOS_LISTEN", value_name = "ADDR")]
    pub listen: Option<ListenAddr>,
    /// OpenAI-compatible HTTP listen address (/v1/chat/completions, /v1/embeddings, /v1/models).
    #[arg(long, env = "AIOS_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<ListenAddr>,
    /// Admin HTTP listen address (/metrics, /healthz, /readyz).
    #[arg(long, env = "AIOS_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<ListenAddr>,
    /// Control-plane gRPC URLs, tried in turn: `http[s]://HOST:PORT[,…]`.
    #[arg(
        long,
        env = "AIOS_CONTROL_PLANE",
        value_name = "URL[,URL…]",
        value_delimiter = ','
    )]
    pub control_plane: Vec<ControlPlaneUrl>,
    /// Unique node id in the fleet (default: the host name).
    #[arg(long, env = "AIOS_NODE_ID", value_name = "ID")]
    pub node_id: Option<NodeName>,
    /// Region this node runs in; resources scoped to regions reach only matching nodes.
    #[arg(long, env = "AIOS_REGION", value_name = "REGION")]
    pub region: Option<NodeName>,
    /// Zone within the region.
    #[arg(long, env = "AIOS_ZONE", value_name = "ZONE")]
    pub zone: Option<NodeName>,
    /// Node label `key=value`; repeat for several. Resources select nodes by labels.
    #[arg(
        long = "label",
        env = "AIOS_LABELS",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub labels: Vec<Label>,
    /// Directory for the last good config snapshot and telemetry spill (created if missing).
    #[arg(long, env = "AIOS_STATE_DIR", value_name = "PATH")]
    pub state_dir: Option<PathBuf>,
    /// File holding this node's API key for the control plane: a NODE key of
    /// the `system` tenant (else AIOS_NODE_KEY; never a flag, flags show in `ps`).
    #[arg(long, env = "AIOS_NODE_KEY_FILE", value_name = "PATH")]
    pub node_key_file: Option<PathBuf>,
    /// Unacknowledged telemetry kept in memory, in bytes, before spilling to disk (default 16 MiB).
    #[arg(long, env = "AIOS_TELEMETRY_BUFFER_BYTES", value_name = "BYTES")]
    pub telemetry_buffer_bytes: Option<u64>,
    /// Unacknowledged telemetry spilled to the state directory, in bytes, before the oldest is dropped; 0 = never spill (default 256 MiB).
    #[arg(long, env = "AIOS_TELEMETRY_SPILL_BYTES", value_name = "BYTES")]
    pub telemetry_spill_bytes: Option<u64>,
    #[command(flatten)]
    pub common: CommonArgs,
    // Last: its help heading would also cover the flags after it.
    #[command(flatten)]
    pub execution: ExecutionArgs,
    #[command(flatten)]
    pub inference: InferenceArgs,
}

/// How requests run: retries, circuit breakers, the response cache.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[command(next_help_heading = "Execution")]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExecutionArgs {
    /// Attempts per model before falling back to the next (default 4).
    #[arg(long, env = "AIOS_RETRY_ATTEMPTS", value_name = "N")]
    pub retry_attempts: Option<u32>,
    /// Share of failed calls, in percent, that opens a model's circuit breaker (default 50).
    #[arg(long, env = "AIOS_BREAKER_FAILURE_PERCENT", value_name = "PERCENT")]
    pub breaker_failure_percent: Option<u8>,
    /// Calls a breaker's window must hold before it may open (default 40).
    #[arg(long, env = "AIOS_BREAKER_MIN_CALLS", value_name = "N")]
    pub breaker_min_calls: Option<u32>,
    /// How far back a breaker counts calls (default 10s).
    #[arg(long, env = "AIOS_BREAKER_WINDOW", value_name = "DURATION", value_parser = aios_runtime::config::parse_duration)]
    #[serde(
        default,
        deserialize_with = "aios_runtime::config::deserialize_duration"
    )]
    pub breaker_window: Option<Duration>,
    /// How long an open breaker sheds calls before probing (default 30s).
    #[arg(long, env = "AIOS_BREAKER_OPEN_FOR", value_name = "DURATION", value_parser = aios_runtime::config::parse_duration)]
    #[serde(
        default,
        deserialize_with = "aios_runtime::config::deserialize_duration"
    )]
    pub breaker_open_for: Option<Duration>,
    /// How long cached answers live; 0s turns the cache off (default 5m).
    #[arg(long, env = "AIOS_CACHE_TTL", value_name = "DURATION", value_parser = aios_runtime::config::parse_duration)]
    #[serde(
        default,
        deserialize_with = "aios_runtime::config::deserialize_duration"
    )]
    pub cache_ttl: Option<Duration>,
    /// Memory the response cache may use, in MiB (default 64).
    #[arg(long, env = "AIOS_CACHE_MAX_MIB", value_name = "MIB")]
    pub cache_max_mib: Option<u32>,
}

/// Validated execution settings (see [`ExecutionArgs`] for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execution {
    /// Attempts per model, ≥ 1.
    pub retry_attempts: u32,
    /// 1-100.
    pub breaker_failure_percent: u8,
    /// ≥ 1.
    pub breaker_min_calls: u32,
    /// > 0.
    pub breaker_window: Duration,
    /// > 0.
    pub breaker_open_for: Duration,
    /// 0 = no cache.
    pub cache_ttl: Duration,
    /// Bytes.
    pub cache_max_bytes: usize,
}

impl Default for Execution {
    fn default() -> Self {
        Self {
            retry_attempts: 4,
            breaker_failure_percent: 50,
            breaker_min_calls: 40,
            breaker_window: Duration::from_secs(10),
            breaker_open_for: Duration::from_secs(30),
            cache_ttl: Duration::from_secs(300),
            cache_max_bytes: 64 << 20,
        }
    }
}

impl Execution {
    /// Flags over file over defaults, each checked.
    fn resolve(flags: ExecutionArgs, file: Option<ExecutionArgs>) -> Result<Self, ConfigError> {
        let file = file.unwrap_or_default();
        let d = Self::default();
        let positive = |setting: &'static str, value: Duration| {
            if value.is_zero() {
                Err(ConfigError::invalid(
                    setting,
                    "0s",
                    "must be greater than zero",
                ))
            } else {
                Ok(value)
            }
        };
        let attempts = flags
            .retry_attempts
            .or(file.retry_attempts)
            .unwrap_or(d.retry_attempts);
        if !(1..=10).contains(&attempts) {
            return Err(ConfigError::invalid(
                "--retry-attempts",
                attempts,
                "must be 1-10",
            ));
        }
        let percent = flags
            .breaker_failure_percent
            .or(file.breaker_failure_percent)
            .unwrap_or(d.breaker_failure_percent);
        if !(1..=100).contains(&percent) {
            return Err(ConfigError::invalid(
                "--breaker-failure-percent",
                percent,
                "must be 1-100",
            ));
        }
        let min_calls = flags
            .breaker_min_calls
            .or(file.breaker_min_calls)
            .unwrap_or(d.breaker_min_calls);
        if min_calls == 0 {
            return Err(ConfigError::invalid(
                "--breaker-min-calls",
                0,
                "must be at least 1",
            ));
        }
        Ok(Self {
            retry_attempts: attempts,
            breaker_failure_percent: percent,
            breaker_min_calls: min_calls,
            breaker_window: positive(
                "--breaker-window",
                flags
                    .breaker_window
                    .or(file.breaker_window)
                    .unwrap_or(d.breaker_window),
            )?,
            breaker_open_for: positive(
                "--breaker-open-for",
                flags
                    .breaker_open_for
                    .or(file.breaker_open_for)
                    .unwrap_or(d.breaker_open_for),
            )?,
            cache_ttl: flags.cache_ttl.or(file.cache_ttl).unwrap_or(d.cache_ttl),
            cache_max_bytes: flags
                .cache_max_mib
                .or(file.cache_max_mib)
                .map_or(d.cache_max_bytes, |mib| (mib as usize) << 20),
        })
    }
}

/// Keys accepted in the `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<ListenAddr>,
    http_listen: Option<ListenAddr>,
    admin_listen: Option<ListenAddr>,
    control_plane: Option<Vec<ControlPlaneUrl>>,
    node_id: Option<NodeName>,
    region: Option<NodeName>,
    zone: Option<NodeName>,
    labels: Option<BTreeMap<String, String>>,
    state_dir: Option<PathBuf>,
    node_key_file: Option<PathBuf>,
    telemetry_buffer_bytes: Option<u64>,
    telemetry_spill_bytes: Option<u64>,
    execution: Option<ExecutionArgs>,
    inference: Option<InferenceArgs>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(
        default,
        deserialize_with = "aios_runtime::config::deserialize_duration"
    )]
    shutdown_grace: Option<Duration>,
}

/// Validated data-plane configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// gRPC listen address.
    pub listen: ListenAddr,
    /// OpenAI-compatible HTTP listen address.
    pub http_listen: ListenAddr,
    /// Admin HTTP listen address.
    pub admin_listen: ListenAddr,
    /// Control-plane URLs, in the order they are tried.
    pub control_plane: Vec<ControlPlaneUrl>,
    /// This node's identity and placement.
    pub node: NodeIdentity,
    /// State directory (exists and is writable once validated).
    pub state_dir: PathBuf,
    /// The key this node presents to the control plane (`x-api-key`);
    /// `None` = none (the control plane will refuse the config stream).
    pub node_key: Option<Secret>,
    /// Retries, circuit breakers and the response cache.
    pub execution: Execution,
    /// How much unacknowledged telemetry the node keeps.
    pub telemetry: TelemetryLimits,
    /// The engines of LOCAL models: device, threads, batching, cost.
    pub inference: Inference,
    /// Logging and shutdown.
    pub process: ProcessConfig,
}

/// How much unacknowledged telemetry a node keeps (see
/// [`crate::telemetry::spill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryLimits {
    /// Bytes kept in memory before spilling to disk.
    pub buffer_bytes: u64,
    /// Bytes kept on disk before the oldest are dropped; 0 = never spill.
    pub spill_bytes: u64,
}

impl Default for TelemetryLimits {
    fn default() -> Self {
        Self {
            buffer_bytes: 16 << 20,
            spill_bytes: 256 << 20,
        }
    }
}

/// Who this node is and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Unique node id.
    pub node_id: String,
    /// Region.
    pub region: String,
    /// Zone, if any.
    pub zone: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl Config {
    /// Merges defaults < file < env < flags, validates, and prepares the
    /// state directory.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let file: FileConfig = match &cli.common.config {
            Some(path) => aios_runtime::config::load_file(path)?,
            None => FileConfig::default(),
        };
        let common = CommonFile {
            log: file.log,
            log_format: file.log_format,
            shutdown_grace: file.shutdown_grace,
        };
        let mut labels = BTreeMap::new();
        for (key, value) in file.labels.unwrap_or_default() {
            let label = Label::new(&key, &value)
                .map_err(|e| ConfigError::invalid("--label", format!("{key}={value}"), e))?;
            labels.insert(label.key, label.value);
        }
        labels.extend(cli.labels.into_iter().map(|l| (l.key, l.value)));
        let control_plane = match (cli.control_plane, file.control_plane) {
            (flag, _) if !flag.is_empty() => flag,
            (_, Some(file)) if !file.is_empty() => file,
            _ => vec![parse_default(DEFAULT_CONTROL_PLANE, "--control-plane")?],
        };
        let node_id = match cli.node_id.or(file.node_id) {
            Some(id) => id.0,
            None => default_node_id(),
        };
        let config = Self {
            listen: cli
                .listen
                .or(file.listen)
                .map_or_else(|| parse_default(DEFAULT_LISTEN, "--listen"), Ok)?,
            http_listen: cli
                .http_listen
                .or(file.http_listen)
                .map_or_else(|| parse_default(DEFAULT_HTTP_LISTEN, "--http-listen"), Ok)?,
            admin_listen: cli
                .admin_listen
                .or(file.admin_listen)
                .map_or_else(|| parse_default(DEFAULT_ADMIN_LISTEN, "--admin-listen"), Ok)?,
            control_plane,
            node: NodeIdentity {
                node_id,
                region: cli
                    .region
                    .or(file.region)
                    .map_or_else(|| DEFAULT_REGION.to_string(), |r| r.0),
                zone: cli.zone.or(file.zone).map(|z| z.0),
                labels,
            },
            state_dir: cli
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            node_key: node_key(
                cli.node_key_file.or(file.node_key_file),
                std::env::var("AIOS_NODE_KEY").ok(),
            )?,
            execution: Execution::resolve(cli.execution, file.execution)?,
            telemetry: TelemetryLimits {
                buffer_bytes: cli
                    .telemetry_buffer_bytes
                    .or(file.telemetry_buffer_bytes)
                    .unwrap_or(TelemetryLimits::default().buffer_bytes),
                spill_bytes: cli
                    .telemetry_spill_bytes
                    .or(file.telemetry_spill_bytes)
                    .unwrap_or(TelemetryLimits::default().spill_bytes),
            },
            inference: Inference::resolve(cli.inference, file.inference)?,
            process: ProcessConfig::resolve(&cli.common, &common)?,
        };
        prepare_state_dir(&config.state_dir)?;
        Ok(config)
    }

    /// A configuration for one machine on free loopback ports (used by
    /// `aiosctl dev` and tests). The state directory must exist.
    pub fn local(control_plane: ControlPlaneUrl, state_dir: PathBuf) -> Self {
        let any_port = ListenAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        Self {
            listen: any_port,
            http_listen: any_port,
            admin_listen: any_port,
            control_plane: vec![control_plane],
            node: NodeIdentity {
                node_id: default_node_id(),
                region: DEFAULT_REGION.into(),
                zone: None,
                labels: BTreeMap::new(),
            },
            state_dir,
            node_key: None,
            execution: Execution::default(),
            telemetry: TelemetryLimits::default(),
            inference: Inference::default(),
            process: ProcessConfig::default(),
        }
    }
}

/// The node key from `--node-key-file`, else from `AIOS_NODE_KEY` (`env`,
/// passed in so tests need not touch the process environment).
fn node_key(file: Option<PathBuf>, env: Option<String>) -> Result<Option<Secret>, ConfigError> {
    const SETTING: &str = "--node-key-file";
    let (setting, shown, key) = match (file, env) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::invalid(SETTING, path.display(), e))?;
            (SETTING, path.display().to_string(), text.trim().to_string())
        }
        (None, Some(key)) => ("AIOS_NODE_KEY", "(hidden)".into(), key.trim().to_string()),
        (None, None) => return Ok(None),
    };
    Secret::new(key)
        .map(Some)
        .map_err(|reason| ConfigError::invalid(setting, shown, reason))
}

fn parse_default<T: std::str::FromStr<Err = String>>(
    value: &str,
    setting: &'static str,
) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|e| ConfigError::invalid(setting, value, e))
}

/// Creates the state directory and proves it is writable, so a read-only
/// or mistyped path fails at start rather than at the first snapshot.
fn prepare_state_dir(dir: &std::path::Path) -> Result<(), ConfigError> {
    let invalid = |e: std::io::Error| ConfigError::invalid("--state-dir", dir.display(), e);
    std::fs::create_dir_all(dir).map_err(invalid)?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"").map_err(invalid)?;
    std::fs::remove_file(&probe).map_err(invalid)
}

/// The host name, or `node-<pid>` where none can be read.
fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .and_then(|h| h.trim().parse::<NodeName>().ok())
        .map_or_else(|| format!("node-{}", std::process::id()), |n| n.0)
}

// === Value types ===

/// A node id, region or zone: 1-63 characters of `[a-z0-9._-]`, starting
/// and ending with a letter or digit (DNS-label-like, safe in etcd keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName(pub String);

impl std::str::FromStr for NodeName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
        let edge =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if s.is_empty()
            || s.len() > 63
            || !s.chars().all(ok_char)
            || !edge(s.chars().next())
            || !edge(s.chars().last())
        {
            return Err("must be 1-63 characters of a-z, 0-9, '.', '_' or '-', starting and ending with a letter or digit".into());
        }
        Ok(Self(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("invalid name '{text}': {e}")))
    }
}

/// A node label `key=value`, following Kubernetes label syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Label key (optionally `prefix/name`).
    pub key: String,
    /// Label value (may be empty).
    pub value: String,
}

impl Label {
    fn new(key: &str, value: &str) -> Result<Self, String> {
        let segment = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
        if !segment(name) {
            return Err(format!(
                "label key '{key}' must be 1-63 alphanumerics, '-', '_' or '.'"
            ));
        }
        if !value.is_empty() && !segment(value) {
            return Err(format!(
                "label value '{value}' must be empty or 1-63 alphanumerics, '-', '_' or '.'"
            ));
        }
        Ok(Self {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

impl std::str::FromStr for Label {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s.split_once('=').ok_or("expected KEY=VALUE")?;
        Self::new(key, value)
    }
}

/// A control-plane gRPC URL: `http://HOST:PORT` or `https://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneUrl(pub String);

impl std::str::FromStr for ControlPlaneUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: tonic::transport::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err("expected http://HOST:PORT or https://HOST:PORT".into()),
        }
        let authority = uri.authority().ok_or("missing HOST:PORT")?;
        if authority.port_u16().is_none() {
            return Err("missing port, e.g. http://cp.example:7070".into());
        }
        if !matches!(uri.path(), "" | "/") {
            return Err("a control-plane URL has no path".into());
        }
        Ok(Self(s.trim_end_matches('/').to_string()))
    }
}

impl std::fmt::Display for ControlPlaneUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ControlPlaneUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e| {
            serde::de::Error::custom(format!("invalid control-plane URL '{text}': {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let cli =
            Cli::try_parse_from(std::iter::once("aios-data-plane").chain(args.iter().copied()))
                .map_err(|e| ConfigError::invalid("argv", "", e))?;
        Config::from_cli(cli)
    }

    #[test]
    fn flags_and_file_merge_with_labels_from_both() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let file = dir.path().join("dp.yaml");
        std::fs::write(
            &file,
            "region: eu-west-1\nlabels:\n  tier: gpu\n  team: ml\ncontrol-plane: [\"http://cp-a:7070\", \"https://cp-b:7443\"]\n",
        )
        .unwrap();
        let config = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--node-id",
            "node-7",
            "--label",
            "tier=cpu",
        ])
        .unwrap();
        assert_eq!(config.node.node_id, "node-7");
        assert_eq!(config.node.region, "eu-west-1");
        assert_eq!(config.node.labels["tier"], "cpu", "flag overrides file");
        assert_eq!(config.node.labels["team"], "ml");
        assert_eq!(config.control_plane.len(), 2);
        assert!(state.is_dir(), "state dir is created");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn invalid_values_are_rejected_with_reasons() {
        assert!(
            "ftp://x:1"
                .parse::<ControlPlaneUrl>()
                .unwrap_err()
                .contains("http://")
        );
        assert!(
            "http://x"
                .parse::<ControlPlaneUrl>()
                .unwrap_err()
                .contains("missing port")
        );
        assert!("Node_A".parse::<NodeName>().is_err());
        assert!("-a".parse::<NodeName>().is_err());
        assert!("node-1.eu".parse::<NodeName>().is_ok());
        assert!("tier".parse::<Label>().unwrap_err().contains("KEY=VALUE"));
        assert!(
            "tier=a b"
                .parse::<Label>()
                .unwrap_err()
                .contains("label value")
        );
        assert!("example.com/tier=gpu".parse::<Label>().is_ok());
    }

    #[test]
    fn the_documented_example_config_parses() {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/config/data-plane.yaml");
        let file: FileConfig = aios_runtime::config::load_file(&example).unwrap();
        let execution = Execution::resolve(ExecutionArgs::default(), file.execution).unwrap();
        assert_eq!(
            execution,
            Execution::default(),
            "the example shows the defaults"
        );
        let inference = Inference::resolve(InferenceArgs::default(), file.inference).unwrap();
        assert_eq!(inference.threads.get(), 4);
        assert_eq!(
            Inference {
                threads: Inference::default().threads,
                ..inference
            },
            Inference::default(),
            "the example shows the defaults (threads aside)"
        );
    }

    #[test]
    fn execution_settings_merge_flags_over_the_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let file = dir.path().join("dp.yaml");
        std::fs::write(
            &file,
            "execution:\n  retry-attempts: 2\n  breaker-open-for: 5s\n  cache-ttl: 0s\n",
        )
        .unwrap();
        let config = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--retry-attempts",
            "3",
            "--breaker-failure-percent",
            "80",
        ])
        .unwrap();
        let e = config.execution;
        assert_eq!(e.retry_attempts, 3, "the flag wins");
        assert_eq!(e.breaker_failure_percent, 80);
        assert_eq!(e.breaker_open_for, Duration::from_secs(5));
        assert_eq!(e.cache_ttl, Duration::ZERO);
        assert_eq!(e.breaker_min_calls, 40, "default");
        for (flag, value) in [
            ("--retry-attempts", "0"),
            ("--breaker-failure-percent", "101"),
            ("--breaker-min-calls", "0"),
            ("--breaker-window", "0s"),
        ] {
            let err = parse(&["--state-dir", state.to_str().unwrap(), flag, value])
                .unwrap_err()
                .one_line();
            assert!(err.contains(flag), "{err}");
        }
    }

    #[test]
    fn the_node_key_comes_from_the_file_else_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let good = "k".repeat(40);
        let file = dir.path().join("node.key");
        std::fs::write(&file, format!("{good}\n")).unwrap();

        let from_file = node_key(Some(file.clone()), Some("e".repeat(40))).unwrap();
        assert_eq!(from_file.unwrap().expose(), good, "the file wins, trimmed");
        let from_env = node_key(None, Some("e".repeat(40))).unwrap();
        assert_eq!(from_env.unwrap().expose(), "e".repeat(40));
        assert_eq!(node_key(None, None).unwrap(), None);

        let err = node_key(None, Some("short".into())).unwrap_err().one_line();
        assert!(
            err.starts_with("invalid AIOS_NODE_KEY '(hidden)': must be 32-256"),
            "{err}"
        );
        let missing = dir.path().join("missing.key");
        let err = node_key(Some(missing), None).unwrap_err().one_line();
        assert!(err.starts_with("invalid --node-key-file"), "{err}");
        std::fs::write(&file, "short").unwrap();
        let err = node_key(Some(file.clone()), None).unwrap_err().one_line();
        assert!(
            err.contains("must be 32-256") && !err.contains("short"),
            "{err}"
        );

        // From the flag and from the config file, and never shown in Debug.
        std::fs::write(&file, &good).unwrap();
        let state = dir.path().join("state");
        let config = parse(&[
            "--node-key-file",
            file.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(config.node_key.as_ref().unwrap().expose(), good);
        assert!(!format!("{config:?}").contains(&good));
        let yaml = dir.path().join("dp.yaml");
        std::fs::write(&yaml, format!("node-key-file: {}\n", file.display())).unwrap();
        let config = parse(&[
            "--config",
            yaml.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(config.node_key.unwrap().expose(), good);
    }

    #[test]
    fn an_unwritable_state_dir_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let bad = blocker.join("sub");
        let err = parse(&["--state-dir", bad.to_str().unwrap()])
            .unwrap_err()
            .one_line();
        assert!(err.starts_with("invalid --state-dir"), "{err}");
    }
}
