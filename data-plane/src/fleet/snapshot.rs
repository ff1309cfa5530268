//! The node's configuration: an immutable [`NodeConfig`] snapshot, swapped
//! whole behind a [`NodeConfigHandle`], and [`apply_push`], the pure rule
//! that turns one `ConfigPush` into the next snapshot and its answers.
//!
//! Rules (see ARCHITECTURE.md, "Config distribution"):
//! - Every update is validated with [`aios_model::validate`] and the
//!   node-side [`Host::check`]s. A valid one replaces what the node held; an
//!   invalid one is NACKed with every violation, and the version held
//!   before (if any) stays in force.
//! - Removals always apply; their ACK names the version the node dropped
//!   (0 if it held none).
//! - The new snapshot is at the push's revision.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use aios_model::{FieldViolation, Kind, Validated};
use aios_proto::v1 as pb;
use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::checks::Host;

// === ResourceKey ===

/// Identity of a resource on the node: kind, tenant (empty for tenants)
/// and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// Kind.
    pub kind: Kind,
    /// Owning tenant; empty for [`Kind::Tenant`].
    pub tenant: String,
    /// Name within tenant and kind.
    pub name: String,
}

impl ResourceKey {
    /// A key from its parts.
    pub fn new(kind: Kind, tenant: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            tenant: tenant.into(),
            name: name.into(),
        }
    }

    /// The key of a wire reference; `None` for an unknown kind.
    pub fn from_ref(reference: &pb::ResourceRef) -> Option<Self> {
        Some(Self::new(
            Kind::from_proto(reference.kind)?,
            &reference.tenant,
            &reference.name,
        ))
    }

    /// The wire reference.
    pub fn to_ref(&self) -> pb::ResourceRef {
        pb::ResourceRef {
            kind: self.kind.to_proto() as i32,
            tenant: self.tenant.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tenant.is_empty() {
            true => write!(f, "{} {}", self.kind, self.name),
            false => write!(f, "{} {}/{}", self.kind, self.tenant, self.name),
        }
    }
}

// === NodeConfig ===

/// One resource version in force on the node.
#[derive(Debug, PartialEq)]
pub struct Applied {
    /// Its `metadata.resource_version`.
    pub version: i64,
    /// The resource as pushed (kept to persist it and to say what is held).
    pub resource: pb::Resource,
    /// The resource in domain form, for the request path.
    pub validated: Validated,
}

/// Everything the node runs with, consistent with one store revision.
/// Immutable: a push produces a new one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeConfig {
    /// Store revision of the last applied push; 0 = never synced.
    pub revision: i64,
    /// Resources in force, by identity. Shared between successive
    /// snapshots, so a push copies only the map.
    pub resources: BTreeMap<ResourceKey, Arc<Applied>>,
}

impl NodeConfig {
    /// The resource in force under `key`, if any.
    pub fn get(&self, key: &ResourceKey) -> Option<&Applied> {
        self.resources.get(key).map(Arc::as_ref)
    }

    /// What the node holds, as the hello reports it.
    pub fn held(&self) -> Vec<pb::HeldResource> {
        self.resources
            .iter()
            .map(|(key, applied)| pb::HeldResource {
                resource: Some(key.to_ref()),
                version: applied.version,
            })
            .collect()
    }
}

// === NodeConfigHandle ===

/// Shared access to the node's current [`NodeConfig`]. Reads are a lock-free
/// pointer load; a push replaces the snapshot whole, so a reader sees either
/// the old or the new config, never a mix.
///
/// Views derived from the config (the pipeline's catalog) are rebuilt by
/// [`publish`](Self::publish) before the new snapshot becomes current, so
/// whoever sees revision N (a subscriber, the ACK to the control plane, a
/// test waiting for it) knows every view enforces N too.
#[derive(Clone, Debug)]
pub struct NodeConfigHandle {
    inner: Arc<Shared>,
}

/// Rebuilds one derived view from a new snapshot.
type View = Box<dyn Fn(&Arc<NodeConfig>) + Send + Sync>;

