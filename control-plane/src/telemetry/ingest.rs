//! `Report`: takes span batches from nodes into the store, exactly once.
//!
//! The store is the durable log, so any replica can serve any node. A batch
//! arrives as the node encoded it and is stored so ([`Encoded`]): ingest
//! reads it in place to check it (every span, as strictly as decoding) and
//! decodes it only to split one too large for a record, or to export it.
//! It is taken by one transaction that compares the node's acked key with the
//! `mod_revision` read, then puts the batch (split into parts when large)
//! under the current minute's retention lease and the new acked sequence.
//! A batch at or below the acked sequence is a duplicate: acknowledged
//! again, not written. A compare failure means another replica took a batch
//! of the same node meanwhile: re-read and redo.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use aios_proto::v1::{self as pb, report_request::Msg};
use futures::{StreamExt, stream::BoxStream};
use prost::{Message, bytes::Bytes};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::{
    TelemetryError,
    feed::Handoff,
    otlp::{self, OtlpExporter},
    wire::{Encoded, Layout, Malformed},
};
use crate::{
    keys::{self, BatchKey},
    store::{
        Compare, LeaseId, MAX_TXN_OPS, Op, Revision, SharedStore, Store, StoreError, TxnOutcome,
    },
};

/// How long a new stream may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most spans in one batch.
pub const MAX_BATCH_SPANS: usize = 10_000;
/// Longest node id or region.
const MAX_NAME: usize = 253;
/// Longest incarnation.
const MAX_INCARNATION: usize = 128;
/// Transaction attempts before a contended batch is given up (the node
/// resends it on its next stream).
const MAX_ATTEMPTS: u32 = 16;
/// Room for a part's own fields (sequence and dropped count, each a tag and
/// a varint of at most 10 bytes) when sizing parts.
const PART_HEADER_BYTES: usize = 22;

// === Hello ===

/// A validated hello: whose sequence space the stream's batches are in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Node id.
    pub node_id: String,
    /// Region of the node.
    pub region: String,
    /// The node's incarnation (sequence space).
    pub incarnation: String,
}

impl TryFrom<pb::ReportHello> for Hello {
    type Error = TelemetryError;

    fn try_from(hello: pb::ReportHello) -> Result<Self, Self::Error> {
        let mut violations = Vec::new();
        let mut check = |field: &str, value: &str, max: usize, slash: bool| {
            let why = if value.is_empty() {
                "is required".to_string()
            } else if value.len() > max
                || !value.starts_with(|c: char| c.is_ascii_alphanumeric())
                || !value.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (slash && c == '/')
                })
            {
                let extra = if slash { ", '-' or '/'" } else { " or '-'" };
                format!(
                    "must be 1-{max} letters, digits, '.', '_'{extra}, starting with a letter or digit"
                )
            } else {
                return;
            };
            violations.push((field.to_string(), why));
        };
        check("hello.node_id", &hello.node_id, MAX_NAME, true);
        check("hello.region", &hello.region, MAX_NAME, true);
        // The incarnation is a key segment that must not contain '/'.
        check(
            "hello.incarnation",
            &hello.incarnation,
            MAX_INCARNATION,
            false,
        );
        if !violations.is_empty() {
            return Err(TelemetryError::Invalid(violations));
        }
        Ok(Self {
            node_id: hello.node_id,
            region: hello.region,
            incarnation: hello.incarnation,
        })
    }
}

/// Waits for the stream's hello and checks it.
pub(crate) async fn read_hello(
    inbound: &mut Streaming<pb::ReportRequest>,
) -> Result<Hello, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| {
            TelemetryError::invalid(
                "hello",
                format!("no hello within {}s", HELLO_TIMEOUT.as_secs()),
            )
        })??;
    let Some(pb::ReportRequest {
        msg: Some(Msg::Hello(hello)),
    }) = first
    else {
        return Err(
            TelemetryError::invalid("hello", "the first message must be a ReportHello").into(),
        );
    };
    Ok(Hello::try_from(hello)?)
}

// === Ingest ===

/// The highest sequence taken from a node's incarnation, and the acked
/// key's `mod_revision` it was read at (0 = nothing taken yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Highest sequence taken.
    pub sequence: u64,
    /// The acked key's mod_revision; 0 when absent.
    pub mod_revision: Revision,
}

/// What became of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Written at `acked.mod_revision`.
    Written {
        /// The node's acked sequence now.
        acked: Acked,
    },
    /// At or below the acked sequence: not written.
    Duplicate {
        /// The node's acked sequence now.
        acked: Acked,
    },
}

