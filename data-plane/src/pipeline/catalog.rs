//! Lookup indexes over one config snapshot, built once per push (off the
//! request path) and swapped with it: API keys by secret hash, and every
//! resource by kind, tenant and name, borrowed with `&str` keys so a lookup
//! allocates nothing.

use std::{collections::HashMap, sync::Arc};

use aios_model::{self as spec, Kind, Spec};
use arc_swap::ArcSwap;

use crate::fleet::{Applied, NodeConfig, NodeConfigHandle};

/// A request looks up a dozen names, each through three maps: foldhash
/// (seeded per process) hashes a short name several times faster than
/// SipHash. The keys come from the config, not from requests.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type ByName = Map<String, Arc<Applied>>;

/// One snapshot and its indexes.
#[derive(Debug, Default)]
pub struct Catalog {
    config: Arc<NodeConfig>,
    /// `sha256:<hex>` → the ApiKey resource.
    keys: Map<String, Arc<Applied>>,
    /// kind → tenant → name → resource.
    resources: Map<Kind, Map<String, ByName>>,
}

impl Catalog {
    /// Indexes `config`.
    pub fn build(config: Arc<NodeConfig>) -> Self {
        let mut keys = Map::default();
        let mut resources: Map<Kind, Map<String, ByName>> = Map::default();
        for (key, applied) in &config.resources {
            if let Spec::ApiKey(api_key) = &applied.validated.spec
                && !api_key.secret_hash.is_empty()
            {
                keys.insert(api_key.secret_hash.clone(), applied.clone());
            }
            resources
                .entry(key.kind)
                .or_default()
                .entry(key.tenant.clone())
                .or_default()
                .insert(key.name.clone(), applied.clone());
        }
        Self {
            config,
            keys,
            resources,
        }
    }

    /// The snapshot indexed.
    pub fn config(&self) -> &Arc<NodeConfig> {
        &self.config
    }

    /// Store revision of the snapshot.
    pub fn revision(&self) -> i64 {
        self.config.revision
    }

    /// The ApiKey whose secret hashes to `hash` (`sha256:<hex>`).
    pub fn key_by_hash(&self, hash: &str) -> Option<(&Applied, &spec::ApiKey)> {
        let applied = self.keys.get(hash)?;
        match &applied.validated.spec {
            Spec::ApiKey(key) => Some((applied, key)),
            _ => None,
        }
    }

    /// A resource by kind, tenant (empty for tenants) and name.
    pub fn get(&self, kind: Kind, tenant: &str, name: &str) -> Option<&Arc<Applied>> {
        self.resources.get(&kind)?.get(tenant)?.get(name)
    }

    /// Every Budget of `tenant`, by name.
    pub fn budgets(&self, tenant: &str) -> impl Iterator<Item = (&str, &spec::Budget)> {
        self.resources
            .get(&Kind::Budget)
            .and_then(|tenants| tenants.get(tenant))
            .into_iter()
            .flatten()
            .filter_map(|(name, applied)| match &applied.validated.spec {
                Spec::Budget(budget) => Some((name.as_str(), budget)),
                _ => None,
            })
    }

    /// A tenant's settings.
    pub fn tenant(&self, name: &str) -> Option<&spec::Tenant> {
        match &self.get(Kind::Tenant, "", name)?.validated.spec {
            Spec::Tenant(tenant) => Some(tenant),
            _ => None,
        }
    }

    /// An agent of `tenant`.
    pub fn agent(&self, tenant: &str, name: &str) -> Option<&spec::Agent> {
        match &self.get(Kind::Agent, tenant, name)?.validated.spec {
            Spec::Agent(agent) => Some(agent),
            _ => None,
        }
    }

    /// A policy of `tenant`.
    pub fn policy(&self, tenant: &str, name: &str) -> Option<&spec::Policy> {
        match &self.get(Kind::Policy, tenant, name)?.validated.spec {
            Spec::Policy(policy) => Some(policy),
            _ => None,
        }
    }

    /// A model of `tenant`.
    pub fn model(&self, tenant: &str, name: &str) -> Option<&spec::Model> {
        match &self.get(Kind::Model, tenant, name)?.validated.spec {
            Spec::Model(model) => Some(model),
            _ => None,
        }
    }

    /// A routing table of `tenant`.
    pub fn routing_table(&self, tenant: &str, name: &str) -> Option<&spec::RoutingTable> {
        match &self.get(Kind::RoutingTable, tenant, name)?.validated.spec {
            Spec::RoutingTable(table) => Some(table),
            _ => None,
        }
    }

    /// A tool of `tenant`.
    pub fn tool(&self, tenant: &str, name: &str) -> Option<&spec::Tool> {
        match &self.get(Kind::Tool, tenant, name)?.validated.spec {
            Spec::Tool(tool) => Some(tool),
            _ => None,
        }
    }
}

/// The current [`Catalog`], rebuilt on every config push; cheap to clone.
#[derive(Clone, Debug)]
pub struct CatalogHandle {
    current: Arc<ArcSwap<Catalog>>,
}

impl CatalogHandle {
    /// Follows `config`: the indexes are rebuilt as each new snapshot is
    /// published, before it becomes current (the request path only ever
    /// loads a pointer, and a node that has revision N enforces it).
    pub fn follow(config: &NodeConfigHandle) -> Self {
        let current = Arc::new(ArcSwap::from_pointee(Catalog::default()));
        let target = current.clone();
        config.derive(move |snapshot| target.store(Arc::new(Catalog::build(snapshot.clone()))));
        Self { current }
    }

    /// A handle that always shows `catalog` (tests, benchmarks).
    pub fn fixed(catalog: Catalog) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(catalog)),
        }
    }

    /// The catalog in force now.
    pub fn load(&self) -> Arc<Catalog> {
        self.current.load_full()
    }
}
