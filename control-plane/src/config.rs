//! The control plane's static configuration: one typed struct, merged from
//! defaults, the optional file, `AIOS_*` variables and flags, and validated
//! before anything starts.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use aios_runtime::{
    ConfigError, ListenAddr,
    cli::{CommonArgs, CommonFile, ProcessConfig},
    logging::LogFormat,
};
use clap::Parser;
use serde::Deserialize;

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default admin HTTP listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7071";
/// Default store: a single-file embedded store under the working directory.
pub const DEFAULT_STORE: &str = "embedded:aios-state/control-plane.db";

/// `aios-control-plane` command line. Every flag also reads `AIOS_<FLAG>`.
#[derive(Debug, Parser)]
#[command(
    name = "aios-control-plane",
    version,
    about = "The aios control plane: fleet state, config streaming, telemetry, budgets and approvals."
)]
pub struct Cli {
    /// gRPC listen address (AdminService, FleetService, TelemetryService, ApprovalService, BudgetService, health, reflection).
    #[arg(long, env = "AIOS_LISTEN", value_name = "ADDR")]
    pub listen: Option<ListenAddr>,
    /// Admin HTTP listen address (/metrics, /healthz, /readyz).
    #[arg(long, env = "AIOS_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<ListenAddr>,
    /// Where desired state lives: `embedded:PATH` (one machine) or `etcd://HOST:PORT[,HOST:PORT…]`.
    #[arg(long, env = "AIOS_STORE", value_name = "URL")]
    pub store: Option<StoreUrl>,
    /// File holding the platform admin key to create on first start (else
    /// AIOS_BOOTSTRAP_ADMIN_KEY; else one is generated and printed once).
    #[arg(long, env = "AIOS_BOOTSTRAP_ADMIN_KEY_FILE", value_name = "PATH")]
    pub bootstrap_admin_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Keys accepted in the `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<ListenAddr>,
    admin_listen: Option<ListenAddr>,
    store: Option<StoreUrl>,
    bootstrap_admin_key_file: Option<PathBuf>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(
        default,
        deserialize_with = "aios_runtime::config::deserialize_duration"
    )]
    shutdown_grace: Option<Duration>,
}

/// Validated control-plane configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// gRPC listen address.
    pub listen: ListenAddr,
    /// Admin HTTP listen address.
    pub admin_listen: ListenAddr,
    /// Store backend.
    pub store: StoreUrl,
    /// Platform admin key to create on first start; `None` = generate one.
    pub bootstrap_admin_key: Option<Secret>,
    /// Logging and shutdown.
    pub process: ProcessConfig,
}

impl Config {
    /// Merges and validates: defaults < file < env < flags.
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
        Ok(Self {
            listen: pick(cli.listen, file.listen, DEFAULT_LISTEN, "--listen")?,
            admin_listen: pick(
                cli.admin_listen,
                file.admin_listen,
                DEFAULT_ADMIN_LISTEN,
                "--admin-listen",
            )?,
            store: pick(cli.store, file.store, DEFAULT_STORE, "--store")?,
            bootstrap_admin_key: bootstrap_key(
                cli.bootstrap_admin_key_file
                    .or(file.bootstrap_admin_key_file),
            )?,
            process: ProcessConfig::resolve(&cli.common, &common)?,
        })
    }

    /// A configuration for one machine on free loopback ports, storing
    /// state under `state_dir` (used by `aiosctl dev` and tests).
    pub fn local(state_dir: &std::path::Path) -> Self {
        let any_port = ListenAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        Self {
            listen: any_port,
            admin_listen: any_port,
            store: StoreUrl::Embedded(state_dir.join("control-plane.db")),
            bootstrap_admin_key: None,
            process: ProcessConfig::default(),
        }
    }
}

/// The bootstrap key from a file, else from `AIOS_BOOTSTRAP_ADMIN_KEY`
/// (an environment variable, never a flag: flags show up in `ps`).
fn bootstrap_key(file: Option<PathBuf>) -> Result<Option<Secret>, ConfigError> {
    const SETTING: &str = "--bootstrap-admin-key-file";
    let key = match file {
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::invalid(SETTING, path.display(), e))?
            .trim()
            .to_string(),
        None => match std::env::var("AIOS_BOOTSTRAP_ADMIN_KEY") {
            Ok(key) => key.trim().to_string(),
            Err(_) => return Ok(None),
        },
    };
    Secret::new(key)
        .map(Some)
        .map_err(|reason| ConfigError::invalid("bootstrap admin key", "(hidden)", reason))
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Accepts keys of 32-256 printable ASCII characters.
    pub fn new(value: String) -> Result<Self, String> {
        if !(32..=256).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be 32-256 printable ASCII characters without spaces".into());
        }
        Ok(Self(value))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn pick<T: FromStr>(
    flag: Option<T>,
    file: Option<T>,
    default: &str,
    setting: &'static str,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match flag.or(file) {
        Some(value) => Ok(value),
        None => default
            .parse()
            .map_err(|e| ConfigError::invalid(setting, default, e)),
    }
}

// === StoreUrl ===

/// Where the control plane keeps desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A durable single-file store on this machine.
    Embedded(PathBuf),
    /// An etcd cluster, by client endpoints (`host:port`).
    Etcd(Vec<String>),
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("embedded:") {
            if path.is_empty() {
                return Err(
                    "embedded store needs a file path, e.g. embedded:/var/lib/aios/state.db".into(),
                );
            }
            return Ok(Self::Embedded(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("etcd://") {
            let endpoints: Vec<String> = rest.split(',').map(str::trim).map(String::from).collect();
            for endpoint in &endpoints {
                let valid = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
                });
                if !valid {
                    return Err(format!("etcd endpoint '{endpoint}' is not HOST:PORT"));
                }
            }
            return Ok(Self::Etcd(endpoints));
        }
        Err("expected embedded:PATH or etcd://HOST:PORT[,HOST:PORT...]".into())
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded(path) => write!(f, "embedded:{}", path.display()),
            Self::Etcd(endpoints) => write!(f, "etcd://{}", endpoints.join(",")),
        }
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|reason| serde::de::Error::custom(format!("invalid store '{text}': {reason}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let cli =
            Cli::try_parse_from(std::iter::once("aios-control-plane").chain(args.iter().copied()))
                .unwrap();
        Config::from_cli(cli)
    }

    #[test]
    fn defaults_apply_without_flags() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(config.store.to_string(), DEFAULT_STORE);
        assert_eq!(config.process, ProcessConfig::default());
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cp.yaml");
        std::fs::write(
            &file,
            "listen: 127.0.0.1:9000\nstore: etcd://etcd-1:2379,etcd-2:2379\nshutdown-grace: 3s\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let config = parse(&["--config", path, "--listen", "127.0.0.1:9100"]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(
            config.store,
            StoreUrl::Etcd(vec!["etcd-1:2379".into(), "etcd-2:2379".into()])
        );
        assert_eq!(config.process.shutdown_grace, Duration::from_secs(3));
    }

    #[test]
    fn store_urls_are_validated() {
        assert!(
            "embedded:"
                .parse::<StoreUrl>()
                .unwrap_err()
                .contains("file path")
        );
        assert!(
            "etcd://a:1,b"
                .parse::<StoreUrl>()
                .unwrap_err()
                .contains("'b'")
        );
        assert!("etcd://a:0".parse::<StoreUrl>().is_err());
        assert!(
            "redis://x"
                .parse::<StoreUrl>()
                .unwrap_err()
                .starts_with("expected embedded:PATH")
        );
        assert_eq!(
            "embedded:/x/y.db".parse::<StoreUrl>().unwrap(),
            StoreUrl::Embedded("/x/y.db".into())
        );
    }

    #[test]
    fn a_bad_file_value_names_the_file_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cp.yaml");
        std::fs::write(&file, "admin-listen: nowhere\n").unwrap();
        let err = parse(&["--config", file.to_str().unwrap()])
            .unwrap_err()
            .one_line();
        assert!(
            err.starts_with("invalid config file") && err.contains("invalid address 'nowhere'"),
            "{err}"
        );
    }
}
