//! Batches the control plane has not acknowledged yet, and the node's
//! telemetry state on disk (`<state-dir>/telemetry/`).
//!
//! [`Unacked`] keeps batches in memory up to a byte bound; past it the
//! oldest go to `spill/{seq:020}.pb` (temp file, then rename) up to a disk
//! bound; past that the oldest are discarded and their spans counted, to
//! ride on the next batch as `dropped_spans`. Memory always holds the
//! newest batches, so the disk holds a prefix of the sequence.
//!
//! [`State`] is the incarnation (a random id naming the node's sequence
//! space, in `incarnation`) and the sequences it may use (`sequence` holds
//! the first one not yet reserved; reserved in blocks so the file is
//! written rarely). A restart keeps both, reloads its spilled batches and
//! numbers on past every sequence it may have used before.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use aios_proto::v1 as pb;
use bytes::Bytes;
use prost::Message;

/// Sequences reserved per write of the `sequence` file.
pub const SEQUENCE_BLOCK: u64 = 10_000;

/// How much unacknowledged telemetry a node keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Encoded bytes of batches kept in memory.
    pub memory_bytes: u64,
    /// Encoded bytes of batches kept on disk; 0 = never spill.
    pub disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 16 << 20,
            disk_bytes: 256 << 20,
        }
    }
}

// === Unacked ===

/// Unacknowledged batches by sequence. See the module docs.
#[derive(Debug)]
pub struct Unacked {
    entries: BTreeMap<u64, Entry>,
    memory_bytes: u64,
    disk_bytes: u64,
    limits: Limits,
    /// The spill directory; `None` = memory only.
    dir: Option<PathBuf>,
    /// Spans discarded since the last [`Unacked::take_lost`].
    lost: u64,
}

#[derive(Debug)]
struct Entry {
    /// In memory; `None` = in its spill file.
    batch: Option<Bytes>,
    bytes: u64,
    spans: u64,
}

/// One numbered batch, encoded (`SpanBatch`), as sent and as spilled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Its sequence.
    pub sequence: u64,
    /// Spans in it.
    pub spans: u64,
    /// The encoded `SpanBatch`.
    pub bytes: Bytes,
}

impl Batch {
    /// Batch `sequence` of the encoded `SpanBatch.spans` entries `spans`
    /// (`count` of them), reporting `dropped` spans.
    pub fn encode(sequence: u64, spans: &[u8], count: usize, dropped: u64) -> Self {
        use prost::encoding::{encoded_len_varint, uint64};
        let mut bytes =
            Vec::with_capacity(spans.len() + 2 * (1 + encoded_len_varint(sequence.max(dropped))));
        uint64::encode(1, &sequence, &mut bytes);
        bytes.extend_from_slice(spans);
        if dropped > 0 {
            uint64::encode(3, &dropped, &mut bytes);
        }
        Self {
            sequence,
            spans: count as u64,
            bytes: bytes.into(),
        }
    }
}

impl Unacked {
    /// Batches kept within `limits`, spilling into `dir` (created if
    /// missing), where the batches a previous run spilled are reloaded.
    pub fn open(dir: Option<PathBuf>, limits: Limits) -> Self {
        let mut unacked = Self {
            entries: BTreeMap::new(),
            memory_bytes: 0,
            disk_bytes: 0,
            limits,
            dir: None,
            lost: 0,
        };
        let Some(dir) = dir else {
            return unacked;
        };
        match reload(&dir) {
            Ok(found) => {
                for (seq, bytes, spans) in found {
                    unacked.disk_bytes += bytes;
                    unacked.entries.insert(
                        seq,
                        Entry {
                            batch: None,
                            bytes,
                            spans,
                        },
                    );
                }
                if !unacked.entries.is_empty() {
                    tracing::info!(
                        batches = unacked.entries.len(),
                        bytes = unacked.disk_bytes,
                        "reloaded spilled telemetry"
                    );
                }
                unacked.dir = Some(dir);
            }
            Err(error) => tracing::warn!(
                dir = %dir.display(),
                %error,
                "telemetry spill directory unusable; unacknowledged spans stay in memory"
            ),
        }
        unacked
    }

    /// Keeps `batch` until acknowledged.
    pub fn push(&mut self, batch: Batch) {
        let bytes = batch.bytes.len() as u64;
        self.memory_bytes += bytes;
        self.entries.insert(
            batch.sequence,
            Entry {
                batch: Some(batch.bytes),
                bytes,
                spans: batch.spans,
            },
        );
        while self.memory_bytes > self.limits.memory_bytes {
            let Some(seq) = self.oldest_in_memory() else {
                break;
            };
            self.spill(seq);
        }
    }