struct Shared {
    current: ArcSwap<NodeConfig>,
    changes: watch::Sender<Arc<NodeConfig>>,
    views: Mutex<Vec<View>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("current", &self.current)
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

impl NodeConfigHandle {
    /// A handle starting at `initial`.
    pub fn new(initial: NodeConfig) -> Self {
        let initial = Arc::new(initial);
        Self {
            inner: Arc::new(Shared {
                current: ArcSwap::new(initial.clone()),
                changes: watch::Sender::new(initial),
                views: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The config in force now (cheap: for the request path).
    pub fn current(&self) -> Arc<NodeConfig> {
        self.inner.current.load_full()
    }

    /// A receiver that sees every new snapshot (latest value only), e.g.
    /// `subscribe().wait_for(|c| c.revision >= 7)`.
    pub fn subscribe(&self) -> watch::Receiver<Arc<NodeConfig>> {
        self.inner.changes.subscribe()
    }

    /// Keeps a view derived from the config: `rebuild` runs now on the
    /// current snapshot, then on every published one before it becomes
    /// current (on the publisher's thread: keep it quick).
    pub fn derive(&self, rebuild: impl Fn(&Arc<NodeConfig>) + Send + Sync + 'static) {
        let mut views = self.views();
        rebuild(&self.current());
        views.push(Box::new(rebuild));
    }

    /// Rebuilds the derived views from `config`, then makes it current and
    /// tells subscribers.
    pub(crate) fn publish(&self, config: Arc<NodeConfig>) {
        // Held through the swap: a view derived meanwhile starts from the
        // snapshot this publish makes current, not the one it replaces.
        let views = self.views();
        for rebuild in views.iter() {
            rebuild(&config);
        }
        self.inner.current.store(config.clone());
        drop(views);
        self.inner.changes.send_replace(config);
    }

    fn views(&self) -> std::sync::MutexGuard<'_, Vec<View>> {
        // A view that panicked left nothing half-written here: the list
        // itself is only ever pushed to.
        self.inner
            .views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

// === apply_push ===

/// The result of applying one push.
#[derive(Debug)]
pub struct PushOutcome {
    /// The snapshot to swap in.
    pub config: NodeConfig,
    /// One answer per update, then one per removal, in push order.
    pub results: Vec<pb::ResourceAck>,
}

impl PushOutcome {
    /// How many updates were rejected.
    pub fn nacks(&self) -> usize {
        self.results.iter().filter(|r| !r.accepted).count()
    }
}

/// Applies `push` to `current` (see the module rules). Pure: `host` is the
/// only view of the machine, and nothing is swapped or written.
pub fn apply_push(current: &NodeConfig, push: &pb::ConfigPush, host: &Host) -> PushOutcome {
    let mut resources = current.resources.clone();
    let mut results = Vec::with_capacity(push.updates.len() + push.removals.len());
    for resource in &push.updates {
        let version = resource.metadata.as_ref().map_or(0, |m| m.resource_version);
        let reference = pushed_ref(resource);
        match admit(resource, host) {
            Ok(validated) => {
                let key = ResourceKey::new(validated.kind, &validated.tenant, &validated.name);
                let applied = Applied {
                    version,
                    resource: resource.clone(),
                    validated,
                };
                resources.insert(key, Arc::new(applied));
                results.push(ack(reference, version, None));
            }
            Err(error) => results.push(ack(reference, version, Some(error))),
        }
    }
    for reference in &push.removals {
        let removed = ResourceKey::from_ref(reference).and_then(|key| resources.remove(&key));
        let version = removed.map_or(0, |applied| applied.version);
        results.push(ack(reference.clone(), version, None));
    }
    PushOutcome {
        config: NodeConfig {
            revision: push.revision,
            resources,
        },
        results,
    }
}

/// Validates `resource` and runs the node-side checks on it; the error is
/// every violation, readable in one line.
pub(crate) fn admit(resource: &pb::Resource, host: &Host) -> Result<Validated, String> {
    let validated = aios_model::validate(resource).map_err(|e| describe(&e.violations))?;
    let problems = host.check(&validated);
    match problems.is_empty() {
        true => Ok(validated),
        false => Err(describe(&problems)),
    }
}

/// `field: description; field: description`.
fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The reference an answer names: taken from the pushed object as it is,
/// even when it is too broken to validate, so the control plane can match
/// the NACK to what it sent.
fn pushed_ref(resource: &pb::Resource) -> pb::ResourceRef {
    let meta = resource.metadata.as_ref();
    pb::ResourceRef {
        kind: aios_model::kind_of(resource).map_or(0, |k| k.to_proto() as i32),
        tenant: meta.map(|m| m.tenant.clone()).unwrap_or_default(),
        name: meta.map(|m| m.name.clone()).unwrap_or_default(),
    }
}

fn ack(resource: pb::ResourceRef, version: i64, error: Option<String>) -> pb::ResourceAck {
    pb::ResourceAck {
        resource: Some(resource),
        version,
        accepted: error.is_none(),
        error: error.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::fleet::testing::{bad_model, host_with, model, push, tool};

    fn key(kind: Kind, name: &str) -> ResourceKey {
        ResourceKey::new(kind, "acme", name)
    }

    fn apply(current: &NodeConfig, push: &pb::ConfigPush) -> PushOutcome {
        apply_push(current, push, &host_with(&[("OPENAI_API_KEY", "sk-test")]))
    }

    #[test]
    fn valid_updates_apply_and_are_acked_with_the_pushed_version() {
        let out = apply(
            &NodeConfig::default(),
            &push(
                7,
                vec![tool("search", 5), model("gpt", 7, "OPENAI_API_KEY")],
                vec![],
            ),
        );
        assert_eq!(out.config.revision, 7);
        assert_eq!(
            out.config.get(&key(Kind::Tool, "search")).unwrap().version,
            5
        );
        let gpt = out.config.get(&key(Kind::Model, "gpt")).unwrap();
        assert_eq!((gpt.version, gpt.validated.name.as_str()), (7, "gpt"));
        assert_eq!(out.nacks(), 0);
        let answers: Vec<_> = out
            .results
            .iter()
            .map(|r| (r.resource.clone().unwrap(), r.version, r.accepted))
            .collect();
        assert_eq!(
            answers,
            vec![
                (key(Kind::Tool, "search").to_ref(), 5, true),
                (key(Kind::Model, "gpt").to_ref(), 7, true),
            ]
        );
    }

    #[test]
    fn a_newer_version_replaces_the_old_one() {
        let first = apply(
            &NodeConfig::default(),
            &push(5, vec![tool("search", 5)], vec![]),
        );
        let second = apply(&first.config, &push(9, vec![tool("search", 9)], vec![]));
        assert_eq!(
            second
                .config
                .get(&key(Kind::Tool, "search"))
                .unwrap()
                .version,
            9
        );
        assert_eq!(second.config.resources.len(), 1);
        assert_eq!(
            first
                .config
                .get(&key(Kind::Tool, "search"))
                .unwrap()
                .version,
            5,
            "immutable"
        );
    }

    #[test]
    fn an_invalid_update_is_nacked_with_its_reasons_and_the_old_version_stays() {
        let before = apply(
            &NodeConfig::default(),
            &push(3, vec![model("gpt", 3, "")], vec![]),
        );
        let out = apply(
            &before.config,
            &push(8, vec![bad_model("gpt", 8), tool("search", 8)], vec![]),
        );
        assert_eq!(out.nacks(), 1);
        let nack = &out.results[0];
        assert!(!nack.accepted);
        assert_eq!(nack.version, 8, "the NACK names the rejected version");
        assert_eq!(nack.resource, Some(key(Kind::Model, "gpt").to_ref()));
        assert!(nack.error.starts_with("model.endpoint: "), "{}", nack.error);
        assert!(
            out.results[1].accepted,
            "one bad resource does not block the others"
        );
        assert_eq!(out.config.get(&key(Kind::Model, "gpt")).unwrap().version, 3);
        assert_eq!(out.config.revision, 8);
    }

    #[test]
    fn a_first_invalid_version_leaves_nothing_in_force() {
        let out = apply(
            &NodeConfig::default(),
            &push(2, vec![bad_model("gpt", 2)], vec![]),
        );
        assert_eq!(out.nacks(), 1);
        assert!(out.config.resources.is_empty());
    }

    #[test]
    fn several_violations_are_joined_in_one_line() {
        let mut broken = bad_model("gpt", 4);
        if let Some(pb::resource::Spec::Model(spec)) = &mut broken.spec {
            spec.input_price_usd_per_mtok = -1.0;
        }
        let out = apply(&NodeConfig::default(), &push(4, vec![broken], vec![]));
        let error = &out.results[0].error;
        assert!(
            error.contains("model.endpoint: ")
                && error.contains("; model.input_price_usd_per_mtok: "),
            "{error}"
        );
    }

    #[test]
    fn a_node_side_check_failure_is_a_nack() {
        let out = apply_push(
            &NodeConfig::default(),
            &push(4, vec![model("claude", 4, "ANTHROPIC_API_KEY")], vec![]),
            &host_with(&[]),
        );
        assert_eq!(
            out.results[0].error,
            "model.api_key_env: environment variable ANTHROPIC_API_KEY is not set on this node"
        );
        assert!(out.config.resources.is_empty());
    }

    #[test]
    fn a_resource_without_metadata_or_spec_is_nacked_not_dropped() {
        let out = apply(
            &NodeConfig::default(),
            &push(1, vec![pb::Resource::default()], vec![]),
        );
        assert_eq!(out.results.len(), 1);
        let nack = &out.results[0];
        assert!(
            !nack.accepted && nack.error.contains("spec: "),
            "{}",
            nack.error
        );
        assert_eq!(nack.resource, Some(pb::ResourceRef::default()));
    }

    #[test]
    fn removals_always_apply_and_name_the_version_dropped() {
        let held = apply(
            &NodeConfig::default(),
            &push(5, vec![tool("search", 5), tool("fetch", 4)], vec![]),
        );
        let unknown_kind = pb::ResourceRef {
            kind: 99,
            tenant: "acme".into(),
            name: "x".into(),
        };
        let out = apply(
            &held.config,
            &push(
                6,
                vec![],
                vec![
                    key(Kind::Tool, "search").to_ref(),
                    key(Kind::Tool, "never-held").to_ref(),
                    unknown_kind.clone(),
                ],
            ),
        );
        let answers: Vec<_> = out
            .results
            .iter()
            .map(|r| {
                (
                    r.resource.clone().unwrap(),
                    r.version,
                    r.accepted,
                    r.error.as_str(),
                )
            })
            .collect();
        assert_eq!(
            answers,
            vec![
                (key(Kind::Tool, "search").to_ref(), 5, true, ""),
                (key(Kind::Tool, "never-held").to_ref(), 0, true, ""),
                (unknown_kind, 0, true, ""),
            ]
        );
        let left: Vec<_> = out.config.resources.keys().cloned().collect();
        assert_eq!(left, vec![key(Kind::Tool, "fetch")]);
        assert_eq!(out.config.revision, 6);
    }

    #[test]
    fn an_empty_push_only_moves_the_revision() {
        let held = apply(
            &NodeConfig::default(),
            &push(5, vec![tool("search", 5)], vec![]),
        );
        let out = apply(&held.config, &push(12, vec![], vec![]));
        assert!(out.results.is_empty());
        assert_eq!(out.config.revision, 12);
        assert_eq!(out.config.resources, held.config.resources);
    }

    #[test]
    fn held_lists_every_resource_with_its_version() {
        let out = apply(
            &NodeConfig::default(),
            &push(5, vec![tool("search", 5), model("gpt", 3, "")], vec![]),
        );
        let held: Vec<_> = out
            .config
            .held()
            .into_iter()
            .map(|h| (h.resource.unwrap(), h.version))
            .collect();
        assert_eq!(
            held,
            vec![
                (key(Kind::Model, "gpt").to_ref(), 3),
                (key(Kind::Tool, "search").to_ref(), 5),
            ]
        );
    }

    #[tokio::test]
    async fn the_handle_swaps_whole_snapshots_and_wakes_subscribers() {
        let handle = NodeConfigHandle::new(NodeConfig::default());
        let mut changes = handle.subscribe();
        let before = handle.current();
        let next = apply(&before, &push(4, vec![tool("search", 4)], vec![]));
        handle.publish(Arc::new(next.config));
        let seen = changes.wait_for(|c| c.revision >= 4).await.unwrap().clone();
        assert_eq!(seen.get(&key(Kind::Tool, "search")).unwrap().version, 4);
        assert_eq!(handle.current().revision, 4);
        assert_eq!(before.revision, 0, "readers keep the snapshot they loaded");
    }

    #[test]
    fn derived_views_are_rebuilt_before_subscribers_see_the_snapshot() {
        let handle = NodeConfigHandle::new(NodeConfig::default());
        // Each rebuild notes the revision it got and the one subscribers
        // were shown at that moment.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, shown) = (seen.clone(), handle.subscribe());
        handle.derive(move |config| {
            log.lock()
                .unwrap()
                .push((config.revision, shown.borrow().revision));
        });
        let next = apply(&handle.current(), &push(4, vec![tool("search", 4)], vec![]));
        handle.publish(Arc::new(next.config));
        assert_eq!(
            *seen.lock().unwrap(),
            [(0, 0), (4, 0)],
            "built from the current snapshot, then rebuilt before revision 4 was shown"
        );
        assert_eq!(handle.subscribe().borrow().revision, 4);
    }
}
