//! etcd over TLS and with etcd's own authentication, end to end: a CA and
//! certificates made with `openssl`, a real etcd 3.4 that requires client
//! certificates, `EtcdStore` passing the conformance suite through it, the
//! failures an operator would meet (wrong CA, no or foreign client
//! certificate, wrong password), and the real `aios-control-plane` binary
//! reaching SERVING with the `--etcd-*` settings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use aios_control_plane::store::{
    Op, Store, StoreError, conformance,
    etcd::{EtcdOptions, EtcdStore, EtcdTls},
};
use aios_proto::v1::{self as pb, admin_service_client::AdminServiceClient};
use aios_tests::{
    Process, SpawnedPlane,
    admin::{ADMIN_KEY, tenant},
    bin,
    etcd::{EtcdServer, TlsFiles},
    http_get,
};

/// A short call deadline, so refused connections fail fast.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

async fn start_tls() -> (tempfile::TempDir, TlsFiles, EtcdServer) {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::generate(dir.path()).unwrap();
    let etcd = EtcdServer::start_tls(&files).unwrap();
    (dir, files, etcd)
}

/// Connects to `etcd` with `tls`; the error, and how long it took.
async fn connect_with(
    etcd: &EtcdServer,
    tls: EtcdTls,
) -> (Result<EtcdStore, StoreError>, Duration) {
    let started = Instant::now();
    let result = EtcdStore::connect(EtcdOptions {
        tls: Some(tls),
        call_timeout: CALL_TIMEOUT,
        ..etcd.options()
    })
    .await;
    (result, started.elapsed())
}

