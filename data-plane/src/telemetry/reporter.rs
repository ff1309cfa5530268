//! The reporter: one task that turns the outbox's spans into numbered
//! batches and keeps one `TelemetryService.Report` stream to a control
//! plane.
//!
//! **Batches.** Cut every [`ReporterSettings::flush_every`] (200 ms), or at
//! 1,000 spans or ~512 KiB encoded, whichever comes first; numbered from
//! the node's incarnation ([`State`]); kept until acknowledged
//! ([`Unacked`]: memory, then disk, then the oldest are discarded and
//! counted on the next batch's `dropped_spans`).
//!
//! **Stream.** The `--control-plane` URLs in turn with full-jitter backoff
//! and the node key, as the config agent connects ([`crate::upstream`]).
//! Hello → the server's first `acked_sequence`: forget those, send the rest
//! in order, then new batches as they are cut, with at most
//! [`ReporterSettings::max_in_flight`] unacknowledged on the wire; every
//! ack forgets more. A stream that fails is reopened and replays whatever
//! is still unacknowledged.
//!
//! **Shutdown.** Cut what the outbox holds, wait up to
//! [`ReporterSettings::shutdown_wait`] for acks, spill the rest to disk for
//! the next start.

use std::{path::PathBuf, time::Duration};

use aios_proto::v1::{self as pb, telemetry_service_client::TelemetryServiceClient};
use aios_runtime::Secret;
use futures::future::BoxFuture;
use tokio::{
    sync::mpsc::{self, OwnedPermit},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, Streaming};

use super::{
    outbox::{DEFAULT_OUTBOX_CAPACITY, Encoded, Outbox, OutboxReceiver, outbox},
    spill::{Batch, Limits, State, Unacked},
};
use crate::{
    Config, ControlPlaneUrl,
    upstream::{Backoff, CREDENTIAL_HINT, authorize, chain, connect},
};

/// Batches written to the stream but not yet taken by the connection.
const OUTBOUND_BUFFER: usize = 8;

/// How the reporter runs.
#[derive(Clone, Debug)]
pub struct ReporterSettings {
    /// Control planes, tried in turn.
    pub urls: Vec<ControlPlaneUrl>,
    /// The node's key (`x-api-key`).
    pub node_key: Option<Secret>,
    /// Node id, in the hello.
    pub node_id: String,
    /// Region, in the hello.
    pub region: String,
    /// The node's state directory; `None` = an in-memory incarnation and
    /// no spilling.
    pub state_dir: Option<PathBuf>,
    /// Unacknowledged bytes kept in memory and on disk.
    pub limits: Limits,
    /// A batch is cut at least this often (when there is anything).
    pub flush_every: Duration,
    /// Spans that cut a batch at once.
    pub max_batch_spans: usize,
    /// Encoded bytes that cut a batch at once.
    pub max_batch_bytes: usize,
    /// Batches sent and not yet acknowledged, at most.
    pub max_in_flight: u64,
    /// How long shutdown waits for acks before spilling.
    pub shutdown_wait: Duration,
    /// Requests' spans the outbox holds.
    pub outbox_capacity: usize,
}

impl ReporterSettings {
    /// The settings of the node `config` describes.
    pub fn new(config: &Config) -> Self {
        Self {
            urls: config.control_plane.clone(),
            node_key: config.node_key.clone(),
            node_id: config.node.node_id.clone(),
            region: config.node.region.clone(),
            state_dir: Some(config.state_dir.clone()),
            limits: Limits {
                memory_bytes: config.telemetry.buffer_bytes,
                disk_bytes: config.telemetry.spill_bytes,
            },
            ..Self::defaults()
        }
    }

