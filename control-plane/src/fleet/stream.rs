//! One task per node stream: reads the hello, then drives the node's
//! [`Session`] with snapshots from the cache and ACKs from the node, and
//! keeps the node's membership record current.
//!
//! The outgoing channel never holds more than one push (the session allows
//! one outstanding), so a node that stops reading costs one buffered message
//! and never delays anyone: other streams read the same latest-value cache.

use std::{collections::BTreeMap, time::Duration};

use aios_proto::v1::{self as pb, node_message::Msg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::{
    Fleet,
    registry::StreamId,
    session::{AckOutcome, NodeScope, Session},
};
use crate::admin::AdminError;

/// How long a new stream may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream silent for this long is closed (nodes send a heartbeat every
/// few seconds when idle).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most labels a node may carry.
const MAX_LABELS: usize = 64;
/// Longest node id, region, zone, label key or value.
const MAX_NAME: usize = 253;

/// A validated hello.
pub(crate) struct Hello {
    pub(crate) hello: pb::NodeHello,
    pub(crate) scope: NodeScope,
}

/// Waits for the node's hello and checks it.
pub(crate) async fn read_hello(inbound: &mut Streaming<pb::NodeMessage>) -> Result<Hello, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| {
            invalid(
                "hello",
                format!("no hello within {}s", HELLO_TIMEOUT.as_secs()),
            )
        })??;
    let Some(pb::NodeMessage {
        msg: Some(Msg::Hello(hello)),
    }) = first
    else {
        return Err(invalid("hello", "the first message must be a NodeHello"));
    };
    let mut violations = Vec::new();
    check_name(&mut violations, "hello.node_id", &hello.node_id, true);
    check_name(&mut violations, "hello.region", &hello.region, true);
    check_name(&mut violations, "hello.zone", &hello.zone, false);
    if hello.labels.len() > MAX_LABELS {
        violations.push((
            "hello.labels".to_string(),
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (key, value) in &hello.labels {
        check_name(&mut violations, &format!("hello.labels[{key}]"), key, true);
        if value.len() > MAX_NAME || value.chars().any(char::is_control) {
            violations.push((
                format!("hello.labels[{key}]"),
                format!("value must be at most {MAX_NAME} bytes without control characters"),
            ));
        }
    }
    for (i, held) in hello.held.iter().enumerate() {
        let known = held
            .resource
            .as_ref()
            .and_then(|r| aios_model::Kind::from_proto(r.kind))
            .is_some();
        if !known {
            violations.push((
                format!("hello.held[{i}].resource"),
                "must name a known kind".to_string(),
            ));
        }
    }
    if !violations.is_empty() {
        return Err(AdminError::Invalid(violations).into());
    }
    let scope = NodeScope {
        region: hello.region.clone(),
        labels: hello
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    };
    Ok(Hello { hello, scope })
}

/// Node ids, regions, zones and label keys: letters, digits, `.`, `_`,
/// `-`, `/`, starting with a letter or digit.
fn check_name(violations: &mut Vec<(String, String)>, field: &str, value: &str, required: bool) {
    if value.is_empty() {
        if required {
            violations.push((field.to_string(), "is required".to_string()));
        }
        return;
    }
    let valid = value.len() <= MAX_NAME
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !valid {
        violations.push((
            field.to_string(),
            format!(
                "must be 1-{MAX_NAME} letters, digits, '.', '_', '-' or '/', starting with a letter or digit"
            ),
        ));
    }
}

fn invalid(field: &str, description: impl Into<String>) -> Status {
    AdminError::Invalid(vec![(field.to_string(), description.into())]).into()
}

/// Serves one node until it goes away, is replaced by a newer stream of the
/// same node, or `cancel` fires (shutdown).
pub(crate) async fn run(
    fleet: Fleet,
    hello: Hello,
    mut inbound: Streaming<pb::NodeMessage>,
    outbound: mpsc::Sender<Result<pb::ConfigMessage, Status>>,
    stream: StreamId,
    cancel: CancellationToken,
) {
    let node_id = hello.hello.node_id.clone();
    let mut session = Session::new(hello.scope, &hello.hello.held);
    let mut snapshots = fleet.cache.subscribe();
    let first = snapshots.borrow_and_update().clone();
    let end = 'serve: {
        if push(&mut session, &first, &outbound).await.is_err() {
            break 'serve None;
        }
        fleet.registry.record_session(&node_id, stream, &session);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break 'serve Some(Status::unavailable(
                    "the control-plane replica is shutting down or the node opened a newer stream; reconnect",
                )),
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break 'serve Some(Status::unavailable("config cache stopped; reconnect"));
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    if push(&mut session, &snapshot, &outbound).await.is_err() {
                        break 'serve None;
                    }
                    fleet.registry.record_session(&node_id, stream, &session);
                }
                message = tokio::time::timeout(IDLE_TIMEOUT, inbound.message()) => {
                    let message = match message {
                        Err(_) => break 'serve Some(Status::deadline_exceeded(format!(
                            "no message from node {node_id} for {}s; closing its stream",
                            IDLE_TIMEOUT.as_secs()
                        ))),
                        Ok(Ok(Some(message))) => message,
                        Ok(Ok(None)) => break 'serve None,
                        Ok(Err(status)) => {
                            tracing::debug!(node = %node_id, %status, "node stream failed");
                            break 'serve None;
                        }
                    };
                    match message.msg {
                        Some(Msg::Ack(ack)) => {
                            let outcome = session.on_ack(&ack);
                            match outcome {
                                AckOutcome::Stale => {
                                    tracing::debug!(node = %node_id, nonce = %ack.nonce, "stale ACK ignored");
                                }
                                AckOutcome::Applied { nacks } => {
                                    if nacks > 0 {
                                        for result in ack.results.iter().filter(|r| !r.accepted) {
                                            tracing::warn!(
                                                node = %node_id,
                                                resource = ?result.resource,
                                                version = result.version,
                                                error = %result.error,
                                                "node rejected a resource; parked until it changes"
                                            );
                                        }
                                    }
                                    metrics::counter!("aios_fleet_acks_total").increment(1);
                                    metrics::counter!("aios_fleet_nacks_total").increment(nacks as u64);
                                    // Changes that arrived meanwhile.
                                    let snapshot = fleet.cache.current();
                                    if push(&mut session, &snapshot, &outbound).await.is_err() {
                                        break 'serve None;
                                    }
                                }
                            }
                            fleet.registry.record_session(&node_id, stream, &session);
                        }
                        Some(Msg::Heartbeat(beat)) => {
                            fleet.registry.heartbeat(
                                &node_id,
                                stream,
                                Some(beat.in_flight_requests),
                                beat.capabilities.as_ref(),
                            );
                        }
                        Some(Msg::Hello(_)) => break 'serve Some(invalid(
                            "hello",
                            "sent twice: a stream has exactly one hello",
                        )),
                        None => break 'serve Some(invalid("msg", "empty NodeMessage")),
                    }
                }
            }
        }
    };
    if let Some(status) = end {
        // The node may have stopped reading; never wait on it.
        let _ = outbound.try_send(Err(status));
    }
    fleet.registry.disconnect(&node_id, stream);
    fleet.release(&node_id, stream);
    tracing::info!(node = %node_id, "node stream closed");
}

/// Sends the session's next push, if there is one. Errors when the node's
/// side of the stream is gone.
async fn push(
    session: &mut Session,
    snapshot: &super::cache::Snapshot,
    outbound: &mpsc::Sender<Result<pb::ConfigMessage, Status>>,
) -> Result<(), ()> {
    let Some(push) = session.next_push(snapshot) else {
        return Ok(());
    };
    metrics::counter!("aios_fleet_pushes_total").increment(1);
    outbound
        .send(Ok(pb::ConfigMessage {
            msg: Some(pb::config_message::Msg::Push(push)),
        }))
        .await
        .map_err(|_| ())
}
