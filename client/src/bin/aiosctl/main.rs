//! `aiosctl`: operate aios from the command line.

mod apply;
mod approvals;
mod audit;
mod budgets;
mod delete;
mod demo;
mod dev;
mod diff;
mod fleet;
mod get;
mod linediff;
mod output;
mod resources;
mod status;
mod top;
mod traces;

use std::{path::PathBuf, time::Duration};

use aios_runtime::cli;
use clap::{Parser, Subcommand};
use output::Format;
use resources::Failure;

/// Default control-plane endpoint.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7070";
/// Default data-plane endpoint.
const DEFAULT_DATA_PLANE: &str = "http://127.0.0.1:7080";

#[derive(Debug, Parser)]
#[command(
    name = "aiosctl",
    version,
    about = "Operate aios: resources, the audit log, budgets, the fleet of nodes, traffic and traces, status, and a local dev environment."
)]
struct Cli {
    /// Control-plane gRPC endpoint.
    #[arg(long, global = true, env = "AIOS_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_name = "URL")]
    endpoint: String,
    /// API key sent with every call (prefer the AIOS_API_KEY variable: flags show up in `ps`).
    #[arg(
        long,
        global = true,
        env = "AIOS_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Per-call timeout, e.g. `5s` or `500ms`.
    #[arg(long, global = true, env = "AIOS_TIMEOUT", default_value = "5s", value_parser = aios_runtime::config::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Report the health and services of a control plane and a data plane.
    Status {
        /// Data-plane gRPC endpoint.
        #[arg(long, env = "AIOS_DATA_PLANE_ENDPOINT", default_value = DEFAULT_DATA_PLANE, value_name = "URL")]
        data_plane: String,
    },
    /// Run a control plane (embedded store) and a data plane in this process on free local ports.
    Dev {
        /// Where the embedded store and the node's state live.
        #[arg(
            long,
            env = "AIOS_DEV_STATE_DIR",
            default_value = "aios-state/dev",
            value_name = "PATH"
        )]
        state_dir: PathBuf,
        /// Log filter for the embedded planes (logs go to stderr).
        #[arg(long, env = "AIOS_LOG", default_value = "warn", value_name = "FILTER")]
        log: String,
    },
    /// Create or update the resources in manifests, all-or-nothing (at most 32 per apply).
    Apply(apply::Args),
    /// Show one resource or list them, as a table or as manifests (-o yaml|json).
    Get(get::Args),
    /// Delete a resource.
    Delete(delete::Args),
    /// Show what `apply` would change; exits 0 if nothing, 1 if something, 2 on error.
    Diff(diff::Args),
    /// Show the audit log, newest first.
    Audit(audit::Args),
    /// Decide human approvals: `approvals ls`, `approve ID`, `reject ID` (with --comment), `watch`.
    Approvals(approvals::Args),
    /// Show spend against budgets: `budgets status [NAME]` (limit, spent, reserved, remaining per window).
    Budgets(budgets::Args),
    /// Show data-plane nodes: `fleet ls`, `fleet describe NODE` (what it runs, what it rejected).
    Fleet(fleet::Args),
    /// Show recent traces: `traces get TRACE_ID` (a tree of spans, or -o json to export).
    Traces(traces::Args),
    /// Watch the traffic live, like `top`: rollups every second, busiest agents (models, nodes…) first.
    Top(top::Args),
}

/// Global options every command gets.
#[derive(Debug, Clone)]
struct Globals {
    endpoint: String,
    api_key: Option<String>,
    output: Format,
    timeout: Duration,
}

#[tokio::main]
async fn main() {
    let cli: Cli = cli::parse_or_exit();
    let globals = Globals {
        endpoint: cli.endpoint,
        api_key: cli.api_key,
        output: cli.output,
        timeout: cli.timeout,
    };
    let code: Result<i32, Failure> = match &cli.command {
        Command::Status { data_plane } => status::run(&globals, data_plane)
            .await
            .map_err(Failure::from),
        Command::Dev { state_dir, log } => dev::run(&globals, state_dir, log)
            .await
            .map_err(Failure::from),
        Command::Apply(args) => apply::run(&globals, args).await,
        Command::Get(args) => get::run(&globals, args).await,
        Command::Delete(args) => delete::run(&globals, args).await,
        Command::Diff(args) => diff::run(&globals, args).await,
        Command::Audit(args) => audit::run(&globals, args).await,
        Command::Approvals(args) => approvals::run(&globals, args).await,
        Command::Budgets(args) => budgets::run(&globals, args).await,
        Command::Fleet(args) => fleet::run(&globals, args).await,
        Command::Traces(args) => traces::run(&globals, args).await,
        Command::Top(args) => top::run(&globals, args).await,
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(failure) => cli::exit_with(failure.code, &failure.message),
    }
}
