//! The Admin API's logic: apply, read, delete, watch and audit desired
//! state, scoped by tenant and role. `crate::api` is the gRPC edge that
//! authenticates calls and maps [`AdminError`] to statuses.

pub mod apply;
pub mod audit;
pub mod error;

use aios_model::Kind;
use aios_proto::v1::{self as pb, resource::Spec};
use futures::{StreamExt, stream::BoxStream};
use prost::Message;

pub use self::{apply::Applied, audit::AuditFilter, error::AdminError};
use crate::{
    auth::{Access, Principal, Scope},
    keys,
    store::{
        EventKind, KeyValue, Op, RangeRequest, Revision, SharedStore, StoreError, TxnOutcome,
        WatchMessage,
    },
};

/// Default and maximum page sizes of List.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// See [`DEFAULT_PAGE_SIZE`].
pub const MAX_PAGE_SIZE: usize = 1000;

/// Desired state, behind tenant and role checks.
#[derive(Clone, Debug)]
pub struct Admin {
    store: SharedStore,
}

/// A change seen by Watch.
pub type WatchItem = Result<pb::WatchEvent, AdminError>;

impl Admin {
    /// Admin over `store`.
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    /// The store, for the auth layer.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// One object.
    pub async fn get(
        &self,
        who: &Principal,
        kind: Kind,
        tenant: &str,
        name: &str,
    ) -> Result<pb::Resource, AdminError> {
        who.authorize(Access::Read)?;
        let tenant = self.single_tenant(who, kind, tenant, name)?;
        let kv = self.store.get(&keys::resource(kind, &tenant, name)).await?;
        kv.as_ref()
            .map(decode_resource)
            .transpose()?
            .ok_or_else(|| not_found(kind, &tenant, name))
    }

    /// Objects of `kind` (all kinds if `None`), filtered by a label
    /// selector, in key order. The page token is the last key returned.
    pub async fn list(
        &self,
        who: &Principal,
        kind: Option<Kind>,
        tenant: &str,
        selector: &str,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<pb::Resource>, String, Revision), AdminError> {
        who.authorize(Access::Read)?;
        let selector = aios_model::labels::LabelSelector::parse(selector)
            .map_err(|e| AdminError::Invalid(vec![("label_selector".into(), e)]))?;
        let scope = who.scope(tenant)?;
        let mut prefixes: Vec<String> = match kind {
            Some(kind) => vec![prefix_for(kind, &scope)],
            None => Kind::ALL.iter().map(|k| prefix_for(*k, &scope)).collect(),
        };
        prefixes.sort();
        let mut resources = Vec::new();
        let mut revision = 0;
        for prefix in &prefixes {
            // Prefixes are walked in key order and the token is the last key
            // returned: prefixes before it are done, the one holding it resumes.
            let mut after = match page_token {
                token if token.starts_with(prefix.as_str()) => token.to_string(),
                token if token.is_empty() || token < prefix.as_str() => String::new(),
                _ => continue,
            };
            loop {
                let range = self
                    .store
                    .range(RangeRequest {
                        prefix: prefix.clone(),
                        after: after.clone(),
                        limit: page_size,
                    })
                    .await?;
                revision = revision.max(range.revision);
                for kv in &range.kvs {
                    after.clone_from(&kv.key);
                    let Some((kind, tenant, name)) = keys::parse_resource(&kv.key) else {
                        continue;
                    };
                    if !in_scope(who, &scope, kind, &tenant, &name) {
                        continue;
                    }
                    let resource = decode_resource(kv)?;
                    let labels = resource
                        .metadata
                        .as_ref()
                        .map(|m| m.labels.clone())
                        .unwrap_or_default();
                    if selector.matches(&labels) {
                        resources.push(resource);
                        if resources.len() == page_size {
                            return Ok((resources, after, revision));
                        }
                    }
                }
                if !range.more {
                    break;
                }
            }
        }
        Ok((resources, String::new(), revision))
    }

