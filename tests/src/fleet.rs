//! A simulated data-plane node speaking `FleetService.StreamConfig` on the
//! wire, for protocol tests: every push is handed to the test, which
//! decides what to ACK or NACK.

#![allow(clippy::expect_used)] // test harness: a failed setup should stop the test loudly

use std::{collections::HashMap, time::Duration};

use aios_proto::v1::{self as pb, fleet_service_client::FleetServiceClient};
use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming, metadata::MetadataValue, transport::Endpoint};

/// One node's stream.
#[derive(Debug)]
pub struct SimNode {
    outbound: mpsc::Sender<pb::NodeMessage>,
    inbound: Streaming<pb::ConfigMessage>,
}

/// A hello for `node_id` in `region` with `labels`.
pub fn hello(node_id: &str, region: &str, labels: &[(&str, &str)]) -> pb::NodeHello {
    pb::NodeHello {
        node_id: node_id.into(),
        region: region.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        agent_version: "sim".into(),
        ..Default::default()
    }
}

/// What a resource in a push is called: `tenant/name`.
pub fn name_of(resource: &pb::Resource) -> String {
    let meta = resource.metadata.clone().unwrap_or_default();
    format!("{}/{}", meta.tenant, meta.name)
}

/// The version of a pushed resource.
pub fn version_of(resource: &pb::Resource) -> i64 {
    resource.metadata.as_ref().map_or(0, |m| m.resource_version)
}

/// The ResourceRef of a pushed resource.
pub fn reference_of(resource: &pb::Resource) -> pb::ResourceRef {
    let meta = resource.metadata.clone().unwrap_or_default();
    pb::ResourceRef {
        kind: aios_client::kind::kind_of(resource) as i32,
        tenant: meta.tenant,
        name: meta.name,
    }
}

impl SimNode {
    /// Opens a stream to `url` with `key` and sends `hello`. Fails with the
    /// server's status if it refuses the stream.
    pub async fn connect(url: &str, key: &str, hello: pb::NodeHello) -> Result<Self, Status> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (outbound, rx) = mpsc::channel(16);
        outbound
            .send(pb::NodeMessage {
                msg: Some(pb::node_message::Msg::Hello(hello)),
            })
            .await
            .map_err(|_| Status::internal("channel closed"))?;
        let mut request = Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "x-api-key",
            MetadataValue::try_from(key).map_err(|_| Status::invalid_argument("key"))?,
        );
        let inbound = FleetServiceClient::new(channel)
            .stream_config(request)
            .await?
            .into_inner();
        Ok(Self { outbound, inbound })
    }

    /// The next push; fails on a status or after `timeout`.
    pub async fn next_push(&mut self, timeout: Duration) -> Result<pb::ConfigPush> {
        match self.next(timeout).await? {
            Ok(push) => Ok(push),
            Err(status) => bail!("stream ended with {status:?}"),
        }
    }

    /// The next push, or the status the stream ended with.
    pub async fn next(&mut self, timeout: Duration) -> Result<Result<pb::ConfigPush, Status>> {
        let message = tokio::time::timeout(timeout, self.inbound.message())
            .await
            .context("no push in time")?;
        match message {
            Ok(Some(pb::ConfigMessage {
                msg: Some(pb::config_message::Msg::Push(push)),
            })) => Ok(Ok(push)),
            Ok(Some(other)) => Err(anyhow!("unexpected message {other:?}")),
            Ok(None) => Ok(Err(Status::ok("stream closed"))),
            Err(status) => Ok(Err(status)),
        }
    }

    /// The first push matching `wanted`, left unanswered; pushes before it
    /// are ACKed in full. The cache a new stream starts from may trail a
    /// write that just returned, so a test waits for what it expects.
    pub async fn push_with(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&pb::ConfigPush) -> bool,
    ) -> Result<pb::ConfigPush> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let push = self.next_push(left).await?;
            if wanted(&push) {
                return Ok(push);
            }
            self.answer(&push, &[]).await?;
        }
    }

    /// Waits up to `timeout` for no push to arrive; fails if one does.
    pub async fn expect_quiet(&mut self, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.inbound.message()).await {
            Err(_) => Ok(()),
            Ok(message) => bail!("expected no push, got {message:?}"),
        }
    }

    /// Answers `push`: NACKs the resources named in `nacks` (`tenant/name`
    /// → error), ACKs the rest and every removal.
    pub async fn answer(&self, push: &pb::ConfigPush, nacks: &[(&str, &str)]) -> Result<()> {
        let mut results: Vec<pb::ResourceAck> = push
            .updates
            .iter()
            .map(|r| {
                let error = nacks
                    .iter()
                    .find(|(name, _)| *name == name_of(r))
                    .map(|(_, e)| e.to_string());
                pb::ResourceAck {
                    resource: Some(reference_of(r)),
                    version: version_of(r),
                    accepted: error.is_none(),
                    error: error.unwrap_or_default(),
                }
            })
            .collect();
        results.extend(push.removals.iter().map(|r| pb::ResourceAck {
            resource: Some(r.clone()),
            accepted: true,
            ..Default::default()
        }));
        self.send(pb::node_message::Msg::Ack(pb::ConfigAck {
            nonce: push.nonce.clone(),
            results,
        }))
        .await
    }

    /// Sends any message.
    pub async fn send(&self, msg: pb::node_message::Msg) -> Result<()> {
        self.outbound
            .send(pb::NodeMessage { msg: Some(msg) })
            .await
            .map_err(|_| anyhow!("stream closed"))
    }
}

/// The `tenant/name`s updated and removed by a push.
pub fn changes(push: &pb::ConfigPush) -> (Vec<String>, Vec<String>) {
    (
        push.updates.iter().map(name_of).collect(),
        push.removals
            .iter()
            .map(|r| format!("{}/{}", r.tenant, r.name))
            .collect(),
    )
}
