//! Stage 1, authenticate: the API key in the metadata, hashed and looked up
//! in the node's config (keys reach nodes as hashes with the rest of the
//! config, so no control-plane call is on the request path).

use std::fmt;

use aios_model::{RateLimit, Role};
use tonic::metadata::MetadataMap;

use super::{
    call::Call,
    catalog::Catalog,
    error::ExecError,
    stage::{Flow, Stage},
};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The key's tenant: the tenant of everything this request touches.
    pub tenant: String,
    /// The key's name.
    pub key_name: String,
    /// The key's role.
    pub role: Role,
    /// The key's rate limits.
    pub rate_limit: RateLimit,
    /// Agents the key may run; empty = all of its tenant.
    pub allowed_agents: Vec<String>,
    /// The end user: the key's own user, else the one the request names.
    pub user: Option<String>,
}

impl Caller {
    /// Whether the key may execute `agent`.
    pub fn may_run(&self, agent: &str) -> bool {
        self.allowed_agents.is_empty() || self.allowed_agents.iter().any(|a| a == agent)
    }
}

/// The authentication stage.
#[derive(Debug, Default)]
pub struct Authenticate;

impl Stage for Authenticate {
    fn before(&self, call: &mut Call) -> Result<Flow, ExecError> {
        let caller = authenticate(
            &call.catalog,
            &call.metadata,
            &call.request.user,
            jiff::Timestamp::now(),
        )?;
        call.caller = Some(caller);
        Ok(Flow::Continue)
    }
}

/// Checks the key in `metadata`; `requested_user` is the request's `user`
/// field (ignored when the key has its own).
pub fn authenticate(
    catalog: &Catalog,
    metadata: &MetadataMap,
    requested_user: &str,
    now: jiff::Timestamp,
) -> Result<Caller, ExecError> {
    let secret = aios_runtime::keys::secret_from(metadata).ok_or_else(|| {
        ExecError::Unauthenticated(
            "missing API key: send it in `authorization: Bearer <key>` or `x-api-key`".into(),
        )
    })?;
    let hash = aios_runtime::keys::hash_secret(secret);
    let (applied, key) = catalog
        .key_by_hash(&hash)
        .ok_or_else(|| ExecError::Unauthenticated("invalid API key".into()))?;
    let name = KeyName(&applied.validated.tenant, &applied.validated.name);
    if key.disabled {
        return Err(ExecError::Unauthenticated(format!(
            "API key {name} is disabled"
        )));
    }
    if key.expire_time.is_some_and(|t| t <= now) {
        return Err(ExecError::Unauthenticated(format!(
            "API key {name} has expired"
        )));
    }
    if !matches!(key.role, Role::Caller | Role::Operator | Role::Admin) {
        return Err(ExecError::PermissionDenied {
            reason: "ROLE_FORBIDDEN",
            message: format!(
                "API key {name} has role {:?}; executing agents needs caller, operator or admin",
                key.role
            ),
        });
    }
    let tenant = &applied.validated.tenant;
    if catalog.tenant(tenant).is_some_and(|t| t.disabled) {
        return Err(ExecError::PermissionDenied {
            reason: "TENANT_DISABLED",
            message: format!("tenant {tenant} is disabled"),
        });
    }
    let user = key
        .user
        .clone()
        .or_else(|| (!requested_user.is_empty()).then(|| requested_user.to_string()));
    Ok(Caller {
        tenant: tenant.clone(),
        key_name: applied.validated.name.clone(),
        role: key.role,
        rate_limit: key.rate_limit,
        allowed_agents: key.allowed_agents.clone(),
        user,
    })
}

/// A key's display name, `tenant/name`: formatted only into a refusal,
/// never on the way of an accepted request.
struct KeyName<'a>(&'a str, &'a str);

impl fmt::Display for KeyName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::pipeline::testing::{catalog, key_resource, tenant_resource};

    fn metadata(secret: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        md
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn a_known_key_authenticates_with_its_tenant_and_user() {
        let c = catalog(vec![
            tenant_resource("acme", false),
            key_resource("acme", "ci", "s3cret-ci", |_| {}),
        ]);
        let caller = authenticate(&c, &metadata("s3cret-ci"), "u-1", now()).unwrap();
        assert_eq!(caller.tenant, "acme");
        assert_eq!(caller.key_name, "ci");
        assert_eq!(caller.user.as_deref(), Some("u-1"));
    }

    #[test]
    fn the_keys_own_user_wins_over_the_request() {
        let c = catalog(vec![key_resource("acme", "ci", "k", |k| {
            k.user = "bound".into();
        })]);
        let caller = authenticate(&c, &metadata("k"), "other", now()).unwrap();
        assert_eq!(caller.user.as_deref(), Some("bound"));
    }

    #[test]
    fn missing_unknown_disabled_expired_keys_are_refused() {
        let c = catalog(vec![
            key_resource("acme", "off", "off", |k| k.disabled = true),
            key_resource("acme", "old", "old", |k| {
                k.expire_time = Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                });
            }),
        ]);
        let code = |md: &MetadataMap| authenticate(&c, md, "", now()).unwrap_err();
        assert!(matches!(
            code(&MetadataMap::new()),
            ExecError::Unauthenticated(m) if m.contains("missing")
        ));
        assert!(matches!(
            code(&metadata("nope")),
            ExecError::Unauthenticated(_)
        ));
        assert!(matches!(
            code(&metadata("off")),
            ExecError::Unauthenticated(m) if m == "API key acme/off is disabled"
        ));
        assert!(matches!(
            code(&metadata("old")),
            ExecError::Unauthenticated(m) if m.contains("expired")
        ));
    }

    #[test]
    fn viewers_and_disabled_tenants_are_denied() {
        let c = catalog(vec![
            tenant_resource("acme", false),
            tenant_resource("gone", true),
            key_resource("acme", "view", "view", |k| {
                k.role = aios_proto::v1::Role::Viewer as i32;
            }),
            key_resource("gone", "ci", "gone", |_| {}),
        ]);
        assert!(matches!(
            authenticate(&c, &metadata("view"), "", now()).unwrap_err(),
            ExecError::PermissionDenied {
                reason: "ROLE_FORBIDDEN",
                ..
            }
        ));
        assert!(matches!(
            authenticate(&c, &metadata("gone"), "", now()).unwrap_err(),
            ExecError::PermissionDenied {
                reason: "TENANT_DISABLED",
                ..
            }
        ));
    }
}