/// Fails unless `result` is a refusal that came within the call deadline.
fn assert_refused(result: Result<EtcdStore, StoreError>, took: Duration) -> String {
    let message = match result {
        Err(StoreError::Unavailable(message) | StoreError::Internal(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(
        took < CALL_TIMEOUT + Duration::from_secs(2),
        "took {took:?}"
    );
    message
}

#[tokio::test]
async fn etcd_store_over_tls_passes_the_conformance_suite() {
    let (_dir, _files, etcd) = start_tls().await;
    let store = EtcdStore::connect(etcd.options()).await.unwrap();
    conformance::run_all(Arc::new(store), "tls").await.unwrap();
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let (_dir, files, etcd) = start_tls().await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = TlsFiles::generate(other_dir.path()).unwrap();
    let tls = EtcdTls {
        ca_file: other.ca_cert.clone(),
        ..files.client_tls()
    };
    let (result, took) = connect_with(&etcd, tls).await;
    let message = assert_refused(result, took);
    assert!(message.contains("certificate"), "{message}");
}

#[tokio::test]
async fn etcd_refuses_clients_without_a_certificate_it_trusts() {
    let (_dir, files, etcd) = start_tls().await;
    let no_certificate = EtcdTls {
        ca_file: files.ca_cert.clone(),
        client_cert_file: None,
        client_key_file: None,
    };
    let (result, took) = connect_with(&etcd, no_certificate).await;
    assert_refused(result, took);

    let other_dir = tempfile::tempdir().unwrap();
    let other = TlsFiles::generate(other_dir.path()).unwrap();
    let foreign = EtcdTls {
        ca_file: files.ca_cert.clone(),
        ..other.client_tls()
    };
    let (result, took) = connect_with(&etcd, foreign).await;
    assert_refused(result, took);

    // The right certificate still works on the same server.
    let (result, _) = connect_with(&etcd, files.client_tls()).await;
    let put = Op::Put {
        key: "tls/k".into(),
        value: b"v".to_vec(),
        lease: None,
    };
    result.unwrap().txn(vec![], vec![put]).await.unwrap();
}

/// Waits for `/readyz` to answer 200: the `store` gate opens only while
/// the store answers.
async fn wait_ready(plane: &SpawnedPlane) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http_get(plane.admin, "/readyz").await.unwrap();
        if code == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz: {code} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a tenant through the plane's Admin API and reads it back.
async fn apply_and_read(plane: &SpawnedPlane) {
    let channel = aios_client::connect(&plane.grpc_url(), Some(ADMIN_KEY), CALL_TIMEOUT)
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(channel);
    let request = pb::ApplyRequest {
        resource: Some(tenant("acme")),
        dry_run: false,
    };
    admin.apply(request).await.unwrap();
    let read = pb::GetRequest {
        kind: pb::Kind::Tenant as i32,
        tenant: String::new(),
        name: "acme".into(),
    };
    let resource = admin.get(read).await.unwrap().into_inner();
    assert_eq!(resource.metadata.unwrap().name, "acme");
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn the_control_plane_binary_serves_from_etcd_over_tls() {
    let (_dir, files, etcd) = start_tls().await;
    let store = format!("etcd://{}", etcd.endpoint());
    let flags = [
        "--etcd-ca-file",
        path(&files.ca_cert),
        "--etcd-cert-file",
        path(&files.client_cert),
        "--etcd-key-file",
        path(&files.client_key),
    ];
    let env = [("AIOS_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)];
    let plane =
        SpawnedPlane::control_plane_on(&store, &env, &flags, tempfile::tempdir().unwrap()).unwrap();
    wait_ready(&plane).await;
    apply_and_read(&plane).await;
}

#[tokio::test]
async fn the_control_plane_binary_authenticates_to_etcd() {
    let etcd = EtcdServer::start().unwrap();
    etcd.enable_auth("etcd-root-pw").unwrap();
    let store = format!("etcd://{}", etcd.endpoint());
    let env = [
        ("AIOS_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY),
        ("AIOS_ETCD_PASSWORD", "etcd-root-pw"),
    ];
    let flags = ["--etcd-user", "root"];
    let plane =
        SpawnedPlane::control_plane_on(&store, &env, &flags, tempfile::tempdir().unwrap()).unwrap();
    wait_ready(&plane).await;
    apply_and_read(&plane).await;
    assert!(
        plane
            .process
            .stderr
            .iter()
            .all(|l| !l.contains("etcd-root-pw")),
        "{:#?}",
        plane.process.stderr
    );
}

#[tokio::test]
async fn a_wrong_etcd_password_stops_the_binary_with_one_line() {
    let etcd = EtcdServer::start().unwrap();
    etcd.enable_auth("etcd-root-pw").unwrap();
    let store = format!("etcd://{}", etcd.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("etcd-password");
    std::fs::write(&password_file, "wrong-password\n").unwrap();
    let mut args = aios_tests::control_plane_args(&store);
    args.extend_from_slice(&[
        "--etcd-user",
        "root",
        "--etcd-password-file",
        path(&password_file),
    ]);
    let env = [("AIOS_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)];
    let mut process =
        Process::spawn_with_env(&bin("aios-control-plane").unwrap(), &args, &env).unwrap();
    let status = process.wait(Duration::from_secs(20)).unwrap();
    assert!(!status.success(), "{status}");
    // Logs are JSON; the reason the process stopped is the one other line.
    let plain: Vec<&String> = process
        .stderr
        .iter()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_err())
        .collect();
    assert_eq!(plain.len(), 1, "{:#?}", process.stderr);
    assert!(
        plain[0].starts_with("error: ") && plain[0].contains("authentication failed"),
        "{}",
        plain[0]
    );
    let all = process.stderr.join("\n");
    assert!(!all.contains("wrong-password"), "{all}");
}

#[tokio::test]
async fn a_client_key_that_is_not_the_certificates_fails_at_once() {
    let (dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (files, other) = (
        TlsFiles::generate(dir.path()).unwrap(),
        TlsFiles::generate(other_dir.path()).unwrap(),
    );
    let dead = aios_tests::etcd::ClosedPort::new().unwrap();
    let started = Instant::now();
    let result = EtcdStore::connect(EtcdOptions {
        endpoints: vec![dead.endpoint()],
        tls: Some(EtcdTls {
            client_key_file: Some(other.client_key.clone()),
            ..files.client_tls()
        }),
        ..EtcdOptions::default()
    })
    .await;
    let Err(StoreError::Internal(message)) = result else {
        panic!("{result:?}");
    };
    let key = other.client_key.display().to_string();
    assert!(
        message.starts_with("etcd TLS: ") && message.contains(&key),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}
