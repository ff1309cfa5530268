//! Serving one plane: the gRPC listener (the plane's services plus
//! `grpc.health.v1` and server reflection) and the admin HTTP listener, with
//! one shutdown signal and a bounded drain.

use std::{net::SocketAddr, time::Duration};

use tokio::{net::TcpListener, task::JoinSet};
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::{ConfigError, ListenAddr, grpc_metrics::GrpcMetricsLayer, health::Readiness};

/// Readiness gate opened once the gRPC accept loop runs.
pub const GATE_GRPC: &str = "grpc";

/// Binds `addr` for the listener configured by `setting` (e.g. `--listen`).
pub async fn bind(setting: &'static str, addr: ListenAddr) -> Result<TcpListener, ConfigError> {
    TcpListener::bind(addr.0)
        .await
        .map_err(|source| ConfigError::Bind {
            setting,
            addr: addr.0,
            source,
        })
}

/// Everything [`Running::start`] needs to serve one plane.
#[derive(Debug)]
pub struct ServerSpec {
    /// `control-plane` or `data-plane`: a metrics label and log field.
    pub plane: &'static str,
    /// Bound `--listen` socket.
    pub grpc: TcpListener,
    /// Bound `--admin-listen` socket.
    pub admin: TcpListener,
    /// The plane's own gRPC services.
    pub routes: Routes,
    /// Fully-qualified names of those services (their health follows readiness).
    pub services: &'static [&'static str],
    /// Readiness gates besides [`GATE_GRPC`], with their state at start
    /// (`true` = open); the plane opens and closes them afterwards.
    pub gates: Vec<(&'static str, bool)>,
    /// An extra HTTP listener and its routes (the data plane's OpenAI API).
    pub http: Option<(TcpListener, axum::Router)>,
    /// The plane's own metric series (besides [`crate::metrics::SERIES`]),
    /// for their `# HELP` lines.
    pub series: &'static [crate::metrics::Series],
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Every in-flight call finished within the grace period.
    Clean,
    /// The grace period ran out; remaining connections were closed.
    Forced,
}

/// A serving plane. Dropping it without [`Running::shutdown`] aborts it.
#[derive(Debug)]
pub struct Running {
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    readiness: Readiness,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Running {
    /// Starts serving. Returns once both listeners accept connections.
    pub async fn start(spec: ServerSpec) -> Result<Self, ServeError> {
        let grpc_addr = spec.grpc.local_addr().map_err(ServeError::Io)?;
        let admin_addr = spec.admin.local_addr().map_err(ServeError::Io)?;
        // The recorder first, so the readiness gauge's first value counts.
        let metrics = crate::metrics::handle();
        crate::metrics::describe(crate::metrics::SERIES);
        crate::metrics::describe(spec.series);
        crate::metrics::record_build_info(spec.plane);
        let (reporter, health) = tonic_health::server::health_reporter();
        let mut gates = vec![(GATE_GRPC, false)];
        gates.extend_from_slice(&spec.gates);
        let readiness = Readiness::new(spec.plane, reporter, spec.services, &gates);
        readiness.set(GATE_GRPC, false).await;

        let routes = with_reflection(spec.routes.add_service(health), spec.services)?;
        let served: Vec<&str> = spec
            .services
            .iter()
            .chain(INFRA_SERVICES)
            .copied()
            .collect();
        let counted = GrpcMetricsLayer::new(spec.plane, &served, DESCRIPTOR_SETS);

        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if let Some(handle) = metrics.clone() {
            tasks.spawn(crate::metrics::upkeep(handle, shutdown.clone()));
        }
        let token = shutdown.clone();
        let plane = spec.plane;
        tasks.spawn(async move {
            // tonic applies TCP_NODELAY only to sockets it binds itself; without
            // it, small streamed messages (watch events) wait ~40 ms for Nagle
            // and delayed ACKs. Measured with bench-admin: see BENCHMARKS.md.
            let incoming = TcpListenerStream::new(spec.grpc).map(|conn| {
                if let Ok(stream) = &conn
                    && let Err(error) = stream.set_nodelay(true)
                {
                    tracing::debug!(%error, "cannot set TCP_NODELAY");
                }
                conn
            });
            let result = tonic::transport::Server::builder()
                .layer(counted)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                .await;
            if let Err(error) = result {
                tracing::error!(plane, %error, "gRPC server failed");
            }
        });

        let admin_router = crate::admin::router(readiness.clone(), metrics);
        spawn_http(
            &mut tasks,
            &shutdown,
            plane,
            "admin",
            spec.admin,
            admin_router,
        );
        let http_addr = match spec.http {
            Some((listener, router)) => {
                let addr = listener.local_addr().map_err(ServeError::Io)?;
                spawn_http(&mut tasks, &shutdown, plane, "http", listener, router);
                Some(addr)
            }
            None => None,
        };

        // The accept loop is spawned on a bound socket: connections queue in
        // the kernel backlog until it polls, so the listener is ready now.
        readiness.set(GATE_GRPC, true).await;
        tracing::info!(plane, grpc = %grpc_addr, admin = %admin_addr, "serving");
        Ok(Self {
            grpc_addr,
            admin_addr,
            http_addr,
            readiness,
            shutdown,
            tasks,
        })
    }

    /// Address the gRPC listener is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Address the admin HTTP listener is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Address of the extra HTTP listener, if the plane has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The plane's readiness, for subsystems that own gates.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Resolves when shutdown has begun, e.g. to stop background tasks.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Reports NOT_SERVING, stops accepting, and waits up to `grace` for
    /// in-flight calls to finish before closing what remains.
    pub async fn shutdown(mut self, grace: Duration) -> Drain {
        self.readiness.drain().await;
        self.shutdown.cancel();
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        match tokio::time::timeout(grace, all_done).await {
            Ok(()) => Drain::Clean,
            Err(_) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "in-flight calls outlived the grace period; closing them"
                );
                self.tasks.shutdown().await;
                Drain::Forced
            }
        }
    }
}

