//! Who is calling, and what they may do.
//!
//! API keys are 256 random bits, so only their SHA-256 is stored (a slow
//! password hash protects low-entropy secrets; these are not). A call's key
//! is looked up through the key-hash index, then checked against the
//! ApiKey object itself: it must exist, match, be enabled and unexpired, and
//! its tenant must be enabled. See ARCHITECTURE.md, "Tenants, keys and roles".

use std::time::SystemTime;

use aios_model::{Kind, SYSTEM_TENANT};
use aios_proto::v1::{self as pb, resource::Spec};
pub use aios_runtime::keys::{API_KEY_HEADER, hash_secret, secret_from};
use prost::Message;
use rand::Rng;
use tonic::metadata::MetadataMap;

use crate::{
    keys,
    store::{Compare, Op, Store, StoreError, TxnOutcome},
};

/// Name of the platform admin key created on first start.
pub const BOOTSTRAP_KEY_NAME: &str = "bootstrap-admin";
/// Prefix of every generated secret, so leaked keys are easy to recognise.
pub const SECRET_PREFIX: &str = "aios_";

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything in its scope, API keys included.
    Admin,
    /// Writes every kind but API keys and tenants.
    Operator,
    /// Reads; decides approvals.
    Approver,
    /// Reads.
    Viewer,
    /// Data-plane calls only.
    Caller,
    /// A data-plane node: the config stream and telemetry only.
    Node,
}

impl Role {
    /// From the wire enum; `None` for unspecified or unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::Role::try_from(value).ok()? {
            pb::Role::Admin => Some(Self::Admin),
            pb::Role::Operator => Some(Self::Operator),
            pb::Role::Approver => Some(Self::Approver),
            pb::Role::Viewer => Some(Self::Viewer),
            pb::Role::Caller => Some(Self::Caller),
            pb::Role::Node => Some(Self::Node),
            pb::Role::Unspecified => None,
        }
    }

    /// Lower-case name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Approver => "approver",
            Self::Viewer => "viewer",
            Self::Caller => "caller",
            Self::Node => "node",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key's tenant (`system` for platform keys).
    pub tenant: String,
    /// The key's name.
    pub key_name: String,
    /// The key's role.
    pub role: Role,
}

/// Which tenants a request covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One tenant.
    Tenant(String),
    /// Every tenant (platform admins listing with `*`).
    All,
}

/// What a request wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read resources, audit, status.
    Read,
    /// Create, change or delete resources of a kind.
    Write(Kind),
}

impl Principal {
    /// Platform keys live in the reserved `system` tenant.
    pub fn is_platform_admin(&self) -> bool {
        self.tenant == SYSTEM_TENANT && self.role == Role::Admin
    }

    /// The tenants a request naming `requested` may touch: empty means the
    /// caller's own; another tenant (or `*`) only for platform admins.
    pub fn scope(&self, requested: &str) -> Result<Scope, AuthError> {
        match requested {
            "" => Ok(Scope::Tenant(self.tenant.clone())),
            "*" if self.is_platform_admin() => Ok(Scope::All),
            tenant if tenant == self.tenant || self.is_platform_admin() => {
                Ok(Scope::Tenant(tenant.to_string()))
            }
            tenant => Err(AuthError::CrossTenant {
                own: self.tenant.clone(),
                requested: tenant.to_string(),
            }),
        }
    }

    /// Checks the caller may act as a data-plane node (stream the fleet's
    /// config): a platform NODE key, or a platform admin.
    pub fn authorize_node(&self) -> Result<(), AuthError> {
        if self.tenant == SYSTEM_TENANT && matches!(self.role, Role::Node | Role::Admin) {
            return Ok(());
        }
        Err(AuthError::Forbidden {
            role: self.role,
            action: "stream node config (needs a NODE key of the `system` tenant)".into(),
        })
    }

    /// Checks the role allows `access`.
    pub fn authorize(&self, access: Access) -> Result<(), AuthError> {
        let allowed = match (self.role, access) {
            (Role::Caller | Role::Node, _) => false,
            (_, Access::Read) => true,
            (Role::Admin, Access::Write(_)) => true,
            (Role::Operator, Access::Write(kind)) => !matches!(kind, Kind::ApiKey | Kind::Tenant),
            (Role::Approver | Role::Viewer, Access::Write(_)) => false,
        };
        if !allowed {
            return Err(AuthError::Forbidden {
                role: self.role,
                action: match access {
                    Access::Read => "read".into(),
                    Access::Write(kind) => format!("write {}", kind.display_name()),
                },
            });
        }
        // Tenants are platform objects: only platform admins create or change them.
        if access == Access::Write(Kind::Tenant) && !self.is_platform_admin() {
            return Err(AuthError::Forbidden {
                role: self.role,
                action: "write Tenant (platform admins only)".into(),
            });
        }
        Ok(())
    }
}

