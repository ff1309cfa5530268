//! The real binaries: bad configuration exits non-zero with one line, and
//! SIGTERM reports NOT_SERVING, drains within the grace bound and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{net::TcpListener, time::Duration};

use aios_tests::{Process, SpawnedPlane, admin::ADMIN_KEY, bin};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const EXIT: Duration = Duration::from_secs(30);

/// Runs `binary args…`, expecting exit code 2 and exactly one stderr line
/// that starts with `error:` and contains `needle`.
fn assert_config_error(binary: &str, args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").display().to_string();
    // Keep data-plane runs from writing state into the working directory.
    let mut all: Vec<&str> = args.to_vec();
    if binary == "aios-data-plane" && !args.contains(&"--state-dir") {
        all.extend(["--state-dir", &state]);
    }
    let mut process = Process::spawn(&bin(binary).unwrap(), &all).unwrap();
    let status = process.wait(EXIT).unwrap();
    let stderr = &process.stderr;
    assert_eq!(status.code(), Some(2), "{binary} {args:?}: {stderr:#?}");
    assert_eq!(
        stderr.len(),
        1,
        "{binary} {args:?}: want one line, got {stderr:#?}"
    );
    assert!(stderr[0].starts_with("error: "), "{stderr:#?}");
    assert!(
        stderr[0].contains(needle),
        "{binary} {args:?}: {:?} lacks {needle:?}",
        stderr[0]
    );
}

#[test]
fn bad_config_exits_non_zero_with_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::write(&bad_yaml, "listen: 127.0.0.1:0\nlisen: typo\n").unwrap();
    let bad_yaml = bad_yaml.to_str().unwrap();
    let missing = dir.path().join("missing.yaml");
    let missing = missing.to_str().unwrap();

    for binary in ["aios-control-plane", "aios-data-plane"] {
        assert_config_error(
            binary,
            &["--no-such-flag"],
            "unexpected argument '--no-such-flag'",
        );
        assert_config_error(binary, &["--listen", "not-an-address"], "not-an-address");
        assert_config_error(
            binary,
            &["--listen", "127.0.0.1:0", "--admin-listen", &taken],
            "cannot listen on --admin-listen",
        );
        assert_config_error(binary, &["--config", missing], "cannot read config file");
        assert_config_error(binary, &["--config", bad_yaml], "unknown field `lisen`");
        assert_config_error(binary, &["--shutdown-grace", "soon"], "invalid duration");
        assert_config_error(binary, &["--log", "aios=loud"], "--log");
    }
    assert_config_error(
        "aios-control-plane",
        &["--store", "mysql://db"],
        "expected embedded:PATH",
    );
    assert_config_error(
        "aios-data-plane",
        &["--control-plane", "cp:7070"],
        "--control-plane",
    );
    assert_config_error("aios-data-plane", &["--label", "no-equals"], "KEY=VALUE");
}

#[test]
fn env_variables_configure_the_binary() {
    // AIOS_LISTEN is read like --listen: a bad value fails the same way.
    let mut process = Process::spawn_with_env(
        &bin("aios-control-plane").unwrap(),
        &[],
        &[("AIOS_LISTEN", "bogus")],
    )
    .unwrap();
    let status = process.wait(EXIT).unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(process.stderr[0].contains("bogus"), "{:?}", process.stderr);
}

