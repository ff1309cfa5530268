//! The control plane's static configuration: one typed struct, merged from
//! defaults, the optional file, `AIOS_*` variables and flags, and validated
//! before anything starts.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use aios_runtime::{
    ConfigError, ListenAddr, Secret,
    cli::{CommonArgs, CommonFile, ProcessConfig},
    logging::LogFormat,
};
use clap::Parser;

use crate::telemetry::otlp::OtlpSettings;
use serde::Deserialize;

pub use crate::store::etcd::EtcdTls;

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default admin HTTP listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7071";
/// Default store: a single-file embedded store under the working directory.
pub const DEFAULT_STORE: &str = "embedded:aios-state/control-plane.db";
/// Default retention of span batches in the store.
pub const DEFAULT_TELEMETRY_RETENTION: Duration = Duration::from_secs(2 * 3600);
/// Shortest and longest accepted `--telemetry-retention`: at least a
/// minute (batches sit under one lease per minute), at most the 7 days the
/// hourly rollups are kept.
const TELEMETRY_RETENTION_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(7 * 24 * 3600));
/// Shortest and longest accepted `--budget-allowance-ttl`.
const ALLOWANCE_TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(2), Duration::from_secs(600));
/// Shortest and longest retention of records kept for people (budget
/// ledgers, closed approvals).
const LONG_RETENTION_RANGE: (Duration, Duration) = (
    Duration::from_secs(3600),
    Duration::from_secs(3650 * 86_400),
);

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
    /// This replica's id in the fleet view and leader election (default: host name and process id).
    #[arg(long, env = "AIOS_REPLICA_ID", value_name = "ID")]
    pub replica_id: Option<String>,
    /// How long span batches stay in the store (a restarted replica rebuilds
    /// its rollups from what is kept), e.g. `2h`; 1m to 7 days.
    #[arg(long, env = "AIOS_TELEMETRY_RETENTION", value_name = "DURATION", value_parser = aios_runtime::config::parse_duration)]
    pub telemetry_retention: Option<Duration>,
    /// How long a node's budget allowance lives unless renewed, e.g. `15s`
    /// (2s-10m). What a crashed node held comes back after this long.
    #[arg(long, env = "AIOS_BUDGET_ALLOWANCE_TTL", value_name = "DURATION", value_parser = aios_runtime::config::parse_duration)]
    pub budget_allowance_ttl: Option<Duration>,
    /// How long a budget ledger (spend of one window) is kept after its
    /// window ends, e.g. `90d` (1h-3650d).
    #[arg(long, env = "AIOS_BUDGET_LEDGER_RETENTION", value_name = "DURATION", value_parser = aios_runtime::config::parse_duration)]
    pub budget_ledger_retention: Option<Duration>,
    /// How long a closed (rejected, expired or executed) approval is kept,
    /// e.g. `30d` (1h-3650d); the audit log keeps its record after.
    #[arg(long, env = "AIOS_APPROVAL_RETENTION", value_name = "DURATION", value_parser = aios_runtime::config::parse_duration)]
    pub approval_retention: Option<Duration>,
    /// Export every span to this OpenTelemetry collector (OTLP/gRPC), e.g.
    /// `http://otel-collector:4317`. Unset = no export.
    #[arg(long, env = "AIOS_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Metadata sent with every OTLP export, e.g. `authorization=Bearer …`;
    /// repeatable (AIOS_OTLP_HEADERS: comma-separated).
    #[arg(
        long = "otlp-header",
        env = "AIOS_OTLP_HEADERS",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub otlp_headers: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
    // Last: its help heading would also cover the flags after it.
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// How to reach an `etcd://` store: TLS and etcd's own authentication.
#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "etcd (with an etcd:// store)")]
pub struct EtcdArgs {
    /// CA certificate (PEM) that signed etcd's server certificates; turns on TLS to etcd.
    #[arg(long, env = "AIOS_ETCD_CA_FILE", value_name = "PATH")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-key-file.
    #[arg(long, env = "AIOS_ETCD_CERT_FILE", value_name = "PATH")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert-file.
    #[arg(long, env = "AIOS_ETCD_KEY_FILE", value_name = "PATH")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user, when etcd has auth enabled; the password comes from
    /// AIOS_ETCD_PASSWORD or --etcd-password-file, never from a flag.
    #[arg(long, env = "AIOS_ETCD_USER", value_name = "USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (else AIOS_ETCD_PASSWORD).
    #[arg(long, env = "AIOS_ETCD_PASSWORD_FILE", value_name = "PATH")]
    pub etcd_password_file: Option<PathBuf>,
}