/// Authentication and authorization failures.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key in the request.
    #[error("missing API key: send it in the `x-api-key` metadata (or `authorization: Bearer …`)")]
    Missing,
    /// The key is unknown or does not match.
    #[error("invalid API key")]
    Invalid,
    /// The key is disabled.
    #[error("API key {0} is disabled")]
    Disabled(String),
    /// The key has expired.
    #[error("API key {0} has expired")]
    Expired(String),
    /// The key's tenant is disabled.
    #[error("tenant {0} is disabled")]
    TenantDisabled(String),
    /// The role does not allow the action.
    #[error("role {} may not {action}", role.as_str())]
    Forbidden {
        /// The caller's role.
        role: Role,
        /// What was attempted.
        action: String,
    },
    /// A tenant key named another tenant.
    #[error("keys of tenant {own} act only in tenant {own}, not {requested}")]
    CrossTenant {
        /// The key's tenant.
        own: String,
        /// The tenant named in the request.
        requested: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

// === Secrets ===

/// A new random secret: `aios_` + 43 base-62 characters (256 bits).
pub fn generate_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..43)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{SECRET_PREFIX}{body}")
}

/// The visible start of a secret, shown in listings.
pub fn key_prefix(secret: &str) -> String {
    secret.chars().take(SECRET_PREFIX.len() + 6).collect()
}

// === Authentication ===

/// Authenticates the key in `metadata` against the store.
pub async fn authenticate(
    store: &dyn Store,
    metadata: &MetadataMap,
) -> Result<Principal, AuthError> {
    let secret = secret_from(metadata).ok_or(AuthError::Missing)?;
    let hash = hash_secret(secret);
    let index = store
        .get(&keys::key_hash(&hash))
        .await?
        .ok_or(AuthError::Invalid)?;
    let reference = String::from_utf8(index.value).map_err(|_| AuthError::Invalid)?;
    let (tenant, name) = reference.split_once('/').ok_or(AuthError::Invalid)?;
    let stored = store
        .get(&keys::resource(Kind::ApiKey, tenant, name))
        .await?
        .ok_or(AuthError::Invalid)?;
    let resource = pb::Resource::decode(stored.value.as_slice())
        .map_err(|e| StoreError::Internal(format!("corrupt ApiKey {reference}: {e}")))?;
    let Some(Spec::ApiKey(spec)) = resource.spec else {
        return Err(AuthError::Invalid);
    };
    // Constant-time comparison is unnecessary: the index lookup already
    // matched on the hash, and this only guards against a stale index.
    if spec.secret_hash != hash {
        return Err(AuthError::Invalid);
    }
    if spec.disabled {
        return Err(AuthError::Disabled(name.to_string()));
    }
    if let Some(expire) = spec.expire_time
        && SystemTime::try_from(expire).is_ok_and(|t| t <= SystemTime::now())
    {
        return Err(AuthError::Expired(name.to_string()));
    }
    let role = Role::from_proto(spec.role).ok_or(AuthError::Invalid)?;
    if tenant != SYSTEM_TENANT {
        let tenant_kv = store.get(&keys::resource(Kind::Tenant, "", tenant)).await?;
        let disabled = match tenant_kv {
            None => true,
            Some(kv) => {
                matches!(pb::Resource::decode(kv.value.as_slice()).ok().and_then(|r| r.spec), Some(Spec::Tenant(t)) if t.disabled)
            }
        };
        if disabled {
            return Err(AuthError::TenantDisabled(tenant.to_string()));
        }
    }
    Ok(Principal {
        tenant: tenant.to_string(),
        key_name: name.to_string(),
        role,
    })
}

// === Bootstrap ===