    /// Forgets every batch at or below `sequence`.
    pub fn ack(&mut self, sequence: u64) {
        while let Some(entry) = self.entries.first_entry() {
            if *entry.key() > sequence {
                break;
            }
            let (seq, entry) = entry.remove_entry();
            self.forget(seq, &entry);
        }
    }

    /// The first batch after `sequence`.
    pub fn next_after(&self, sequence: u64) -> Option<u64> {
        self.entries
            .range(sequence.saturating_add(1)..)
            .next()
            .map(|(seq, _)| *seq)
    }

    /// Batch `sequence` encoded, from memory or its spill file; `None` if
    /// it is not held (or its file cannot be read any more: counted as
    /// lost).
    pub fn get(&mut self, sequence: u64) -> Option<Bytes> {
        let entry = self.entries.get(&sequence)?;
        if let Some(batch) = &entry.batch {
            return Some(batch.clone());
        }
        let read = self
            .dir
            .as_deref()
            .ok_or_else(|| io::Error::other("no spill directory"))
            .and_then(|dir| std::fs::read(file(dir, sequence)));
        match read {
            Ok(bytes) => Some(bytes.into()),
            Err(error) => {
                tracing::warn!(sequence, %error, "spilled telemetry batch unreadable; dropped");
                if let Some(entry) = self.entries.remove(&sequence) {
                    self.lost += entry.spans;
                    self.forget(sequence, &entry);
                }
                None
            }
        }
    }

    /// The newest sequence held.
    pub fn last(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No batch held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encoded bytes held in memory and on disk.
    pub fn bytes(&self) -> (u64, u64) {
        (self.memory_bytes, self.disk_bytes)
    }

    /// Spans discarded since the last call (the count resets).
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    /// Moves every batch in memory to disk (at shutdown), as far as the
    /// disk bound allows; returns how many were written.
    pub fn spill_all(&mut self) -> usize {
        let mut written = 0;
        while let Some(seq) = self.oldest_in_memory() {
            written += usize::from(self.spill(seq));
        }
        written
    }

    fn oldest_in_memory(&self) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, e)| e.batch.is_some())
            .map(|(seq, _)| *seq)
    }

    /// Writes batch `seq` to disk, then discards the oldest spilled
    /// batches past the disk bound. Without a disk, discards it. Returns
    /// whether it was written.
    fn spill(&mut self, seq: u64) -> bool {
        let Some(entry) = self.entries.get_mut(&seq) else {
            return false;
        };
        let Some(batch) = &entry.batch else {
            return false;
        };
        let written = match &self.dir {
            Some(dir) if self.limits.disk_bytes > 0 => write(dir, seq, batch).map_err(|error| {
                tracing::warn!(sequence = seq, %error, "cannot spill telemetry batch");
            }),
            _ => Err(()),
        };
        if written.is_err() {
            self.discard(seq);
            return false;
        }
        entry.batch = None;
        self.memory_bytes -= entry.bytes;
        self.disk_bytes += entry.bytes;
        metrics::counter!("aios_telemetry_batches_spilled_total").increment(1);
        while self.disk_bytes > self.limits.disk_bytes {
            let Some(oldest) = self.entries.keys().next().copied() else {
                break;
            };
            self.discard(oldest);
        }
        self.entries.contains_key(&seq)
    }

    /// Drops batch `seq` unacknowledged; its spans are counted as lost.
    fn discard(&mut self, seq: u64) {
        if let Some(entry) = self.entries.remove(&seq) {
            tracing::warn!(
                sequence = seq,
                spans = entry.spans,
                "telemetry buffer full: oldest unacknowledged batch dropped"
            );
            metrics::counter!("aios_telemetry_spans_dropped_total", "where" => "buffer")
                .increment(entry.spans);
            self.lost += entry.spans;
            self.forget(seq, &entry);
        }
    }

    /// Releases what `entry` (already removed) held.
    fn forget(&mut self, seq: u64, entry: &Entry) {
        match &entry.batch {
            Some(_) => self.memory_bytes -= entry.bytes,
            None => {
                self.disk_bytes -= entry.bytes;
                if let Some(dir) = &self.dir {
                    let _ = std::fs::remove_file(file(dir, seq));
                }
            }
        }
    }
}

/// `dir/{seq:020}.pb`.
fn file(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.pb"))
}

