//! The prost records stored in `keys` and `history`, and their conversions.

use prost::Message;

use crate::store::{Event, EventKind, KeyValue};

// === stored records ===

/// A key's state in `keys`; in `history` also the key and whether the
/// event deleted it (both left empty in `keys`, whose table key is the key).
#[derive(Clone, PartialEq, Message)]
pub(super) struct Record {
    #[prost(bytes = "vec", tag = "1")]
    pub(super) value: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub(super) create_revision: i64,
    #[prost(int64, tag = "3")]
    pub(super) mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub(super) version: i64,
    /// 0 = no lease (etcd's convention).
    #[prost(int64, tag = "5")]
    pub(super) lease: i64,
    #[prost(string, tag = "6")]
    pub(super) key: String,
    #[prost(bool, tag = "7")]
    pub(super) deleted: bool,
}

/// The events of one revision, in op order.
#[derive(Clone, PartialEq, Message)]
pub(super) struct HistoryEntry {
    #[prost(message, repeated, tag = "1")]
    pub(super) events: Vec<Record>,
}

pub(super) fn to_kv(key: String, record: Record) -> KeyValue {
    let lease = (record.lease != 0).then_some(record.lease);
    KeyValue {
        key,
        value: record.value,
        create_revision: record.create_revision,
        mod_revision: record.mod_revision,
        version: record.version,
        lease,
    }
}

pub(super) fn to_record(Event { kind, kv }: &Event) -> Record {
    Record {
        value: kv.value.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease.unwrap_or(0),
        key: kv.key.clone(),
        deleted: *kind == EventKind::Delete,
    }
}

pub(super) fn to_event(mut record: Record) -> Event {
    let kind = if record.deleted {
        EventKind::Delete
    } else {
        EventKind::Put
    };
    let key = std::mem::take(&mut record.key);
    Event {
        kind,
        kv: to_kv(key, record),
    }
}
