//! `aiosctl dev`: a control plane with the embedded store and a data plane
//! in this process, on free loopback ports, until Ctrl-C; with tenant `demo`
//! seeded so the local model answers at once (see `demo.rs`).

use std::{path::Path, time::Duration};

use aios_control_plane::ControlPlane;
use aios_data_plane::{ControlPlaneUrl, DataPlane};
use aios_runtime::logging;
use serde::Serialize;

use crate::{Globals, demo, output};

/// How long in-flight calls may run after Ctrl-C.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Serialize)]
struct DevEndpoints {
    state_dir: String,
    /// The platform admin key of this dev environment.
    api_key: String,
    /// The caller key of tenant `demo`, whose agent `assistant` answers
    /// with the local model.
    demo_api_key: String,
    control_plane: PlaneEndpoints,
    data_plane: PlaneEndpoints,
}

#[derive(Serialize)]
struct PlaneEndpoints {
    grpc: String,
    admin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    openai: Option<String>,
}

/// Starts both planes, prints how to reach them, serves until a signal.
pub async fn run(globals: &Globals, state_dir: &Path, log: &str) -> Result<i32, String> {
    // Before starting anything: Ctrl-C during start-up must stop cleanly.
    let mut signals = aios_runtime::server::Signals::install();
    logging::init(logging::LogFormat::Text, log).map_err(|e| e.one_line())?;
    let node_dir = state_dir.join("data-plane");
    std::fs::create_dir_all(&node_dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", node_dir.display()))?;

    let api_key = dev_admin_key(state_dir)?;
    let (gguf, minilm) = demo::model_files()?;
    let mut cp_config = aios_control_plane::Config::local(state_dir);
    cp_config.bootstrap_admin_key = Some(aios_control_plane::Secret::new(api_key.clone())?);
    let control_plane = ControlPlane::start(&cp_config)
        .await
        .map_err(|e| e.to_string())?;
    let cp_url: ControlPlaneUrl = format!("http://{}", control_plane.grpc_addr()).parse()?;
    let mut dp_config = aios_data_plane::Config::local(cp_url.clone(), node_dir);
    dp_config.node_key = Some(aios_control_plane::Secret::new(api_key.clone())?);
    let data_plane = DataPlane::start(&dp_config)
        .await
        .map_err(|e| e.to_string())?;
    let mut admin = aios_client::admin::AdminClient::connect(
        &cp_url.to_string(),
        Some(&api_key),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| e.to_string())?;
    let demo = demo::seed(&mut admin, state_dir, &gguf, &minilm).await?;

    let endpoints = DevEndpoints {
        state_dir: state_dir.display().to_string(),
        api_key,
        demo_api_key: demo.api_key,
        control_plane: PlaneEndpoints {
            grpc: cp_url.to_string(),
            admin: format!("http://{}", control_plane.admin_addr()),
            openai: None,
        },
        data_plane: PlaneEndpoints {
            grpc: format!("http://{}", data_plane.grpc_addr()),
            admin: format!("http://{}", data_plane.admin_addr()),
            openai: data_plane.http_addr().map(|a| format!("http://{a}/v1")),
        },
    };
    match globals.output {
        output::Format::Table => output::write_stdout(&banner(&endpoints))?,
        // One line, so scripts can read the endpoints as soon as it appears.
        output::Format::Json => output::write_stdout(
            &(serde_json::to_string(&endpoints).map_err(|e| e.to_string())? + "\n"),
        )?,
        output::Format::Yaml => output::emit(globals.output, &endpoints, &[], &[])?,
    }

    signals.recv().await;
    let (dp, cp) = tokio::join!(data_plane.shutdown(GRACE), control_plane.shutdown(GRACE));
    tracing::info!(data_plane = ?dp, control_plane = ?cp, "dev environment stopped");
    Ok(0)
}

fn banner(e: &DevEndpoints) -> String {
    let cp = &e.control_plane;
    let dp = &e.data_plane;
    let openai = dp.openai.as_deref().unwrap_or("-");
    format!(
        "aios dev environment is up (state in {state})\n\
         \n\
         \x20 control plane  gRPC    {cp_grpc}\n\
         \x20                admin   {cp_admin}/metrics  /healthz  /readyz\n\
         \x20 data plane     gRPC    {dp_grpc}\n\
         \x20                OpenAI  {openai}\n\
         \x20                admin   {dp_admin}/metrics  /healthz  /readyz\n\
         \n\
         Platform admin key (kept in {state}/admin.key):\n\
         \x20 export AIOS_API_KEY={api_key}\n\
         \n\
         Ask the local model (agent `assistant` of tenant `demo`, SmolLM2 on this machine;\n\
         the first answer waits for the model to load, a few seconds):\n\
         \x20 curl -s {openai}/chat/completions -H 'authorization: Bearer {demo_key}' \\\n\
         \x20   -H 'content-type: application/json' \\\n\
         \x20   -d '{{\"model\":\"assistant\",\"messages\":[{{\"role\":\"user\",\"content\":\"What is the capital of France?\"}}]}}'\n\
         \x20 Any OpenAI SDK works too: base_url={openai}, api_key={demo_key}, model=assistant;\n\
         \x20 embeddings with model=minilm.\n\
         \n\
         Try, in another terminal:\n\
         \x20 export AIOS_ENDPOINT={cp_grpc} AIOS_API_KEY={api_key}\n\
         \x20 {aiosctl} status --data-plane {dp_grpc}\n\
         \x20 {aiosctl} apply -f deploy/examples/\n\
         \x20 {aiosctl} get all --tenant acme\n\
         \x20 {aiosctl} audit --all-tenants\n\
         \x20 grpcurl -plaintext {cp_host} list\n\
         \n\
         Press Ctrl-C to stop.\n",
        state = e.state_dir,
        api_key = e.api_key,
        demo_key = e.demo_api_key,
        cp_grpc = cp.grpc,
        cp_admin = cp.admin,
        dp_grpc = dp.grpc,
        dp_admin = dp.admin,
        cp_host = cp.grpc.trim_start_matches("http://"),
        aiosctl = self_command(),
    )
}

/// How to run this same `aiosctl` from the current directory: under
/// `cargo run` it is not on PATH, so show its path relative to here.
fn self_command() -> String {
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    match (exe, cwd) {
        (Some(exe), Some(cwd)) => match exe.strip_prefix(&cwd) {
            Ok(relative) => relative.display().to_string(),
            Err(_) => exe.display().to_string(),
        },
        _ => "aiosctl".into(),
    }
}

/// The dev environment's platform admin key: created once per state
/// directory (readable only by this user) and reused, so it stays valid
/// across restarts of `aiosctl dev` on the same store.
fn dev_admin_key(state_dir: &Path) -> Result<String, String> {
    let path = state_dir.join("admin.key");
    match std::fs::read_to_string(&path) {
        Ok(key) => return Ok(key.trim().to_string()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot read {}: {e}", path.display()));
        }
        Err(_) => {}
    }
    let key = aios_control_plane::auth::generate_secret();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{key}\n").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(key)
}
