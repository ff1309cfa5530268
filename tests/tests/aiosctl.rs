//! `aiosctl dev` brings up both planes and prints how to reach them;
//! `aiosctl status` reports their health, and fails for a dead plane.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{process::Command, time::Duration};

use aios_tests::{Process, bin};

fn aiosctl(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(bin("aiosctl").unwrap())
        .args(args)
        .env_remove("AIOS_API_KEY")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// `aiosctl -o json dev` with its state under `dir`, and the endpoints it prints.
fn start_dev(dir: &std::path::Path) -> (Process, serde_json::Value) {
    let state = dir.join("dev");
    let mut dev = Process::spawn(
        &bin("aiosctl").unwrap(),
        &["-o", "json", "dev", "--state-dir", state.to_str().unwrap()],
    )
    .unwrap();
    let lines = dev.stdout_lines().unwrap();
    let first = lines
        .recv_timeout(Duration::from_secs(60))
        .expect("dev prints its endpoints");
    (dev, serde_json::from_str(&first).unwrap())
}

#[test]
fn dev_starts_both_planes_and_status_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, endpoints) = start_dev(dir.path());
    let cp = endpoints["control_plane"]["grpc"].as_str().unwrap();
    let dp = endpoints["data_plane"]["grpc"].as_str().unwrap();
    assert!(
        endpoints["data_plane"]["openai"]
            .as_str()
            .unwrap()
            .ends_with("/v1")
    );

    let (code, table) = aiosctl(&["--endpoint", cp, "status", "--data-plane", dp]);
    assert_eq!(code, Some(0), "{table}");
    assert_eq!(table.matches("SERVING").count(), 2, "{table}");
    assert!(
        table.contains("AdminService") && table.contains("AgentService"),
        "{table}"
    );

    let (code, json) = aiosctl(&["--endpoint", cp, "-o", "json", "status", "--data-plane", dp]);
    assert_eq!(code, Some(0));
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["control_plane"]["status"], "SERVING");
    assert_eq!(status["data_plane"]["status"], "SERVING");

    let (code, yaml) = aiosctl(&["--endpoint", cp, "-o", "yaml", "status", "--data-plane", dp]);
    assert_eq!(code, Some(0));
    assert!(yaml.contains("status: SERVING"), "{yaml}");

    dev.signal("INT").unwrap();
    assert_eq!(
        dev.wait(Duration::from_secs(30)).unwrap().code(),
        Some(0),
        "{:#?}",
        dev.stderr
    );
}

#[test]
fn status_fails_for_an_unreachable_plane() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let (code, table) = aiosctl(&[
        "--endpoint",
        &dead,
        "--timeout",
        "2s",
        "status",
        "--data-plane",
        &dead,
    ]);
    assert_eq!(code, Some(1), "{table}");
    assert_eq!(table.matches("UNREACHABLE").count(), 2, "{table}");
    assert!(table.contains("cannot connect"), "{table}");
}

#[test]
fn aiosctl_rejects_bad_flags_with_one_line() {
    let output = Command::new(bin("aiosctl").unwrap())
        .args(["-o", "xml", "status"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("'xml'"), "{stderr}");
}

#[test]
fn the_examples_apply_all_or_nothing_through_aiosctl_and_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, endpoints) = start_dev(dir.path());
    let cp = endpoints["control_plane"]["grpc"]
        .as_str()
        .unwrap()
        .to_string();
    let key = endpoints["api_key"].as_str().unwrap().to_string();
    let examples = aios_tests::repo_root().join("deploy/examples");
    let examples = examples.to_str().unwrap();
    let ctl = |args: &[&str]| {
        let output = Command::new(bin("aiosctl").unwrap())
            .args(["--endpoint", &cp, "--api-key", &key])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code(), text)
    };

    let (code, out) = ctl(&["apply", "-f", examples]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches(" created").count(), 26, "{out}");
    assert_eq!(
        out.matches("secret (shown once)").count(),
        6,
        "each new key's secret is shown once: {out}"
    );
    let (code, out) = ctl(&["apply", "-f", examples]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches(" unchanged").count(), 26, "{out}");
    let (code, out) = ctl(&["diff", "-f", examples]);
    assert_eq!(code, Some(0), "nothing to change: {out}");

    let (code, out) = ctl(&["-o", "json", "get", "models", "--tenant", "acme"]);
    assert_eq!(code, Some(0), "{out}");
    let models: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(models.as_array().unwrap().len(), 5, "{out}");

    // A typo is reported with file, document, line and column; nothing is sent.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "metadata:\n  name: a\n  tenant: acme\nagent:\n  routingTable: default\n  maxStepz: 3\n",
    )
    .unwrap();
    let (code, out) = ctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("bad.yaml") && out.contains("line 6") && out.contains("maxStepz"),
        "{out}"
    );

    dev.signal("INT").unwrap();
    assert_eq!(dev.wait(Duration::from_secs(30)).unwrap().code(), Some(0));
}
