//! Process lifecycle shared by the aios control plane and data plane.
//!
//! Both planes are long-running gRPC servers with the same operational
//! contract: static config from defaults, an optional file, `AIOS_*`
//! environment variables and flags ([`config`], [`cli`]); structured logs
//! ([`logging`]); readiness gates that drive `grpc.health.v1` and `/readyz`
//! ([`health`]); an admin HTTP listener with `/metrics` ([`metrics`],
//! [`grpc_metrics`]), `/healthz` and `/readyz` ([`admin`]); and a gRPC
//! server with reflection that drains in-flight calls within a bound on
//! shutdown ([`server`]). Keeping this in
//! one crate means a fix to, say, shutdown lands in both planes at once.

pub mod admin;
pub mod cli;
pub mod config;
pub mod grpc_metrics;
pub mod health;
pub mod hex;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod server;

pub use config::{ConfigError, ListenAddr, Secret};
pub use health::Readiness;
pub use server::{Drain, Running, ServerSpec, StartError};