impl Taken {
    /// The node's acked sequence after this batch.
    pub fn acked(&self) -> Acked {
        match self {
            Self::Written { acked } | Self::Duplicate { acked } => *acked,
        }
    }
}

/// Takes nodes' batches into the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Ingest {
    store: SharedStore,
    leases: Arc<Leases>,
    part_bytes: usize,
    exporter: Option<OtlpExporter>,
    /// This replica's feed, which folds what is handed over without
    /// decoding the record again.
    handoff: Option<Arc<Handoff>>,
}

impl Ingest {
    /// Writes batches to `store` under leases of `retention`, splitting
    /// batches that encode larger than `part_bytes`.
    pub fn new(store: SharedStore, retention: Duration, part_bytes: usize) -> Self {
        // Ingest shows as 0 from the start, so rates have a series at once.
        for outcome in ["written", "duplicate"] {
            metrics::counter!("aios_telemetry_batches_total", "plane" => crate::PLANE, "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!("aios_telemetry_spans_total").increment(0);
        Self {
            store,
            leases: Arc::new(Leases::new(retention)),
            part_bytes,
            exporter: None,
            handoff: None,
        }
    }

    /// Hands each batch written whole to `handoff` (this replica's feed).
    #[must_use]
    pub(crate) fn handing_to(mut self, handoff: Arc<Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// Also hands each batch written to `exporter` (OTLP), when set.
    #[must_use]
    pub fn exporting_to(mut self, exporter: Option<OtlpExporter>) -> Self {
        self.exporter = exporter;
        self
    }

    /// Reads what has been taken from `hello`'s incarnation.
    pub async fn acked(&self, hello: &Hello) -> Result<Acked, StoreError> {
        let key = keys::telemetry_acked(&hello.node_id, &hello.incarnation);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(Acked::default());
        };
        let sequence = std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| StoreError::Internal(format!("corrupt acked sequence at {key}")))?;
        Ok(Acked {
            sequence,
            mod_revision: kv.mod_revision,
        })
    }

    /// Takes `batch` (an encoded `SpanBatch`) from `hello`'s node, given
    /// what was acked when last read. Spans without a node ran on the
    /// stream's node (readers fill it in from the record key).
    pub async fn take(
        &self,
        hello: &Hello,
        mut acked: Acked,
        batch: Bytes,
    ) -> Result<Taken, TelemetryError> {
        let minute = unix_now() / 60;
        let batch = Encoded::read(&hello.node_id, minute, batch).map_err(malformed)?;
        check_batch(&batch.layout)?;
        if batch.layout.sequence <= acked.sequence {
            return Ok(Taken::Duplicate { acked });
        }
        let sequence = batch.layout.sequence;
        let spans = batch.len() as u64;
        // Converted now, offered once stored.
        let export = match &self.exporter {
            Some(_) => Some(otlp::convert(
                &hello.node_id,
                &hello.region,
                &batch.decode().map_err(undecodable)?,
            )),
            None => None,
        };
        let (records, whole) = records(hello, minute, &batch, self.part_bytes)?;
        // Offered before the write: the feed may see the record before the
        // write returns. Withdrawn on any way out but a commit.
        let handing = match (&self.handoff, whole) {
            (Some(handoff), true) => Some(handoff.offer(records[0].0.clone(), batch)),
            _ => None,
        };
        let acked_key = keys::telemetry_acked(&hello.node_id, &hello.incarnation);
        for _ in 0..MAX_ATTEMPTS {
            let lease = self.leases.for_minute(self.store.as_ref(), minute).await?;
            let mut ops: Vec<Op> = records
                .iter()
                .map(|(key, value)| Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                    lease: Some(lease),
                })
                .collect();
            ops.push(Op::Put {
                key: acked_key.clone(),
                value: sequence.to_string().into_bytes(),
                lease: None,
            });
            let compare = Compare::ModRevision {
                key: acked_key.clone(),
                equals: acked.mod_revision,
            };
            match self.store.txn(vec![compare], ops).await {
                Ok(TxnOutcome::Committed { revision }) => {
                    let acked = Acked {
                        sequence,
                        mod_revision: revision,
                    };
                    if let (Some(exporter), Some(spans)) = (&self.exporter, export) {
                        exporter.offer(spans);
                    }
                    if let Some(handing) = handing {
                        handing.keep();
                    }
                    metrics::counter!("aios_telemetry_spans_total").increment(spans);
                    return Ok(Taken::Written { acked });
                }
                Ok(TxnOutcome::Conflict { .. }) => {
                    acked = self.acked(hello).await?;
                    if sequence <= acked.sequence {
                        return Ok(Taken::Duplicate { acked });
                    }
                }
                // The minute's lease expired or was lost: grant another.
                Err(StoreError::LeaseNotFound(id)) => self.leases.forget(id),
                Err(error) => return Err(error.into()),
            }
        }
        Err(TelemetryError::Contended(MAX_ATTEMPTS))
    }
}

