//! Traffic for telemetry tests: tenant `acme` whose agent `support` answers
//! through the fake provider, data-plane nodes in this process that report
//! their spans to a [`TestPlane`], requests through them, and the summary
//! polled until the spans are folded.

#![allow(clippy::expect_used)] // test harness: a failed setup should stop the test loudly

use std::{path::Path, sync::Arc, time::Duration};

use aios_control_plane::Secret;
use aios_data_plane::{
    DataPlane,
    fleet::ResourceKey,
    pipeline::{RemoteProviders, Settings},
};
use aios_model::Kind;
use aios_proto::v1::{
    self as pb, admin_service_client::AdminServiceClient, agent_service_client::AgentServiceClient,
    resource::Spec, telemetry_service_client::TelemetryServiceClient,
};

use crate::{
    admin::{ADMIN_KEY, TestPlane, agent, api_key, model, routing_table, tenant},
    fake_provider::FakeProvider,
};

/// How long setup and polls may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// A `TelemetryService` client.
pub type Telemetry = TelemetryServiceClient<aios_client::AuthChannel>;

/// The keys [`seed`] creates.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Role caller: sends requests.
    pub caller: String,
    /// Role viewer: reads telemetry.
    pub viewer: String,
}

/// Applies tenant `acme`: models `a` (the fake provider) and `pricey`
/// (the baseline), routing table `std`, agent `support`, and a caller and
/// a viewer key (the viewer last: a node that has it has everything).
pub async fn seed(plane: &TestPlane, fake: &FakeProvider) -> Keys {
    let channel = aios_client::connect(&plane.url(), Some(ADMIN_KEY), WAIT)
        .await
        .expect("connect to the control plane");
    let mut admin = AdminServiceClient::new(channel);
    let mut apply = async |resource: pb::Resource| {
        admin
            .apply(pb::ApplyRequest {
                resource: Some(resource),
                dry_run: false,
            })
            .await
            .expect("apply")
            .into_inner()
    };
    apply(tenant("acme")).await;
    for (name, price) in [("a", 0.15), ("pricey", 2.5)] {
        let mut m = model("acme", name);
        if let Some(Spec::Model(spec)) = m.spec.as_mut() {
            spec.provider = pb::ModelProvider::OpenaiCompatible as i32;
            spec.provider_model = format!("{name}-v1");
            spec.endpoint = format!("{}/v1", fake.url());
            spec.api_key_env = String::new();
            spec.input_price_usd_per_mtok = price;
            spec.output_price_usd_per_mtok = price * 4.0;
        }
        apply(m).await;
    }
    let mut table = routing_table("acme", "std", "a");
    if let Some(Spec::RoutingTable(spec)) = table.spec.as_mut() {
        spec.baseline_model = "pricey".into();
    }
    apply(table).await;
    apply(agent("acme", "support", "std")).await;
    let caller = apply(api_key("acme", "caller", pb::Role::Caller))
        .await
        .api_key_secret;
    let viewer = apply(api_key("acme", "viewer", pb::Role::Viewer))
        .await
        .api_key_secret;
    Keys { caller, viewer }
}

/// A node named `id` streaming config from (and reporting spans to)
/// `plane_url`, its state under `dir`.
pub async fn node(plane_url: &str, id: &str, dir: &Path) -> DataPlane {
    let url = plane_url.parse().expect("a control-plane URL");
    let mut config = aios_data_plane::Config::local(url, dir.join(id));
    config.node.node_id = id.into();
    config.node_key = Some(Secret::new(ADMIN_KEY.into()).expect("a node key"));
    DataPlane::start_with(
        &config,
        Arc::new(RemoteProviders::new().expect("providers")),
        Settings::default(),
    )
    .await
    .expect("start a node")
}

/// Waits until `node` has all of [`seed`]'s config.
pub async fn ready(node: &DataPlane) {
    let mut changes = node.node_config().subscribe();
    let last = ResourceKey::new(Kind::ApiKey, "acme", "viewer");
    tokio::time::timeout(WAIT, changes.wait_for(|c| c.get(&last).is_some()))
        .await
        .expect("the node receives the config")
        .expect("the node's config stays watchable");
}

/// Sends `count` requests to agent `support` on `node`, each with a
/// distinct text (no cache hits), and returns the responses, all
/// succeeded.
pub async fn ask(node: &DataPlane, key: &str, count: usize) -> Vec<pb::ExecuteResponse> {
    let mut responses = Vec::with_capacity(count);
    for response in send(node, key, count).await {
        let response = response.expect("execute");
        assert_eq!(
            response.status,
            pb::ExecutionStatus::Succeeded as i32,
            "{response:?}"
        );
        responses.push(response);
    }
    responses
}

/// Sends `count` requests like [`ask`], whatever their outcome.
pub async fn send(
    node: &DataPlane,
    key: &str,
    count: usize,
) -> Vec<Result<pb::ExecuteResponse, tonic::Status>> {
    let url = format!("http://{}", node.grpc_addr());
    let channel = aios_client::connect(&url, Some(key), WAIT)
        .await
        .expect("connect to the node");
    let mut agents = AgentServiceClient::new(channel);
    let mut responses = Vec::with_capacity(count);
    for i in 0..count {
        let response = agents
            .execute(pb::ExecuteRequest {
                agent: "support".into(),
                input: Some(pb::execute_request::Input::Messages(pb::Messages {
                    messages: vec![pb::Message {
                        role: pb::MessageRole::User as i32,
                        content: format!("What is {i} plus {i} on {url}?"),
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner);
        responses.push(response);
    }
    responses
}

/// A telemetry client of the control plane at `plane_url`.
pub async fn telemetry(plane_url: &str, key: &str) -> Telemetry {
    let channel = aios_client::connect(plane_url, Some(key), WAIT)
        .await
        .expect("connect to the control plane");
    TelemetryServiceClient::new(channel)
}

/// A `Subscribe` stream of the caller's alert events (and rollups).
pub async fn alerts(plane_url: &str, key: &str) -> tonic::Streaming<pb::SubscribeResponse> {
    telemetry(plane_url, key)
        .await
        .subscribe(pb::SubscribeRequest {
            include_alerts: true,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// The next alert event on `stream` (rollups in between are skipped).
pub async fn next_alert(stream: &mut tonic::Streaming<pb::SubscribeResponse>) -> pb::AlertEvent {
    loop {
        let item = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an alert event in time")
            .expect("the stream answers")
            .expect("the stream stays open");
        if let Some(pb::subscribe_response::Event::Alert(event)) = item.event {
            return event;
        }
    }
}

/// The summary of the last hour.
pub async fn summary(client: &mut Telemetry) -> pb::Summary {
    client
        .get_summary(pb::GetSummaryRequest::default())
        .await
        .expect("get summary")
        .into_inner()
        .summary
        .unwrap_or_default()
}

/// Polls the summary until it counts `requests` (or [`WAIT`] passes), and
/// returns it.
pub async fn summary_reaching(client: &mut Telemetry, requests: u64) -> pb::Summary {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = summary(client).await;
        if s.requests >= requests || tokio::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
