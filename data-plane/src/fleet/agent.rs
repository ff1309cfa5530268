//! The config agent: keeps one `FleetService.StreamConfig` stream open to a
//! control plane and applies what it pushes.
//!
//! Loop: take the next `--control-plane` URL (round robin), connect, send a
//! hello with every version the node holds (so a reconnect resumes: the
//! server sends only the difference), then for each push apply it
//! ([`apply_push`]), swap the snapshot, ACK at once, and hand the snapshot to
//! the persist writer. When a stream ends, back off with full jitter and try
//! the next URL. The node keeps serving its last config throughout.

use std::{path::PathBuf, time::Duration};

use aios_proto::v1::{
    self as pb, config_message, fleet_service_client::FleetServiceClient, node_message,
};
use aios_runtime::{Readiness, Secret};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status};

use super::{
    checks::Host,
    persist::Writer,
    snapshot::{NodeConfig, NodeConfigHandle, ResourceKey, apply_push},
};
use crate::{
    Config, ControlPlaneUrl, GATE_CONFIG, NodeIdentity,
    upstream::{Backoff, CREDENTIAL_HINT, authorize, chain, connect},
};

/// A heartbeat goes out after this long without sending anything (the
/// control plane closes streams silent for 30 s).
const HEARTBEAT_AFTER: Duration = Duration::from_secs(5);
/// Messages to the control plane waiting to be written: the hello, an ACK
/// and a heartbeat fit; the agent waits when the connection does.
const OUTBOUND_BUFFER: usize = 4;

/// Drives config distribution for one node. See the module docs.
#[derive(Debug)]
pub struct Agent {
    urls: Vec<ControlPlaneUrl>,
    node_key: Option<Secret>,
    node: NodeIdentity,
    /// What the node can run; a change is sent at once on a heartbeat.
    capabilities: watch::Receiver<pb::NodeCapabilities>,
    /// False once the capabilities' sender is gone (nothing more will change).
    capabilities_live: bool,
    state_dir: PathBuf,
    handle: NodeConfigHandle,
    host: Host,
    readiness: Readiness,
    /// Whether the `config` gate is open (it never closes again).
    gate_open: bool,
    heartbeat_after: Duration,
}

/// How one stream ended.
#[derive(Debug)]
enum End {
    /// No connection could be made.
    Connect(tonic::transport::Error),
    /// The server ended the call with this status (or the call failed).
    Status(Status),
    /// The server closed the stream without an error.
    Closed,
    /// The stream went away while the agent was writing to it.
    Gone,
    /// The node key cannot be sent as metadata.
    BadKey,
}

impl Agent {
    /// An agent for the node `config` describes, applying pushes to
    /// `handle`. `gate_open` = the `config` gate is already open (a saved
    /// snapshot was loaded).
    pub fn new(
        config: &Config,
        handle: NodeConfigHandle,
        host: Host,
        readiness: Readiness,
        gate_open: bool,
    ) -> Self {
        Self {
            urls: config.control_plane.clone(),
            node_key: config.node_key.clone(),
            node: config.node.clone(),
            capabilities: watch::channel(capabilities()).1,
            capabilities_live: false,
            state_dir: config.state_dir.clone(),
            handle,
            host,
            readiness,
            gate_open,
            heartbeat_after: HEARTBEAT_AFTER,
        }
    }

    /// Advertises what `capabilities` holds (the base of [`capabilities`]
    /// plus loaded models), in the hello and on every change.
    pub fn with_capabilities(
        mut self,
        capabilities: watch::Receiver<pb::NodeCapabilities>,
    ) -> Self {
        self.capabilities = capabilities;
        self.capabilities_live = true;
        self
    }

