//! Both planes serve their services, health and reflection over real gRPC,
//! and their admin listeners answer /healthz, /readyz and /metrics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use aios_client::{check_health, connect, probe};
use aios_control_plane::{ControlPlane, Secret};
use aios_data_plane::DataPlane;
use aios_tests::{admin::ADMIN_KEY, http_get};

const SERVING: &str = "SERVING";
const TIMEOUT: Duration = Duration::from_secs(10);
const INFRA: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn expected(services: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = services
        .iter()
        .chain(INFRA)
        .map(|s| s.to_string())
        .collect();
    all.sort();
    all
}

#[tokio::test]
async fn each_plane_lists_exactly_its_services_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp_config = aios_control_plane::Config::local(dir.path());
    cp_config.bootstrap_admin_key = Some(Secret::new(ADMIN_KEY.into()).unwrap());
    let cp = ControlPlane::start(&cp_config).await.unwrap();
    let cp_url = format!("http://{}", cp.grpc_addr());
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut dp_config = aios_data_plane::Config::local(cp_url.parse().unwrap(), node_dir);
    dp_config.node_key = Some(Secret::new(ADMIN_KEY.into()).unwrap());
    let dp = DataPlane::start(&dp_config).await.unwrap();
    let dp_url = format!("http://{}", dp.grpc_addr());
    // A node serves once it has some config.
    tokio::time::timeout(
        TIMEOUT,
        dp.node_config().subscribe().wait_for(|c| c.revision > 0),
    )
    .await
    .unwrap()
    .unwrap();

    let cp_probe = probe(&cp_url, None, TIMEOUT).await;
    assert_eq!(cp_probe.status, SERVING, "{cp_probe:?}");
    assert_eq!(
        cp_probe.services,
        expected(aios_proto::CONTROL_PLANE_SERVICES)
    );

    let dp_probe = probe(&dp_url, None, TIMEOUT).await;
    assert_eq!(dp_probe.status, SERVING, "{dp_probe:?}");
    assert_eq!(dp_probe.services, expected(aios_proto::DATA_PLANE_SERVICES));

    // Per-service health follows the plane's readiness too.
    let channel = connect(&cp_url, None, TIMEOUT).await.unwrap();
    for service in aios_proto::CONTROL_PLANE_SERVICES {
        let status = check_health(channel.clone(), service).await.unwrap();
        assert_eq!(status.as_str_name(), SERVING, "{service}");
    }
    // A service this plane does not serve is unknown to health, not SERVING.
    let err = check_health(channel.clone(), "aios.v1.AgentService")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, aios_client::ClientError::Rpc(status) if status.code() == tonic::Code::NotFound),
        "{err}"
    );

    for admin in [cp.admin_addr(), dp.admin_addr()] {
        assert_eq!(http_get(admin, "/healthz").await.unwrap().0, 200);
        let (code, body) = http_get(admin, "/readyz").await.unwrap();
        assert_eq!(code, 200, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["ready"], true);
        assert_eq!(report["gates"]["grpc"], true);
        let (code, metrics) = http_get(admin, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        assert!(metrics.contains("aios_build_info"), "{metrics}");
        assert!(metrics.contains("aios_ready"), "{metrics}");
    }

    // Draining flips health to NOT_SERVING before the listener closes.
    cp.readiness().drain().await;
    let status = check_health(channel, "").await.unwrap();
    assert_eq!(status.as_str_name(), "NOT_SERVING");
    let (code, body) = http_get(cp.admin_addr(), "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");

    assert_eq!(dp.shutdown(TIMEOUT).await, aios_runtime::Drain::Clean);
    assert_eq!(cp.shutdown(TIMEOUT).await, aios_runtime::Drain::Clean);
}

#[tokio::test]
async fn a_node_that_never_had_config_reports_not_serving() {
    let dir = tempfile::tempdir().unwrap();
    let dp = DataPlane::start(&aios_data_plane::Config::local(
        "http://127.0.0.1:1".parse().unwrap(),
        dir.path().into(),
    ))
    .await
    .unwrap();
    let dp_probe = probe(&format!("http://{}", dp.grpc_addr()), None, TIMEOUT).await;
    assert_eq!(dp_probe.status, "NOT_SERVING", "{dp_probe:?}");
    let (code, body) = http_get(dp.admin_addr(), "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("config"), "names the closed gate: {body}");
    dp.shutdown(TIMEOUT).await;
}

#[tokio::test]
async fn the_openai_listener_answers_in_openai_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let dp = DataPlane::start(&aios_data_plane::Config::local(
        "http://127.0.0.1:1".parse().unwrap(),
        dir.path().into(),
    ))
    .await
    .unwrap();
    let http = dp.http_addr().unwrap();
    // The listing depends on the key (its agents, its tenant's models).
    let (code, body) = http_get(http, "/v1/models").await.unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key"),
        "{body}"
    );
    let (code, body) = http_get(http, "/nope").await.unwrap();
    assert_eq!(code, 404);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["code"],
        "unknown_url"
    );
    dp.shutdown(TIMEOUT).await;
}
