//! An aios data-plane node. It receives the fleet's configuration from the
//! control plane, executes agent actions and LLM inference under policy and
//! budgets, and streams spans and token costs back.
//!
//! [`DataPlane::start`] builds the whole node from a validated [`Config`];
//! the `aios-data-plane` binary, `aiosctl dev` and the end-to-end tests all
//! start it the same way. It serves `AgentService` over gRPC and an
//! OpenAI-compatible HTTP API over the same pipeline, with the config the
//! [`fleet`] agent streams from the control plane ([`DataPlane::node_config`]).

pub mod api;
pub mod approvals;
pub mod backend;
pub mod budget;
pub mod config;
pub mod fleet;
pub mod guardrails;
pub mod local;
pub mod openai;
pub mod pipeline;
pub mod reliability;
pub mod router;
pub mod series;
pub mod telemetry;
pub mod tools;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use aios_runtime::{Drain, Readiness, Running, ServerSpec, StartError, server::bind};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use aios_inference as inference;
pub use config::{Cli, Config, ControlPlaneUrl, NodeIdentity};
pub use fleet::NodeConfigHandle;

/// Plane name used in metrics labels and logs.
pub const PLANE: &str = "data-plane";

/// Readiness gate: the node has a config, saved from an earlier run or
/// pushed by a control plane. Once open it stays open through control-plane
/// outages: the node serves its last good config.
pub const GATE_CONFIG: &str = "config";

/// A running data-plane node.
#[derive(Debug)]
pub struct DataPlane {
    server: Running,
    node_config: NodeConfigHandle,
    /// The config agent (one task; aborted if the plane is dropped).
    agent: JoinSet<()>,
    /// The telemetry reporter (one task), stopped after the drain so the
    /// last requests' spans go out too.
    reporter: JoinSet<()>,
    /// Stops the reporter.
    reporter_stop: CancellationToken,
    /// Stops the pipeline's background work.
    stop: CancellationToken,
}

