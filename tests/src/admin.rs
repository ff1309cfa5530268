//! A control plane in this process with a known platform admin key, and
//! builders for valid resources of each kind.

#![allow(clippy::expect_used)] // test harness: a failed setup should stop the test loudly

use std::{net::SocketAddr, path::Path, time::Duration};

use aios_control_plane::{Config, ControlPlane, Secret, StoreUrl, store::SharedStore};
use aios_proto::v1::{self as pb, resource::Spec};
use aios_runtime::config::ListenAddr;

/// The platform admin key every test plane bootstraps with.
pub const ADMIN_KEY: &str = "aios_test-platform-admin-key-0123456789abcdef";

/// A running control plane and what it needs to stay alive.
#[derive(Debug)]
pub struct TestPlane {
    plane: ControlPlane,
    _dir: Option<tempfile::TempDir>,
}

impl TestPlane {
    /// With a fresh embedded store.
    pub async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut plane = Self::embedded_at(dir.path()).await;
        plane._dir = Some(dir);
        plane
    }

    /// With the embedded store in `dir` (reopened if it exists).
    pub async fn embedded_at(dir: &Path) -> Self {
        Self::start(StoreUrl::Embedded(dir.join("cp.db")), dir).await
    }

    /// With the embedded store in `dir`, listening on `addr`: a restart of
    /// a plane that was there before, so its nodes find it again.
    pub async fn embedded_on(dir: &Path, addr: SocketAddr) -> Self {
        Self::start_on(StoreUrl::Embedded(dir.join("cp.db")), dir, Some(addr)).await
    }

    /// With a fresh embedded store, the config changed by `adjust` first.
    pub async fn embedded_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::local(dir.path());
        config.store = StoreUrl::Embedded(dir.path().join("cp.db"));
        config.bootstrap_admin_key = Some(Secret::new(ADMIN_KEY.into()).expect("valid key"));
        adjust(&mut config);
        let plane = ControlPlane::start(&config)
            .await
            .expect("control plane starts");
        Self {
            plane,
            _dir: Some(dir),
        }
    }

    /// On an etcd cluster.
    pub async fn etcd(endpoints: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut plane = Self::start(StoreUrl::Etcd(endpoints), dir.path()).await;
        plane._dir = Some(dir);
        plane
    }

    async fn start(store: StoreUrl, dir: &Path) -> Self {
        Self::start_on(store, dir, None).await
    }

    async fn start_on(store: StoreUrl, dir: &Path, addr: Option<SocketAddr>) -> Self {
        let mut config = Config::local(dir);
        if let Some(addr) = addr {
            config.listen = ListenAddr(addr);
        }
        config.store = store;
        config.bootstrap_admin_key = Some(Secret::new(ADMIN_KEY.into()).expect("valid key"));
        let plane = ControlPlane::start(&config)
            .await
            .expect("control plane starts");
        Self { plane, _dir: None }
    }

    /// The gRPC listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.plane.grpc_addr()
    }

    /// The admin HTTP listener's address (`/metrics`, `/readyz`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.plane.admin_addr()
    }

    /// `http://ADDR` of the gRPC listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.plane.grpc_addr())
    }

    /// The store underneath.
    pub fn store(&self) -> &SharedStore {
        self.plane.store()
    }

    /// Stops the plane (the store file stays).
    pub async fn stop(self) {
        self.plane.shutdown(Duration::from_secs(5)).await;
    }
}

fn meta(tenant: &str, name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        tenant: tenant.into(),
        ..Default::default()
    })
}

/// A Tenant.
pub fn tenant(name: &str) -> pb::Resource {
    pb::Resource {
        metadata: meta("", name),
        spec: Some(Spec::Tenant(pb::TenantSpec {
            display_name: name.to_uppercase(),
            disabled: false,
        })),
    }
}

/// An ApiKey with `role`.
pub fn api_key(tenant: &str, name: &str, role: pb::Role) -> pb::Resource {
    pb::Resource {
        metadata: meta(tenant, name),
        spec: Some(Spec::ApiKey(pb::ApiKeySpec {
            role: role as i32,
            ..Default::default()
        })),
    }
}

/// A remote chat Model.
pub fn model(tenant: &str, name: &str) -> pb::Resource {
    pb::Resource {
        metadata: meta(tenant, name),
        spec: Some(Spec::Model(pb::ModelSpec {
            provider: pb::ModelProvider::Openai as i32,
            provider_model: "gpt-4o-mini".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            capabilities: vec![pb::ModelCapability::Chat as i32],
            input_price_usd_per_mtok: 0.15,
            output_price_usd_per_mtok: 0.60,
            ..Default::default()
        })),
    }
}

/// A daily tenant Budget of $10.
pub fn budget(tenant: &str, name: &str) -> pb::Resource {
    pb::Resource {
        metadata: meta(tenant, name),
        spec: Some(Spec::Budget(pb::BudgetSpec {
            scope: Some(pb::BudgetScope {
                kind: pb::BudgetScopeKind::Tenant as i32,
                subject: String::new(),
            }),
            window: pb::BudgetWindow::Day as i32,
            limit_usd: 10.0,
            on_exceed: pb::OnExceed::Block as i32,
            ..Default::default()
        })),
    }
}

/// An Agent using `routing_table`.
pub fn agent(tenant: &str, name: &str, routing_table: &str) -> pb::Resource {
    pb::Resource {
        metadata: meta(tenant, name),
        spec: Some(Spec::Agent(pb::AgentSpec {
            system_prompt: "You are helpful.".into(),
            routing_table: routing_table.into(),
            max_steps: 4,
            ..Default::default()
        })),
    }
}

/// A RoutingTable sending every request to `model`.
pub fn routing_table(tenant: &str, name: &str, model: &str) -> pb::Resource {
    pb::Resource {
        metadata: meta(tenant, name),
        spec: Some(Spec::RoutingTable(pb::RoutingTableSpec {
            tiers: vec![pb::RouteTier {
                name: "all".into(),
                complexity: pb::Complexity::Complex as i32,
                targets: vec![pb::WeightedTarget {
                    model: model.into(),
                    weight: 1,
                }],
                fallbacks: vec![],
            }],
            ..Default::default()
        })),
    }
}

/// An AlertRule on `metric` above (below, for the cache hit rate) `threshold`.
pub fn alert_rule(
    tenant: &str,
    name: &str,
    metric: pb::AlertMetric,
    threshold: f64,
) -> pb::Resource {
    pb::Resource {
        metadata: meta(tenant, name),
        spec: Some(Spec::AlertRule(pb::AlertRuleSpec {
            metric: metric as i32,
            threshold,
            ..Default::default()
        })),
    }
}