    /// Defaults, with no control plane and no state directory.
    pub fn defaults() -> Self {
        Self {
            urls: Vec::new(),
            node_key: None,
            node_id: String::new(),
            region: String::new(),
            state_dir: None,
            limits: Limits::default(),
            flush_every: Duration::from_millis(200),
            max_batch_spans: 1000,
            max_batch_bytes: 512 << 10,
            max_in_flight: 64,
            shutdown_wait: Duration::from_secs(2),
            outbox_capacity: DEFAULT_OUTBOX_CAPACITY,
        }
    }
}

/// The reporter task's state. See the module docs.
#[derive(Debug)]
pub struct Reporter {
    settings: ReporterSettings,
    receiver: OutboxReceiver,
    /// False once every outbox is gone.
    receiving: bool,
    state: State,
    unacked: Unacked,
    /// The next batch's spans, encoded as they go into it.
    building: Vec<u8>,
    building_spans: usize,
    backoff: Backoff,
    next_url: usize,
}

/// The stream to the control plane.
enum Link {
    /// Waiting to connect again.
    Idle { retry_at: Instant },
    /// Connecting and starting the call.
    Connecting(BoxFuture<'static, Result<Box<Stream>, End>>),
    /// The call is open.
    Up(Box<Stream>),
}

/// An open Report call.
struct Stream {
    url: ControlPlaneUrl,
    tx: mpsc::Sender<pb::ReportRequest>,
    inbound: Streaming<pb::ReportResponse>,
    /// The server's acknowledged sequence; `None` until its first answer.
    acked: Option<u64>,
    /// The last sequence written on this stream.
    sent: u64,
}

/// How a stream ended (or never started).
#[derive(Debug)]
enum End {
    Connect(tonic::transport::Error),
    Status(Status),
    Closed,
    Gone,
    BadKey,
}

/// What the link did.
enum Event {
    Retry,
    Connected(Result<Box<Stream>, End>),
    Ack(u64),
    Ended(End),
    Ready(OwnedPermit<pb::ReportRequest>),
}

impl Reporter {
    /// A reporter and the outbox it reads. Loads the incarnation and any
    /// batches spilled by the previous run.
    pub fn new(settings: ReporterSettings) -> (Self, Outbox) {
        // Lost spans show as 0 from the start, so an alert on their rate
        // has a series before the first loss.
        for place in ["outbox", "buffer"] {
            metrics::counter!("aios_telemetry_spans_dropped_total", "where" => place).increment(0);
        }
        let (outbox, receiver) = outbox(settings.outbox_capacity);
        let mut state = match &settings.state_dir {
            Some(dir) => State::load(dir),
            None => State::in_memory(),
        };
        let unacked = Unacked::open(state.spill_dir.clone(), settings.limits);
        if let Some(last) = unacked.last() {
            state.skip_past(last);
        }
        let reporter = Self {
            settings,
            receiver,
            receiving: true,
            state,
            unacked,
            building: Vec::new(),
            building_spans: 0,
            backoff: Backoff::default(),
            next_url: 0,
        };
        (reporter, outbox)
    }

    /// The node's incarnation (its sequence space).
    pub fn incarnation(&self) -> &str {
        &self.state.incarnation
    }

