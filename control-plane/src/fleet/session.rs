//! What to push to one node, and what its answers mean: the StreamConfig
//! protocol as a pure state machine, with no I/O, so every rule is tested
//! on its own. `stream.rs` drives it with a gRPC stream and the cache.
//!
//! Rules (see ARCHITECTURE.md, "Config distribution"):
//! - The node's view is every cached object of a kind nodes receive (all
//!   but alert rules) whose placement includes the node's region and labels.
//!   A push carries the difference between that view and what the node
//!   holds: changed objects, and removals of objects that left the view
//!   (deleted, or re-scoped away).
//! - At most one push is outstanding. The next waits for the ACK while the
//!   latest-value snapshot channel coalesces changes, so a slow node gets one
//!   up-to-date push instead of a backlog, and an ACK always answers exactly
//!   the push it names. An ACK with any other nonce is stale and ignored.
//! - A NACKed version is parked: the node keeps its previous version, and
//!   that version is not pushed again until the object changes.

use std::collections::{BTreeMap, BTreeSet};

use aios_proto::v1 as pb;

use super::cache::Snapshot;
use crate::{keys, store::Revision};

/// Who the node is, as far as scoping goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeScope {
    /// The node's region.
    pub region: String,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
}

/// A NACKed version, kept out of pushes until the object changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parked {
    /// The rejected version.
    pub version: Revision,
    /// The node's reason.
    pub error: String,
}

/// What an ACK did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// It answered the outstanding push; this many results were NACKs.
    Applied {
        /// Rejected resources in this answer.
        nacks: usize,
    },
    /// Its nonce is not the outstanding push's: ignored.
    Stale,
}

/// One node's protocol state.
#[derive(Clone, Debug)]
pub struct Session {
    scope: NodeScope,
    /// What the node holds: key → version (ACKed, or held at hello).
    held: BTreeMap<String, Revision>,
    parked: BTreeMap<String, Parked>,
    outstanding: Option<Outstanding>,
    pushes: u64,
    /// Store revision the node is known to be in sync with.
    synced: Revision,
}

#[derive(Clone, Debug)]
struct Outstanding {
    nonce: String,
    revision: Revision,
    updates: BTreeMap<String, Revision>,
    removals: BTreeSet<String>,
}

impl Session {
    /// A session for a node that says (in its hello) it holds `held`.
    pub fn new(scope: NodeScope, held: &[pb::HeldResource]) -> Self {
        let held = held
            .iter()
            .filter_map(|h| {
                let r = h.resource.as_ref()?;
                let kind = aios_model::Kind::from_proto(r.kind)?;
                Some((keys::resource(kind, &r.tenant, &r.name), h.version))
            })
            .collect();
        Self {
            scope,
            held,
            parked: BTreeMap::new(),
            outstanding: None,
            pushes: 0,
            synced: 0,
        }
    }

    /// The push that brings the node to `snapshot`, if anything differs and
    /// no push is outstanding. The first push is always sent, even empty: it
    /// tells the node it is in sync.
    pub fn next_push(&mut self, snapshot: &Snapshot) -> Option<pb::ConfigPush> {
        if self.outstanding.is_some() {
            return None;
        }
        let view: BTreeMap<&String, _> = snapshot
            .objects
            .iter()
            .filter(|(_, o)| {
                o.kind.reaches_nodes()
                    && o.placement.includes(&self.scope.region, &self.scope.labels)
            })
            .collect();
        let mut updates = Vec::new();
        let mut pushed = BTreeMap::new();
        for (key, object) in &view {
            let current = self.held.get(*key) == Some(&object.version);
            let parked = self
                .parked
                .get(*key)
                .is_some_and(|p| p.version == object.version);
            if !current && !parked {
                updates.push(object.resource.clone());
                pushed.insert((*key).clone(), object.version);
            }
        }
        let removals: BTreeSet<String> = self
            .held
            .keys()
            .filter(|k| !view.contains_key(k))
            .cloned()
            .collect();
        // A parked object that left the view is forgotten with it.
        self.parked.retain(|key, _| view.contains_key(key));
        if updates.is_empty() && removals.is_empty() && self.pushes > 0 {
            self.synced = self.synced.max(snapshot.revision);
            return None;
        }
        self.pushes += 1;
        let nonce = format!("n{}", self.pushes);
        let push = pb::ConfigPush {
            nonce: nonce.clone(),
            revision: snapshot.revision,
            updates,
            removals: removals.iter().filter_map(|key| reference(key)).collect(),
            initial: self.pushes == 1,
        };
        self.outstanding = Some(Outstanding {
            nonce,
            revision: snapshot.revision,
            updates: pushed,
            removals,
        });
        Some(push)
    }

    /// Takes the node's answer to the outstanding push.
    pub fn on_ack(&mut self, ack: &pb::ConfigAck) -> AckOutcome {
        let Some(outstanding) = self.outstanding.take_if(|o| o.nonce == ack.nonce) else {
            return AckOutcome::Stale;
        };
        let mut nacks = 0;
        let rejected: BTreeMap<String, &pb::ResourceAck> = ack
            .results
            .iter()
            .filter(|r| !r.accepted)
            .filter_map(|r| {
                let reference = r.resource.as_ref()?;
                let kind = aios_model::Kind::from_proto(reference.kind)?;
                Some((keys::resource(kind, &reference.tenant, &reference.name), r))
            })
            .collect();
        for (key, version) in outstanding.updates {
            match rejected.get(&key) {
                Some(nack) => {
                    nacks += 1;
                    // The node keeps what it held before (if anything).
                    self.parked.insert(
                        key,
                        Parked {
                            version,
                            error: nack.error.clone(),
                        },
                    );
                }
                None => {
                    self.parked.remove(&key);
                    self.held.insert(key, version);
                }
            }
        }
        // A node cannot refuse to drop something: removals always apply.
        for key in outstanding.removals {
            self.held.remove(&key);
            self.parked.remove(&key);
        }
        self.synced = self.synced.max(outstanding.revision);
        AckOutcome::Applied { nacks }
    }

    /// Nonce of the push awaiting an ACK.
    pub fn outstanding_nonce(&self) -> Option<&str> {
        self.outstanding.as_ref().map(|o| o.nonce.as_str())
    }

    /// Store revision the node is in sync with: every change up to it that
    /// applies to the node has been ACKed or NACKed. 0 before the first ACK.
    pub fn synced_revision(&self) -> Revision {
        self.synced
    }

    /// The node's scope.
    pub fn scope(&self) -> &NodeScope {
        &self.scope
    }

    /// What the node holds, by store key.
    pub fn held(&self) -> &BTreeMap<String, Revision> {
        &self.held
    }

    /// NACKed versions, by store key.
    pub fn parked(&self) -> &BTreeMap<String, Parked> {
        &self.parked
    }
}

/// The ResourceRef of a store key.
pub(crate) fn reference(key: &str) -> Option<pb::ResourceRef> {
    let (kind, tenant, name) = keys::parse_resource(key)?;
    Some(pb::ResourceRef {
        kind: kind.to_proto() as i32,
        tenant,
        name,
    })
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