/// A batch that does not read, as the field at fault.
fn malformed(error: Malformed) -> TelemetryError {
    let field = match error.field.as_str() {
        "" => "batch".to_string(),
        field => format!("batch.{field}"),
    };
    TelemetryError::invalid(field, error.why)
}

/// A batch that read but did not decode (reading checks what decoding
/// does, so this is not expected).
fn undecodable(error: prost::DecodeError) -> TelemetryError {
    TelemetryError::invalid("batch", error.to_string())
}

/// Checks what the store cannot fix for the node.
fn check_batch(batch: &Layout) -> Result<(), TelemetryError> {
    let mut violations = Vec::new();
    if batch.sequence == 0 {
        violations.push(("batch.sequence".into(), "must be at least 1".into()));
    }
    if batch.spans.len() > MAX_BATCH_SPANS {
        violations.push((
            "batch.spans".into(),
            format!(
                "{} spans; at most {MAX_BATCH_SPANS} per batch",
                batch.spans.len()
            ),
        ));
    }
    match violations.is_empty() {
        true => Ok(()),
        false => Err(TelemetryError::Invalid(violations)),
    }
}

/// A store record: key and value.
pub(crate) type Record = (String, Vec<u8>);

/// The store records of `batch`: its encoding as the node sent it, or parts
/// when it is larger than `part_bytes`; and whether it is stored whole (a
/// split batch may lose spans too large to store, so only a whole one can
/// stand for what was stored).
pub(crate) fn records(
    hello: &Hello,
    unix_minute: u64,
    batch: &Encoded,
    part_bytes: usize,
) -> Result<(Vec<Record>, bool), TelemetryError> {
    let key = |sequence, part| {
        BatchKey {
            unix_minute,
            node: &hello.node_id,
            incarnation: &hello.incarnation,
            sequence,
            part,
        }
        .key()
    };
    let sequence = batch.layout.sequence;
    if batch.bytes.len() <= part_bytes {
        let record = (key(sequence, None), batch.bytes.to_vec());
        return Ok((vec![record], true));
    }
    let mut whole = batch.decode().map_err(undecodable)?;
    // Parts are re-encoded anyway: they say whose spans they hold.
    for span in whole.spans.iter_mut().filter(|span| span.node.is_empty()) {
        span.node.clone_from(&hello.node_id);
    }
    let parts = split(whole, part_bytes);
    // One operation is the acked key's.
    if parts.len() >= MAX_TXN_OPS {
        return Err(TelemetryError::invalid(
            "batch.spans",
            format!(
                "needs {} parts of {part_bytes} bytes; send smaller batches",
                parts.len()
            ),
        ));
    }
    let records = parts
        .iter()
        .enumerate()
        .map(|(i, part)| (key(sequence, Some(i as u32)), part.encode_to_vec()))
        .collect();
    Ok((records, false))
}

/// Cuts `batch` into parts that each encode within `part_bytes`, in span
/// order; the first part carries the dropped count. A span that could not
/// fit even alone cannot be stored at all: it is dropped, and counted.
fn split(batch: pb::SpanBatch, part_bytes: usize) -> Vec<pb::SpanBatch> {
    let sequence = batch.sequence;
    let empty = |dropped_spans| pb::SpanBatch {
        sequence,
        spans: Vec::new(),
        dropped_spans,
    };
    let mut parts = Vec::new();
    let mut current = empty(batch.dropped_spans);
    let mut size = PART_HEADER_BYTES;
    let mut too_large = 0u64;
    for span in batch.spans {
        let len = prost::encoding::message::encoded_len(2, &span);
        if PART_HEADER_BYTES + len > part_bytes {
            too_large += 1;
            continue;
        }
        if size + len > part_bytes {
            parts.push(std::mem::replace(&mut current, empty(0)));
            size = PART_HEADER_BYTES;
        }
        current.spans.push(span);
        size += len;
    }
    if !current.spans.is_empty() || parts.is_empty() {
        parts.push(current);
    }
    if too_large > 0 {
        tracing::warn!(
            sequence,
            spans = too_large,
            limit = part_bytes,
            "spans too large to store were dropped"
        );
        if let Some(first) = parts.first_mut() {
            first.dropped_spans = first.dropped_spans.saturating_add(too_large);
        }
    }
    parts
}

