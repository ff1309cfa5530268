//! The agent against an in-process fake FleetService on `127.0.0.1:0`
//! speaking the real gRPC protocol.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{future::Future, time::Duration};

use aios_model::Kind;
use aios_proto::v1::{
    self as pb,
    fleet_service_server::{FleetService, FleetServiceServer},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{Response, Status, Streaming};

use super::*;
use crate::upstream::testing::{FakeCall, KEY, serve};
use crate::{
    DataPlane,
    fleet::{
        persist,
        testing::{bad_model, host_with, push, tool},
    },
};

/// Guards against a hang only; no test depends on how fast anything is.
const HANG: Duration = Duration::from_secs(10);
/// Longer than any test: no heartbeats unless a test asks for them.
const NEVER: Duration = Duration::from_secs(3600);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// === Fake control plane ===

/// One StreamConfig call, as the fake control plane received it.
type Call = FakeCall<pb::NodeMessage, pb::ConfigMessage>;

impl Call {
    async fn next(&mut self) -> node_message::Msg {
        let message = within("a message from the node", self.from_node.message()).await;
        message.unwrap().expect("stream open").msg.expect("a case")
    }

    async fn hello(&mut self) -> pb::NodeHello {
        match self.next().await {
            node_message::Msg::Hello(hello) => hello,
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    /// Sends `push` and returns the node's ACK.
    async fn push(&mut self, push: pb::ConfigPush) -> pb::ConfigAck {
        let nonce = push.nonce.clone();
        let message = pb::ConfigMessage {
            msg: Some(config_message::Msg::Push(push)),
        };
        self.to_node.send(Ok(message)).await.unwrap();
        match self.next().await {
            node_message::Msg::Ack(ack) => {
                assert_eq!(ack.nonce, nonce);
                ack
            }
            other => panic!("expected an ACK, got {other:?}"),
        }
    }
}

struct Fake {
    calls: mpsc::UnboundedSender<Call>,
}

#[tonic::async_trait]
impl FleetService for Fake {
    async fn stream_config(
        &self,
        request: tonic::Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::ConfigMessage>>, Status> {
        Ok(Call::accept(request, &self.calls, 4))
    }
}

/// A fake control plane: its URL and the calls it receives.
async fn fake_control_plane() -> (ControlPlaneUrl, mpsc::UnboundedReceiver<Call>) {
    let (calls, received) = mpsc::unbounded_channel();
    let router =
        tonic::transport::Server::builder().add_service(FleetServiceServer::new(Fake { calls }));
    (serve(router).await, received)
}

/// A URL where nothing listens (a port that was free a moment ago).
fn dead_url() -> ControlPlaneUrl {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}").parse().unwrap()
}

async fn next_call(calls: &mut mpsc::UnboundedReceiver<Call>) -> Call {
    within("a StreamConfig call", calls.recv()).await.unwrap()
}

// === Node under test ===

struct Node {
    handle: NodeConfigHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Node {
    fn start(urls: Vec<ControlPlaneUrl>, key: Option<&str>, heartbeat_after: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::local(urls[0].clone(), dir.path().into());
        config.control_plane = urls;
        config.node_key = key.map(|k| Secret::new(k.into()).unwrap());
        config.node.node_id = "node-1".into();
        config.node.labels.insert("tier".into(), "gpu".into());
        let handle = NodeConfigHandle::new(NodeConfig::default());
        let (reporter, _) = tonic_health::server::health_reporter();
        let readiness = Readiness::new("test", reporter, &[], &[(GATE_CONFIG, false)]);
        let host = host_with(&[("OPENAI_API_KEY", "sk-test")]);
        let agent = Agent::new(&config, handle.clone(), host, readiness.clone(), false)
            .with_heartbeat_after(heartbeat_after);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(shutdown.clone()));
        Self {
            handle,
            readiness,
            shutdown,
            task,
            dir,
        }
    }

    fn gate_open(&self) -> bool {
        self.readiness.report().gates[GATE_CONFIG]
    }

    async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        within("the agent to stop", self.task).await.unwrap();
        self.dir
    }
}

fn search() -> ResourceKey {
    ResourceKey::new(Kind::Tool, "acme", "search")
}

fn fetch() -> ResourceKey {
    ResourceKey::new(Kind::Tool, "acme", "fetch")
}

fn held(hello: &pb::NodeHello) -> Vec<(pb::ResourceRef, i64)> {
    hello
        .held
        .iter()
        .map(|h| (h.resource.clone().unwrap(), h.version))
        .collect()
}

// === Tests ===

#[tokio::test]
async fn applies_pushes_acks_each_and_resumes_with_what_it_holds() {
    let (url, mut calls) = fake_control_plane().await;
    let node = Node::start(vec![url], Some(KEY), NEVER);

    let mut call = next_call(&mut calls).await;
    assert_eq!(call.api_key.as_deref(), Some(KEY));
    let hello = call.hello().await;
    assert_eq!(
        (hello.node_id.as_str(), hello.region.as_str()),
        ("node-1", "local")
    );
    assert_eq!(hello.labels.get("tier").map(String::as_str), Some("gpu"));
    assert!(hello.held.is_empty());
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    let caps = hello.capabilities.unwrap();
    assert!(caps.cpu_cores >= 1 && !caps.gpu, "{caps:?}");
    assert!(!node.gate_open(), "no config yet");

    // The initial push: one good resource, one bad.
    let mut initial = push(5, vec![tool("search", 5), bad_model("gpt", 5)], vec![]);
    initial.initial = true;
    let ack = call.push(initial).await;
    let answers: Vec<_> = ack
        .results
        .iter()
        .map(|r| (r.resource.clone().unwrap(), r.version, r.accepted))
        .collect();
    assert_eq!(
        answers,
        vec![
            (search().to_ref(), 5, true),
            (
                ResourceKey::new(Kind::Model, "acme", "gpt").to_ref(),
                5,
                false
            ),
        ]
    );
    assert!(ack.results[1].error.starts_with("model.endpoint: "));
    // Swapped before the ACK went out.
    let current = node.handle.current();
    assert_eq!(current.revision, 5);
    assert_eq!(current.get(&search()).unwrap().version, 5);

    // A change: one update, one removal.
    let ack = call
        .push(push(6, vec![tool("fetch", 6)], vec![search().to_ref()]))
        .await;
    let answers: Vec<_> = ack
        .results
        .iter()
        .map(|r| (r.resource.clone().unwrap(), r.version, r.accepted))
        .collect();
    assert_eq!(
        answers,
        vec![(fetch().to_ref(), 6, true), (search().to_ref(), 5, true)]
    );
    assert!(node.gate_open(), "the first applied push opened the gate");

    // The control plane goes away; the node reconnects and says what it holds.
    drop(call);
    let mut call = next_call(&mut calls).await;
    let hello = call.hello().await;
    assert_eq!(held(&hello), vec![(fetch().to_ref(), 6)]);
    assert!(node.gate_open(), "stays open through the outage");
    let mut resume = push(6, vec![], vec![]);
    resume.initial = true;
    assert!(call.push(resume).await.results.is_empty());

    // Shutting down leaves the latest snapshot on disk.
    let dir = node.stop().await;
    let saved = persist::load(dir.path(), &host_with(&[]));
    assert!(saved.found);
    assert_eq!(saved.config.revision, 6);
    assert_eq!(saved.config.held(), node_held(&[(fetch(), 6)]));
}

fn node_held(entries: &[(ResourceKey, i64)]) -> Vec<pb::HeldResource> {
    entries
        .iter()
        .map(|(key, version)| pb::HeldResource {
            resource: Some(key.to_ref()),
            version: *version,
        })
        .collect()
}

#[tokio::test]
async fn a_refused_stream_is_retried_and_a_dead_url_is_skipped() {
    let (url, mut calls) = fake_control_plane().await;
    let node = Node::start(vec![url, dead_url()], None, NEVER);

    let mut call = next_call(&mut calls).await;
    assert_eq!(call.api_key, None, "no key configured, none sent");
    call.hello().await;
    let refused = Status::unauthenticated("missing API key");
    call.to_node.send(Err(refused)).await.unwrap();

    // Next the dead URL fails, then the fake is tried again.
    let mut again = next_call(&mut calls).await;
    assert!(again.hello().await.held.is_empty());
    assert!(!node.gate_open(), "nothing was ever applied");
    node.stop().await;
}

#[tokio::test]
async fn an_idle_stream_carries_heartbeats() {
    let (url, mut calls) = fake_control_plane().await;
    let node = Node::start(vec![url], Some(KEY), Duration::from_millis(20));
    let mut call = next_call(&mut calls).await;
    call.hello().await;
    match call.next().await {
        node_message::Msg::Heartbeat(beat) => assert_eq!(beat.in_flight_requests, 0),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    node.stop().await;
}

#[tokio::test]
async fn the_config_gate_opens_on_the_first_push_and_a_restart_starts_from_disk() {
    let (url, mut calls) = fake_control_plane().await;
    let dir = tempfile::tempdir().unwrap();
    let plane = DataPlane::start(&Config::local(url, dir.path().into()))
        .await
        .unwrap();
    assert!(!plane.readiness().report().gates[GATE_CONFIG]);
    assert!(!plane.readiness().is_ready());

    let mut call = next_call(&mut calls).await;
    call.hello().await;
    call.push(push(3, vec![tool("search", 3)], vec![])).await;
    // The gate opens right after the first ACK; a second round trip
    // guarantees the agent got past it.
    call.push(push(3, vec![], vec![])).await;
    assert!(plane.readiness().is_ready());
    let mut changes = plane.node_config().subscribe();
    within("revision 3", changes.wait_for(|c| c.revision >= 3))
        .await
        .unwrap();
    plane.shutdown(HANG).await;

    // Restarted with no control plane to reach: it serves what it saved.
    let plane = DataPlane::start(&Config::local(dead_url(), dir.path().into()))
        .await
        .unwrap();
    assert!(plane.readiness().is_ready());
    let config = plane.node_config().current();
    assert_eq!(config.revision, 3);
    assert_eq!(config.get(&search()).unwrap().version, 3);
    plane.shutdown(HANG).await;
}

#[test]
fn memory_is_read_from_meminfo() {
    let meminfo = "MemTotal:       16314460 kB\nMemFree:         1234 kB\n";
    assert_eq!(mem_total_bytes(meminfo), Some(16_314_460 * 1024));
    assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
    assert_eq!(mem_total_bytes("MemTotal: lots\n"), None);
}
