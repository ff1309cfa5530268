//! `aiosctl diff -f PATH…`: what `apply` would change. The server computes
//! the result (a dry-run `BatchApply`, so defaults and validation are the
//! server's own); each result is compared with the stored object.
//!
//! Exit codes follow `diff(1)`: 0 no changes, 1 changes, 2 trouble.

use std::path::PathBuf;

use aios_client::{AdminClient, ClientError, kind, manifest};
use aios_proto::v1::{ApplyResponse, BatchApplyRequest, GetRequest, Resource, resource::Spec};
use aios_runtime::cli::EXIT_CONFIG;
use tonic::Code;

use crate::{
    Globals, linediff, output,
    resources::{self, Failure},
};

/// Unchanged lines shown around each change.
const CONTEXT: usize = 3;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file, directory (its *.yaml, *.yml and *.json files, by name) or `-` for stdin.
    /// Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    files: Vec<PathBuf>,
}

pub async fn run(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    // Exit 1 means "changes" here, so every failure exits 2.
    diff(globals, args).await.map_err(|failure| Failure {
        code: EXIT_CONFIG,
        ..failure
    })
}

async fn diff(globals: &Globals, args: &Args) -> Result<i32, Failure> {
    let manifests = resources::load_batch(&args.files)?;
    let mut client = resources::connect(globals).await?;
    let request = BatchApplyRequest {
        resources: manifests.iter().map(|m| m.resource.clone()).collect(),
        dry_run: true,
    };
    let response = client
        .batch_apply(request)
        .await
        .map_err(|e| resources::batch_failure(e, &manifests))?;
    let mut text = String::new();
    for (result, sent) in response.results.iter().zip(&manifests) {
        if result.unchanged {
            continue;
        }
        let applied = result.resource.as_ref().unwrap_or(&sent.resource);
        let stored = stored(&mut client, result, applied).await?;
        text.push_str(&render(&kind::label(applied), stored.as_ref(), applied)?);
    }
    output::write_stdout(&text)?;
    Ok(if text.is_empty() { 0 } else { 1 })
}

/// The object as stored now; `None` if the dry run would create it.
async fn stored(
    client: &mut AdminClient,
    result: &ApplyResponse,
    applied: &Resource,
) -> Result<Option<Resource>, Failure> {
    if result.created {
        return Ok(None);
    }
    // The dry run resolved the tenant (empty in a manifest = the key's).
    let meta = applied.metadata.clone().unwrap_or_default();
    let request = GetRequest {
        kind: kind::kind_of(applied).into(),
        tenant: meta.tenant,
        name: meta.name,
    };
    match client.get(request).await {
        Ok(resource) => Ok(Some(resource)),
        Err(ClientError::Rpc(status)) if status.code() == Code::NotFound => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The diff of one object, both sides as manifest YAML without the
/// output-only fields; empty if they are equal.
fn render(label: &str, stored: Option<&Resource>, applied: &Resource) -> Result<String, Failure> {
    let old = match stored {
        Some(resource) => manifest::to_yaml(&desired(resource))?,
        None => String::new(),
    };
    let new = manifest::to_yaml(&desired(applied))?;
    let hunks = linediff::unified(&old, &new, CONTEXT);
    if hunks.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(
        "--- {label} (stored)\n+++ {label} (applied)\n{hunks}"
    ))
}

/// A resource without what the server fills in, which always differs
/// between a stored object and a dry run and is not the user's to change.
fn desired(resource: &Resource) -> Resource {
    let mut resource = resource.clone();
    if let Some(meta) = resource.metadata.as_mut() {
        meta.resource_version = 0;
        meta.generation = 0;
        meta.uid.clear();
        meta.create_time = None;
        meta.update_time = None;
    }
    if let Some(Spec::ApiKey(key)) = resource.spec.as_mut() {
        key.secret_hash.clear();
        key.key_prefix.clear();
    }
    resource
}

#[cfg(test)]
mod tests {
    use aios_proto::v1::{AgentSpec, ApiKeySpec, ObjectMeta};

    use super::*;

    fn agent(max_steps: u32, version: i64) -> Resource {
        Resource {
            metadata: Some(ObjectMeta {
                name: "bot".into(),
                tenant: "acme".into(),
                resource_version: version,
                uid: format!("uid-{version}"),
                ..Default::default()
            }),
            spec: Some(Spec::Agent(AgentSpec {
                routing_table: "default".into(),
                max_steps,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn changes_show_as_hunks_without_output_only_fields() {
        let text = render("agent/bot", Some(&agent(8, 3)), &agent(12, 0)).unwrap();
        assert_eq!(
            text,
            "--- agent/bot (stored)\n+++ agent/bot (applied)\n\
             @@ -3,4 +3,4 @@\n   tenant: acme\n agent:\n   routingTable: default\n-  maxSteps: 8\n+  maxSteps: 12\n"
        );
        // Only versions differ: nothing to show.
        assert_eq!(
            render("agent/bot", Some(&agent(8, 3)), &agent(8, 4)).unwrap(),
            ""
        );
    }

    #[test]
    fn new_objects_are_all_added_and_key_secrets_stay_out() {
        let key = Resource {
            metadata: Some(ObjectMeta {
                name: "ci".into(),
                ..Default::default()
            }),
            spec: Some(Spec::ApiKey(ApiKeySpec {
                role: 2,
                secret_hash: "sha256:00".into(),
                key_prefix: "aios_ab".into(),
                ..Default::default()
            })),
        };
        assert_eq!(
            render("apikey/ci", None, &key).unwrap(),
            "--- apikey/ci (stored)\n+++ apikey/ci (applied)\n\
             @@ -0,0 +1,4 @@\n+metadata:\n+  name: ci\n+apiKey:\n+  role: ROLE_OPERATOR\n"
        );
    }
}
