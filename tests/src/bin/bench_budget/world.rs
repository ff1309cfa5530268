//! The bench's world: an embedded control plane on a runtime of its own,
//! bench-overhead's config applied to it twice (tenant `bench` with a
//! budget, tenant `bench-free` without one) plus an action that needs an
//! approval, one data-plane node streaming that config, and a tool that
//! answers at once. Also the control plane's counters the bench reads:
//! `Allowances` calls and ledger writes.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aios_control_plane::{
    keys::BUDGET_LEDGERS,
    store::{RangeRequest, SharedStore},
};
use aios_data_plane::{
    DataPlane,
    pipeline::{BackendFactory, Settings, Stages},
    telemetry::{SpanSink, outbox, outbox::DEFAULT_OUTBOX_CAPACITY},
};
use aios_proto::v1::{
    self as pb,
    admin_service_client::AdminServiceClient,
    budget_service_client::BudgetServiceClient,
    resource::Spec,
    tool_service_server::{ToolService, ToolServiceServer},
};
use aios_runtime::{Secret, grpc_metrics::HANDLED};
use aios_tests::admin::{ADMIN_KEY, TestPlane, api_key};
use anyhow::{Context, Result, anyhow, bail};
use tokio::{runtime::Handle, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::setup::{InstantModels, POLICY, TABLE, TENANT, UNCALLED_ENDPOINT};

/// How long setup steps may take.
pub(crate) const WAIT: Duration = Duration::from_secs(30);
/// The tenant with a budget (bench-overhead's tenant).
pub(crate) const BUDGETED: &str = TENANT;
/// The same config, without a budget.
pub(crate) const FREE: &str = "bench-free";
/// The tenant budget of [`BUDGETED`]: daily, BLOCK, too large to refuse.
pub(crate) const BUDGET: &str = "daily";
pub(crate) const BUDGET_LIMIT_USD: f64 = 1_000_000.0;
/// The same config again, with a budget of one cent (part 3).
pub(crate) const TIGHT: &str = "bench-tight";
pub(crate) const TIGHT_BUDGET: &str = "cent";
pub(crate) const TIGHT_LIMIT_USD: f64 = 0.01;
/// The agent whose action needs approval: bench-overhead's policy rates
/// `payments.*` HIGH (one approver).
pub(crate) const TREASURER: &str = "treasurer";
pub(crate) const REFUND: &str = "payments.refund";

/// The secrets the control plane made for the bench's keys.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// CALLER of [`BUDGETED`].
    pub(crate) budgeted: String,
    /// CALLER of [`FREE`].
    pub(crate) free: String,
    /// CALLER of [`TIGHT`].
    pub(crate) tight: String,
    /// APPROVER of [`BUDGETED`].
    pub(crate) approver: String,
    /// VIEWER of [`BUDGETED`] (watches approvals for a caller).
    pub(crate) viewer: String,
}

/// Everything running, and how to stop it.
pub(crate) struct World {
    /// Lives on the control plane's runtime; stopped there.
    plane: Option<TestPlane>,
    cp: Handle,
    pub(crate) url: String,
    /// The config's newest version: a node holding it has everything.
    newest: i64,
    pub(crate) node: Option<DataPlane>,
    pub(crate) keys: Keys,
    /// Calls the tool took.
    pub(crate) tool_calls: Arc<AtomicU64>,
    tool_stop: CancellationToken,
    tool_server: JoinHandle<()>,
    /// The nodes' state.
    dir: tempfile::TempDir,
}

impl World {
    /// Starts the control plane on `cp` (a runtime of its own), applies
    /// the config, and starts the node on the runtime polling this.
    pub(crate) async fn start(cp: Handle) -> Result<Self> {
        let plane = cp
            .spawn(TestPlane::embedded())
            .await
            .context("the control plane did not start")?;
        let url = plane.url();
        let tool_calls = Arc::new(AtomicU64::new(0));
        let tool_stop = CancellationToken::new();
        let (tool, tool_server) = serve_tool(tool_calls.clone(), tool_stop.clone()).await?;
        let (keys, newest) = apply_config(&url, &tool).await?;
        let mut world = Self {
            plane: Some(plane),
            cp,
            url,
            newest,
            node: None,
            keys,
            tool_calls,
            tool_stop,
            tool_server,
            dir: tempfile::tempdir()?,
        };
        world.node = Some(
            world
                .start_node("bench-node", Arc::new(InstantModels::INSTANT))
                .await?,
        );
        Ok(world)
    }