    /// Runs until `shutdown`, then flushes (see the module docs).
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            incarnation = %self.state.incarnation,
            next_sequence = self.state.next_sequence,
            unacknowledged = self.unacked.len(),
            "telemetry reporter started"
        );
        let mut tick = tokio::time::interval(self.settings.flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut link = Link::Idle {
            retry_at: Instant::now(),
        };
        loop {
            let can_send = self.can_send(&link);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                spans = self.receiver.recv(), if self.receiving => match spans {
                    Some(spans) => self.add(spans),
                    None => self.receiving = false,
                },
                _ = tick.tick() => self.cut(),
                event = link.next(can_send) => self.on_event(&mut link, event),
            }
        }
        self.finish(link).await;
    }

    /// Cuts what the outbox holds, waits briefly for acks, spills the rest.
    async fn finish(&mut self, mut link: Link) {
        while let Some(spans) = self.receiver.try_recv() {
            self.add(spans);
        }
        self.cut();
        let deadline = Instant::now() + self.settings.shutdown_wait;
        while !self.unacked.is_empty() && !self.settings.urls.is_empty() {
            let can_send = self.can_send(&link);
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                event = link.next(can_send) => self.on_event(&mut link, event),
            }
        }
        let spilled = self.unacked.spill_all();
        tracing::info!(
            unacknowledged = self.unacked.len(),
            spilled,
            "telemetry reporter stopped"
        );
    }

    // === batches ===

    fn add(&mut self, spans: Encoded) {
        self.building.extend_from_slice(spans.as_bytes());
        self.building_spans += spans.len();
        if self.building_spans >= self.settings.max_batch_spans
            || self.building.len() >= self.settings.max_batch_bytes
        {
            self.cut();
        }
    }

    /// Makes a batch of what has been built (and of drops to report).
    fn cut(&mut self) {
        let dropped = self.receiver.take_dropped() + self.unacked.take_lost();
        if self.building.is_empty() && dropped == 0 {
            return;
        }
        let batch = Batch::encode(
            self.state.take(),
            &self.building,
            self.building_spans,
            dropped,
        );
        self.building.clear();
        self.building_spans = 0;
        metrics::counter!("aios_telemetry_batches_total", "plane" => crate::PLANE).increment(1);
        self.unacked.push(batch);
        let (memory, disk) = self.unacked.bytes();
        metrics::gauge!("aios_telemetry_unacked_bytes", "where" => "memory").set(memory as f64);
        metrics::gauge!("aios_telemetry_unacked_bytes", "where" => "disk").set(disk as f64);
    }

    // === the stream ===

    /// Whether the open stream may take another batch now.
    fn can_send(&self, link: &Link) -> bool {
        let Link::Up(stream) = link else {
            return false;
        };
        let Some(acked) = stream.acked else {
            return false;
        };
        stream.sent.saturating_sub(acked) < self.settings.max_in_flight
            && self.unacked.next_after(stream.sent).is_some()
    }

    fn on_event(&mut self, link: &mut Link, event: Event) {
        match event {
            Event::Retry => *link = Link::Connecting(self.connecting()),
            Event::Connected(Ok(stream)) => {
                tracing::info!(url = %stream.url, "telemetry stream open");
                metrics::gauge!("aios_telemetry_connected").set(1.0);
                *link = Link::Up(stream);
            }
            Event::Connected(Err(end)) => self.ended(link, None, &end),
            Event::Ended(end) => {
                let url = match link {
                    Link::Up(stream) => Some(stream.url.clone()),
                    _ => None,
                };
                self.ended(link, url.as_ref(), &end);
            }
            Event::Ack(sequence) => {
                let Link::Up(stream) = link else {
                    return;
                };
                if stream.acked.is_none() {
                    // The first answer: resume after what the server has.
                    stream.sent = sequence;
                    self.backoff.reset();
                    if sequence >= self.state.next_sequence {
                        tracing::warn!(
                            acked = sequence,
                            next = self.state.next_sequence,
                            "the control plane has seen later sequences than this node kept; numbering on after them"
                        );
                        self.state.skip_past(sequence);
                    }
                }
                stream.acked = Some(stream.acked.map_or(sequence, |a| a.max(sequence)));
                self.unacked.ack(sequence);
            }
            Event::Ready(permit) => {
                let Link::Up(stream) = link else {
                    return;
                };
                let Some(sequence) = self.unacked.next_after(stream.sent) else {
                    return;
                };
                stream.sent = sequence;
                if let Some(batch) = self.unacked.get(sequence) {
                    // Sent encoded: the control plane stores it as is.
                    permit.send(pb::ReportRequest {
                        msg: Some(pb::report_request::Msg::Batch(batch)),
                    });
                }
            }
        }
    }

    fn ended(&mut self, link: &mut Link, url: Option<&ControlPlaneUrl>, end: &End) {
        metrics::gauge!("aios_telemetry_connected").set(0.0);
        log_end(url, end);
        *link = Link::Idle {
            retry_at: Instant::now() + self.backoff.next_delay(),
        };
    }

    /// Connecting to the next URL and opening the call, hello first.
    fn connecting(&mut self) -> BoxFuture<'static, Result<Box<Stream>, End>> {
        let urls = &self.settings.urls;
        let Some(url) = urls.get(self.next_url % urls.len().max(1)).cloned() else {
            // No control plane: nothing to connect to, ever.
            return Box::pin(futures::future::pending());
        };
        self.next_url = self.next_url.wrapping_add(1);
        let key = self.settings.node_key.clone();
        let hello = pb::ReportRequest {
            msg: Some(pb::report_request::Msg::Hello(pb::ReportHello {
                node_id: self.settings.node_id.clone(),
                region: self.settings.region.clone(),
                incarnation: self.state.incarnation.clone(),
            })),
        };
        Box::pin(async move {
            let channel = connect(&url).await.map_err(End::Connect)?;
            let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
            // Queued before the call starts, so it is the stream's first message.
            tx.try_send(hello).map_err(|_| End::Gone)?;
            let mut request = Request::new(ReceiverStream::new(rx));
            authorize(&mut request, key.as_ref()).map_err(|_| End::BadKey)?;
            let inbound = TelemetryServiceClient::new(channel)
                .report(request)
                .await
                .map_err(End::Status)?
                .into_inner();
            Ok(Box::new(Stream {
                url,
                tx,
                inbound,
                acked: None,
                sent: 0,
            }))
        })
    }
}

