//! The admin HTTP listener (`--admin-listen`): `/metrics` for Prometheus,
//! `/healthz` for liveness (the process answers) and `/readyz` for
//! readiness (every gate open; 503 with the closed gates otherwise).

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::health::Readiness;

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
}

/// Builds the admin router for one plane.
pub fn router(readiness: Readiness, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { readiness, metrics })
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    let body = state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let report = state.readiness.report();
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report))
}
