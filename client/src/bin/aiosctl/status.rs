//! `aiosctl status`: health and services of a control plane and a data plane.

use aios_client::{Probe, probe};
use serde::Serialize;

use crate::{Globals, output};

#[derive(Serialize)]
struct Status {
    control_plane: Probe,
    data_plane: Probe,
}

/// Probes both planes; exits 0 only if both are SERVING.
pub async fn run(globals: &Globals, data_plane: &str) -> Result<i32, String> {
    let key = globals.api_key.as_deref();
    let (control_plane, data_plane) = tokio::join!(
        probe(&globals.endpoint, key, globals.timeout),
        probe(data_plane, key, globals.timeout)
    );
    let status = Status {
        control_plane,
        data_plane,
    };
    let planes = [
        ("control-plane", &status.control_plane),
        ("data-plane", &status.data_plane),
    ];
    let rows: Vec<Vec<String>> = planes
        .iter()
        .map(|(name, p)| {
            vec![
                name.to_string(),
                p.endpoint.clone(),
                p.status.clone(),
                format!("{:.1}ms", p.latency_ms),
                short_services(&p.services),
            ]
        })
        .collect();
    output::emit(
        globals.output,
        &status,
        &["PLANE", "ENDPOINT", "STATUS", "LATENCY", "SERVICES"],
        &rows,
    )?;
    if globals.output == output::Format::Table {
        let errors: String = planes
            .iter()
            .filter_map(|(name, p)| p.error.as_ref().map(|e| format!("{name}: {e}\n")))
            .collect();
        output::write_stdout(&errors)?;
    }
    Ok(if planes.iter().all(|(_, p)| p.is_serving()) {
        0
    } else {
        1
    })
}

/// `AdminService,FleetService`: aios services without the package, infrastructure services left out.
fn short_services(services: &[String]) -> String {
    let names: Vec<&str> = services
        .iter()
        .filter_map(|s| s.strip_prefix("aios.v1."))
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}
