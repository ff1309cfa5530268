//! Unacknowledged batches in memory and on disk, and the node's sequence
//! space across restarts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// `n` spans of ~100 bytes each.
fn spans(n: usize) -> Vec<pb::Span> {
    (0..n)
        .map(|i| pb::Span {
            name: format!("chat model-{i:090}"),
            ..Default::default()
        })
        .collect()
}

/// Batch `sequence` of `n` such spans.
fn batch(sequence: u64, n: usize) -> Batch {
    let encoded = crate::telemetry::Encoded::new(&spans(n));
    Batch::encode(sequence, encoded.as_bytes(), n, 0)
}

#[test]
fn an_encoded_batch_is_the_span_batch_it_stands_for() {
    for (sequence, dropped) in [(1, 0), (300, 7), (u64::MAX, u64::MAX)] {
        let encoded = crate::telemetry::Encoded::new(&spans(3));
        let batch = Batch::encode(sequence, encoded.as_bytes(), 3, dropped);
        assert_eq!((batch.sequence, batch.spans), (sequence, 3));
        let decoded = pb::SpanBatch::decode(batch.bytes.as_ref()).unwrap();
        assert_eq!(
            decoded,
            pb::SpanBatch {
                sequence,
                spans: spans(3),
                dropped_spans: dropped,
            }
        );
        assert_eq!(batch.bytes, decoded.encode_to_vec(), "byte for byte");
    }
}

fn spilled_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn batches_past_the_memory_bound_spill_to_disk_and_are_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill");
    let one = batch(1, 10).bytes.len() as u64;
    let limits = Limits {
        memory_bytes: 2 * one,
        disk_bytes: 100 * one,
    };
    let mut unacked = Unacked::open(Some(spill.clone()), limits);
    for seq in 1..=5 {
        unacked.push(batch(seq, 10));
    }
    assert_eq!(
        spilled_files(&spill),
        [
            "00000000000000000001.pb",
            "00000000000000000002.pb",
            "00000000000000000003.pb"
        ],
        "the oldest go to disk; the newest stay in memory"
    );
    assert_eq!(unacked.bytes(), (2 * one, 3 * one));
    assert_eq!(
        unacked.get(2).unwrap(),
        batch(2, 10).bytes,
        "read back from disk"
    );
    assert_eq!(unacked.get(5).unwrap(), batch(5, 10).bytes);

    unacked.ack(1);
    assert_eq!(spilled_files(&spill).len(), 2, "an acked batch's file goes");
    assert_eq!(unacked.spill_all(), 2, "shutdown spills the rest");
    drop(unacked);

    let mut reloaded = Unacked::open(Some(spill.clone()), limits);
    assert_eq!(reloaded.len(), 4);
    assert_eq!(reloaded.next_after(0), Some(2));
    assert_eq!(reloaded.last(), Some(5));
    for seq in 2..=5 {
        assert_eq!(reloaded.get(seq).unwrap(), batch(seq, 10).bytes);
    }
    assert_eq!(reloaded.take_lost(), 0);
}

#[test]
fn past_the_disk_bound_the_oldest_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill");
    let one = batch(1, 4).bytes.len() as u64;
    let mut unacked = Unacked::open(
        Some(spill.clone()),
        Limits {
            memory_bytes: one,
            disk_bytes: 2 * one,
        },
    );
    for seq in 1..=5 {
        unacked.push(batch(seq, 4));
    }
    // 5 in memory, 3 and 4 on disk; 1 and 2 dropped.
    assert_eq!(unacked.next_after(0), Some(3));
    assert_eq!(unacked.len(), 3);
    assert_eq!(unacked.take_lost(), 8);
    assert_eq!(unacked.take_lost(), 0, "counted once");
    assert_eq!(spilled_files(&spill).len(), 2);
}

#[test]
fn without_a_disk_the_oldest_in_memory_are_dropped_and_counted() {
    let one = batch(1, 3).bytes.len() as u64;
    let mut unacked = Unacked::open(
        None,
        Limits {
            memory_bytes: 2 * one,
            disk_bytes: 1 << 30,
        },
    );
    for seq in 1..=4 {
        unacked.push(batch(seq, 3));
    }
    assert_eq!(unacked.next_after(0), Some(3));
    assert_eq!(unacked.take_lost(), 6);
    unacked.ack(10);
    assert!(unacked.is_empty());
    assert_eq!(unacked.bytes(), (0, 0));
}

#[test]
fn broken_spill_files_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    std::fs::write(
        spill.join("00000000000000000007.pb"),
        b"\xff\xff not protobuf",
    )
    .unwrap();
    std::fs::write(spill.join("00000000000000000008.pb.tmp"), b"half").unwrap();
    std::fs::write(spill.join("00000000000000000009.pb"), batch(9, 1).bytes).unwrap();
    let unacked = Unacked::open(Some(spill.clone()), Limits::default());
    assert_eq!(unacked.len(), 1);
    assert_eq!(spilled_files(&spill), ["00000000000000000009.pb"]);
}

#[test]
fn the_incarnation_survives_a_restart_and_sequences_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = State::load(dir.path());
    assert!(first.spill_dir.is_some());
    assert_eq!(first.incarnation.len(), 32);
    let used: Vec<u64> = (0..3).map(|_| first.take()).collect();
    assert_eq!(used, [1, 2, 3]);
    let incarnation = first.incarnation.clone();
    drop(first);

    let mut again = State::load(dir.path());
    assert_eq!(again.incarnation, incarnation);
    assert!(
        again.take() > 3,
        "a restart numbers on past what may have been used"
    );

    // Losing the incarnation starts a new sequence space, and spilled
    // batches of the old one are not resumed under it.
    let spill = dir.path().join("telemetry/spill");
    std::fs::write(spill.join("00000000000000000002.pb"), batch(2, 1).bytes).unwrap();
    std::fs::remove_file(dir.path().join("telemetry/incarnation")).unwrap();
    let mut fresh = State::load(dir.path());
    assert_ne!(fresh.incarnation, incarnation);
    assert_eq!(fresh.take(), 1);
    assert!(spilled_files(&spill).is_empty());
}

#[test]
fn an_unusable_state_dir_gives_an_in_memory_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let mut state = State::load(&file);
    assert!(state.spill_dir.is_none());
    assert_eq!(state.incarnation.len(), 32);
    assert_eq!(state.take(), 1);
}