/// Keys accepted in the `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<ListenAddr>,
    admin_listen: Option<ListenAddr>,
    store: Option<StoreUrl>,
    bootstrap_admin_key_file: Option<PathBuf>,
    replica_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "aios_runtime::config::deserialize_duration"
    )]
    telemetry_retention: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "aios_runtime::config::deserialize_duration"
    )]
    budget_allowance_ttl: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "aios_runtime::config::deserialize_duration"
    )]
    budget_ledger_retention: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "aios_runtime::config::deserialize_duration"
    )]
    approval_retention: Option<Duration>,
    otlp_endpoint: Option<String>,
    otlp_headers: Option<Vec<String>>,
    etcd_ca_file: Option<PathBuf>,
    etcd_cert_file: Option<PathBuf>,
    etcd_key_file: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
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
    /// TLS and credentials for an `etcd://` store (empty otherwise).
    pub etcd: EtcdSettings,
    /// Platform admin key to create on first start; `None` = generate one.
    pub bootstrap_admin_key: Option<Secret>,
    /// This replica's id (fleet view, leader election).
    pub replica_id: String,
    /// How long span batches stay in the store.
    pub telemetry_retention: Duration,
    /// How long a budget allowance lives unless renewed.
    pub budget_allowance_ttl: Duration,
    /// How long a budget ledger is kept after its window ends.
    pub budget_ledger_retention: Duration,
    /// How long a closed approval is kept.
    pub approval_retention: Duration,
    /// Where spans are exported over OTLP; `None` = nowhere.
    pub otlp: Option<OtlpSettings>,
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
        let etcd = EtcdArgs {
            etcd_ca_file: cli.etcd.etcd_ca_file.or(file.etcd_ca_file),
            etcd_cert_file: cli.etcd.etcd_cert_file.or(file.etcd_cert_file),
            etcd_key_file: cli.etcd.etcd_key_file.or(file.etcd_key_file),
            etcd_user: cli.etcd.etcd_user.or(file.etcd_user),
            etcd_password_file: cli.etcd.etcd_password_file.or(file.etcd_password_file),
        };
        let store = pick(cli.store, file.store, DEFAULT_STORE, "--store")?;
        Ok(Self {
            listen: pick(cli.listen, file.listen, DEFAULT_LISTEN, "--listen")?,
            admin_listen: pick(
                cli.admin_listen,
                file.admin_listen,
                DEFAULT_ADMIN_LISTEN,
                "--admin-listen",
            )?,
            etcd: EtcdSettings::resolve(&store, etcd)?,
            store,
            bootstrap_admin_key: bootstrap_key(
                cli.bootstrap_admin_key_file
                    .or(file.bootstrap_admin_key_file),
            )?,
            replica_id: replica_id(cli.replica_id.or(file.replica_id))?,
            telemetry_retention: bounded(
                "--telemetry-retention",
                cli.telemetry_retention.or(file.telemetry_retention),
                DEFAULT_TELEMETRY_RETENTION,
                TELEMETRY_RETENTION_RANGE,
                "1m and 168h (7 days)",
            )?,
            budget_allowance_ttl: bounded(
                "--budget-allowance-ttl",
                cli.budget_allowance_ttl.or(file.budget_allowance_ttl),
                crate::budget::DEFAULT_ALLOWANCE_TTL,
                ALLOWANCE_TTL_RANGE,
                "2s and 10m",
            )?,
            budget_ledger_retention: bounded(
                "--budget-ledger-retention",
                cli.budget_ledger_retention.or(file.budget_ledger_retention),
                crate::budget::sweep::DEFAULT_LEDGER_RETENTION,
                LONG_RETENTION_RANGE,
                "1h and 3650d",
            )?,
            approval_retention: bounded(
                "--approval-retention",
                cli.approval_retention.or(file.approval_retention),
                crate::approvals::retention::DEFAULT_APPROVAL_RETENTION,
                LONG_RETENTION_RANGE,
                "1h and 3650d",
            )?,
            otlp: otlp(
                cli.otlp_endpoint.or(file.otlp_endpoint),
                match cli.otlp_headers.is_empty() {
                    true => file.otlp_headers.unwrap_or_default(),
                    false => cli.otlp_headers,
                },
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
            etcd: EtcdSettings::default(),
            bootstrap_admin_key: None,
            replica_id: default_replica_id(),
            telemetry_retention: DEFAULT_TELEMETRY_RETENTION,
            budget_allowance_ttl: crate::budget::DEFAULT_ALLOWANCE_TTL,
            budget_ledger_retention: crate::budget::sweep::DEFAULT_LEDGER_RETENTION,
            approval_retention: crate::approvals::retention::DEFAULT_APPROVAL_RETENTION,
            otlp: None,
            process: ProcessConfig::default(),
        }
    }
}