    /// Deletes an object, if `resource_version` (non-zero) is current and
    /// nothing in its tenant still references it.
    pub async fn delete(
        &self,
        who: &Principal,
        kind: Kind,
        tenant: &str,
        name: &str,
        resource_version: i64,
    ) -> Result<(pb::Resource, Revision), AdminError> {
        who.authorize(Access::Write(kind))?;
        let tenant = self.single_tenant(who, kind, tenant, name)?;
        let key = keys::resource(kind, &tenant, name);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| not_found(kind, &tenant, name))?;
        if resource_version != 0 && resource_version != kv.mod_revision {
            return Err(AdminError::Stale {
                kind: kind.display_name(),
                name: name.to_string(),
                expected: resource_version,
                actual: kv.mod_revision,
            });
        }
        let resource = decode_resource(&kv)?;
        self.check_unused(kind, &tenant, name).await?;
        let mut ops = vec![Op::Delete { key: key.clone() }];
        if let Some(Spec::ApiKey(spec)) = &resource.spec {
            ops.push(Op::Delete {
                key: keys::key_hash(&spec.secret_hash),
            });
        }
        ops.push(audit::event(
            who,
            pb::AuditAction::Delete,
            kind,
            &tenant,
            name,
            kv.mod_revision,
            "deleted",
        ));
        let compare = crate::store::Compare::ModRevision {
            key,
            equals: kv.mod_revision,
        };
        match self.store.txn(vec![compare], ops).await? {
            TxnOutcome::Committed { revision } => Ok((resource, revision)),
            TxnOutcome::Conflict { .. } => Err(AdminError::Stale {
                kind: kind.display_name(),
                name: name.to_string(),
                expected: kv.mod_revision,
                actual: self
                    .store
                    .get(&keys::resource(kind, &tenant, name))
                    .await?
                    .map_or(0, |kv| kv.mod_revision),
            }),
        }
    }

    /// Changes from `start_revision` (0 = from now). A compacted start
    /// revision fails with [`AdminError::Compacted`]: list again, then
    /// watch from the list's revision + 1.
    pub async fn watch(
        &self,
        who: &Principal,
        kind: Option<Kind>,
        tenant: &str,
        start_revision: Revision,
    ) -> Result<BoxStream<'static, WatchItem>, AdminError> {
        who.authorize(Access::Read)?;
        let scope = who.scope(tenant)?;
        let prefix = match kind {
            Some(kind) => prefix_for(kind, &scope),
            None => keys::RESOURCES.to_string(),
        };
        // "From now" is pinned to a revision before the stream is returned,
        // so a change made right after this call is never missed while the
        // backend is still registering the watch.
        let start = match start_revision {
            0 => self.store.revision().await? + 1,
            revision => revision,
        };
        let stream = self.store.watch(&prefix, start).await?;
        let who = who.clone();
        let events = stream.flat_map(move |message| {
            let items: Vec<WatchItem> = match message {
                Err(error) => vec![Err(error.into())],
                Ok(WatchMessage::Compacted { compact_revision }) => {
                    vec![Err(AdminError::Compacted {
                        requested: start_revision,
                        compact_revision,
                    })]
                }
                Ok(WatchMessage::Events(events)) => events
                    .iter()
                    .filter_map(|event| watch_event(&who, &scope, event).transpose())
                    .collect(),
            };
            futures::stream::iter(items)
        });
        Ok(events.boxed())
    }

    /// The tenant a single-object request acts in.
    fn single_tenant(
        &self,
        who: &Principal,
        kind: Kind,
        tenant: &str,
        name: &str,
    ) -> Result<String, AdminError> {
        if !kind.is_tenant_scoped() {
            // A Tenant object is visible to its own keys and to platform admins.
            who.scope(name)?;
            return Ok(String::new());
        }
        match who.scope(tenant)? {
            Scope::Tenant(tenant) => Ok(tenant),
            Scope::All => Err(AdminError::Invalid(vec![(
                "tenant".into(),
                "name one tenant, not *".into(),
            )])),
        }
    }

    /// Refuses to delete what other objects in the tenant still use.
    async fn check_unused(&self, kind: Kind, tenant: &str, name: &str) -> Result<(), AdminError> {
        let mut users = Vec::new();
        if kind == Kind::Tenant {
            for other in Kind::ALL.iter().filter(|k| k.is_tenant_scoped()) {
                let range = self
                    .store
                    .range(RangeRequest {
                        prefix: keys::tenant_prefix(*other, name),
                        after: String::new(),
                        limit: 1,
                    })
                    .await?;
                if !range.kvs.is_empty() {
                    users.push((
                        format!("tenant {name}"),
                        format!(
                            "still has {} objects; delete them first",
                            other.display_name()
                        ),
                    ));
                }
            }
        } else {
            for other in Kind::ALL.iter().filter(|k| k.is_tenant_scoped()) {
                let range = self
                    .store
                    .range(RangeRequest::prefix(keys::tenant_prefix(*other, tenant)))
                    .await?;
                for kv in &range.kvs {
                    let Ok(valid) = aios_model::validate(&decode_resource(kv)?) else {
                        continue;
                    };
                    if valid
                        .references
                        .iter()
                        .any(|r| r.kind == kind && r.name == name)
                    {
                        users.push((
                            format!("{} {}", other.display_name(), valid.name),
                            format!("references {} {name}", kind.display_name()),
                        ));
                    }
                }
            }
        }
        if users.is_empty() {
            Ok(())
        } else {
            Err(AdminError::Precondition(users))
        }
    }
}

