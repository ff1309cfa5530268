//! The aios control plane keeps the fleet's desired state (tenants, API
//! keys, budgets, policies, models, routing tables, agents) and approval
//! state, streams configuration to data-plane nodes, and turns their
//! telemetry into rollups, budgets and dashboards.
//!
//! [`ControlPlane::start`] builds the whole server from a validated
//! [`Config`]; the `aios-control-plane` binary, `aiosctl dev` and the
//! end-to-end tests all start it the same way.

pub mod api;
pub mod config;

use std::{net::SocketAddr, time::Duration};

use aios_runtime::{Drain, Readiness, Running, ServerSpec, StartError, server::bind};

pub use config::{Cli, Config, StoreUrl};

/// Plane name used in metrics labels and logs.
pub const PLANE: &str = "control-plane";

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    server: Running,
}

impl ControlPlane {
    /// Binds both listeners and starts serving.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let grpc = bind("--listen", config.listen).await?;
        let admin = bind("--admin-listen", config.admin_listen).await?;
        tracing::info!(store = %config.store, "control plane starting");
        let server = Running::start(ServerSpec {
            plane: PLANE,
            grpc,
            admin,
            routes: api::routes(),
            services: aios_proto::CONTROL_PLANE_SERVICES,
            gates: &[],
            http: None,
        })
        .await?;
        Ok(Self { server })
    }

    /// Bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.server.grpc_addr()
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
    pub async fn run_until_signal(self, grace: Duration) -> Drain {
        aios_runtime::server::run_until_signal(self.server, grace).await
    }
}
