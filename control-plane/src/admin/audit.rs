//! The audit log: who changed what, when, from which version to which.
//!
//! An event is written in the same transaction as the change it records,
//! so it exists exactly when the change does, and its key's mod_revision is
//! the change's revision: that is the event's `after_version`.

use std::time::{SystemTime, UNIX_EPOCH};

use aios_model::Kind;
use aios_proto::v1 as pb;
use prost::Message;
use rand::Rng;

use super::{Admin, AdminError};
use crate::{
    auth::{Access, Principal, Scope},
    keys,
    store::{Op, RangeRequest},
};

/// 16 random bytes as hex: object uids and event ids.
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    aios_runtime::hex::encode(&bytes)
}

/// The store operation that records one change. A Tenant object's events
/// go to that tenant's own log, so its admins see its lifecycle.
pub fn event(
    who: &Principal,
    action: pb::AuditAction,
    kind: Kind,
    tenant: &str,
    name: &str,
    before: i64,
    detail: &str,
) -> Op {
    let log = if kind == Kind::Tenant { name } else { tenant };
    let now = SystemTime::now();
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let id = random_id();
    let event = pb::AuditEvent {
        id: id.clone(),
        time: Some(now.into()),
        actor: who.key_name.clone(),
        actor_tenant: who.tenant.clone(),
        action: action as i32,
        target: Some(pb::ResourceRef {
            kind: kind.to_proto() as i32,
            tenant: tenant.to_string(),
            name: name.to_string(),
        }),
        before_version: before,
        after_version: 0,
        dry_run: false,
        detail: detail.to_string(),
    };
    Op::Put {
        key: keys::audit(log, nanos, &id),
        value: event.encode_to_vec(),
        lease: None,
    }
}

/// Filters of `ListAuditEvents`.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Tenant (empty = the caller's; `*` = all, platform admins only).
    pub tenant: String,
    /// Only this actor (key name).
    pub actor: String,
    /// Only this kind.
    pub kind: Option<Kind>,
    /// Only this object name.
    pub name: String,
    /// Only events at or after this time.
    pub start: Option<SystemTime>,
    /// Only events before this time.
    pub end: Option<SystemTime>,
}

impl Admin {
    /// Audit events matching `filter`, oldest first, paginated by key.
    pub async fn list_audit(
        &self,
        who: &Principal,
        filter: &AuditFilter,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<pb::AuditEvent>, String), AdminError> {
        who.authorize(Access::Read)?;
        let prefix = match who.scope(&filter.tenant)? {
            Scope::Tenant(tenant) => keys::audit_prefix(&tenant),
            Scope::All => keys::audit_root(),
        };
        if !page_token.is_empty() && !page_token.starts_with(&prefix) {
            return Err(AdminError::Invalid(vec![(
                "page_token".into(),
                "does not belong to this listing".into(),
            )]));
        }
        let mut events = Vec::new();
        let mut after = page_token.to_string();
        loop {
            let range = self
                .store
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    after: after.clone(),
                    limit: page_size,
                })
                .await?;
            for kv in &range.kvs {
                after.clone_from(&kv.key);
                let mut event = pb::AuditEvent::decode(kv.value.as_slice()).map_err(|e| {
                    crate::store::StoreError::Internal(format!(
                        "corrupt audit event {}: {e}",
                        kv.key
                    ))
                })?;
                event.after_version = if event.action == pb::AuditAction::Delete as i32 {
                    0
                } else {
                    kv.mod_revision
                };
                if matches(&event, filter) {
                    events.push(event);
                    if events.len() == page_size {
                        let more = range.more
                            || kv.key
                                != range.kvs.last().map(|l| l.key.clone()).unwrap_or_default();
                        return Ok((events, if more { after } else { String::new() }));
                    }
                }
            }
            if !range.more {
                return Ok((events, String::new()));
            }
        }
    }
}

fn matches(event: &pb::AuditEvent, filter: &AuditFilter) -> bool {
    let target = event.target.clone().unwrap_or_default();
    let time = event.time.and_then(|t| SystemTime::try_from(t).ok());
    (filter.actor.is_empty() || event.actor == filter.actor)
        && filter
            .kind
            .is_none_or(|k| target.kind == k.to_proto() as i32)
        && (filter.name.is_empty() || target.name == filter.name)
        && filter
            .start
            .is_none_or(|start| time.is_some_and(|t| t >= start))
        && filter.end.is_none_or(|end| time.is_some_and(|t| t < end))
}
