//! `aios-control-plane`: parse config, start, serve until a signal, drain.

use aios_control_plane::{Cli, Config, ControlPlane};
use std::io::Write;

use aios_runtime::{cli, logging};

#[tokio::main]
async fn main() {
    // Before anything else: a SIGTERM during start-up must drain, not kill.
    let signals = aios_runtime::server::Signals::install();
    let cli: Cli = cli::parse_or_exit();
    let config = Config::from_cli(cli).unwrap_or_else(|e| cli::exit_config(&e.one_line()));
    if let Err(e) = logging::init(config.process.log_format, &config.process.log) {
        cli::exit_config(&e.one_line());
    }
    let plane = match ControlPlane::start(&config).await {
        Ok(plane) => plane,
        Err(e) => cli::exit_with(e.exit_code(), &e.to_string()),
    };
    if let Some(secret) = plane.bootstrap_secret() {
        show_bootstrap_secret(secret);
    }
    plane
        .run_until_signal(signals, config.process.shutdown_grace)
        .await;
}

/// The generated platform admin key is shown once, on the first start of a
/// fresh store; only its hash is kept.
fn show_bootstrap_secret(secret: &str) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n  aios: generated the platform admin key (shown once; only its hash is stored):\n\n      {secret}\n\n  Use it with: export AIOS_API_KEY=<key>\n"
    );
}
