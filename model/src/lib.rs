//! The aios domain model: every stored resource (`aios.v1.Resource`) is
//! validated here, once, and converted into typed domain objects.
//!
//! Wire types stay at the edge. The control plane calls [`validate`] on
//! Apply and data-plane nodes call it on every resource they receive, so
//! both enforce the same rules and the rest of their code sees only
//! [`Validated`]: durations as [`std::time::Duration`], money as integer
//! micro-USD ([`Usd`]), enums without their UNSPECIFIED case (documented
//! defaults applied), compiled [`glob::Glob`]s and [`labels::LabelSelector`]s,
//! and an IANA [`jiff::tz::TimeZone`] for budgets. Validation reports every
//! bad field at once, each named by its path (`spec.budget.limit_usd`,
//! `metadata.labels["Bad Key"]`,
//! `spec.routing_table.tiers[1].targets[0].weight`), ready to become
//! `google.rpc.BadRequest` field violations.
//!
//! Checks that need other objects (does the referenced model exist?) are not
//! done here: [`Validated::references`] lists what the caller must look up
//! in the same tenant.
//!
//! Where a proto comment left a rule open, this crate takes the strict
//! reading and says so on the field's doc comment.

mod common;
mod convert;
pub mod glob;
mod kind;
pub mod labels;
mod meta;
mod names;
mod spec;
mod usd;
mod violation;

use std::collections::BTreeMap;

use aios_proto::v1 as pb;

pub use common::{Complexity, Criticality, ModelCapability, Role, RouteConstraints};
pub use kind::{Kind, ParseKindError, kind_of};
pub use meta::Placement;
pub use names::{MAX_NAME_LEN, validate_name};
pub use spec::{
    ActionCriticality, ActionRule, Agent, AlertComparison, AlertMetric, AlertRule, AlertSeverity,
    ApiKey, ApprovalPolicy, Budget, BudgetScope, BudgetScopeKind, BudgetWindow,
    DEFAULT_ALERT_WINDOW, DEFAULT_APPROVAL_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_MAX_STEPS,
    DEFAULT_MODEL_TIMEOUT, DEFAULT_TOOL_TIMEOUT, GuardrailAction, InputGuardrails,
    MAX_ALERT_WINDOW, MAX_APPROVAL_TIMEOUT, Model, ModelProvider, OnExceed, OnTimeout,
    OutputGuardrails, PiiKind, Policy, RateLimit, RouteTier, RoutingTable, Spec, Tenant, Threshold,
    Tool, WeightedTarget, Window,
};
pub use usd::{MICROS_PER_USD, Usd, UsdError};
pub use violation::{FieldViolation, Invalid};

/// The reserved tenant that holds platform-level objects (platform API keys,
/// whose role applies across tenants). It exists without a Tenant resource,
/// so a Tenant named `system` is rejected; other kinds may live in it.
pub const SYSTEM_TENANT: &str = "system";

/// A same-tenant reference from one resource to another, which the caller
/// checks exists (the control plane on Apply; a node when it assembles a
/// snapshot). The name's syntax is already valid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Kind of the referenced resource.
    pub kind: Kind,
    /// Name of the referenced resource, in the referring resource's tenant.
    pub name: String,
    /// Path of the referring field, for the violation if it is missing
    /// (e.g. `spec.agent.allowed_tools[2]`).
    pub field: String,
}

/// A resource that passed validation, in domain form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// Its kind (from the spec case).
    pub kind: Kind,
    /// Owning tenant; empty for [`Kind::Tenant`].
    pub tenant: String,
    /// Name, unique per tenant and kind.
    pub name: String,
    /// Labels, sorted by key.
    pub labels: BTreeMap<String, String>,
    /// Which nodes receive it.
    pub placement: Placement,
    /// The caller's precondition (Apply) or the stored version (nodes);
    /// 0 = none. Never negative.
    pub resource_version: i64,
    /// The typed spec.
    pub spec: Spec,
    /// Same-tenant references to check, in field order.
    pub references: Vec<Reference>,
}

impl TryFrom<&pb::Resource> for Validated {
    type Error = Invalid;

    fn try_from(resource: &pb::Resource) -> Result<Self, Self::Error> {
        validate(resource)
    }
}

/// The path prefix of a kind's spec fields: the oneof case's field name
/// (e.g. `budget`), as in proto field paths, where a oneof's own name never
/// appears. One place, so every violation agrees.
pub(crate) fn spec_path(kind: Kind) -> String {
    kind.as_str().to_string()
}

/// Validates a resource and converts it into domain form.
///
/// Output-only fields (`metadata.generation`, `uid`, `create_time`,
/// `update_time`; ApiKey `secret_hash`, `key_prefix`) are never rejected:
/// the server overwrites them. The tenant of tenant-scoped kinds must already
/// be resolved (the server fills in the caller's tenant before validating).
pub fn validate(resource: &pb::Resource) -> Result<Validated, Invalid> {
    let mut ctx = violation::Ctx::default();
    let kind = kind_of(resource);
    let meta = meta::convert(&mut ctx, resource.metadata.as_ref(), kind);
    let spec = match &resource.spec {
        None => {
            ctx.violation("spec", "is required: set exactly one spec case");
            None
        }
        Some(s) => spec::convert(&mut ctx, s, meta.as_ref().map_or("", |m| m.name.as_str())),
    };
    if let (Some(meta), Some(Spec::ApiKey(key))) = (&meta, &spec)
        && key.role == Role::Node
        && meta.tenant != SYSTEM_TENANT
    {
        ctx.violation(
            "api_key.role",
            format!("NODE keys serve every tenant and belong to the `{SYSTEM_TENANT}` tenant"),
        );
    }
    match (kind, meta, spec) {
        (Some(kind), Some(meta), Some(spec)) if ctx.violations.is_empty() => Ok(Validated {
            kind,
            tenant: meta.tenant,
            name: meta.name,
            labels: meta.labels,
            placement: meta.placement,
            resource_version: meta.resource_version,
            spec,
            references: ctx.references,
        }),
        _ => {
            if ctx.violations.is_empty() {
                // Every failed conversion records a violation; this keeps the
                // error non-empty should one ever forget.
                ctx.violation("spec", "is invalid");
            }
            Err(Invalid {
                violations: ctx.violations,
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests;
