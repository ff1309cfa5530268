//! Structured logs to stderr, as text for people or JSON for collectors.

use std::{io::IsTerminal, str::FromStr};

use serde::Deserialize;
use tracing_subscriber::{EnvFilter, fmt};

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
    }
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax
/// (e.g. `info,aios_control_plane=debug`). Installing twice in one process
/// (tests, `aiosctl dev`) keeps the first subscriber.
pub fn init(format: LogFormat, filter: &str) -> Result<(), crate::ConfigError> {
    let filter =
        EnvFilter::try_new(filter).map_err(|e| crate::ConfigError::invalid("--log", filter, e))?;
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        // Reporting a failed log write goes to stderr with eprintln!, which
        // panics when stderr is the thing that failed (a closed pipe).
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
