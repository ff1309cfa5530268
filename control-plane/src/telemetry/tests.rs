//! Ingest, rollups and queries against a real embedded store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;

use aios_runtime::hex;
use futures::StreamExt;
use prost::{Message, bytes::Bytes};
use tonic::Code;
use tonic_types::StatusExt;

use super::*;
use crate::{
    auth::{Principal, Role},
    keys,
    store::{RangeRequest, embedded::EmbeddedStore},
};

struct Fixture {
    _dir: tempfile::TempDir,
    store: SharedStore,
    telemetry: Telemetry,
    shutdown: CancellationToken,
}

async fn fixture(settings: TelemetrySettings) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(
        EmbeddedStore::open(&dir.path().join("s.db"), Default::default())
            .await
            .unwrap(),
    );
    let shutdown = CancellationToken::new();
    let (telemetry, _) = Telemetry::start(store.clone(), settings, shutdown.clone())
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        store,
        telemetry,
        shutdown,
    }
}

fn settings() -> TelemetrySettings {
    TelemetrySettings::new(Duration::from_secs(3600))
}

fn hello(node: &str, incarnation: &str) -> Hello {
    Hello {
        node_id: node.into(),
        region: "eu".into(),
        incarnation: incarnation.into(),
    }
}

fn now_nanos() -> u64 {
    ingest::unix_now() * 1_000_000_000
}

/// A request span of `tenant`/`agent` in trace `trace`, ended a second ago.
fn request(tenant: &str, agent: &str, trace: u8, cost: f64) -> pb::Span {
    let end = now_nanos() - 1_000_000_000;
    pb::Span {
        trace_id: vec![trace; 16],
        span_id: vec![trace; 8],
        name: format!("invoke_agent {agent}"),
        start_time_unix_nano: end - 40_000_000,
        end_time_unix_nano: end,
        tenant: tenant.into(),
        agent: agent.into(),
        model: "gpt".into(),
        region: "eu".into(),
        operation: "invoke_agent".into(),
        input_tokens: 10,
        output_tokens: 5,
        cost_usd: cost,
        ..Default::default()
    }
}

/// An encoded batch, as a node sends it.
fn batch(sequence: u64, spans: Vec<pb::Span>) -> Bytes {
    pb::SpanBatch {
        sequence,
        spans,
        dropped_spans: 0,
    }
    .encode_to_vec()
    .into()
}

/// Takes `batch` and waits until the rollups hold it.
async fn take(f: &Fixture, hello: &Hello, acked: Acked, batch: Bytes) -> Taken {
    let taken = f
        .telemetry
        .ingest()
        .take(hello, acked, batch)
        .await
        .unwrap();
    f.telemetry.wait_folded(taken.acked().mod_revision).await;
    taken
}

fn everyone() -> Filter {
    Filter::tenant(TenantScope::All)
}

fn summary(telemetry: &Telemetry, filter: &Filter) -> Summary {
    telemetry.summary(filter, TimeRange::default()).unwrap()
}

async fn batch_keys(store: &SharedStore) -> Vec<crate::store::KeyValue> {
    store
        .range(RangeRequest::prefix(keys::TELEMETRY_BATCHES))
        .await
        .unwrap()
        .kvs
}

#[tokio::test]
async fn a_duplicate_is_acked_again_but_neither_written_nor_counted() {
    let f = fixture(settings()).await;
    let node = hello("n1", "inc-1");
    let ingest = f.telemetry.ingest();
    assert_eq!(ingest.acked(&node).await.unwrap(), Acked::default());
    let spans = vec![
        request("acme", "bot", 1, 0.5),
        request("acme", "bot", 2, 0.5),
    ];
    let first = take(&f, &node, Acked::default(), batch(1, spans.clone())).await;
    let Taken::Written { acked } = first else {
        panic!("{first:?}")
    };
    assert_eq!(acked.sequence, 1);
    assert_eq!(ingest.acked(&node).await.unwrap(), acked);

    // The node resends it (the ack was lost) on the same stream...
    let again = ingest
        .take(&node, acked, batch(1, spans.clone()))
        .await
        .unwrap();
    assert_eq!(again, Taken::Duplicate { acked });
    // ...or on another replica that read the acked key before the write:
    // its transaction fails the compare, re-reads, and sees a duplicate.
    let stale = ingest
        .take(&node, Acked::default(), batch(1, spans))
        .await
        .unwrap();
    assert_eq!(stale, Taken::Duplicate { acked });

    assert_eq!(batch_keys(&f.store).await.len(), 1);
    let totals = summary(&f.telemetry, &everyone()).totals;
    assert_eq!(totals.all.requests, 2);
    assert!((totals.all.cost_usd - 1.0).abs() < 1e-9);

    // Another incarnation of the node is another sequence space.
    let reborn = hello("n1", "inc-2");
    let taken = take(
        &f,
        &reborn,
        Acked::default(),
        batch(1, vec![request("acme", "bot", 3, 0.0)]),
    )
    .await;
    assert!(matches!(taken, Taken::Written { .. }));
    assert_eq!(summary(&f.telemetry, &everyone()).totals.all.requests, 3);
    f.shutdown.cancel();
}

