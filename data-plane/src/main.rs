//! `aios-data-plane`: parse config, start, serve until a signal, drain.

use aios_data_plane::{Cli, Config, DataPlane};
use aios_runtime::{cli, logging};

/// mimalloc, not the system allocator: a request allocates a few hundred
/// small objects and frees them again, and glibc's malloc (fast-bin
/// consolidation, arena locks on frees that miss its per-thread cache)
/// made each request cost the node 10-25% more CPU in `bench-overhead`
/// (BENCHMARKS.md). The control plane keeps the system allocator: there
/// mimalloc measured slower.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    // Before anything else: a SIGTERM during start-up must drain, not kill.
    let signals = aios_runtime::server::Signals::install();
    let cli: Cli = cli::parse_or_exit();
    let config = Config::from_cli(cli).unwrap_or_else(|e| cli::exit_config(&e.one_line()));
    if let Err(e) = logging::init(config.process.log_format, &config.process.log) {
        cli::exit_config(&e.one_line());
    }
    let plane = match DataPlane::start(&config).await {
        Ok(plane) => plane,
        Err(e) => cli::exit_with(e.exit_code(), &e.to_string()),
    };
    plane
        .run_until_signal(signals, config.process.shutdown_grace)
        .await;
}