/// Writes a temp file and renames it, so a crash never leaves half a batch
/// under a batch's name.
fn write(dir: &Path, seq: u64, batch: &[u8]) -> io::Result<()> {
    let path = file(dir, seq);
    let temp = path.with_extension("pb.tmp");
    std::fs::write(&temp, batch)?;
    std::fs::rename(&temp, &path)
}

/// `(sequence, bytes, spans)` of each batch spilled in `dir`; removes
/// temp files and files that do not decode.
fn reload(dir: &Path) -> io::Result<Vec<(u64, u64, u64)>> {
    std::fs::create_dir_all(dir)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pb"))
            .and_then(|n| n.parse::<u64>().ok());
        let decoded = seq.and_then(|seq| {
            let bytes = std::fs::read(&path).ok()?;
            let batch = pb::SpanBatch::decode(bytes.as_slice()).ok()?;
            (batch.sequence == seq).then_some((seq, bytes.len() as u64, batch.spans.len() as u64))
        });
        match decoded {
            Some(batch) => found.push(batch),
            None => {
                tracing::warn!(path = %path.display(), "removing unreadable telemetry spill file");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(found)
}

// === State ===

/// The node's sequence space: its incarnation, the spill directory (when
/// the state directory is usable) and the next sequence to use.
#[derive(Debug)]
pub struct State {
    /// Random id of the sequence space (32 hex digits).
    pub incarnation: String,
    /// Where batches spill; `None` = the state directory is unusable.
    pub spill_dir: Option<PathBuf>,
    /// The next batch's sequence.
    pub next_sequence: u64,
    /// `<state-dir>/telemetry`, when sequences are persisted.
    dir: Option<PathBuf>,
    /// First sequence not yet reserved on disk.
    reserved: u64,
}

impl State {
    /// Loads (or creates) `<state_dir>/telemetry`. If it is unusable the
    /// node uses an in-memory incarnation and keeps batches in memory only.
    pub fn load(state_dir: &Path) -> Self {
        let dir = state_dir.join("telemetry");
        match Self::load_from(&dir) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(
                    dir = %dir.display(),
                    %error,
                    "telemetry state unusable: using an in-memory incarnation; spans are not spilled to disk"
                );
                Self::in_memory()
            }
        }
    }

    /// A fresh incarnation that lives only as long as the process.
    pub fn in_memory() -> Self {
        Self {
            incarnation: new_incarnation(),
            spill_dir: None,
            next_sequence: 1,
            dir: None,
            reserved: u64::MAX,
        }
    }

    fn load_from(dir: &Path) -> io::Result<Self> {
        let spill_dir = dir.join("spill");
        std::fs::create_dir_all(&spill_dir)?;
        let path = dir.join("incarnation");
        let kept = std::fs::read_to_string(&path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()));
        let (incarnation, floor) = match kept {
            Some(incarnation) => {
                let floor = std::fs::read_to_string(dir.join("sequence"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                (incarnation, floor)
            }
            None => {
                // A new sequence space: batches spilled under another
                // incarnation (or none) cannot be resumed.
                for entry in std::fs::read_dir(&spill_dir)? {
                    let _ = std::fs::remove_file(entry?.path());
                }
                let incarnation = new_incarnation();
                write_atomically(&path, incarnation.as_bytes())?;
                (incarnation, 1)
            }
        };
        let mut state = Self {
            incarnation,
            spill_dir: Some(spill_dir),
            next_sequence: floor.max(1),
            dir: Some(dir.to_path_buf()),
            reserved: 0,
        };
        state.reserve()?;
        Ok(state)
    }

    /// Moves the next sequence past `sequence` (what a reloaded spill or
    /// the control plane has seen).
    pub fn skip_past(&mut self, sequence: u64) {
        self.next_sequence = self.next_sequence.max(sequence.saturating_add(1));
    }

    /// Takes the next sequence, reserving another block on disk when the
    /// reserved ones run out.
    pub fn take(&mut self) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        if self.next_sequence > self.reserved
            && let Err(error) = self.reserve()
        {
            tracing::warn!(%error, "cannot persist the telemetry sequence");
        }
        sequence
    }

    fn reserve(&mut self) -> io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let reserved = self.next_sequence.saturating_add(SEQUENCE_BLOCK);
        write_atomically(&dir.join("sequence"), reserved.to_string().as_bytes())?;
        self.reserved = reserved;
        Ok(())
    }
}

fn new_incarnation() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
#[path = "spill_tests.rs"]
mod tests;
