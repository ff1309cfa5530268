//! The process-wide Prometheus recorder behind `/metrics`.
//!
//! A process has one `metrics` recorder; when both planes run in one process
//! (`aiosctl dev`, tests) they share it and tell their series apart by the
//! `plane` label.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Returns the handle that renders the exposition text, installing the
/// recorder on first use. `None` if another recorder was installed first.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(%error, "metrics recorder not installed; /metrics will be empty");
                None
            }
        })
        .clone()
}

/// Records `aios_build_info{plane, version} 1`.
pub fn record_build_info(plane: &'static str) {
    metrics::gauge!("aios_build_info", "plane" => plane, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
}