/// Decodes a stored object; its version is the key's mod_revision.
pub fn decode_resource(kv: &KeyValue) -> Result<pb::Resource, AdminError> {
    let mut resource = pb::Resource::decode(kv.value.as_slice())
        .map_err(|e| StoreError::Internal(format!("corrupt object at {}: {e}", kv.key)))?;
    if let Some(meta) = resource.metadata.as_mut() {
        meta.resource_version = kv.mod_revision;
    }
    Ok(resource)
}

fn not_found(kind: Kind, tenant: &str, name: &str) -> AdminError {
    AdminError::NotFound {
        kind: kind.display_name(),
        tenant: tenant.to_string(),
        name: name.to_string(),
    }
}

fn prefix_for(kind: Kind, scope: &Scope) -> String {
    match scope {
        Scope::Tenant(tenant) => keys::tenant_prefix(kind, tenant),
        Scope::All => keys::kind_prefix(kind),
    }
}

/// Whether an object is in the caller's scope. Tenant objects sit outside
/// tenant prefixes, so a tenant's keys see only their own.
fn in_scope(who: &Principal, scope: &Scope, kind: Kind, tenant: &str, name: &str) -> bool {
    match scope {
        Scope::All => true,
        Scope::Tenant(scoped) if kind == Kind::Tenant => who.is_platform_admin() || name == scoped,
        Scope::Tenant(scoped) => tenant == scoped,
    }
}

/// A spec of `kind` with every field empty: DELETE events carry the kind
/// this way, since the deleted object's content is gone.
fn empty_spec(kind: Kind) -> Spec {
    match kind {
        Kind::Tenant => Spec::Tenant(Default::default()),
        Kind::ApiKey => Spec::ApiKey(Default::default()),
        Kind::Budget => Spec::Budget(Default::default()),
        Kind::Policy => Spec::Policy(Default::default()),
        Kind::Model => Spec::Model(Default::default()),
        Kind::RoutingTable => Spec::RoutingTable(Default::default()),
        Kind::Agent => Spec::Agent(Default::default()),
        Kind::Tool => Spec::Tool(Default::default()),
        Kind::AlertRule => Spec::AlertRule(Default::default()),
    }
}

fn watch_event(
    who: &Principal,
    scope: &Scope,
    event: &crate::store::Event,
) -> Result<Option<pb::WatchEvent>, AdminError> {
    let Some((kind, tenant, name)) = keys::parse_resource(&event.kv.key) else {
        return Ok(None);
    };
    if !in_scope(who, scope, kind, &tenant, &name) {
        return Ok(None);
    }
    let (r#type, resource) = match event.kind {
        EventKind::Put => (pb::WatchEventType::Put, decode_resource(&event.kv)?),
        EventKind::Delete => (
            pb::WatchEventType::Delete,
            pb::Resource {
                metadata: Some(pb::ObjectMeta {
                    name: name.clone(),
                    tenant: tenant.clone(),
                    resource_version: event.kv.mod_revision,
                    ..Default::default()
                }),
                spec: Some(empty_spec(kind)),
            },
        ),
    };
    Ok(Some(pb::WatchEvent {
        r#type: r#type as i32,
        resource: Some(resource),
        revision: event.kv.mod_revision,
    }))
}
