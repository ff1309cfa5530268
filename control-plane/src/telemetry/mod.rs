//! Telemetry: spans from nodes, stored once, folded by every replica into
//! live rollups, recent traces and subscriptions. See ARCHITECTURE.md,
//! "Telemetry".
//!
//! - [`ingest`]: `Report` streams; each batch taken by one store
//!   transaction, under a per-minute retention lease.
//! - [`feed`]: the store watch that folds every stored batch once per
//!   replica, from a full read at start.
//! - [`rollup`] and [`histogram`]: cells per dimensions and window.
//! - [`traces`]: the bounded index of recent traces.
//! - [`query`]: `GetSummary`, `GetTrace`, `Subscribe`.
//! - [`alerts`]: alert rules evaluated over the rollups each second.
//! - [`otlp`]: export of stored spans to an OpenTelemetry collector.

pub mod alerts;
mod error;
mod feed;
pub mod histogram;
pub mod ingest;
pub mod otlp;
pub mod query;
pub mod rollup;
pub mod traces;
mod wire;

use std::{
    sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use aios_proto::v1 as pb;
use futures::stream::BoxStream;
use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

pub use self::{
    error::TelemetryError,
    ingest::{Acked, Hello, Ingest, Taken},
    query::{AlertAudience, Plan, Summary, TimeRange, filter, granularity, scope},
    rollup::{Cell, Filter, Granularity, Rollups, TenantScope, Totals},
    traces::TraceIndex,
};
use crate::store::{Revision, SharedStore, StoreError};

/// Tunables of telemetry; [`TelemetrySettings::new`] has the defaults.
#[derive(Clone, Debug)]
pub struct TelemetrySettings {
    /// How long span batches stay in the store (`--telemetry-retention`).
    pub retention: Duration,
    /// Most spans the recent-trace index holds.
    pub trace_spans: usize,
    /// Batches that encode larger than this are stored in parts (the
    /// store takes values up to 1 MiB).
    pub part_bytes: usize,
    /// How long after a window ends `Subscribe` waits for late spans.
    pub close_grace: Duration,
    /// Folded batches a subscriber may fall behind before it skips some.
    pub subscriber_buffer: usize,
    /// Exports the batches this replica takes, when set.
    pub exporter: Option<otlp::OtlpExporter>,
}

impl TelemetrySettings {
    /// Defaults, with batches kept for `retention`.
    pub fn new(retention: Duration) -> Self {
        Self {
            retention,
            trace_spans: 100_000,
            part_bytes: 900 * 1024,
            close_grace: Duration::from_millis(250),
            subscriber_buffer: 1024,
            exporter: None,
        }
    }
}

/// What the feed builds and the queries read.
#[derive(Debug)]
pub(crate) struct Shared {
    rollups: RwLock<Rollups>,
    traces: Mutex<TraceIndex>,
    /// Each folded batch, for subscribers.
    spans: broadcast::Sender<Arc<wire::Encoded>>,
    /// Highest store revision folded.
    folded: watch::Sender<Revision>,
    /// Firing alerts and alert transitions, for subscribers.
    alerts: alerts::AlertBoard,
    /// Batches this replica's ingest read, for its feed.
    handoff: Arc<feed::Handoff>,
}

impl Shared {
    fn new(settings: &TelemetrySettings) -> Self {
        let (spans, _) = broadcast::channel(settings.subscriber_buffer.max(1));
        Self {
            rollups: RwLock::new(Rollups::new()),
            traces: Mutex::new(TraceIndex::new(settings.trace_spans)),
            spans,
            folded: watch::Sender::new(0),
            alerts: alerts::AlertBoard::new(settings.subscriber_buffer),
            handoff: Arc::default(),
        }
    }

    fn rollups(&self) -> RwLockReadGuard<'_, Rollups> {
        self.rollups
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn rollups_mut(&self) -> RwLockWriteGuard<'_, Rollups> {
        self.rollups
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn traces(&self) -> MutexGuard<'_, TraceIndex> {
        self.traces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Telemetry in one replica; cheap to clone.
#[derive(Clone, Debug)]
pub struct Telemetry {
    ingest: Ingest,
    shared: Arc<Shared>,
    settings: Arc<TelemetrySettings>,
    /// Ends Report and Subscribe streams, which never end on their own.
    shutdown: CancellationToken,
}

impl Telemetry {
    /// Folds every batch the store keeps, then follows the store until
    /// `shutdown`, which also ends every open stream. Returns once the
    /// rollups hold what the store held; await the returned task to see
    /// the feed finish.
    pub async fn start(
        store: SharedStore,
        settings: TelemetrySettings,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), StoreError> {
        let shared = Arc::new(Shared::new(&settings));
        let loaded = feed::load(&store, &shared).await?;
        tracing::info!(revision = loaded, windows = ?shared.rollups().windows(), "telemetry rollups loaded");
        let task = tokio::spawn(feed::follow(
            store.clone(),
            shared.clone(),
            loaded,
            shutdown.clone(),
        ));
        let telemetry = Self {
            ingest: Ingest::new(store, settings.retention, settings.part_bytes)
                .exporting_to(settings.exporter.clone())
                .handing_to(shared.handoff.clone()),
            shared,
            settings: Arc::new(settings),
            shutdown,
        };
        Ok((telemetry, task))
    }

    /// Takes batches into the store.
    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// `Report`, for an authorized node: reads and checks the hello, then
    /// answers it with the acked sequence and takes batches in order.
    pub async fn report(
        &self,
        mut inbound: Streaming<pb::ReportRequest>,
    ) -> Result<BoxStream<'static, Result<pb::ReportResponse, Status>>, Status> {
        let hello = ingest::read_hello(&mut inbound).await?;
        let acked = self
            .ingest
            .acked(&hello)
            .await
            .map_err(TelemetryError::from)?;
        tracing::info!(
            node = %hello.node_id,
            region = %hello.region,
            incarnation = %hello.incarnation,
            acked = acked.sequence,
            "report stream opened"
        );
        Ok(ingest::serve(
            self.ingest.clone(),
            hello,
            acked,
            inbound,
            self.shutdown.clone(),
        ))
    }

    /// Waits until the rollups hold every batch written at or before
    /// `revision` (e.g. the revision a batch was taken at).
    pub async fn wait_folded(&self, revision: Revision) {
        let mut folded = self.shared.folded.subscribe();
        // Err only if the sender is gone, which it never is while `self` lives.
        let _ = folded.wait_for(|&folded| folded >= revision).await;
    }

    /// Evaluates the alert rules in `config` (the replica's config cache)
    /// once a second until shutdown.
    pub fn evaluate_alerts(
        &self,
        config: watch::Receiver<Arc<crate::fleet::cache::Snapshot>>,
    ) -> JoinHandle<()> {
        tokio::spawn(alerts::run(self.clone(), config, self.shutdown.clone()))
    }

    /// Streams alert transitions raised outside the rules (budget
    /// thresholds) to this replica's subscribers, like the rules' own.
    pub fn publish_alerts(&self, transitions: Vec<alerts::Transition>) {
        self.shared.alerts.publish(transitions);
    }

    /// The highest store revision folded.
    pub fn folded(&self) -> Revision {
        *self.shared.folded.borrow()
    }
}

#[cfg(test)]
mod tests;