    /// Runs until `shutdown`, then writes the latest snapshot and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let writer = Writer::start(self.state_dir.clone());
        let urls = self.urls.clone();
        let mut backoff = Backoff::default();
        for url in urls.iter().cycle() {
            let mut synced = false;
            let end = tokio::select! {
                _ = shutdown.cancelled() => break,
                end = self.stream(url, &writer, &mut synced) => end,
            };
            metrics::gauge!("aios_config_connected").set(0.0);
            report(url, &end);
            if synced {
                backoff.reset();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        metrics::gauge!("aios_config_connected").set(0.0);
        writer.close().await;
    }

    /// One stream, from connect to its end. Sets `synced` once a push has
    /// been applied.
    async fn stream(&mut self, url: &ControlPlaneUrl, writer: &Writer, synced: &mut bool) -> End {
        let channel = match connect(url).await {
            Ok(channel) => channel,
            Err(error) => return End::Connect(error),
        };
        let (outbound, queued) = mpsc::channel(OUTBOUND_BUFFER);
        // Queued before the call starts, so it is the stream's first message.
        if outbound.try_send(self.hello()).is_err() {
            return End::Gone;
        }
        let mut request = Request::new(ReceiverStream::new(queued));
        if authorize(&mut request, self.node_key.as_ref()).is_err() {
            return End::BadKey;
        }
        let mut inbound = match FleetServiceClient::new(channel)
            .stream_config(request)
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => return End::Status(status),
        };
        tracing::info!(url = %url, "connected to control plane");
        metrics::gauge!("aios_config_connected").set(1.0);

        let mut last_sent = Instant::now();
        loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                changed = self.capabilities.changed(), if self.capabilities_live => {
                    if changed.is_err() {
                        self.capabilities_live = false;
                        continue;
                    }
                    let capabilities = self.capabilities.borrow_and_update().clone();
                    let heartbeat = node_message::Msg::Heartbeat(pb::NodeHeartbeat {
                        in_flight_requests: 0,
                        capabilities: Some(capabilities),
                    });
                    if outbound.send(message_of(heartbeat)).await.is_err() {
                        return End::Gone;
                    }
                    last_sent = Instant::now();
                    continue;
                }
                _ = tokio::time::sleep_until(last_sent + self.heartbeat_after) => {
                    let heartbeat = node_message::Msg::Heartbeat(pb::NodeHeartbeat {
                        in_flight_requests: 0,
                        capabilities: None,
                    });
                    if outbound.send(message_of(heartbeat)).await.is_err() {
                        return End::Gone;
                    }
                    last_sent = Instant::now();
                    continue;
                }
            };
            let push = match message {
                Ok(Some(pb::ConfigMessage {
                    msg: Some(config_message::Msg::Push(push)),
                })) => push,
                // A message this build does not know (a newer server).
                Ok(Some(_)) => continue,
                Ok(None) => return End::Closed,
                Err(status) => return End::Status(status),
            };
            let (config, ack) = self.apply(push);
            let sent = outbound.send(message_of(node_message::Msg::Ack(ack))).await;
            last_sent = Instant::now();
            writer.save(config);
            *synced = true;
            if !self.gate_open {
                self.readiness.set(GATE_CONFIG, true).await;
                self.gate_open = true;
            }
            if sent.is_err() {
                return End::Gone;
            }
        }
    }

    /// Applies `push` and makes the result current; returns it and the ACK.
    fn apply(&self, push: pb::ConfigPush) -> (std::sync::Arc<NodeConfig>, pb::ConfigAck) {
        let outcome = apply_push(&self.handle.current(), &push, &self.host);
        let nacks = outcome.nacks();
        let config = std::sync::Arc::new(outcome.config);
        self.handle.publish(config.clone());

        for nack in outcome.results.iter().filter(|r| !r.accepted) {
            let resource = nack.resource.as_ref().map_or_else(String::new, describe);
            tracing::warn!(
                resource,
                version = nack.version,
                error = %nack.error,
                "config resource rejected"
            );
        }
        tracing::info!(
            revision = push.revision,
            updates = push.updates.len(),
            removals = push.removals.len(),
            nacks,
            initial = push.initial,
            "config applied"
        );
        metrics::counter!("aios_config_pushes_total").increment(1);
        metrics::counter!("aios_config_nacks_total").increment(nacks as u64);
        // Revisions fit an f64 exactly up to 2^53.
        metrics::gauge!("aios_config_revision").set(push.revision as f64);
        metrics::gauge!("aios_config_resources").set(config.resources.len() as f64);

        let ack = pb::ConfigAck {
            nonce: push.nonce,
            results: outcome.results,
        };
        (config, ack)
    }

    fn hello(&mut self) -> pb::NodeMessage {
        let capabilities = self.capabilities.borrow_and_update().clone();
        let node = &self.node;
        message_of(node_message::Msg::Hello(pb::NodeHello {
            node_id: node.node_id.clone(),
            region: node.region.clone(),
            zone: node.zone.clone().unwrap_or_default(),
            labels: node
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            capabilities: Some(capabilities),
            held: self.handle.current().held(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    #[cfg(test)]
    pub(crate) fn with_heartbeat_after(mut self, after: Duration) -> Self {
        self.heartbeat_after = after;
        self
    }
}

fn message_of(msg: node_message::Msg) -> pb::NodeMessage {
    pb::NodeMessage { msg: Some(msg) }
}

/// Logs why a stream ended.
fn report(url: &ControlPlaneUrl, end: &End) {
    match end {
        End::Connect(error) => {
            tracing::warn!(url = %url, error = %chain(error), "cannot connect to control plane");
        }
        End::Status(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            tracing::error!(
                url = %url,
                code = ?status.code(),
                message = status.message(),
                "the control plane refused this node's credential; {CREDENTIAL_HINT}"
            );
        }
        End::Status(status) => tracing::warn!(
            url = %url,
            code = ?status.code(),
            message = status.message(),
            "config stream failed"
        ),
        End::Closed => tracing::warn!(url = %url, "control plane closed the config stream"),
        End::Gone => tracing::warn!(url = %url, "config stream lost"),
        End::BadKey => tracing::error!(
            url = %url,
            "the node key cannot be sent as gRPC metadata; {CREDENTIAL_HINT}"
        ),
    }
}

/// `Model acme/gpt` for a reference, as the logs name resources.
fn describe(reference: &pb::ResourceRef) -> String {
    match ResourceKey::from_ref(reference) {
        Some(key) => key.to_string(),
        None => format!("{}/{}", reference.tenant, reference.name),
    }
}

// === Capabilities ===

/// What this machine offers, for the hello.
/// This machine's cores and memory; no models loaded, no GPU.
pub fn capabilities() -> pb::NodeCapabilities {
    let cpu_cores = std::thread::available_parallelism()
        .map_or(0, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_bytes(&text))
        .unwrap_or(0);
    pb::NodeCapabilities {
        cpu_cores,
        memory_bytes,
        gpu: false,
        ..Default::default()
    }
}

/// `MemTotal:  16314460 kB` from `/proc/meminfo`, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
