//! Readiness: named gates that must all be open before a plane serves.
//!
//! Each subsystem owns a gate (the gRPC listener, later the store, the
//! applied config) and opens or closes it as its real state changes.
//! [`Readiness`] turns the gates into `grpc.health.v1` statuses (for the
//! overall server `""` and every registered service) and into `/readyz`.
//! Draining on shutdown closes every gate at once.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde::Serialize;
use tonic_health::{ServingStatus, server::HealthReporter};

/// Shared, cheaply cloned readiness state of one plane.
#[derive(Clone, Debug)]
pub struct Readiness {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    plane: &'static str,
    reporter: HealthReporter,
    services: Vec<String>,
    // Held only for short, non-async sections.
    state: Mutex<State>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct State {
    draining: bool,
    gates: BTreeMap<&'static str, bool>,
}

/// What `/readyz` returns.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Whether the plane accepts traffic.
    pub ready: bool,
    /// Set once shutdown has begun.
    pub draining: bool,
    /// Every gate and whether it is open.
    pub gates: BTreeMap<&'static str, bool>,
}

impl Readiness {
    /// Creates readiness for `plane` with `gates` in their initial state
    /// (`true` = open). `services` are the fully-qualified gRPC services
    /// whose health follows the gates. Nothing is published until the first
    /// [`Readiness::set`].
    pub fn new(
        plane: &'static str,
        reporter: HealthReporter,
        services: &[&str],
        gates: &[(&'static str, bool)],
    ) -> Self {
        let state = State {
            draining: false,
            gates: gates.iter().copied().collect(),
        };
        Self {
            inner: Arc::new(Inner {
                plane,
                reporter,
                services: services.iter().map(|s| s.to_string()).collect(),
                state: Mutex::new(state),
            }),
        }
    }

    /// Opens or closes `gate` and republishes health. Unknown gates are added.
    pub async fn set(&self, gate: &'static str, open: bool) {
        self.update(|state| {
            state.gates.insert(gate, open);
        })
        .await;
    }

    /// Closes every gate for good: the plane is shutting down.
    pub async fn drain(&self) {
        self.update(|state| state.draining = true).await;
    }

    /// Current state, as served on `/readyz`.
    pub fn report(&self) -> Report {
        let state = self.lock().clone();
        Report {
            ready: is_ready(&state),
            draining: state.draining,
            gates: state.gates,
        }
    }

    /// Whether every gate is open and the plane is not draining.
    pub fn is_ready(&self) -> bool {
        is_ready(&self.lock())
    }

    async fn update(&self, change: impl FnOnce(&mut State)) {
        let ready = {
            let mut state = self.lock();
            change(&mut state);
            is_ready(&state)
        };
        self.publish(ready).await;
    }

    async fn publish(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let inner = &self.inner;
        inner.reporter.set_service_status("", status).await;
        for service in &inner.services {
            inner.reporter.set_service_status(service, status).await;
        }
        metrics::gauge!("aios_ready", "plane" => inner.plane).set(if ready { 1.0 } else { 0.0 });
        tracing::info!(plane = inner.plane, ready, "readiness changed");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent
        // (every change is a single field write), so poisoning is ignored.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn is_ready(state: &State) -> bool {
    !state.draining && state.gates.values().all(|open| *open)
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus as Wire, health_server::Health,
    };

    use super::*;

    async fn check(server: &impl Health, service: &str) -> i32 {
        let req = tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        });
        server.check(req).await.unwrap().into_inner().status
    }

    #[tokio::test]
    async fn health_follows_every_gate_and_drain() {
        let reporter = HealthReporter::new();
        let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let readiness = Readiness::new(
            "test",
            reporter,
            &["aios.v1.AdminService"],
            &[("grpc", false), ("store", false)],
        );
        readiness.set("grpc", false).await;
        assert_eq!(check(&health, "").await, Wire::NotServing as i32);

        readiness.set("grpc", true).await;
        assert!(!readiness.is_ready(), "store gate still closed");
        readiness.set("store", true).await;
        assert!(readiness.is_ready());
        assert_eq!(check(&health, "").await, Wire::Serving as i32);
        assert_eq!(
            check(&health, "aios.v1.AdminService").await,
            Wire::Serving as i32
        );

        readiness.drain().await;
        let report = readiness.report();
        assert!(!report.ready && report.draining);
        assert_eq!(
            check(&health, "aios.v1.AdminService").await,
            Wire::NotServing as i32
        );
    }
}
