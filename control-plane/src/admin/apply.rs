//! Apply and BatchApply: validate every document, check references, then
//! write everything in one compare-and-swap transaction with its audit
//! events, so a batch is all-or-nothing and a concurrent writer can never
//! interleave between our read and our write.

use std::{collections::HashSet, time::SystemTime};

use aios_model::Kind;
use aios_proto::v1::{self as pb, resource::Spec};
use prost::Message;

use super::{Admin, AdminError, audit, decode_resource};
use crate::{
    auth::{self, Access, Principal, Scope},
    keys,
    store::{Compare, KeyValue, MAX_VALUE_BYTES, Op, Revision, TxnOutcome},
};

/// Most resources in one BatchApply (each needs up to 3 store operations).
pub const MAX_BATCH: usize = 32;

/// Attempts before giving up on an apply that keeps losing races.
const ATTEMPTS: usize = 5;

/// The result of applying one resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The object as stored (or as it would be, for a dry run).
    pub resource: pb::Resource,
    /// Whether the object did not exist before.
    pub created: bool,
    /// Whether the object already had this content: nothing was written.
    pub unchanged: bool,
    /// The plaintext secret of a newly created ApiKey, shown once.
    pub secret: Option<String>,
}

/// One validated document, ready to be written.
struct Plan {
    path: String,
    kind: Kind,
    tenant: String,
    name: String,
    key: String,
    incoming: pb::Resource,
    expected_version: i64,
    /// Same-tenant objects this one names, from its validation.
    references: Vec<aios_model::Reference>,
}

impl Admin {
    /// Applies `resources` all-or-nothing. `batch` selects the field-path
    /// style of violations (`resources[i].…` or `resource.…`).
    pub async fn apply(
        &self,
        who: &Principal,
        resources: Vec<pb::Resource>,
        dry_run: bool,
        batch: bool,
    ) -> Result<(Vec<Applied>, Revision), AdminError> {
        if resources.is_empty() {
            return Err(AdminError::Invalid(vec![(
                "resources".into(),
                "give at least one resource".into(),
            )]));
        }
        if resources.len() > MAX_BATCH {
            return Err(AdminError::Invalid(vec![(
                "resources".into(),
                format!(
                    "{} resources; at most {MAX_BATCH} are applied together",
                    resources.len()
                ),
            )]));
        }
        let plans = self.plan(who, resources, batch)?;
        self.check_references(&plans).await?;
        for _ in 0..ATTEMPTS {
            if let Some(done) = self.try_write(who, &plans, dry_run).await? {
                return Ok(done);
            }
        }
        Err(AdminError::Store(crate::store::StoreError::Unavailable(
            "the objects kept changing under this apply; retry".into(),
        )))
    }

    /// Resolves tenants, authorizes and validates every document, reporting
    /// every violation at once.
    fn plan(
        &self,
        who: &Principal,
        resources: Vec<pb::Resource>,
        batch: bool,
    ) -> Result<Vec<Plan>, AdminError> {
        let mut plans = Vec::with_capacity(resources.len());
        let mut violations = Vec::new();
        let mut seen = HashSet::new();
        for (i, mut resource) in resources.into_iter().enumerate() {
            let path = if batch {
                format!("resources[{i}]")
            } else {
                "resource".to_string()
            };
            let Some(kind) = aios_model::kind_of(&resource) else {
                violations.push((format!("{path}.spec"), "set exactly one spec: tenant, api_key, budget, policy, model, routing_table, agent or tool".into()));
                continue;
            };
            who.authorize(Access::Write(kind))?;
            let meta = resource.metadata.get_or_insert_default();
            if kind.is_tenant_scoped() {
                match who.scope(&meta.tenant)? {
                    Scope::Tenant(tenant) => meta.tenant = tenant,
                    Scope::All => {
                        violations.push((
                            format!("{path}.metadata.tenant"),
                            "name one tenant, not *".into(),
                        ));
                        continue;
                    }
                }
            }
            let expected_version = meta.resource_version;
            match aios_model::validate(&resource) {
                Ok(valid) => {
                    let key = keys::resource(kind, &valid.tenant, &valid.name);
                    if !seen.insert(key.clone()) {
                        violations.push((
                            format!("{path}.metadata.name"),
                            format!(
                                "{} {} appears twice in this request",
                                kind.display_name(),
                                valid.name
                            ),
                        ));
                        continue;
                    }
                    plans.push(Plan {
                        path,
                        kind,
                        tenant: valid.tenant,
                        name: valid.name,
                        key,
                        incoming: resource,
                        expected_version,
                        references: valid.references,
                    });
                }
                Err(invalid) => violations.extend(
                    invalid
                        .violations
                        .into_iter()
                        .map(|v| (format!("{path}.{}", v.field), v.description)),
                ),
            }
        }
        if violations.is_empty() {
            Ok(plans)
        } else {
            Err(AdminError::Invalid(violations))
        }
    }