impl Link {
    /// The link's next event. Cancel-safe: a connection in progress stays
    /// in the link.
    async fn next(&mut self, can_send: bool) -> Event {
        match self {
            Link::Idle { retry_at } => {
                tokio::time::sleep_until(*retry_at).await;
                Event::Retry
            }
            Link::Connecting(connecting) => Event::Connected(connecting.as_mut().await),
            Link::Up(stream) => {
                let tx = stream.tx.clone();
                tokio::select! {
                    message = stream.inbound.message() => match message {
                        Ok(Some(response)) => Event::Ack(response.acked_sequence),
                        Ok(None) => Event::Ended(End::Closed),
                        Err(status) => Event::Ended(End::Status(status)),
                    },
                    permit = tx.reserve_owned(), if can_send => match permit {
                        Ok(permit) => Event::Ready(permit),
                        Err(_) => Event::Ended(End::Gone),
                    },
                }
            }
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Idle { .. } => f.write_str("Idle"),
            Link::Connecting(_) => f.write_str("Connecting"),
            Link::Up(stream) => write!(f, "Up({})", stream.url),
        }
    }
}

/// Logs why a stream ended.
fn log_end(url: Option<&ControlPlaneUrl>, end: &End) {
    let url = url.map_or_else(String::new, ToString::to_string);
    match end {
        End::Connect(error) => {
            tracing::warn!(url, error = %chain(error), "telemetry: cannot connect to control plane");
        }
        End::Status(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            tracing::error!(
                url,
                code = ?status.code(),
                message = status.message(),
                "the control plane refused this node's telemetry; {CREDENTIAL_HINT}"
            );
        }
        End::Status(status) => tracing::warn!(
            url,
            code = ?status.code(),
            message = status.message(),
            "telemetry stream failed"
        ),
        End::Closed => tracing::warn!(url, "control plane closed the telemetry stream"),
        End::Gone => tracing::warn!(url, "telemetry stream lost"),
        End::BadKey => tracing::error!(
            url,
            "the node key cannot be sent as gRPC metadata; {CREDENTIAL_HINT}"
        ),
    }
}

#[cfg(test)]
#[path = "reporter_tests.rs"]
mod tests;