// === Leases ===

/// One retention lease per wall-clock minute, granted on first use and
/// never kept alive: it expires, with the batches under it, after the
/// retention.
#[derive(Debug)]
struct Leases {
    ttl: Duration,
    current: Mutex<Option<(u64, LeaseId)>>,
}

impl Leases {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            current: Mutex::new(None),
        }
    }

    async fn for_minute(&self, store: &dyn Store, minute: u64) -> Result<LeaseId, StoreError> {
        if let Some((at, id)) = *self.lock()
            && at == minute
        {
            return Ok(id);
        }
        let granted = store.grant_lease(self.ttl).await?;
        let raced = {
            let mut current = self.lock();
            match *current {
                Some((at, id)) if at == minute => Some(id),
                _ => {
                    *current = Some((minute, granted));
                    None
                }
            }
        };
        match raced {
            None => Ok(granted),
            // Another stream granted this minute's lease first: use that one.
            Some(id) => {
                if let Err(error) = store.revoke_lease(granted).await {
                    tracing::debug!(%error, "revoking an unused telemetry lease failed; it expires");
                }
                Ok(id)
            }
        }
    }

    fn forget(&self, lease: LeaseId) {
        let mut current = self.lock();
        if current.is_some_and(|(_, id)| id == lease) {
            *current = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, LeaseId)>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// === Streams ===

/// One Report stream after its hello: sends the acked sequence, then takes
/// batches in order and acknowledges each.
struct Serving {
    ingest: Ingest,
    hello: Hello,
    acked: Acked,
    inbound: Streaming<pb::ReportRequest>,
    cancel: CancellationToken,
    greeted: bool,
}

/// Serves an authorized stream whose hello was read, until the node goes
/// away or `cancel` fires. Nothing is spawned: the stream does its work as
/// tonic polls it, so a node that stops reading stops being read.
pub(crate) fn serve(
    ingest: Ingest,
    hello: Hello,
    acked: Acked,
    inbound: Streaming<pb::ReportRequest>,
    cancel: CancellationToken,
) -> BoxStream<'static, Result<pb::ReportResponse, Status>> {
    let serving = Serving {
        ingest,
        hello,
        acked,
        inbound,
        cancel,
        greeted: false,
    };
    futures::stream::unfold(Some(serving), |serving| async move {
        let mut serving = serving?;
        match serving.next().await {
            Ok(Some(response)) => Some((Ok(response), Some(serving))),
            Ok(None) => None,
            Err(status) => Some((Err(status), None)),
        }
    })
    .boxed()
}

impl Serving {
    /// The next acknowledgement; `None` when the node closed the stream.
    async fn next(&mut self) -> Result<Option<pb::ReportResponse>, Status> {
        if !self.greeted {
            self.greeted = true;
            return Ok(Some(self.ack()));
        }
        let message = tokio::select! {
            _ = self.cancel.cancelled() => return Err(TelemetryError::ShuttingDown.into()),
            message = self.inbound.message() => message,
        };
        let request = match message {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(None),
            Err(status) => {
                tracing::debug!(node = %self.hello.node_id, %status, "report stream failed");
                return Ok(None);
            }
        };
        match request.msg {
            Some(Msg::Batch(batch)) => {
                let taken = self.ingest.take(&self.hello, self.acked, batch).await?;
                let outcome = match taken {
                    Taken::Written { .. } => "written",
                    Taken::Duplicate { .. } => "duplicate",
                };
                metrics::counter!(
                    "aios_telemetry_batches_total",
                    "plane" => crate::PLANE,
                    "outcome" => outcome,
                )
                .increment(1);
                self.acked = taken.acked();
                Ok(Some(self.ack()))
            }
            Some(Msg::Hello(_)) => Err(TelemetryError::invalid(
                "hello",
                "sent twice: a stream has exactly one hello",
            )
            .into()),
            None => Err(TelemetryError::invalid("msg", "empty ReportRequest").into()),
        }
    }

    fn ack(&self) -> pb::ReportResponse {
        pb::ReportResponse {
            acked_sequence: self.acked.sequence,
        }
    }
}
