//! The aios control plane keeps the fleet's desired state (tenants, API
//! keys, budgets, policies, models, routing tables, agents) and approval
//! state, streams configuration to data-plane nodes, and turns their
//! telemetry into rollups, budgets and dashboards.
//!
//! [`ControlPlane::start`] builds the whole server from a validated
//! [`Config`]; the `aios-control-plane` binary, `aiosctl dev` and the
//! end-to-end tests all start it the same way.

pub mod admin;
pub mod api;
pub mod approvals;
pub mod auth;
pub mod budget;
pub mod config;
pub mod fleet;
pub mod keys;
pub mod series;
pub mod store;
pub mod telemetry;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use aios_runtime::{
    ConfigError, Drain, Readiness, Running, ServerSpec, StartError,
    server::{ServeError, bind},
};
use tokio_util::sync::CancellationToken;

pub use aios_runtime::Secret;
pub use config::{Cli, Config, StoreUrl};

use crate::store::SharedStore;

/// Readiness gate: the store answers.
pub const GATE_STORE: &str = "store";
/// How often the store's health is checked for readiness.
const STORE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Plane name used in metrics labels and logs.
pub const PLANE: &str = "control-plane";

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    server: Running,
    store: SharedStore,
    fleet: fleet::Fleet,
    telemetry: telemetry::Telemetry,
    /// Ends the background tasks and the node and subscriber streams.
    background: CancellationToken,
    background_tasks: Vec<tokio::task::JoinHandle<()>>,
    bootstrap_secret: Option<String>,
    health: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    /// Binds both listeners, opens the store, creates the platform admin
    /// key on first start, and starts serving.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        // Before telemetry ingest makes its metric handles.
        aios_runtime::metrics::install();
        let grpc = bind("--listen", config.listen).await?;
        let admin = bind("--admin-listen", config.admin_listen).await?;
        tracing::info!(store = %config.store, "control plane starting");
        let store = store::open(&config.store, &config.etcd)
            .await
            .map_err(|e| store_error(&config.store, e))?;
        let bootstrap_key = config.bootstrap_admin_key.as_ref().map(Secret::expose);
        let bootstrap_secret = auth::bootstrap(store.as_ref(), bootstrap_key)
            .await
            .map_err(|e| store_error(&config.store, e))?;
        let background = CancellationToken::new();
        let (fleet, mut background_tasks) = fleet::Fleet::start(
            store.clone(),
            fleet::FleetSettings::new(&config.replica_id),
            background.clone(),
        )
        .await
        .map_err(|e| store_error(&config.store, e))?;
        let mut telemetry_settings = telemetry::TelemetrySettings::new(config.telemetry_retention);
        if let Some(otlp) = &config.otlp {
            let (exporter, task) =
                telemetry::otlp::OtlpExporter::start(otlp.clone(), background.clone()).map_err(
                    |reason| ConfigError::invalid("--otlp-endpoint", &otlp.endpoint, reason),
                )?;
            tracing::info!(endpoint = %otlp.endpoint, "exporting spans over OTLP");
            telemetry_settings.exporter = Some(exporter);
            background_tasks.push(task);
        }
        let (telemetry, telemetry_task) =
            telemetry::Telemetry::start(store.clone(), telemetry_settings, background.clone())
                .await
                .map_err(|e| store_error(&config.store, e))?;
        background_tasks.push(telemetry_task);
        background_tasks.push(telemetry.evaluate_alerts(fleet.cache().subscribe()));
        background_tasks.push(
            budget::alerts::start(
                store.clone(),
                fleet.cache().clone(),
                telemetry.clone(),
                Arc::new(std::time::SystemTime::now),
                background.clone(),
            )
            .await
            .map_err(|e| store_error(&config.store, e))?,
        );
        let (approvals, approval_tasks) =
            approvals::Approvals::start(store.clone(), background.clone())
                .await
                .map_err(|e| store_error(&config.store, e))?;
        background_tasks.extend(approval_tasks);
        background_tasks.push(approvals::retention::start(
            store.clone(),
            config.approval_retention,
            background.clone(),
        ));
        let budgets = budget::Budgets::new(
            store.clone(),
            fleet.cache().clone(),
            config.budget_allowance_ttl,
        );
        background_tasks
            .push(budgets.sweep_ledgers(config.budget_ledger_retention, background.clone()));
        // Checked before serving starts, so the "serving" log line and the
        // first health answer already reflect the store.
        let store_ok = store_answers(&store).await;
        let server = Running::start(ServerSpec {
            plane: PLANE,
            grpc,
            admin,
            routes: api::routes(
                admin::Admin::new(store.clone()),
                fleet.clone(),
                telemetry.clone(),
                budgets,
                approvals,
            ),
            services: aios_proto::CONTROL_PLANE_SERVICES,
            gates: vec![(GATE_STORE, store_ok)],
            http: None,
            series: series::SERIES,
        })
        .await?;
        let health = watch_store_health(
            store.clone(),
            store_ok,
            server.readiness().clone(),
            server.shutdown_token(),
        );
        tracing::info!(replica = %config.replica_id, "serving the fleet");
        Ok(Self {
            server,
            store,
            fleet,
            telemetry,
            background,
            background_tasks,
            bootstrap_secret,
            health,
        })
    }

    /// The platform admin key generated on this first start, to show once.
    pub fn bootstrap_secret(&self) -> Option<&str> {
        self.bootstrap_secret.as_deref()
    }

    /// The store this plane serves from.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Config distribution and fleet membership in this replica.
    pub fn fleet(&self) -> &fleet::Fleet {
        &self.fleet
    }

    /// Span ingest, rollups and traces in this replica.
    pub fn telemetry(&self) -> &telemetry::Telemetry {
        &self.telemetry
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
        // Node and subscriber streams never end on their own: close them
        // first (nodes reconnect to another replica), then drain the other
        // calls.
        self.background.cancel();
        let drain = self.server.shutdown(grace).await;
        for task in self.background_tasks {
            let _ = task.await;
        }
        // The health loop stops on the shutdown signal the drain sent.
        let _ = self.health.await;
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

/// A store that cannot be opened at start is fatal: the operator must fix
/// the URL, the file, or the cluster.
fn store_error(url: &StoreUrl, error: store::StoreError) -> StartError {
    match error {
        store::StoreError::Unavailable(reason) => StartError::Serve(ServeError::Io(
            std::io::Error::other(format!("store {url} is unavailable: {reason}")),
        )),
        other => StartError::Config(ConfigError::invalid("--store", url, other)),
    }
}

/// Whether the store answers a read within the check interval.
async fn store_answers(store: &SharedStore) -> bool {
    matches!(
        tokio::time::timeout(STORE_CHECK_INTERVAL, store.revision()).await,
        Ok(Ok(_))
    )
}

/// Keeps the `store` gate open exactly while the store answers, so load
/// balancers route around a replica that lost its store. `healthy` is the
/// gate's state at start.
fn watch_store_health(
    store: SharedStore,
    mut healthy: bool,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(STORE_CHECK_INTERVAL) => {}
            }
            let ok = store_answers(&store).await;
            if ok != healthy {
                if ok {
                    tracing::info!(store = %store.describe(), "store answering again");
                } else {
                    tracing::warn!(store = %store.describe(), "store not answering; reporting NOT_SERVING");
                }
                readiness.set(GATE_STORE, ok).await;
                healthy = ok;
            }
        }
    })
}
