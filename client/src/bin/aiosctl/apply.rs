//! `aiosctl apply -f PATH…`: create or update every resource in the
//! manifests in one all-or-nothing `BatchApply`.

use std::path::PathBuf;

use aios_client::{kind, manifest};
use aios_proto::v1::{ApplyResponse, BatchApplyRequest};

use crate::{
    Globals,
    output::{self, Format},
    resources::{self, Failure},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file, directory (its *.yaml, *.yml and *.json files, by name) or `-` for stdin.
    /// Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    files: Vec<PathBuf>,
    /// Validate and report what would change, writing nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Parses everything (exit 2 on any error, before contacting the server),
/// then sends one batch and prints one line per resource.
pub async fn run(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    let manifests = resources::load_batch(&args.files)?;
    let mut client = resources::connect(globals).await?;
    let request = BatchApplyRequest {
        resources: manifests.iter().map(|m| m.resource.clone()).collect(),
        dry_run: args.dry_run,
    };
    let response = client
        .batch_apply(request)
        .await
        .map_err(|e| resources::batch_failure(e, &manifests))?;
    let text = match globals.output {
        Format::Json => manifest::to_json(&response)?,
        Format::Yaml => manifest::to_yaml(&response)?,
        Format::Table => {
            let lines: Vec<String> = response
                .results
                .iter()
                .zip(&manifests)
                .map(|(result, manifest)| {
                    // Name what the server stored (its tenant resolved); fall
                    // back to what was sent.
                    let resource = result.resource.as_ref().unwrap_or(&manifest.resource);
                    outcome_line(&kind::label(resource), result, args.dry_run)
                })
                .collect();
            lines.concat()
        }
    };
    output::write_stdout(&text)?;
    Ok(0)
}

/// `agent/support-bot configured`, kubectl style, and a new key's secret.
fn outcome_line(label: &str, result: &ApplyResponse, dry_run: bool) -> String {
    let verb = if result.unchanged {
        "unchanged"
    } else if result.created {
        "created"
    } else {
        "configured"
    };
    let suffix = if dry_run { " (dry run)" } else { "" };
    // A dry run stores no key, so a secret it returned would open nothing.
    if result.api_key_secret.is_empty() || dry_run {
        format!("{label} {verb}{suffix}\n")
    } else {
        format!(
            "{label} {verb}{suffix} — secret (shown once): {}\n",
            result.api_key_secret
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_what_happened() {
        let mut result = ApplyResponse {
            created: true,
            ..Default::default()
        };
        assert_eq!(outcome_line("agent/a", &result, false), "agent/a created\n");
        assert_eq!(
            outcome_line("agent/a", &result, true),
            "agent/a created (dry run)\n"
        );
        result.api_key_secret = "aios_x".into();
        assert_eq!(
            outcome_line("apikey/ci", &result, false),
            "apikey/ci created — secret (shown once): aios_x\n"
        );
        assert_eq!(
            outcome_line("apikey/ci", &result, true),
            "apikey/ci created (dry run)\n"
        );
        let unchanged = ApplyResponse {
            unchanged: true,
            ..Default::default()
        };
        assert_eq!(
            outcome_line("tool/t", &unchanged, false),
            "tool/t unchanged\n"
        );
        let replaced = ApplyResponse::default();
        assert_eq!(
            outcome_line("tool/t", &replaced, false),
            "tool/t configured\n"
        );
    }
}