    /// A node `id` streaming from the control plane, every stage on, once
    /// it holds the whole config.
    pub(crate) async fn start_node(
        &self,
        id: &str,
        backends: Arc<dyn BackendFactory>,
    ) -> Result<DataPlane> {
        let url = &self.url;
        let mut config = aios_data_plane::Config::local(
            url.parse()
                .map_err(|e| anyhow!("control-plane URL {url}: {e}"))?,
            self.dir.path().join(id),
        );
        config.node.node_id = id.into();
        config.node_key = Some(Secret::new(ADMIN_KEY.into()).map_err(|e| anyhow!("{e}"))?);
        let node = DataPlane::start_with(&config, backends, settings(Stages::ALL))
            .await
            .map_err(|e| anyhow!("node {id} did not start: {e}"))?;
        let mut changes = node.node_config().subscribe();
        tokio::time::timeout(WAIT, changes.wait_for(|c| c.revision >= self.newest))
            .await
            .map_err(|_| anyhow!("node {id} did not receive the config within {WAIT:?}"))??;
        Ok(node)
    }

    pub(crate) fn node(&self) -> Result<&DataPlane> {
        self.node.as_ref().context("the node has stopped")
    }

    fn store(&self) -> Result<SharedStore> {
        Ok(self
            .plane
            .as_ref()
            .context("the control plane has stopped")?
            .store()
            .clone())
    }

    /// Writes to budget ledgers so far: each is one compare-and-swap
    /// transaction of the control plane's budget writer (one replica, no
    /// conflicts, so none is retried).
    pub(crate) async fn ledger_writes(&self) -> Result<i64> {
        let store = self.store()?;
        let listing = self
            .cp
            .spawn(async move { store.range(RangeRequest::prefix(BUDGET_LEDGERS)).await })
            .await??;
        Ok(listing.kvs.iter().map(|kv| kv.version).sum())
    }

    /// Spent and reserved on `budget`'s current window, micro-USD.
    pub(crate) async fn budget_status(&self, tenant: &str, budget: &str) -> Result<(i64, i64)> {
        let channel = aios_client::connect(&self.url, Some(ADMIN_KEY), WAIT).await?;
        let statuses = BudgetServiceClient::new(channel)
            .get_status(pb::GetBudgetStatusRequest {
                tenant: tenant.into(),
                budget: budget.into(),
            })
            .await
            .map_err(|s| anyhow!("budget status: {s}"))?
            .into_inner()
            .statuses;
        let status = statuses.first().context("no status for the budget")?;
        Ok((micros(status.spent_usd), micros(status.reserved_usd)))
    }

    pub(crate) async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown(Duration::from_secs(2)).await;
        }
        self.tool_stop.cancel();
        let _ = (&mut self.tool_server).await;
        if let Some(plane) = self.plane.take() {
            let _ = self.cp.spawn(plane.stop()).await;
        }
    }
}

/// The pipeline's settings with `stages`: spans go to one outbox, shared
/// by every pipeline of the bench, that a thread of its own empties. The
/// request path pays what a node's does (building the spans, handing them
/// off); sending them to the control plane is left out, as in
/// bench-overhead.
pub(crate) fn settings(stages: Stages) -> Settings {
    static SPANS: OnceLock<SpanSink> = OnceLock::new();
    let spans = SPANS.get_or_init(|| {
        let (outbox, mut spans) = outbox(DEFAULT_OUTBOX_CAPACITY);
        let drain = std::thread::Builder::new()
            .name("spans".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        runtime.block_on(async { while spans.recv().await.is_some() {} })
                    }
                    Err(error) => eprintln!("spans are not drained: {error}"),
                }
            });
        if let Err(error) = drain {
            eprintln!("spans are not drained: {error}");
        }
        SpanSink::new(outbox, "bench", "bench")
    });
    Settings {
        stages,
        spans: Some(spans.clone()),
        ..Settings::default()
    }
}