#[tokio::test]
async fn sigterm_drains_within_the_grace_bound_and_exits_cleanly() {
    // The data plane gets its config from a control plane of its own, so
    // it is SERVING before the signal.
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("cp.db").display());
    let source = SpawnedPlane::control_plane_on(
        &store,
        &[("AIOS_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)],
        &[],
        dir,
    )
    .unwrap();
    for mut plane in [
        SpawnedPlane::control_plane(&["--shutdown-grace", "1s"]).unwrap(),
        SpawnedPlane::data_plane_of(&source.grpc_url(), ADMIN_KEY, &["--shutdown-grace", "1s"])
            .unwrap(),
    ] {
        let channel = aios_client::connect(&plane.grpc_url(), None, EXIT)
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        // An in-flight call that never ends on its own: the health watch.
        let mut watch = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32);

        plane.process.signal("TERM").unwrap();
        let next = watch.message().await.unwrap().unwrap();
        assert_eq!(
            next.status,
            ServingStatus::NotServing as i32,
            "watchers learn of the drain"
        );

        let status = plane.process.wait(EXIT).unwrap();
        assert_eq!(status.code(), Some(0), "{:#?}", plane.process.stderr);
        let log = plane.process.stderr.join("\n");
        assert!(log.contains("SIGTERM"), "{log}");
        assert!(
            log.contains("outlived the grace period"),
            "the watch was cut at the bound: {log}"
        );
        assert!(log.contains("\"message\":\"stopped\""), "{log}");
    }
}

#[tokio::test]
async fn sigint_with_no_calls_in_flight_drains_cleanly() {
    let mut plane = SpawnedPlane::control_plane(&[]).unwrap();
    plane.process.signal("INT").unwrap();
    let status = plane.process.wait(EXIT).unwrap();
    assert_eq!(status.code(), Some(0));
    let log = plane.process.stderr.join("\n");
    assert!(log.contains("Clean"), "{log}");
    assert!(!log.contains("outlived"), "{log}");
}

// Two workers: the test blocks its own thread waiting for the process to
// exit, and the client's connection task must still answer the server's
// graceful-shutdown PING (HTTP/2 GOAWAY), or the server waits for it until
// its grace runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_at_sigterm_is_served_to_completion() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let mut plane = SpawnedPlane::control_plane(&["--shutdown-grace", "60s"]).unwrap();
    let channel = aios_client::connect(&plane.grpc_url(), None, EXIT)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    tx.send(list()).await.unwrap();
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(responses.message().await.unwrap().is_some());

    plane.process.signal("TERM").unwrap();
    plane
        .process
        .wait_for_log("readiness changed", EXIT)
        .unwrap();
    // The stream opened before the signal is still served during the drain.
    tx.send(list()).await.unwrap();
    let answer = responses.message().await.unwrap().unwrap();
    assert!(matches!(
        answer.message_response,
        Some(MessageResponse::ListServicesResponse(_))
    ));
    // The client finishes its call; the drain completes well before the grace period.
    drop(tx);
    assert!(responses.message().await.unwrap().is_none());
    // Release every client handle, so only the server decides when the
    // connection closes.
    drop(responses);

    let status = plane.process.wait(EXIT).unwrap();
    assert_eq!(status.code(), Some(0));
    let log = plane.process.stderr.join("\n");
    assert!(log.contains("Clean"), "{log}");
}

#[test]
fn a_closed_stderr_does_not_crash_the_plane() {
    // `aios-control-plane … 2>&1 | head -1`: later log writes fail with EPIPE.
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("cp.db").display());
    /// Kills the plane if an assertion fails first.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(bin("aios-control-plane").unwrap())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--store",
            &store,
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut child = Guard(child);
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    assert!(
        !first.contains('\u{1b}'),
        "no colour codes into a pipe: {first:?}"
    );
    drop(stderr);
    std::thread::sleep(Duration::from_millis(200));
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + EXIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "a failed log write must not panic");
}

#[test]
fn a_signal_during_start_up_drains_instead_of_killing() {
    // SIGTERM while the plane is still opening its store and bootstrapping:
    // the handlers are installed before logging starts, so the signal is
    // held and the plane drains as soon as it serves.
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("cp.db").display());
    let args = aios_tests::control_plane_args(&store);
    let mut process = Process::spawn(&bin("aios-control-plane").unwrap(), &args).unwrap();
    process
        .wait_for_log("control plane starting", EXIT)
        .unwrap();
    process.signal("TERM").unwrap();
    let status = process.wait(EXIT).unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "killed instead of drained: {:#?}",
        process.stderr
    );
    assert!(
        process.stderr.join("\n").contains("shutting down"),
        "{:#?}",
        process.stderr
    );
}