#[tokio::test]
async fn a_restarted_replica_rebuilds_the_same_totals_from_the_store() {
    let f = fixture(settings()).await;
    let mut acked = Acked::default();
    for sequence in 1..=5 {
        let spans = (0..sequence as u8)
            .map(|i| request(if i % 2 == 0 { "acme" } else { "globex" }, "bot", i, 0.25))
            .collect();
        let batch = pb::SpanBatch {
            sequence,
            spans,
            dropped_spans: 1,
        };
        let batch = batch.encode_to_vec().into();
        acked = take(&f, &hello("n1", "i"), acked, batch).await.acked();
    }
    let before = summary(&f.telemetry, &everyone()).totals;
    assert_eq!((before.all.requests, before.all.dropped_spans), (15, 5));

    let shutdown = CancellationToken::new();
    let (restarted, _) = Telemetry::start(f.store.clone(), settings(), shutdown.clone())
        .await
        .unwrap();
    assert_eq!(restarted.folded(), f.telemetry.folded());
    assert_eq!(summary(&restarted, &everyone()).totals, before);
    let acme = Filter::tenant(TenantScope::One("acme".into()));
    assert_eq!(
        summary(&restarted, &acme).totals,
        summary(&f.telemetry, &acme).totals
    );
    // Both keep following the store.
    let more = take(
        &f,
        &hello("n1", "i"),
        acked,
        batch(6, vec![request("acme", "bot", 9, 0.0)]),
    )
    .await;
    restarted.wait_folded(more.acked().mod_revision).await;
    assert_eq!(summary(&restarted, &everyone()).totals.all.requests, 16);
    shutdown.cancel();
    f.shutdown.cancel();
}