impl DataPlane {
    /// Loads the last good config, binds the gRPC, HTTP and admin
    /// listeners, starts serving, and starts the config agent. Remote
    /// models are called over their providers' HTTP APIs; LOCAL models load
    /// into engines on this node as the config names them.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let remote = pipeline::RemoteProviders::new().map_err(|e| {
            StartError::Serve(aios_runtime::server::ServeError::Io(std::io::Error::other(
                e,
            )))
        })?;
        let local = local::LocalModels::new(config.inference.clone(), fleet::agent::capabilities());
        let providers = pipeline::NodeProviders::new(remote, local.clone());
        Self::start_inner(
            config,
            Arc::new(providers),
            settings(&config.execution),
            local,
        )
        .await
    }

    /// [`DataPlane::start`] with models built by `backends` and the
    /// pipeline set up by `settings` (tests and benchmarks).
    pub async fn start_with(
        config: &Config,
        backends: Arc<dyn pipeline::BackendFactory>,
        settings: pipeline::Settings,
    ) -> Result<Self, StartError> {
        let local = local::LocalModels::new(config.inference.clone(), fleet::agent::capabilities());
        Self::start_inner(config, backends, settings, local).await
    }

    async fn start_inner(
        config: &Config,
        backends: Arc<dyn pipeline::BackendFactory>,
        settings: pipeline::Settings,
        local: Arc<local::LocalModels>,
    ) -> Result<Self, StartError> {
        // Before the pipeline and the reporter make their metric handles.
        aios_runtime::metrics::install();
        let grpc = bind("--listen", config.listen).await?;
        let http = bind("--http-listen", config.http_listen).await?;
        let admin = bind("--admin-listen", config.admin_listen).await?;
        let node = &config.node;
        tracing::info!(
            node_id = %node.node_id,
            region = %node.region,
            zone = node.zone.as_deref().unwrap_or(""),
            control_plane = %config.control_plane.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            state_dir = %config.state_dir.display(),
            "data plane starting"
        );
        // Read once before serving (a small file), so the first health
        // answer already says whether the node has a config.
        let host = fleet::Host::current();
        let saved = fleet::persist::load(&config.state_dir, &host);
        let has_config = saved.found;
        let node_config = NodeConfigHandle::new(saved.config);
        let stop = CancellationToken::new();
        let catalog = pipeline::CatalogHandle::follow(&node_config);
        local.follow(&node_config, stop.clone());
        // Spans: the pipeline's outbox → the reporter → the control plane.
        let (reporter, outbox) = telemetry::Reporter::new(telemetry::ReporterSettings::new(config));
        let spans = telemetry::SpanSink::new(outbox, &node.node_id, &node.region);
        let settings = pipeline::Settings {
            local: settings.local.or_else(|| Some(local.clone())),
            spans: settings.spans.or(Some(spans)),
            ..settings
        };
        // Budgets: allowances leased from the control plane.
        let purse = settings.purse.clone();
        // HIGH and CRITICAL requests ask the control plane for approval.
        let approvals = approvals::Approvals::new(
            approvals::ApprovalClient::new(&config.control_plane, config.node_key.clone()),
            catalog.clone(),
        );
        let pipeline = pipeline::Pipeline::new(catalog, backends, settings);
        let http_router = openai::router(pipeline.clone());
        let server = Running::start(ServerSpec {
            plane: PLANE,
            grpc,
            admin,
            routes: api::routes(pipeline, approvals),
            services: aios_proto::DATA_PLANE_SERVICES,
            gates: vec![(GATE_CONFIG, has_config)],
            http: Some((http, http_router)),
            series: series::SERIES,
        })
        .await?;
        let agent = fleet::Agent::new(
            config,
            node_config.clone(),
            host,
            server.readiness().clone(),
            has_config,
        )
        .with_capabilities(local.capabilities());
        let mut tasks = JoinSet::new();
        tasks.spawn(agent.run(server.shutdown_token()));
        let reporter_stop = CancellationToken::new();
        let mut reporters = JoinSet::new();
        reporters.spawn(reporter.run(reporter_stop.clone()));
        reporters.spawn(budget::reporter::run(
            purse,
            budget::reporter::ReporterSettings {
                urls: config.control_plane.clone(),
                node_key: config.node_key.clone(),
                node_id: node.node_id.clone(),
            },
            reporter_stop.clone(),
        ));
        Ok(Self {
            server,
            node_config,
            agent: tasks,
            reporter: reporters,
            reporter_stop,
            stop,
        })
    }

    /// The node's config: what the request path reads, swapped on each push.
    pub fn node_config(&self) -> &NodeConfigHandle {
        &self.node_config
    }

    /// Bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.server.grpc_addr()
    }

    /// Bound OpenAI-compatible HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.server.http_addr()
    }

    /// Bound admin HTTP address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// Readiness gates.
    pub fn readiness(&self) -> &Readiness {
        self.server.readiness()
    }

    /// Drains in-flight calls for up to `grace`, then stops the config
    /// agent once it has saved the latest config, and the telemetry
    /// reporter once it has flushed (at most 2 s waiting for acks; what
    /// is unacknowledged then is spilled for the next start).
    pub async fn shutdown(mut self, grace: Duration) -> Drain {
        let drain = self.server.shutdown(grace).await;
        // The agent stops on the shutdown signal the drain sent.
        while self.agent.join_next().await.is_some() {}
        self.reporter_stop.cancel();
        while self.reporter.join_next().await.is_some() {}
        self.stop.cancel();
        drain
    }

    /// Serves until SIGINT/SIGTERM, then drains for up to `grace`.
    pub async fn run_until_signal(
        self,
        signals: aios_runtime::server::Signals,
        grace: Duration,
    ) -> Drain {
        aios_runtime::server::run_until_signal(signals, grace, |grace| self.shutdown(grace)).await
    }
}

/// The pipeline's settings from the node's execution flags.
fn settings(execution: &config::Execution) -> pipeline::Settings {
    let defaults = pipeline::Settings::default();
    pipeline::Settings {
        cache_ttl: execution.cache_ttl,
        cache_max_bytes: execution.cache_max_bytes,
        retry: reliability::RetryPolicy {
            max_attempts: execution.retry_attempts,
            ..defaults.retry
        },
        breakers: reliability::BreakerConfig {
            failure_rate: f64::from(execution.breaker_failure_percent) / 100.0,
            min_calls: execution.breaker_min_calls,
            window: execution.breaker_window,
            open_for: execution.breaker_open_for,
            ..defaults.breakers
        },
        stages: pipeline::Stages {
            cache: !execution.cache_ttl.is_zero(),
            ..pipeline::Stages::ALL
        },
        ..defaults
    }
}