/// Creates the platform admin key on first start. `secret` is the operator's
/// chosen key (from `AIOS_BOOTSTRAP_ADMIN_KEY` or a file); without one, a
/// key is generated. Returns the generated secret, which the caller shows
/// once; `None` if the key already existed or the operator supplied it.
/// Exactly one of several replicas starting together creates it.
pub async fn bootstrap(
    store: &dyn Store,
    secret: Option<&str>,
) -> Result<Option<String>, StoreError> {
    if store.get(keys::BOOTSTRAP).await?.is_some() {
        return Ok(None);
    }
    let generated = secret.is_none().then(generate_secret);
    let Some(secret) = secret.or(generated.as_deref()) else {
        return Ok(None);
    };
    let hash = hash_secret(secret);
    let now = prost_types::Timestamp::from(SystemTime::now());
    let resource = pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: BOOTSTRAP_KEY_NAME.into(),
            tenant: SYSTEM_TENANT.into(),
            generation: 1,
            create_time: Some(now),
            update_time: Some(now),
            ..Default::default()
        }),
        spec: Some(Spec::ApiKey(pb::ApiKeySpec {
            role: pb::Role::Admin as i32,
            display_name: "Platform admin created on first start".into(),
            secret_hash: hash.clone(),
            key_prefix: key_prefix(secret),
            ..Default::default()
        })),
    };
    let key = keys::resource(Kind::ApiKey, SYSTEM_TENANT, BOOTSTRAP_KEY_NAME);
    let outcome = store
        .txn(
            vec![Compare::ModRevision {
                key: keys::BOOTSTRAP.into(),
                equals: 0,
            }],
            vec![
                Op::Put {
                    key: keys::BOOTSTRAP.into(),
                    value: Vec::new(),
                    lease: None,
                },
                Op::Put {
                    key,
                    value: resource.encode_to_vec(),
                    lease: None,
                },
                Op::Put {
                    key: keys::key_hash(&hash),
                    value: format!("{SYSTEM_TENANT}/{BOOTSTRAP_KEY_NAME}").into_bytes(),
                    lease: None,
                },
            ],
        )
        .await?;
    Ok(match outcome {
        TxnOutcome::Committed { .. } => generated,
        // Another replica won the race; its key is the bootstrap key.
        TxnOutcome::Conflict { .. } => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: &str, role: Role) -> Principal {
        Principal {
            tenant: tenant.into(),
            key_name: "k".into(),
            role,
        }
    }

    #[test]
    fn secrets_are_random_prefixed_and_hash_stably() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("aios_") && a.len() == 48, "{a}");
        assert_eq!(hash_secret("x"), hash_secret("x"));
        assert_eq!(
            hash_secret("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(key_prefix(&a).len(), 11);
    }

    #[test]
    fn tenant_keys_stay_in_their_tenant() {
        let acme = principal("acme", Role::Admin);
        assert_eq!(acme.scope("").unwrap(), Scope::Tenant("acme".into()));
        assert_eq!(acme.scope("acme").unwrap(), Scope::Tenant("acme".into()));
        assert!(matches!(
            acme.scope("globex"),
            Err(AuthError::CrossTenant { .. })
        ));
        assert!(matches!(
            acme.scope("*"),
            Err(AuthError::CrossTenant { .. })
        ));
        let platform = principal(SYSTEM_TENANT, Role::Admin);
        assert_eq!(platform.scope("*").unwrap(), Scope::All);
        assert_eq!(
            platform.scope("globex").unwrap(),
            Scope::Tenant("globex".into())
        );
        let platform_viewer = principal(SYSTEM_TENANT, Role::Viewer);
        assert!(
            platform_viewer.scope("globex").is_err(),
            "only platform admins cross tenants"
        );
    }

    #[test]
    fn only_platform_node_and_admin_keys_stream_config() {
        let may = |tenant, role| principal(tenant, role).authorize_node().is_ok();
        assert!(may(SYSTEM_TENANT, Role::Node));
        assert!(may(SYSTEM_TENANT, Role::Admin));
        assert!(!may(SYSTEM_TENANT, Role::Operator));
        assert!(!may("acme", Role::Admin));
        assert!(!may("acme", Role::Node));
    }

    #[test]
    fn roles_gate_writes() {
        let check = |role, access| principal("acme", role).authorize(access).is_ok();
        assert!(check(Role::Viewer, Access::Read));
        assert!(!check(Role::Viewer, Access::Write(Kind::Agent)));
        assert!(!check(Role::Approver, Access::Write(Kind::Policy)));
        assert!(check(Role::Operator, Access::Write(Kind::Agent)));
        assert!(!check(Role::Operator, Access::Write(Kind::ApiKey)));
        assert!(check(Role::Admin, Access::Write(Kind::ApiKey)));
        assert!(
            !check(Role::Admin, Access::Write(Kind::Tenant)),
            "tenant admins cannot create tenants"
        );
        assert!(!check(Role::Caller, Access::Read));
        assert!(!check(Role::Node, Access::Read));
        assert!(
            principal(SYSTEM_TENANT, Role::Admin)
                .authorize(Access::Write(Kind::Tenant))
                .is_ok()
        );
    }
}