#[tokio::test]
async fn an_oversized_batch_is_split_into_parts_in_one_transaction() {
    let f = fixture(TelemetrySettings {
        part_bytes: 4096,
        ..settings()
    })
    .await;
    let padded = |i: u8| {
        let mut span = request("acme", "bot", i, 0.01);
        span.attributes = HashMap::from([("pad".to_string(), "x".repeat(900))]);
        span
    };
    let mut spans: Vec<pb::Span> = (0..20).map(padded).collect();
    // One span that could never fit a part is dropped and counted.
    let mut huge = request("acme", "bot", 99, 0.0);
    huge.attributes = HashMap::from([("pad".to_string(), "x".repeat(8000))]);
    spans.insert(7, huge);
    let node = hello("n1", "i");
    let taken = take(&f, &node, Acked::default(), batch(1, spans)).await;

    let kvs = batch_keys(&f.store).await;
    assert!(kvs.len() >= 5, "{} parts", kvs.len());
    let mut spans_stored = 0;
    let mut dropped = 0;
    for (i, kv) in kvs.iter().enumerate() {
        assert!(
            kv.value.len() <= 4096,
            "part {i} is {} bytes",
            kv.value.len()
        );
        assert_eq!(
            kv.mod_revision,
            taken.acked().mod_revision,
            "one transaction"
        );
        assert!(kv.lease.is_some(), "under the retention lease");
        let key = keys::parse_telemetry_batch(&kv.key).unwrap();
        assert_eq!((key.sequence, key.part), (1, Some(i as u32)));
        let part = pb::SpanBatch::decode(kv.value.as_slice()).unwrap();
        spans_stored += part.spans.len();
        dropped += part.dropped_spans;
        assert!(
            part.spans.iter().all(|s| s.node == "n1"),
            "node from the hello"
        );
    }
    assert_eq!((spans_stored, dropped), (20, 1));
    let acked = f
        .store
        .get(&keys::telemetry_acked("n1", "i"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (acked.value.as_slice(), acked.lease),
        (b"1".as_slice(), None)
    );
    let totals = summary(&f.telemetry, &everyone()).totals;
    assert_eq!((totals.all.requests, totals.all.dropped_spans), (20, 1));
    f.shutdown.cancel();
}

/// The fields an INVALID_ARGUMENT error names, in order.
fn invalid_fields(error: TelemetryError) -> Vec<String> {
    let status = Status::from(error);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[tokio::test]
async fn batches_and_hellos_are_checked_field_by_field() {
    let f = fixture(settings()).await;
    let node = hello("n1", "i");
    let too_many = batch(1, vec![pb::Span::default(); ingest::MAX_BATCH_SPANS + 1]);
    let error = f
        .telemetry
        .ingest()
        .take(&node, Acked::default(), too_many)
        .await
        .unwrap_err();
    assert_eq!(invalid_fields(error), ["batch.spans"]);
    assert!(batch_keys(&f.store).await.is_empty());

    // A span that would not decode (its tenant is not UTF-8) is named.
    let mut bytes = batch(1, vec![request("acme", "bot", 1, 0.0)]).to_vec();
    let at = bytes.windows(4).position(|w| w == b"acme").unwrap();
    bytes[at] = 0xff;
    let error = f
        .telemetry
        .ingest()
        .take(&node, Acked::default(), bytes.into())
        .await
        .unwrap_err();
    assert_eq!(invalid_fields(error), ["batch.spans[0].tenant"]);
    assert!(batch_keys(&f.store).await.is_empty());

    let error = Hello::try_from(pb::ReportHello {
        node_id: "n1".into(),
        region: String::new(),
        incarnation: "a/b".into(),
    })
    .unwrap_err();
    assert_eq!(invalid_fields(error), ["hello.region", "hello.incarnation"]);
    f.shutdown.cancel();
}

#[tokio::test]
async fn summaries_and_traces_are_scoped_to_the_callers_tenant() {
    let f = fixture(settings()).await;
    let spans = vec![
        request("acme", "bot", 1, 0.25),
        request("acme", "helper", 2, 1.0),
        request("globex", "bot", 3, 2.0),
    ];
    take(&f, &hello("n1", "i"), Acked::default(), batch(1, spans)).await;
    let who = |tenant: &str| Principal {
        tenant: tenant.into(),
        key_name: "k".into(),
        role: Role::Viewer,
    };
    let wire = |filter: pb::SummaryFilter| Some(filter);
    let acme = filter(&who("acme"), None).unwrap();
    let s = summary(&f.telemetry, &acme).to_proto();
    assert_eq!((s.requests, s.input_tokens), (2, 20));
    let agents: Vec<&str> = s.per_agent.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(agents, ["helper", "bot"], "by descending cost");
    let bot = filter(
        &who("acme"),
        wire(pb::SummaryFilter {
            agent: "bot".into(),
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(summary(&f.telemetry, &bot).to_proto().requests, 1);

    let cross = filter(
        &who("acme"),
        wire(pb::SummaryFilter {
            tenant: "globex".into(),
            ..Default::default()
        }),
    )
    .unwrap_err();
    assert_eq!(
        Status::from(TelemetryError::from(cross)).code(),
        Code::PermissionDenied
    );
    let all = wire(pb::SummaryFilter {
        tenant: "*".into(),
        ..Default::default()
    });
    assert!(filter(&who("acme"), all.clone()).is_err());
    let platform = filter(&who(aios_model::SYSTEM_TENANT), all).unwrap();
    let s = summary(&f.telemetry, &platform).to_proto();
    assert_eq!(s.requests, 3);
    assert!(s.window_start.unwrap().seconds < s.window_end.unwrap().seconds);

    let trace = |id: u8| hex::encode(&[id; 16]);
    assert_eq!(
        f.telemetry
            .trace(&trace(1), acme.tenant.clone())
            .unwrap()
            .len(),
        1
    );
    let hidden = f
        .telemetry
        .trace(&trace(3), acme.tenant.clone())
        .unwrap_err();
    assert_eq!(Status::from(hidden).code(), Code::NotFound);
    assert_eq!(
        f.telemetry
            .trace(&trace(3), TenantScope::All)
            .unwrap()
            .len(),
        1
    );
    let bad = f.telemetry.trace("not-hex", TenantScope::All).unwrap_err();
    assert_eq!(Status::from(bad).code(), Code::InvalidArgument);
    f.shutdown.cancel();
}

#[tokio::test]
async fn subscribers_get_matching_spans_then_each_closed_window() {
    use pb::subscribe_response::Event;
    let f = fixture(settings()).await;
    let acme = Filter::tenant(TenantScope::One("acme".into()));
    let mut events = f.telemetry.subscribe(acme, Granularity::Second, true, None);
    let spans = vec![
        request("globex", "bot", 1, 0.0),
        request("acme", "bot", 2, 0.0),
    ];
    take(&f, &hello("n1", "i"), Acked::default(), batch(1, spans)).await;
    let mut saw_span = false;
    loop {
        match next_event(&mut events).await {
            Event::Span(span) => {
                assert_eq!(span.tenant, "acme");
                saw_span = true;
            }
            Event::Rollup(rollup) => {
                let (start, end) = (rollup.window_start.unwrap(), rollup.window_end.unwrap());
                assert_eq!(end.seconds - start.seconds, 1);
                if saw_span {
                    break;
                }
            }
            Event::Alert(_) => panic!("no alert rules yet"),
        }
    }
    f.shutdown.cancel();
    loop {
        match events.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break assert_eq!(status.code(), Code::Unavailable),
            None => panic!("ended without a status"),
        }
    }
}

/// The next event; bounded only so that a broken stream fails, not hangs.
async fn next_event(
    events: &mut BoxStream<'static, Result<pb::SubscribeResponse, Status>>,
) -> pb::subscribe_response::Event {
    tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .event
        .unwrap()
}

#[tokio::test]
async fn a_node_reports_over_grpc_and_is_acknowledged_batch_by_batch() {
    use aios_proto::v1::{
        report_request::Msg, telemetry_service_client::TelemetryServiceClient,
        telemetry_service_server::TelemetryServiceServer,
    };
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

    let f = fixture(settings()).await;
    // The platform admin key may act as a node.
    let secret = crate::auth::generate_secret();
    crate::auth::bootstrap(f.store.as_ref(), Some(&secret))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = crate::api::TelemetryApi::new(f.store.clone(), f.telemetry.clone());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TelemetryServiceServer::new(api))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let key: tonic::metadata::MetadataValue<_> = secret.parse().unwrap();
    let mut client = TelemetryServiceClient::with_interceptor(
        channel.clone(),
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert(crate::auth::API_KEY_HEADER, key.clone());
            Ok(request)
        },
    );
    let hello_msg = |region: &str| pb::ReportRequest {
        msg: Some(Msg::Hello(pb::ReportHello {
            node_id: "n1".into(),
            region: region.into(),
            incarnation: "i1".into(),
        })),
    };
    let batch_msg = |sequence| pb::ReportRequest {
        msg: Some(Msg::Batch(batch(
            sequence,
            vec![request("acme", "bot", 1, 0.1)],
        ))),
    };

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello_msg("eu")).await.unwrap();
    let mut acks = client
        .report(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut next_ack = async || acks.message().await.unwrap().map(|a| a.acked_sequence);
    assert_eq!(next_ack().await, Some(0));
    for (sequence, acked) in [(1, 1), (1, 1), (3, 3), (2, 3)] {
        tx.send(batch_msg(sequence)).await.unwrap();
        assert_eq!(next_ack().await, Some(acked), "after batch {sequence}");
    }
    drop(tx);
    assert_eq!(next_ack().await, None);
    assert_eq!(batch_keys(&f.store).await.len(), 2, "batches 1 and 3");

    // A new stream of the same incarnation learns what was taken.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello_msg("eu")).await.unwrap();
    let mut acks = client
        .report(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acks.message().await.unwrap().unwrap().acked_sequence, 3);

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello_msg("")).await.unwrap();
    let status = client.report(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(fields[0].field, "hello.region");

    let mut anonymous = TelemetryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello_msg("eu")).await.unwrap();
    let status = anonymous.report(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    server.abort();
    f.shutdown.cancel();
}

#[tokio::test]
async fn written_batches_are_exported_over_otlp_once_and_duplicates_not_at_all() {
    let collector = otlp::tests::Collector::default();
    let (url, stop) = collector.start().await;
    let shutdown = CancellationToken::new();
    let (exporter, task) =
        otlp::OtlpExporter::start(otlp::OtlpSettings::new(url), shutdown.clone()).unwrap();
    let mut settings = settings();
    settings.exporter = Some(exporter);
    let f = fixture(settings).await;
    let node = hello("node-1", "inc-1");
    let first = take(
        &f,
        &node,
        Acked::default(),
        batch(1, vec![request("acme", "a", 1, 0.5)]),
    )
    .await;
    let second = take(
        &f,
        &node,
        first.acked(),
        batch(
            2,
            vec![request("acme", "a", 2, 0.5), request("acme", "b", 3, 0.5)],
        ),
    )
    .await;
    // A replay of batch 1 after a reconnect is acked, not exported again.
    let replay = take(
        &f,
        &node,
        second.acked(),
        batch(1, vec![request("acme", "a", 1, 0.5)]),
    )
    .await;
    assert!(matches!(replay, Taken::Duplicate { .. }));
    collector.wait_for(3).await;
    shutdown.cancel();
    task.await.unwrap();
    let mut ids: Vec<u8> = collector.spans().iter().map(|s| s.span_id[0]).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3]);
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| s.name.starts_with("invoke_agent"))
    );
    f.shutdown.cancel();
    stop.cancel();
}
