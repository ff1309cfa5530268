//! Write transactions: every table opened once, and the writes that touch them.

use std::sync::{Arc, atomic::Ordering};

use prost::Message;
use redb::{
    MultimapTable, ReadTransaction, ReadableDatabase, ReadableTable, Table, WriteTransaction,
};

use super::{
    COMPACT_REVISION, Committed, Context, HISTORY, Inner, KEYS, LEASE_KEYS, LEASES, META, REVISION,
    decode, load_kv, lock, meta_get,
    records::{HistoryEntry, Record, to_kv, to_record},
    utf8,
};
use crate::store::{
    Compare, Event, EventKind, KeyValue, LeaseId, Op, Revision, StoreError, TxnOutcome,
};

// === write transactions ===

/// What to do with a write transaction once its body has run.
pub(super) enum Effect {
    Abort,
    Commit,
    Publish(Committed),
}

/// Every table, opened once per write transaction.
pub(super) struct Tables<'t> {
    pub(super) meta: Table<'t, &'static str, i64>,
    pub(super) keys: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) history: Table<'t, i64, &'static [u8]>,
    pub(super) leases: Table<'t, i64, u64>,
    pub(super) lease_keys: MultimapTable<'t, i64, &'static [u8]>,
    pub(super) history_revisions: i64,
}