fn spawn_http(
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
    plane: &'static str,
    listener_name: &'static str,
    listener: TcpListener,
    router: axum::Router,
) {
    let token = shutdown.clone();
    tasks.spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(token.cancelled_owned())
            .await;
        if let Err(error) = result {
            tracing::error!(plane, listener = listener_name, %error, "HTTP server failed");
        }
    });
}

/// Waits for SIGINT or SIGTERM, then runs `shutdown(grace)`: the plane's
/// own drain, which may stop more than the servers.
pub async fn run_until_signal<F>(
    mut signals: Signals,
    grace: Duration,
    shutdown: impl FnOnce(Duration) -> F,
) -> Drain
where
    F: std::future::Future<Output = Drain>,
{
    let signal = signals.recv().await;
    tracing::info!(signal, grace_ms = grace.as_millis() as u64, "shutting down");
    let drain = shutdown(grace).await;
    tracing::info!(?drain, "stopped");
    drain
}

/// Why a plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad or unusable configuration (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Serving failed to start (exit code 1).
    #[error(transparent)]
    Serve(#[from] ServeError),
}

impl StartError {
    /// The process exit code this failure maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => crate::cli::EXIT_CONFIG,
            Self::Serve(_) => crate::cli::EXIT_FAILURE,
        }
    }
}

/// Failure to start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A socket operation failed.
    #[error("socket error: {0}")]
    Io(std::io::Error),
    /// The embedded descriptor sets could not be loaded (a build defect).
    #[error("reflection descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Services every plane serves besides its own.
pub const INFRA_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Where the served services' methods are described (for metric labels).
const DESCRIPTOR_SETS: &[&[u8]] = &[
    aios_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Adds reflection in both the current (`v1`) and the older (`v1alpha`)
/// protocol that many tools (grpcurl, Python's grpcio-reflection) still use.
///
/// The descriptor set holds the whole `aios.v1` contract, so the served
/// services are named explicitly: a plane lists only what it serves.
fn with_reflection(routes: Routes, services: &[&str]) -> Result<Routes, ServeError> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(aios_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .include_reflection_service(false);
        for name in services.iter().chain(INFRA_SERVICES) {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    Ok(routes
        .add_service(builder().build_v1()?)
        .add_service(builder().build_v1alpha()?))
}

/// SIGINT and SIGTERM handlers. Install them first thing in `main`: until
/// a handler exists, SIGTERM's default action kills the process outright, so
/// a signal that arrives while a plane is still starting would skip the
/// drain. Installed early, it is held and ends the plane as soon as it serves.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers (must run inside the Tokio runtime).
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let handlers = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => {
                    tracing::warn!("cannot install signal handlers; falling back to Ctrl-C only");
                    None
                }
            };
            Self { handlers }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for SIGINT or SIGTERM and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        if let Some((term, int)) = self.handlers.as_mut() {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