    /// Every same-tenant reference names an object in this request or in the store.
    async fn check_references(&self, plans: &[Plan]) -> Result<(), AdminError> {
        let in_request: HashSet<&str> = plans.iter().map(|p| p.key.as_str()).collect();
        let mut missing = Vec::new();
        for plan in plans {
            for reference in &plan.references {
                let key = keys::resource(reference.kind, &plan.tenant, &reference.name);
                if in_request.contains(key.as_str()) || self.store.get(&key).await?.is_some() {
                    continue;
                }
                missing.push((
                    format!("{}.{}", plan.path, reference.field),
                    format!(
                        "{} {} does not exist in tenant {}",
                        reference.kind.display_name(),
                        reference.name,
                        plan.tenant
                    ),
                ));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(AdminError::Precondition(missing))
        }
    }

    /// One read-compare-write round. `None` = lost a race; try again.
    async fn try_write(
        &self,
        who: &Principal,
        plans: &[Plan],
        dry_run: bool,
    ) -> Result<Option<(Vec<Applied>, Revision)>, AdminError> {
        let now = prost_types::Timestamp::from(SystemTime::now());
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let mut results = Vec::with_capacity(plans.len());
        for plan in plans {
            let existing = self.store.get(&plan.key).await?;
            let actual = existing.as_ref().map_or(0, |kv| kv.mod_revision);
            if plan.expected_version != 0 && plan.expected_version != actual {
                return Err(AdminError::Stale {
                    kind: plan.kind.display_name(),
                    name: plan.name.clone(),
                    expected: plan.expected_version,
                    actual,
                });
            }
            let applied = merge(plan, existing.as_ref(), now)?;
            if !applied.unchanged {
                compares.push(Compare::ModRevision {
                    key: plan.key.clone(),
                    equals: actual,
                });
                let mut stored = applied.resource.clone();
                if let Some(meta) = stored.metadata.as_mut() {
                    // The version is the key's mod_revision, filled in on read.
                    meta.resource_version = 0;
                }
                let value = stored.encode_to_vec();
                if value.len() > MAX_VALUE_BYTES {
                    return Err(AdminError::Invalid(vec![(
                        plan.path.clone(),
                        format!(
                            "encodes to {} bytes; the limit is {MAX_VALUE_BYTES}",
                            value.len()
                        ),
                    )]));
                }
                ops.push(Op::Put {
                    key: plan.key.clone(),
                    value,
                    lease: None,
                });
                if let (Some(Spec::ApiKey(spec)), true) = (&applied.resource.spec, applied.created)
                {
                    ops.push(Op::Put {
                        key: keys::key_hash(&spec.secret_hash),
                        value: format!("{}/{}", plan.tenant, plan.name).into_bytes(),
                        lease: None,
                    });
                }
                let detail = if applied.created {
                    "created"
                } else {
                    "updated"
                };
                ops.push(audit::event(
                    who,
                    pb::AuditAction::Apply,
                    plan.kind,
                    &plan.tenant,
                    &plan.name,
                    actual,
                    detail,
                ));
            }
            results.push(applied);
        }
        if dry_run {
            // Nothing is stored, so a secret generated here would open nothing.
            for applied in &mut results {
                applied.secret = None;
            }
            return Ok(Some((results, 0)));
        }
        if ops.is_empty() {
            return Ok(Some((results, 0)));
        }
        match self.store.txn(compares, ops).await? {
            TxnOutcome::Committed { revision } => {
                for applied in results.iter_mut().filter(|a| !a.unchanged) {
                    if let Some(meta) = applied.resource.metadata.as_mut() {
                        meta.resource_version = revision;
                    }
                }
                Ok(Some((results, revision)))
            }
            TxnOutcome::Conflict { .. } => Ok(None),
        }
    }
}

/// The object to store: the request's metadata and spec, with the
/// output-only fields the server owns (versions, uid, times, key hashes).
fn merge(
    plan: &Plan,
    existing: Option<&KeyValue>,
    now: prost_types::Timestamp,
) -> Result<Applied, AdminError> {
    let incoming_meta = plan.incoming.metadata.clone().unwrap_or_default();
    let mut spec = plan.incoming.spec.clone();
    if let Some(Spec::ApiKey(key)) = spec.as_mut() {
        key.secret_hash.clear();
        key.key_prefix.clear();
    }
    let mut meta = pb::ObjectMeta {
        name: plan.name.clone(),
        tenant: if plan.kind.is_tenant_scoped() {
            plan.tenant.clone()
        } else {
            String::new()
        },
        labels: incoming_meta.labels,
        regions: incoming_meta.regions,
        node_selector: incoming_meta.node_selector,
        ..Default::default()
    };
    let Some(kv) = existing else {
        let mut secret = None;
        if let Some(Spec::ApiKey(key)) = spec.as_mut() {
            let plaintext = auth::generate_secret();
            key.secret_hash = auth::hash_secret(&plaintext);
            key.key_prefix = auth::key_prefix(&plaintext);
            secret = Some(plaintext);
        }
        meta.generation = 1;
        meta.uid = audit::random_id();
        meta.create_time = Some(now);
        meta.update_time = Some(now);
        return Ok(Applied {
            resource: pb::Resource {
                metadata: Some(meta),
                spec,
            },
            created: true,
            unchanged: false,
            secret,
        });
    };
    let old = decode_resource(kv)?;
    let old_meta = old.metadata.clone().unwrap_or_default();
    // Key secrets never change on apply: rotating a key is delete + create.
    if let (Some(Spec::ApiKey(key)), Some(Spec::ApiKey(old_key))) =
        (spec.as_mut(), old.spec.as_ref())
    {
        key.secret_hash.clone_from(&old_key.secret_hash);
        key.key_prefix.clone_from(&old_key.key_prefix);
    }
    let unchanged = old.spec == spec
        && old_meta.labels == meta.labels
        && old_meta.regions == meta.regions
        && old_meta.node_selector == meta.node_selector;
    if unchanged {
        return Ok(Applied {
            resource: old,
            created: false,
            unchanged: true,
            secret: None,
        });
    }
    meta.generation = old_meta.generation + 1;
    meta.uid = old_meta.uid;
    meta.create_time = old_meta.create_time;
    meta.update_time = Some(now);
    Ok(Applied {
        resource: pb::Resource {
            metadata: Some(meta),
            spec,
        },
        created: false,
        unchanged: false,
        secret: None,
    })
}
