//! The reporter against an in-process fake `TelemetryService` on
//! `127.0.0.1:0` speaking the real gRPC protocol.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;

use aios_proto::v1::{
    report_request,
    telemetry_service_server::{TelemetryService, TelemetryServiceServer},
};
use prost::Message;
use tonic::Response;

use super::*;
use crate::upstream::testing::{FakeCall, KEY, serve};

/// Guards against a hang only; no test depends on how fast anything is.
const HANG: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// === Fake control plane ===

/// One Report call, as the fake control plane received it.
type Call = FakeCall<pb::ReportRequest, pb::ReportResponse>;

impl Call {
    async fn next(&mut self) -> report_request::Msg {
        let message = within("a message from the node", self.from_node.message()).await;
        message.unwrap().expect("stream open").msg.expect("a case")
    }

    async fn hello(&mut self) -> pb::ReportHello {
        match self.next().await {
            report_request::Msg::Hello(hello) => hello,
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    async fn batch(&mut self) -> pb::SpanBatch {
        match self.next().await {
            report_request::Msg::Batch(batch) => pb::SpanBatch::decode(batch).expect("a SpanBatch"),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    async fn ack(&self, acked_sequence: u64) {
        self.to_node
            .send(Ok(pb::ReportResponse { acked_sequence }))
            .await
            .unwrap();
    }
}

struct Fake {
    calls: mpsc::UnboundedSender<Call>,
}

#[tonic::async_trait]
impl TelemetryService for Fake {
    async fn report(
        &self,
        request: Request<Streaming<pb::ReportRequest>>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::ReportResponse>>, Status> {
        Ok(Call::accept(request, &self.calls, 16))
    }

    async fn subscribe(
        &self,
        _: Request<pb::SubscribeRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::SubscribeResponse>>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_summary(
        &self,
        _: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::GetSummaryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_trace(
        &self,
        _: Request<pb::GetTraceRequest>,
    ) -> Result<Response<pb::Trace>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

async fn fake_control_plane() -> (ControlPlaneUrl, mpsc::UnboundedReceiver<Call>) {
    let (calls, received) = mpsc::unbounded_channel();
    let router = tonic::transport::Server::builder()
        .add_service(TelemetryServiceServer::new(Fake { calls }));
    (serve(router).await, received)
}

// === The node side ===

/// Settings where every request's spans are a batch of their own and the
/// timer never cuts one.
fn settings(url: ControlPlaneUrl, state_dir: Option<PathBuf>) -> ReporterSettings {
    ReporterSettings {
        urls: vec![url],
        node_key: Some(Secret::new(KEY.to_string()).unwrap()),
        node_id: "node-1".into(),
        region: "eu".into(),
        state_dir,
        flush_every: Duration::from_secs(3600),
        max_batch_spans: 1,
        shutdown_wait: Duration::from_millis(200),
        ..ReporterSettings::defaults()
    }
}

fn span(name: &str) -> Encoded {
    Encoded::new(&[pb::Span {
        name: name.into(),
        ..Default::default()
    }])
}

struct Node {
    outbox: Outbox,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    incarnation: String,
}

fn start(settings: ReporterSettings) -> Node {
    let (reporter, outbox) = Reporter::new(settings);
    let incarnation = reporter.incarnation().to_string();
    let stop = CancellationToken::new();
    let task = tokio::spawn(reporter.run(stop.clone()));
    Node {
        outbox,
        stop,
        task,
        incarnation,
    }
}

impl Node {
    async fn shutdown(self) {
        self.stop.cancel();
        within("the reporter to stop", self.task).await.unwrap();
    }
}

fn names(batch: &pb::SpanBatch) -> Vec<&str> {
    batch.spans.iter().map(|s| s.name.as_str()).collect()
}

async fn next_call(calls: &mut mpsc::UnboundedReceiver<Call>) -> Call {
    within("a Report call", calls.recv()).await.unwrap()
}

// === Tests ===

#[tokio::test]
async fn hello_first_then_batches_in_order_each_acked() {
    let (url, mut calls) = fake_control_plane().await;
    let node = start(settings(url, None));
    let mut call = next_call(&mut calls).await;
    assert_eq!(call.api_key.as_deref(), Some(KEY));
    let hello = call.hello().await;
    assert_eq!(
        (hello.node_id.as_str(), hello.region.as_str()),
        ("node-1", "eu")
    );
    assert_eq!(hello.incarnation, node.incarnation);
    call.ack(0).await;

    for name in ["a", "b", "c"] {
        assert!(node.outbox.send(span(name)));
    }
    for (sequence, name) in [(1, "a"), (2, "b"), (3, "c")] {
        let batch = call.batch().await;
        assert_eq!(batch.sequence, sequence);
        assert_eq!(names(&batch), [name]);
        call.ack(sequence).await;
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_dropped_stream_is_reopened_and_exactly_the_unacked_batches_replayed() {
    let (url, mut calls) = fake_control_plane().await;
    let node = start(settings(url, None));
    let mut call = next_call(&mut calls).await;
    call.hello().await;
    call.ack(0).await;
    for name in ["a", "b", "c"] {
        node.outbox.send(span(name));
    }
    for sequence in 1..=3 {
        assert_eq!(call.batch().await.sequence, sequence);
    }
    call.ack(1).await;
    // The server takes only batch 1 durably, then the stream breaks.
    call.to_node
        .send(Err(Status::unavailable("replica going away")))
        .await
        .unwrap();
    drop(call);

    let mut call = next_call(&mut calls).await;
    assert_eq!(
        call.hello().await.incarnation,
        node.incarnation,
        "same sequence space"
    );
    call.ack(1).await;
    let replayed = [call.batch().await, call.batch().await];
    assert_eq!(
        replayed
            .iter()
            .map(|b| (b.sequence, names(b)[0]))
            .collect::<Vec<_>>(),
        [(2, "b"), (3, "c")],
        "the unacked ones, in order"
    );
    node.outbox.send(span("d"));
    let next = call.batch().await;
    assert_eq!(
        (next.sequence, names(&next)),
        (4, vec!["d"]),
        "then new ones"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn batches_the_server_already_has_are_not_resent() {
    let (url, mut calls) = fake_control_plane().await;
    let node = start(settings(url, None));
    let mut call = next_call(&mut calls).await;
    call.hello().await;
    // Nothing goes out before the server says what it has.
    for name in ["a", "b", "c", "d", "e"] {
        node.outbox.send(span(name));
    }
    call.ack(3).await;
    let first = call.batch().await;
    assert_eq!((first.sequence, names(&first)), (4, vec!["d"]));
    assert_eq!(call.batch().await.sequence, 5);
    node.shutdown().await;
}

#[tokio::test]
async fn drops_ride_on_the_next_batch() {
    let (url, mut calls) = fake_control_plane().await;
    let node = start(ReporterSettings {
        outbox_capacity: 1,
        ..settings(url, None)
    });
    let mut call = next_call(&mut calls).await;
    call.hello().await;
    // The reporter may or may not have taken the first before the rest
    // arrive; whatever did not fit is counted, and the counts add up.
    let mut sent = 0;
    for i in 0..50 {
        sent += usize::from(node.outbox.send(span(&format!("s{i}"))));
    }
    call.ack(0).await;
    node.stop.cancel();
    let (mut spans, mut dropped) = (0, 0);
    while spans + dropped < 50 {
        let batch = call.batch().await;
        spans += batch.spans.len() as u64;
        dropped += batch.dropped_spans;
    }
    assert_eq!((spans, dropped), (sent as u64, 50 - sent as u64));
    within("the reporter to stop", node.task).await.unwrap();
}

#[tokio::test]
async fn unacked_batches_spill_at_shutdown_and_go_out_after_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let (url, mut calls) = fake_control_plane().await;
    let node = start(settings(url.clone(), Some(state.path().to_path_buf())));
    let mut call = next_call(&mut calls).await;
    call.hello().await;
    call.ack(0).await;
    for name in ["a", "b"] {
        node.outbox.send(span(name));
    }
    for sequence in 1..=2 {
        assert_eq!(call.batch().await.sequence, sequence);
    }
    // Never acknowledged: shutdown waits briefly, then spills both.
    let incarnation = node.incarnation.clone();
    node.shutdown().await;
    drop(call);
    let spill = state.path().join("telemetry/spill");
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 2);

    let node = start(settings(url, Some(state.path().to_path_buf())));
    assert_eq!(node.incarnation, incarnation);
    let mut call = next_call(&mut calls).await;
    assert_eq!(call.hello().await.incarnation, incarnation);
    call.ack(0).await;
    let replayed = [call.batch().await, call.batch().await];
    assert_eq!(
        replayed
            .iter()
            .map(|b| (b.sequence, names(b)[0]))
            .collect::<Vec<_>>(),
        [(1, "a"), (2, "b")]
    );
    call.ack(2).await;
    node.outbox.send(span("c"));
    let c = call.batch().await;
    assert!(c.sequence > 2, "new batches number on");
    call.ack(c.sequence).await;
    node.shutdown().await;
    assert_eq!(
        std::fs::read_dir(&spill).unwrap().count(),
        0,
        "acked files go"
    );
}
