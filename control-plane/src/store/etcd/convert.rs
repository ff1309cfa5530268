//! Conversions between etcd-client's types and the store's.

use etcd_client::{Compare as EtcdCompare, CompareOp, PutOptions, TxnOp};

use crate::store::{Compare, KeyValue, Op, Revision, StoreError, prefix_end};

// === Conversions ===

/// `(key, range_end)` of etcd's range for keys under `prefix` and after
/// `after`. An empty prefix is the whole keyspace (`\0` .. `\0`); a prefix
/// with no successor (all 0xff) runs to the end of the keyspace.
pub(super) fn key_range(prefix: &str, after: &str) -> (Vec<u8>, Vec<u8>) {
    // prefix_end("") is None too: both cases run to the end of the keyspace.
    let end = prefix_end(prefix).unwrap_or_else(|| vec![0]);
    let mut start = if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    };
    if !after.is_empty() {
        // The smallest key strictly greater than `after`.
        let next = [after.as_bytes(), &[0]].concat();
        start = start.max(next);
    }
    (start, end)
}

pub(super) fn utf8_key(key: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(key).map_err(|e| {
        let key = String::from_utf8_lossy(e.as_bytes());
        StoreError::Internal(format!("etcd key is not UTF-8: {key}"))
    })
}

pub(super) fn key_value(kv: etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let (create_revision, mod_revision, version, lease) = (
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    );
    let (key, value) = kv.into_key_value();
    let lease = (lease != 0).then_some(lease);
    let key = utf8_key(key)?;
    Ok(KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
        version,
        lease,
    })
}

pub(super) fn header_revision(
    header: Option<&etcd_client::ResponseHeader>,
) -> Result<Revision, StoreError> {
    header
        .map(etcd_client::ResponseHeader::revision)
        .ok_or_else(|| StoreError::Internal("etcd response without a header".into()))
}

pub(super) fn txn_op(op: Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => TxnOp::put(
            key,
            value,
            lease.map(|lease| PutOptions::new().with_lease(lease)),
        ),
        Op::Delete { key } => TxnOp::delete(key, None),
    }
}

pub(super) fn txn_compare(compare: Compare) -> EtcdCompare {
    match compare {
        // etcd compares an absent key's mod_revision as 0, so `equals: 0`
        // means "absent" without a separate version compare.
        Compare::ModRevision { key, equals } => {
            EtcdCompare::mod_revision(key, CompareOp::Equal, equals)
        }
    }
}
