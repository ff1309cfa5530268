//! Command-line parsing with the exit contract operators script against:
//! `--help`/`--version` exit 0, any configuration problem prints one line
//! to stderr and exits with [`EXIT_CONFIG`].

use std::io::Write;

use clap::Parser;

/// Exit code for invalid configuration (flags, env, file, unusable address).
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for a failure after a valid start.
pub const EXIT_FAILURE: i32 = 1;

/// Parses the process arguments into `C`, or exits as described above.
pub fn parse_or_exit<C: Parser>() -> C {
    match C::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version: clap renders them to stdout.
            let _ = err.print();
            std::process::exit(0);
        }
        Err(err) => {
            // clap's error is several lines (tips, usage); the first line is
            // the reason, e.g. "error: unexpected argument '--x' found".
            let rendered = err.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            exit_config(first.trim_start_matches("error: "))
        }
    }
}

/// Prints `error: REASON` (one line) to stderr and exits with [`EXIT_CONFIG`].
pub fn exit_config(reason: &str) -> ! {
    exit_with(EXIT_CONFIG, reason)
}

/// Prints `error: REASON` (one line) to stderr and exits with `code`.
pub fn exit_with(code: i32, reason: &str) -> ! {
    let line = crate::config::one_line(reason);
    let _ = writeln!(std::io::stderr().lock(), "error: {line}");
    std::process::exit(code)
}

/// Flags every aios server shares. Flatten into a binary's clap struct.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// Optional YAML/JSON config file with the same keys as the flags
    /// (kebab-case). Flags and AIOS_* variables override it.
    #[arg(long, env = "AIOS_CONFIG", value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,aios_data_plane=debug`.
    #[arg(long, env = "AIOS_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format.
    #[arg(long, env = "AIOS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<crate::logging::LogFormat>,
    /// How long in-flight calls may run after SIGINT/SIGTERM before they are cut, e.g. `10s`.
    #[arg(long, env = "AIOS_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub shutdown_grace: Option<std::time::Duration>,
}

/// Process settings every aios server shares, after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Log filter.
    pub log: String,
    /// Log format.
    pub log_format: crate::logging::LogFormat,
    /// Drain bound on shutdown.
    pub shutdown_grace: std::time::Duration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            log: "info".into(),
            log_format: crate::logging::LogFormat::Text,
            shutdown_grace: std::time::Duration::from_secs(10),
        }
    }
}

/// The common keys as they appear in a config file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CommonFile {
    /// See [`CommonArgs::log`].
    pub log: Option<String>,
    /// See [`CommonArgs::log_format`].
    pub log_format: Option<crate::logging::LogFormat>,
    /// See [`CommonArgs::shutdown_grace`].
    #[serde(default, deserialize_with = "crate::config::deserialize_duration")]
    pub shutdown_grace: Option<std::time::Duration>,
}

impl ProcessConfig {
    /// Merges defaults, the file's keys, then env and flags.
    pub fn resolve(args: &CommonArgs, file: &CommonFile) -> Result<Self, crate::ConfigError> {
        let defaults = Self::default();
        let config = Self {
            log: args
                .log
                .clone()
                .or_else(|| file.log.clone())
                .unwrap_or(defaults.log),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(defaults.log_format),
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(defaults.shutdown_grace),
        };
        tracing_subscriber::EnvFilter::try_new(&config.log)
            .map_err(|e| crate::ConfigError::invalid("--log", &config.log, e))?;
        Ok(config)
    }
}
