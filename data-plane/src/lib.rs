//! An aios data-plane node. It receives the fleet's configuration from the
//! control plane, executes agent actions and LLM inference under policy and
//! budgets, and streams spans and token costs back.
//!
//! [`DataPlane::start`] builds the whole node from a validated [`Config`];
//! the `aios-data-plane` binary, `aiosctl dev` and the end-to-end tests all
//! start it the same way. It serves `AgentService` over gRPC and an
//! OpenAI-compatible HTTP API over the same pipeline.

pub mod api;
pub mod config;
pub mod openai;

use std::{net::SocketAddr, time::Duration};

use aios_runtime::{Drain, Readiness, Running, ServerSpec, StartError, server::bind};

pub use config::{Cli, Config, ControlPlaneUrl, NodeIdentity};

/// Plane name used in metrics labels and logs.
pub const PLANE: &str = "data-plane";

/// A running data-plane node.
#[derive(Debug)]
pub struct DataPlane {
    server: Running,
}

impl DataPlane {
    /// Binds the gRPC, HTTP and admin listeners and starts serving.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
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
        let server = Running::start(ServerSpec {
            plane: PLANE,
            grpc,
            admin,
            routes: api::routes(),
            services: aios_proto::DATA_PLANE_SERVICES,
            gates: Vec::new(),
            http: Some((http, openai::router())),
        })
        .await?;
        Ok(Self { server })
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

    /// Drains in-flight calls for up to `grace`, then stops.
    pub async fn shutdown(self, grace: Duration) -> Drain {
        self.server.shutdown(grace).await
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
