//! The typed specs, one module per group of kinds.

mod agent;
mod alert;
mod budget;
mod model;
mod policy;
mod routing;
mod tenant;

use aios_proto::v1 as pb;

pub use agent::{
    ActionCriticality, Agent, DEFAULT_DEADLINE, DEFAULT_MAX_STEPS, DEFAULT_TOOL_TIMEOUT, Tool,
};
pub use alert::{
    AlertComparison, AlertMetric, AlertRule, AlertSeverity, DEFAULT_ALERT_WINDOW, MAX_ALERT_WINDOW,
    Threshold,
};
pub use budget::{Budget, BudgetScope, BudgetScopeKind, BudgetWindow, OnExceed, Window};
pub use model::{DEFAULT_MODEL_TIMEOUT, Model, ModelProvider};
pub use policy::{
    ActionRule, ApprovalPolicy, DEFAULT_APPROVAL_TIMEOUT, GuardrailAction, InputGuardrails,
    MAX_APPROVAL_TIMEOUT, OnTimeout, OutputGuardrails, PiiKind, Policy,
};
pub use routing::{RouteTier, RoutingTable, WeightedTarget};
pub use tenant::{ApiKey, RateLimit, Tenant};

use crate::violation::Ctx;
use crate::{Kind, spec_path};

/// The desired state of a resource, one case per [`Kind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// [`Kind::Tenant`].
    Tenant(Tenant),
    /// [`Kind::ApiKey`].
    ApiKey(ApiKey),
    /// [`Kind::Budget`].
    Budget(Budget),
    /// [`Kind::Policy`].
    Policy(Policy),
    /// [`Kind::Model`].
    Model(Model),
    /// [`Kind::RoutingTable`].
    RoutingTable(RoutingTable),
    /// [`Kind::Agent`].
    Agent(Agent),
    /// [`Kind::Tool`].
    Tool(Tool),
    /// [`Kind::AlertRule`].
    AlertRule(AlertRule),
}

impl Spec {
    /// The kind of this spec.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Tenant(_) => Kind::Tenant,
            Spec::ApiKey(_) => Kind::ApiKey,
            Spec::Budget(_) => Kind::Budget,
            Spec::Policy(_) => Kind::Policy,
            Spec::Model(_) => Kind::Model,
            Spec::RoutingTable(_) => Kind::RoutingTable,
            Spec::Agent(_) => Kind::Agent,
            Spec::Tool(_) => Kind::Tool,
            Spec::AlertRule(_) => Kind::AlertRule,
        }
    }
}

/// Converts the spec case. `name` is `metadata.name`, which some specs use as
/// a default (LOCAL models, tool remote names).
pub(crate) fn convert(ctx: &mut Ctx, spec: &pb::resource::Spec, name: &str) -> Option<Spec> {
    use pb::resource::Spec as S;
    Some(match spec {
        S::Tenant(s) => Spec::Tenant(tenant::tenant(s)),
        S::ApiKey(s) => Spec::ApiKey(tenant::api_key(ctx, s, &spec_path(Kind::ApiKey))?),
        S::Budget(s) => Spec::Budget(budget::convert(ctx, s, &spec_path(Kind::Budget))?),
        S::Policy(s) => Spec::Policy(policy::convert(ctx, s, &spec_path(Kind::Policy))?),
        S::Model(s) => Spec::Model(model::convert(ctx, s, name, &spec_path(Kind::Model))?),
        S::RoutingTable(s) => {
            Spec::RoutingTable(routing::convert(ctx, s, &spec_path(Kind::RoutingTable))?)
        }
        S::Agent(s) => Spec::Agent(agent::agent(ctx, s, &spec_path(Kind::Agent))?),
        S::Tool(s) => Spec::Tool(agent::tool(ctx, s, name, &spec_path(Kind::Tool))?),
        S::AlertRule(s) => Spec::AlertRule(alert::convert(ctx, s, &spec_path(Kind::AlertRule))?),
    })
}