/// A replica id: 1-253 printable characters without spaces.
fn replica_id(value: Option<String>) -> Result<String, ConfigError> {
    let Some(id) = value else {
        return Ok(default_replica_id());
    };
    if id.is_empty() || id.len() > 253 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::invalid(
            "--replica-id",
            &id,
            "must be 1-253 printable ASCII characters without spaces",
        ));
    }
    Ok(id)
}

/// A duration setting: `value`, or `default` when unset, within `range`
/// (inclusive), which `range_text` states for the user.
fn bounded(
    flag: &'static str,
    value: Option<Duration>,
    default: Duration,
    (min, max): (Duration, Duration),
    range_text: &str,
) -> Result<Duration, ConfigError> {
    let duration = value.unwrap_or(default);
    if duration < min || duration > max {
        return Err(ConfigError::invalid(
            flag,
            format!("{}s", duration.as_secs_f64()),
            format!("must be between {range_text}"),
        ));
    }
    Ok(duration)
}

/// The OTLP export settings: a gRPC URL and `key=value` headers with
/// valid names and values (keys lowercased, as gRPC metadata is).
fn otlp(
    endpoint: Option<String>,
    headers: Vec<String>,
) -> Result<Option<OtlpSettings>, ConfigError> {
    let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) else {
        if let Some(header) = headers.first() {
            return Err(ConfigError::invalid(
                "--otlp-header",
                redact(header),
                "needs --otlp-endpoint",
            ));
        }
        return Ok(None);
    };
    let valid_url = tonic::transport::Endpoint::from_shared(endpoint.clone()).is_ok()
        && (endpoint.starts_with("http://") || endpoint.starts_with("https://"));
    if !valid_url {
        return Err(ConfigError::invalid(
            "--otlp-endpoint",
            &endpoint,
            "must be an http:// or https:// URL, e.g. http://otel-collector:4317",
        ));
    }
    let mut settings = OtlpSettings::new(endpoint);
    for header in headers {
        let Some((key, value)) = header.split_once('=') else {
            return Err(ConfigError::invalid(
                "--otlp-header",
                redact(&header),
                "must be KEY=VALUE",
            ));
        };
        let key = key.trim().to_ascii_lowercase();
        let valid =
            tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(key.as_bytes())
                .is_ok()
                && tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value)
                    .is_ok();
        if !valid {
            return Err(ConfigError::invalid(
                "--otlp-header",
                redact(&header),
                "needs a header name and a printable ASCII value",
            ));
        }
        settings.headers.push((key, value.to_string()));
    }
    Ok(Some(settings))
}

/// `key=…`: header values are often credentials.
fn redact(header: &str) -> String {
    match header.split_once('=') {
        Some((key, _)) => format!("{key}=…"),
        None => header.to_string(),
    }
}

