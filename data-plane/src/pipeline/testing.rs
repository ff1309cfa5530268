//! Catalogs for the pipeline's tests, built from wire resources through the
//! same validation a push goes through.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code

use std::sync::Arc;

use aios_proto::v1::{self as pb, resource::Spec};

use super::catalog::Catalog;
use crate::fleet::{Applied, NodeConfig, ResourceKey};

/// A catalog holding `resources` (each must be valid).
pub(crate) fn catalog(resources: Vec<pb::Resource>) -> Catalog {
    let mut config = NodeConfig {
        revision: 1,
        ..Default::default()
    };
    for resource in resources {
        let validated = aios_model::validate(&resource).expect("valid test resource");
        let key = ResourceKey::new(validated.kind, &validated.tenant, &validated.name);
        config.resources.insert(
            key,
            Arc::new(Applied {
                version: 1,
                resource,
                validated,
            }),
        );
    }
    Catalog::build(Arc::new(config))
}

fn meta(tenant: &str, name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        tenant: tenant.into(),
        ..Default::default()
    })
}

/// Resource `name` of tenant `acme` with `spec`.
pub(crate) fn resource(name: &str, spec: Spec) -> pb::Resource {
    pb::Resource {
        metadata: meta("acme", name),
        spec: Some(spec),
    }
}

/// A Tenant.
pub(crate) fn tenant_resource(name: &str, disabled: bool) -> pb::Resource {
    pb::Resource {
        metadata: meta("", name),
        spec: Some(Spec::Tenant(pb::TenantSpec {
            display_name: name.into(),
            disabled,
        })),
    }
}

/// A CALLER ApiKey whose secret is `secret`, changed by `edit`.
pub(crate) fn key_resource(
    tenant: &str,
    name: &str,
    secret: &str,
    edit: impl FnOnce(&mut pb::ApiKeySpec),
) -> pb::Resource {
    let mut spec = pb::ApiKeySpec {
        role: pb::Role::Caller as i32,
        secret_hash: aios_runtime::keys::hash_secret(secret),
        ..Default::default()
    };
    edit(&mut spec);
    pb::Resource {
        metadata: meta(tenant, name),
        spec: Some(Spec::ApiKey(spec)),
    }
}

/// A tenant-wide BLOCK Budget of 10 USD over all time, changed by `edit`.
pub(crate) fn budget_resource(
    tenant: &str,
    name: &str,
    edit: impl FnOnce(&mut pb::BudgetSpec),
) -> pb::Resource {
    let mut spec = pb::BudgetSpec {
        scope: Some(pb::BudgetScope {
            kind: pb::BudgetScopeKind::Tenant as i32,
            subject: String::new(),
        }),
        window: pb::BudgetWindow::Total as i32,
        limit_usd: 10.0,
        on_exceed: pb::OnExceed::Block as i32,
        ..Default::default()
    };
    edit(&mut spec);
    pb::Resource {
        metadata: meta(tenant, name),
        spec: Some(Spec::Budget(spec)),
    }
}