impl<'t> Tables<'t> {
    pub(super) fn open(
        txn: &'t WriteTransaction,
        history_revisions: i64,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            meta: txn.open_table(META).ctx("open meta")?,
            keys: txn.open_table(KEYS).ctx("open keys")?,
            history: txn.open_table(HISTORY).ctx("open history")?,
            leases: txn.open_table(LEASES).ctx("open leases")?,
            lease_keys: txn.open_multimap_table(LEASE_KEYS).ctx("open lease keys")?,
            history_revisions,
        })
    }

    pub(super) fn meta(&self, name: &str) -> Result<i64, StoreError> {
        meta_get(&self.meta, name)
    }

    pub(super) fn set_meta(&mut self, name: &str, value: i64) -> Result<(), StoreError> {
        self.meta.insert(name, value).ctx("write meta")?;
        Ok(())
    }

    fn put(
        &mut self,
        revision: Revision,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Event, StoreError> {
        let k = key.as_bytes();
        let prev = load_kv(&self.keys, k)?;
        let (create_revision, version) = prev
            .as_ref()
            .map_or((revision, 1), |p| (p.create_revision, p.version + 1));
        // A key belongs to at most one lease, as in etcd.
        if let Some(p) = &prev
            && p.lease != 0
            && p.lease != lease
        {
            self.lease_keys.remove(p.lease, k).ctx("detach key")?;
        }
        if lease != 0 {
            self.lease_keys.insert(lease, k).ctx("attach key")?;
        }
        let kv = Record {
            value,
            create_revision,
            mod_revision: revision,
            version,
            lease,
            ..Record::default()
        };
        self.keys
            .insert(k, kv.encode_to_vec().as_slice())
            .ctx("write key")?;
        Ok(Event {
            kind: EventKind::Put,
            kv: to_kv(key.to_owned(), kv),
        })
    }

    fn delete(&mut self, revision: Revision, key: &str) -> Result<Option<Event>, StoreError> {
        let k = key.as_bytes();
        let prev: Option<Record> = self
            .keys
            .remove(k)
            .ctx("delete key")?
            .map(|v| decode(v.value()))
            .transpose()?;
        let Some(prev) = prev else { return Ok(None) };
        if prev.lease != 0 {
            self.lease_keys.remove(prev.lease, k).ctx("detach key")?;
        }
        let kv = KeyValue {
            key: key.to_owned(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: None,
        };
        Ok(Some(Event {
            kind: EventKind::Delete,
            kv,
        }))
    }

    /// Deletes a lease and its keys at one revision; `None` if there is no such lease.
    pub(super) fn revoke(&mut self, id: LeaseId) -> Result<Option<Effect>, StoreError> {
        if self.leases.remove(id).ctx("delete lease")?.is_none() {
            return Ok(None);
        }
        let keys = self.lease_keys.remove_all(id).ctx("lease keys")?;
        let keys = keys
            .map(|k| utf8(k.ctx("lease keys")?.value()))
            .collect::<Result<Vec<_>, _>>()?;
        let revision = self.meta(REVISION)? + 1;
        let mut events = Vec::new();
        for key in keys {
            events.extend(self.delete(revision, &key)?);
        }
        self.publish(revision, events).map(Some)
    }

    /// Records `events` as `revision`. A write that changed nothing keeps
    /// the revision, as in etcd.
    fn publish(&mut self, revision: Revision, events: Vec<Event>) -> Result<Effect, StoreError> {
        if events.is_empty() {
            return Ok(Effect::Commit);
        }
        self.set_meta(REVISION, revision)?;
        let record = HistoryEntry {
            events: events.iter().map(to_record).collect(),
        };
        self.history
            .insert(revision, record.encode_to_vec().as_slice())
            .ctx("write history")?;
        let floor = revision - self.history_revisions + 1;
        if self.history_revisions > 0 && floor > self.meta(COMPACT_REVISION)? {
            self.trim_history(floor)?;
        }
        Ok(Effect::Publish(Committed { revision, events }))
    }

    pub(super) fn trim_history(&mut self, floor: Revision) -> Result<(), StoreError> {
        self.history
            .retain_in(..floor, |_, _| false)
            .ctx("trim history")?;
        self.set_meta(COMPACT_REVISION, floor)
    }
}

impl Inner {
    pub(super) fn write<T>(
        &self,
        body: impl FnOnce(&mut Tables<'_>) -> Result<(T, Effect), StoreError>,
    ) -> Result<T, StoreError> {
        let _order = lock(&self.write_lock);
        let txn = self.db.begin_write().ctx("begin write")?;
        let (value, effect) = body(&mut Tables::open(&txn, self.history_revisions)?)?;
        match effect {
            Effect::Abort => txn.abort().ctx("abort")?,
            Effect::Commit => txn.commit().ctx("commit")?,
            Effect::Publish(committed) => {
                txn.commit().ctx("commit")?;
                self.revision.store(committed.revision, Ordering::SeqCst);
                // Having no watcher is normal, so a failed send is not an error.
                let _ = self.live.send(Arc::new(committed));
            }
        }
        Ok(value)
    }

    pub(super) fn read<T>(
        &self,
        body: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        body(&self.db.begin_read().ctx("begin read")?)
    }

    pub(super) fn txn(&self, compares: &[Compare], ops: Vec<Op>) -> Result<TxnOutcome, StoreError> {
        self.write(|t| {
            let current = t.meta(REVISION)?;
            for Compare::ModRevision { key, equals } in compares {
                if load_kv(&t.keys, key.as_bytes())?.map_or(0, |kv| kv.mod_revision) != *equals {
                    return Ok((TxnOutcome::Conflict { revision: current }, Effect::Abort));
                }
            }
            // etcd checks leases after the compares, on the branch it runs.
            for op in &ops {
                if let Op::Put {
                    lease: Some(id), ..
                } = op
                    && *id != 0
                    && t.leases.get(*id).ctx("read lease")?.is_none()
                {
                    return Err(StoreError::LeaseNotFound(*id));
                }
            }
            let revision = current + 1;
            let mut events = Vec::new();
            for op in ops {
                match op {
                    Op::Put { key, value, lease } => {
                        events.push(t.put(revision, &key, value, lease.unwrap_or(0))?)
                    }
                    Op::Delete { key } => events.extend(t.delete(revision, &key)?),
                }
            }
            let effect = t.publish(revision, events)?;
            let revision = if matches!(effect, Effect::Publish(_)) {
                revision
            } else {
                current
            };
            Ok((TxnOutcome::Committed { revision }, effect))
        })
    }
}