/// `{host name}-{pid}`: unique among replicas running at the same time.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "replica".to_string());
    format!("{host}-{}", std::process::id())
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

// === EtcdSettings ===

/// How to reach an `etcd://` store, validated: the files exist and are
/// readable, certificate and key come together, a user has a password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSettings {
    /// TLS files; `None` = plain HTTP.
    pub tls: Option<EtcdTls>,
    /// etcd user and password, when etcd has auth enabled.
    pub auth: Option<EtcdAuth>,
}

/// An etcd user and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    /// User name.
    pub user: String,
    /// Password (from a file or `AIOS_ETCD_PASSWORD`).
    pub password: Secret,
}

impl EtcdSettings {
    /// Checks the merged `args` against `store` and against each other.
    fn resolve(store: &StoreUrl, args: EtcdArgs) -> Result<Self, ConfigError> {
        // An environment variable, never a flag: flags show up in `ps`.
        let password_env = std::env::var("AIOS_ETCD_PASSWORD").ok();
        let files = [
            ("--etcd-ca-file", &args.etcd_ca_file),
            ("--etcd-cert-file", &args.etcd_cert_file),
            ("--etcd-key-file", &args.etcd_key_file),
            ("--etcd-password-file", &args.etcd_password_file),
        ];
        if let StoreUrl::Embedded(_) = store {
            let file = files.into_iter().find_map(|(setting, path)| {
                path.as_ref()
                    .map(|path| (setting, path.display().to_string()))
            });
            let user = args.etcd_user.map(|user| ("--etcd-user", user));
            let password = password_env.map(|_| ("AIOS_ETCD_PASSWORD", "(hidden)".into()));
            return match file.or(user).or(password) {
                Some((setting, value)) => Err(ConfigError::invalid(
                    setting,
                    value,
                    format!("needs an etcd:// store (--store is {store})"),
                )),
                None => Ok(Self::default()),
            };
        }
        for (setting, path) in files {
            if let Some(path) = path {
                readable(setting, path)?;
            }
        }
        Ok(Self {
            tls: tls(args.etcd_ca_file, args.etcd_cert_file, args.etcd_key_file)?,
            auth: auth(args.etcd_user, args.etcd_password_file, password_env)?,
        })
    }
}

/// TLS on with a CA file; a client certificate and its key both or neither.
fn tls(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<EtcdTls>, ConfigError> {
    const NO_CA: &str = "needs --etcd-ca-file: a client certificate is only sent over TLS";
    const NO_KEY: &str = "needs --etcd-key-file (certificate and key go together)";
    const NO_CERT: &str = "needs --etcd-cert-file (certificate and key go together)";
    let refuse =
        |setting, path: PathBuf, reason| Err(ConfigError::invalid(setting, path.display(), reason));
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (None, Some(path), _) => refuse("--etcd-cert-file", path, NO_CA),
        (None, None, Some(path)) => refuse("--etcd-key-file", path, NO_CA),
        (Some(_), Some(path), None) => refuse("--etcd-cert-file", path, NO_KEY),
        (Some(_), None, Some(path)) => refuse("--etcd-key-file", path, NO_CERT),
        (Some(ca_file), client_cert_file, client_key_file) => Ok(Some(EtcdTls {
            ca_file,
            client_cert_file,
            client_key_file,
        })),
    }
}

/// A user and a password both or neither; the password file wins over
/// `AIOS_ETCD_PASSWORD`, as the bootstrap key's file does.
fn auth(
    user: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
) -> Result<Option<EtcdAuth>, ConfigError> {
    let password = match (password_file, password_env) {
        (Some(path), _) => {
            const SETTING: &str = "--etcd-password-file";
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::invalid(SETTING, path.display(), e))?;
            let password = text.trim_end_matches(['\n', '\r']).to_string();
            Some((SETTING, path.display().to_string(), password))
        }
        (None, Some(password)) => Some(("AIOS_ETCD_PASSWORD", "(hidden)".into(), password)),
        (None, None) => None,
    };
    match (user, password) {
        (None, None) => Ok(None),
        (Some(user), None) => Err(ConfigError::invalid(
            "--etcd-user",
            user,
            "needs a password: set AIOS_ETCD_PASSWORD or --etcd-password-file",
        )),
        (None, Some((setting, value, _))) => {
            Err(ConfigError::invalid(setting, value, "needs --etcd-user"))
        }
        (Some(user), Some(_)) if user.is_empty() => {
            Err(ConfigError::invalid("--etcd-user", "", "must not be empty"))
        }
        (Some(user), Some((setting, value, password))) => {
            let password = Secret::password(password)
                .map_err(|reason| ConfigError::invalid(setting, value, reason))?;
            Ok(Some(EtcdAuth { user, password }))
        }
    }
}

