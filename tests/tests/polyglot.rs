//! Services in any language can use aios: a Python client generated with
//! grpcio-tools from `proto/` imports cleanly, checks health, and finds
//! every service of the matching plane through grpcio-reflection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;

use aios_tests::{SpawnedPlane, admin::ADMIN_KEY, python, repo_root};

/// Runs `tests/python/polyglot_check.py` against `target`, expecting
/// `services`, and returns its JSON report.
fn python_check(target: std::net::SocketAddr, services: &[&str]) -> serde_json::Value {
    let root = repo_root();
    let out = tempfile::tempdir().unwrap();
    let mut command = Command::new(python().unwrap());
    command
        .arg(root.join("tests/python/polyglot_check.py"))
        .arg("--proto-dir")
        .arg(root.join("proto"))
        .arg("--target")
        .arg(target.to_string())
        .arg("--out-dir")
        .arg(out.path());
    for service in services {
        command.arg("--expect").arg(service);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "polyglot check failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["health"], "SERVING", "{report}");
    report
}

fn listed(report: &serde_json::Value) -> Vec<String> {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn python_generated_client_reaches_the_control_plane() {
    let plane = SpawnedPlane::control_plane(&[]).unwrap();
    let report = python_check(plane.grpc, aios_proto::CONTROL_PLANE_SERVICES);
    let services = listed(&report);
    for service in aios_proto::CONTROL_PLANE_SERVICES {
        assert!(
            services.contains(&service.to_string()),
            "{service} missing from {services:?}"
        );
    }
    assert!(
        !services.contains(&"aios.v1.AgentService".to_string()),
        "AgentService belongs to the data plane"
    );
}

#[test]
fn python_reflection_lists_the_data_plane_services() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("cp.db").display());
    let source = SpawnedPlane::control_plane_on(
        &store,
        &[("AIOS_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)],
        &[],
        dir,
    )
    .unwrap();
    let plane = SpawnedPlane::data_plane_of(&source.grpc_url(), ADMIN_KEY, &[]).unwrap();
    let report = python_check(plane.grpc, aios_proto::DATA_PLANE_SERVICES);
    let services = listed(&report);
    assert!(
        services.contains(&"aios.v1.AgentService".to_string()),
        "{services:?}"
    );
    assert!(
        !services.contains(&"aios.v1.AdminService".to_string()),
        "{services:?}"
    );
}

#[test]
fn python_check_fails_when_a_service_is_missing() {
    // The check itself must be able to fail: ask the data plane for a
    // control-plane service.
    let plane = SpawnedPlane::data_plane(&[]).unwrap();
    let root = repo_root();
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(python().unwrap())
        .arg(root.join("tests/python/polyglot_check.py"))
        .arg("--proto-dir")
        .arg(root.join("proto"))
        .arg("--target")
        .arg(plane.grpc.to_string())
        .arg("--out-dir")
        .arg(out.path())
        .args(["--expect", "aios.v1.AdminService"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    assert_eq!(
        report["missing"],
        serde_json::json!(["aios.v1.AdminService"])
    );
}