pub(crate) fn micros(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

/// `BudgetService.Allowances` calls the control plane has answered, from
/// its `aios_grpc_server_handled_total` (the planes share this process's
/// metrics recorder).
pub(crate) fn allowances_calls() -> f64 {
    let Some(handle) = aios_runtime::metrics::handle() else {
        return f64::NAN;
    };
    handle
        .render()
        .lines()
        .filter(|line| line.starts_with(HANDLED) && line.contains("method=\"Allowances\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// === The config ===

/// bench-overhead's resources for `tenant`, ready to apply.
fn resources_for(tenant: &str) -> Vec<pb::Resource> {
    crate::setup::resources(UNCALLED_ENDPOINT)
        .into_iter()
        .map(|mut resource| {
            let tenant_kind = matches!(resource.spec, Some(Spec::Tenant(_)));
            let meta = resource.metadata.get_or_insert_default();
            meta.resource_version = 0;
            match tenant_kind {
                true => meta.name = tenant.into(),
                false => meta.tenant = tenant.into(),
            }
            resource
        })
        .collect()
}

fn resource(tenant: &str, name: &str, spec: Spec) -> pb::Resource {
    pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            tenant: tenant.into(),
            ..Default::default()
        }),
        spec: Some(spec),
    }
}

/// A daily tenant budget that blocks.
fn budget(tenant: &str, name: &str, limit_usd: f64) -> pb::Resource {
    let mut budget = aios_tests::admin::budget(tenant, name);
    if let Some(Spec::Budget(spec)) = budget.spec.as_mut() {
        spec.limit_usd = limit_usd;
    }
    budget
}

/// The extras: the budgets, and in [`BUDGETED`] the tool, an agent that
/// may call it, an approver and a viewer.
fn extras(tool: &str) -> Vec<pb::Resource> {
    vec![
        budget(BUDGETED, BUDGET, BUDGET_LIMIT_USD),
        budget(TIGHT, TIGHT_BUDGET, TIGHT_LIMIT_USD),
        resource(
            BUDGETED,
            REFUND,
            Spec::Tool(pb::ToolSpec {
                description: "Refunds an order.".into(),
                address: tool.into(),
                side_effects: true,
                ..Default::default()
            }),
        ),
        resource(
            BUDGETED,
            TREASURER,
            Spec::Agent(pb::AgentSpec {
                system_prompt: "Refund orders.".into(),
                routing_table: TABLE.into(),
                policy: POLICY.into(),
                allowed_tools: vec![REFUND.into()],
                max_steps: 4,
                ..Default::default()
            }),
        ),
        api_key(BUDGETED, "approver", pb::Role::Approver),
        api_key(BUDGETED, "viewer", pb::Role::Viewer),
    ]
}

/// Applies everything; returns the keys' secrets and the newest version.
async fn apply_config(url: &str, tool: &str) -> Result<(Keys, i64)> {
    let channel = aios_client::connect(url, Some(ADMIN_KEY), WAIT).await?;
    let mut admin = AdminServiceClient::new(channel);
    let mut secrets = HashMap::new();
    let mut newest = 0;
    let mut all: Vec<pb::Resource> = resources_for(BUDGETED)
        .into_iter()
        .chain(resources_for(FREE))
        .chain(resources_for(TIGHT))
        .chain(extras(tool))
        .collect();
    // What a resource refers to exists before it.
    all.sort_by_key(|r| match r.spec {
        Some(Spec::Tenant(_)) => 0,
        Some(Spec::Model(_) | Spec::Tool(_) | Spec::Policy(_)) => 1,
        Some(Spec::RoutingTable(_)) => 2,
        _ => 3,
    });
    for resource in all {
        let meta = resource.metadata.clone().unwrap_or_default();
        let applied = admin
            .apply(pb::ApplyRequest {
                resource: Some(resource),
                dry_run: false,
            })
            .await
            .map_err(|s| anyhow!("apply {}/{}: {s}", meta.tenant, meta.name))?
            .into_inner();
        if let Some(meta) = applied.resource.as_ref().and_then(|r| r.metadata.as_ref()) {
            newest = newest.max(meta.resource_version);
        }
        if !applied.api_key_secret.is_empty() {
            secrets.insert(
                format!("{}/{}", meta.tenant, meta.name),
                applied.api_key_secret,
            );
        }
    }
    let mut secret = |key: &str| {
        secrets
            .remove(key)
            .with_context(|| format!("no secret for key {key}"))
    };
    let keys = Keys {
        budgeted: secret(&format!("{BUDGETED}/caller"))?,
        free: secret(&format!("{FREE}/caller"))?,
        tight: secret(&format!("{TIGHT}/caller"))?,
        approver: secret(&format!("{BUDGETED}/approver"))?,
        viewer: secret(&format!("{BUDGETED}/viewer"))?,
    };
    if newest == 0 {
        bail!("the control plane returned no resource versions");
    }
    Ok((keys, newest))
}

// === The tool ===

/// A ToolService that answers at once and counts its calls.
#[derive(Debug)]
struct InstantTool {
    calls: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl ToolService for InstantTool {
    async fn invoke(
        &self,
        _: tonic::Request<pb::InvokeRequest>,
    ) -> Result<tonic::Response<pb::InvokeResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(pb::InvokeResponse {
            result_json: r#"{"refunded":true}"#.into(),
            ..Default::default()
        }))
    }
}

/// Serves the tool on loopback until `stop`; its URL and the server task.
async fn serve_tool(
    calls: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<(String, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder()
        .add_service(ToolServiceServer::new(InstantTool { calls }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned());
    let task = tokio::spawn(async move {
        if let Err(error) = server.await {
            eprintln!("the bench's tool server stopped: {error}");
        }
    });
    Ok((format!("http://{addr}"), task))
}