/// A config error unless `path` is a file this process can open.
fn readable(setting: &'static str, path: &std::path::Path) -> Result<(), ConfigError> {
    let invalid = |reason: &dyn fmt::Display| ConfigError::invalid(setting, path.display(), reason);
    std::fs::File::open(path).map_err(|e| invalid(&e))?;
    match path.is_file() {
        true => Ok(()),
        false => Err(invalid(&"not a file")),
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
    use std::path::Path;

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
        assert_eq!(config.telemetry_retention, DEFAULT_TELEMETRY_RETENTION);
        assert_eq!(config.process, ProcessConfig::default());
    }

    #[test]
    fn telemetry_retention_comes_from_flag_or_file_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cp.yaml");
        std::fs::write(&file, "telemetry-retention: 30m\n").unwrap();
        let path = file.to_str().unwrap();
        let from_file = parse(&["--config", path]).unwrap();
        assert_eq!(from_file.telemetry_retention, Duration::from_secs(1800));
        let from_flag = parse(&["--config", path, "--telemetry-retention", "6h"]).unwrap();
        assert_eq!(from_flag.telemetry_retention, Duration::from_secs(6 * 3600));
        for bad in ["30s", "200h"] {
            let err = parse(&["--telemetry-retention", bad])
                .unwrap_err()
                .one_line();
            assert!(err.starts_with("invalid --telemetry-retention"), "{err}");
        }
    }

    #[test]
    fn otlp_export_is_off_by_default_and_checked_when_set() {
        assert_eq!(parse(&[]).unwrap().otlp, None);
        let config = parse(&[
            "--otlp-endpoint",
            "http://collector:4317",
            "--otlp-header",
            "Authorization=Bearer abc",
            "--otlp-header",
            "x-team=ml",
        ])
        .unwrap();
        let otlp = config.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://collector:4317");
        assert_eq!(
            otlp.headers,
            [
                ("authorization".to_string(), "Bearer abc".to_string()),
                ("x-team".to_string(), "ml".to_string())
            ]
        );
        assert!(
            !format!("{otlp:?}").contains("abc"),
            "header values are not logged"
        );
        for (args, flag) in [
            (
                &["--otlp-endpoint", "collector:4317"][..],
                "--otlp-endpoint",
            ),
            (&["--otlp-header", "a=b"][..], "--otlp-header"),
            (
                &["--otlp-endpoint", "http://c:4317", "--otlp-header", "nokey"][..],
                "--otlp-header",
            ),
            (
                &[
                    "--otlp-endpoint",
                    "http://c:4317",
                    "--otlp-header",
                    "bad key=secret",
                ][..],
                "--otlp-header",
            ),
        ] {
            let err = parse(args).unwrap_err().one_line();
            assert!(err.starts_with(&format!("invalid {flag}")), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
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

    /// Writes each `(name, text)` into `dir`; returns their paths.
    fn files<const N: usize>(dir: &Path, files: [(&str, &str); N]) -> [String; N] {
        files.map(|(name, text)| {
            std::fs::write(dir.join(name), text).unwrap();
            dir.join(name).to_str().unwrap().to_string()
        })
    }

    /// The etcd settings of `--store etcd://e:2379` plus `args` (split on
    /// spaces: temporary paths have none), or the one-line error.
    fn etcd(args: &str) -> Result<EtcdSettings, String> {
        let args = format!("--store etcd://e:2379 {args}");
        let args: Vec<&str> = args.split_whitespace().collect();
        parse(&args).map(|c| c.etcd).map_err(|e| e.one_line())
    }

    fn user_and_password(settings: &EtcdSettings) -> (&str, &str) {
        let auth = settings.auth.as_ref().unwrap();
        (auth.user.as_str(), auth.password.expose())
    }

    #[test]
    fn etcd_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let [ca, ca_flag, cert, key, pw, config] = files(
            dir.path(),
            [
                ("ca", ""),
                ("ca-flag", ""),
                ("cert", ""),
                ("key", ""),
                ("pw", "s3cret\n"),
                ("c", ""),
            ],
        );
        let yaml = format!(
            "etcd-ca-file: {ca}\netcd-cert-file: {cert}\netcd-key-file: {key}\n\
             etcd-user: file-user\netcd-password-file: {pw}\n"
        );
        std::fs::write(&config, yaml).unwrap();
        let from_file = etcd(&format!("--config {config}")).unwrap();
        let tls = from_file.tls.as_ref().unwrap();
        assert_eq!(
            (&tls.ca_file, &tls.client_key_file),
            (&ca.into(), &Some(key.into()))
        );
        assert_eq!(user_and_password(&from_file), ("file-user", "s3cret"));
        let flags = format!("--config {config} --etcd-ca-file {ca_flag} --etcd-user flag-user");
        let from_flags = etcd(&flags).unwrap();
        assert_eq!(
            from_flags.tls.as_ref().unwrap().ca_file,
            PathBuf::from(ca_flag)
        );
        assert_eq!(user_and_password(&from_flags), ("flag-user", "s3cret"));
        assert_eq!(etcd("").unwrap(), EtcdSettings::default());
    }

    /// clap reads `AIOS_*` from the real environment, which a test may not
    /// change in its own process (tests run in parallel; `set_var` is
    /// unsafe), so this runs [`etcd_settings_in_a_set_environment`] in a
    /// child process with the variables set.
    #[test]
    fn etcd_env_overrides_the_file_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let [ca_file, ca_env, config, ..] = files(
            dir.path(),
            [
                ("ca-file", ""),
                ("ca-env", ""),
                ("c", ""),
                ("ca-flag", ""),
                ("pw", "from-file"),
            ],
        );
        let yaml = format!("store: etcd://e:2379\netcd-ca-file: {ca_file}\netcd-user: file-user\n");
        std::fs::write(&config, yaml).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("AIOS_") {
                child.env_remove(key);
            }
        }
        let module = module_path!().split_once("::").unwrap().1;
        let test = format!("{module}::etcd_settings_in_a_set_environment");
        let output = child
            .args([test.as_str(), "--exact", "--ignored"])
            .envs([("AIOS_CONFIG", &config), ("AIOS_ETCD_CA_FILE", &ca_env)])
            .envs([
                ("AIOS_ETCD_USER", "env-user"),
                ("AIOS_ETCD_PASSWORD", "from-env"),
            ])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && out.contains("1 passed"),
            "{out}{err}"
        );
    }

    #[test]
    #[ignore = "run by etcd_env_overrides_the_file_and_flags_override_env, with its environment"]
    fn etcd_settings_in_a_set_environment() {
        let config = PathBuf::from(std::env::var("AIOS_CONFIG").unwrap());
        let dir = config.parent().unwrap().to_str().unwrap();
        let env = parse(&[]).unwrap().etcd;
        assert_eq!(
            env.tls.as_ref().unwrap().ca_file,
            PathBuf::from(format!("{dir}/ca-env"))
        );
        assert_eq!(user_and_password(&env), ("env-user", "from-env"));
        let flags = format!(
            "--etcd-ca-file {dir}/ca-flag --etcd-user flag-user --etcd-password-file {dir}/pw"
        );
        let flags = etcd(&flags).unwrap();
        let ca = &flags.tls.as_ref().unwrap().ca_file;
        assert_eq!(ca, &PathBuf::from(format!("{dir}/ca-flag")));
        // The password file wins over AIOS_ETCD_PASSWORD.
        assert_eq!(user_and_password(&flags), ("flag-user", "from-file"));
        let shown = format!("{env:?}");
        assert!(
            shown.contains("env-user") && !shown.contains("from-env"),
            "{shown}"
        );
    }

    #[test]
    fn client_certificate_and_key_come_together_over_tls() {
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key] = files(dir.path(), [("ca", ""), ("cert", ""), ("key", "")]);
        let cases = [
            (
                format!("--etcd-ca-file {ca} --etcd-cert-file {cert}"),
                "cert-file '",
            ),
            (
                format!("--etcd-ca-file {ca} --etcd-key-file {key}"),
                "key-file '",
            ),
            (
                format!("--etcd-cert-file {cert} --etcd-key-file {key}"),
                "needs --etcd-ca-file",
            ),
            (format!("--etcd-key-file {key}"), "needs --etcd-ca-file"),
        ];
        for (args, expected) in cases {
            let err = etcd(&args).unwrap_err();
            assert!(
                err.starts_with("invalid --etcd-") && err.contains(expected),
                "{err}"
            );
        }
        let both = etcd(&format!(
            "--etcd-ca-file {ca} --etcd-cert-file {cert} --etcd-key-file {key}"
        ));
        assert_eq!(
            both.unwrap().tls.unwrap().client_cert_file,
            Some(cert.into())
        );
        let ca_only = etcd(&format!("--etcd-ca-file {ca}")).unwrap().tls.unwrap();
        assert_eq!(
            (ca_only.client_cert_file, ca_only.client_key_file),
            (None, None)
        );
    }

    #[test]
    fn etcd_user_and_password_come_together() {
        let dir = tempfile::tempdir().unwrap();
        let [pw, empty] = files(dir.path(), [("pw", "x"), ("empty", "\n")]);
        let err = etcd("--etcd-user root").unwrap_err();
        assert!(
            err.contains("needs a password: set AIOS_ETCD_PASSWORD"),
            "{err}"
        );
        let err = etcd(&format!("--etcd-password-file {pw}")).unwrap_err();
        assert!(err.ends_with("needs --etcd-user"), "{err}");
        let err = etcd(&format!("--etcd-user root --etcd-password-file {empty}")).unwrap_err();
        assert!(err.starts_with("invalid --etcd-password-file"), "{err}");
    }

    #[test]
    fn etcd_settings_need_an_etcd_store() {
        let dir = tempfile::tempdir().unwrap();
        let [ca] = files(dir.path(), [("ca", "")]);
        for args in [["--etcd-ca-file", &ca], ["--etcd-user", "root"]] {
            let err = parse(&args).unwrap_err().one_line();
            let expected = format!("invalid {} '{}': needs an etcd:// store", args[0], args[1]);
            assert!(err.starts_with(&expected), "{err}");
        }
    }

    #[test]
    fn etcd_files_must_exist_and_be_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = format!("{}/missing.pem", dir.path().display());
        let err = etcd(&format!("--etcd-ca-file {missing}")).unwrap_err();
        let expected = format!("invalid --etcd-ca-file '{missing}': No such file");
        assert!(err.starts_with(&expected), "{err}");
        let err = etcd(&format!("--etcd-ca-file {}", dir.path().display())).unwrap_err();
        assert!(err.ends_with("not a file"), "{err}");
        let err = etcd(&format!("--etcd-user u --etcd-password-file {missing}")).unwrap_err();
        assert!(err.starts_with("invalid --etcd-password-file"), "{err}");
    }

    #[test]
    fn the_etcd_password_never_shows_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let [pw] = files(dir.path(), [("pw", "hunter2-password")]);
        let args = [
            "--store",
            "etcd://e:1",
            "--etcd-user",
            "u",
            "--etcd-password-file",
            &pw,
        ];
        let config = parse(&args).unwrap();
        assert_eq!(user_and_password(&config.etcd).1, "hunter2-password");
        let shown = format!("{config:?}");
        assert!(
            shown.contains("Secret(***)") && !shown.contains("hunter2"),
            "{shown}"
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
