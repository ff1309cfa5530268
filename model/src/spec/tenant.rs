//! Tenants and API keys.

use std::num::{NonZeroU32, NonZeroU64};

use aios_proto::v1 as pb;

use crate::convert;
use crate::names::{name_list, reference_list};
use crate::violation::Ctx;
use crate::{Kind, Role};

/// A tenant; its `metadata.name` is the tenant id used everywhere else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tenant {
    /// Human-readable name for tools and dashboards.
    pub display_name: String,
    /// True = every request of the tenant is refused.
    pub disabled: bool,
}

pub(crate) fn tenant(s: &pb::TenantSpec) -> Tenant {
    Tenant {
        display_name: s.display_name.clone(),
        disabled: s.disabled,
    }
}

/// An API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// What the key may do.
    pub role: Role,
    /// End-user id the key acts for; `None` = the request's user.
    pub user: Option<String>,
    /// Description of the holder or purpose.
    pub display_name: String,
    /// When the key stops working; `None` = never. A time in the past is
    /// accepted (the key is simply expired).
    pub expire_time: Option<jiff::Timestamp>,
    /// Agents the key may execute, valid names, no repeats. Empty = every
    /// agent of the tenant.
    pub allowed_agents: Vec<String>,
    /// Rate limits; all `None` = unlimited.
    pub rate_limit: RateLimit,
    /// True = the key is refused.
    pub disabled: bool,
    /// Approver groups. The contract gives no syntax; the strict reading is
    /// resource-name syntax (so a group reads the same in every tool), no
    /// repeats.
    pub groups: Vec<String>,
    /// Output only, copied as received and never validated: the server
    /// overwrites it on Apply, and nodes authenticate keys with it.
    pub secret_hash: String,
    /// Output only, copied as received (see `secret_hash`).
    pub key_prefix: String,
}

/// Token-bucket limits per node; `None` = unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per minute.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Input plus output tokens per minute.
    pub tokens_per_minute: Option<NonZeroU64>,
}

pub(crate) fn api_key(ctx: &mut Ctx, s: &pb::ApiKeySpec, path: &str) -> Option<ApiKey> {
    let role = convert::required_enum(ctx, s.role, &format!("{path}.role"));
    let expire_time = match &s.expire_time {
        None => Some(None),
        Some(t) => convert::timestamp(ctx, t, &format!("{path}.expire_time")).map(Some),
    };
    let allowed_agents = reference_list(
        ctx,
        Kind::Agent,
        &s.allowed_agents,
        &format!("{path}.allowed_agents"),
    );
    let groups = name_list(ctx, &s.groups, &format!("{path}.groups"));
    let rate_limit = s.rate_limit.as_ref().map(|r| RateLimit {
        requests_per_minute: NonZeroU32::new(r.requests_per_minute),
        tokens_per_minute: NonZeroU64::new(r.tokens_per_minute),
    });
    Some(ApiKey {
        role: role?,
        user: (!s.user.is_empty()).then(|| s.user.clone()),
        display_name: s.display_name.clone(),
        expire_time: expire_time?,
        allowed_agents,
        rate_limit: rate_limit.unwrap_or_default(),
        disabled: s.disabled,
        groups,
        secret_hash: s.secret_hash.clone(),
        key_prefix: s.key_prefix.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{api_key_spec, fields, resource, tenant_spec};
    use crate::{Reference, Spec, validate};

    #[test]
    fn valid_tenant() {
        let v = validate(&resource(tenant_spec())).unwrap();
        assert_eq!(v.kind, Kind::Tenant);
        assert_eq!(v.tenant, "");
        assert_eq!(
            v.spec,
            Spec::Tenant(Tenant {
                display_name: "Acme Corp".into(),
                disabled: false
            })
        );
        assert!(v.references.is_empty());
    }

    #[test]
    fn valid_api_key() {
        let v = validate(&resource(api_key_spec())).unwrap();
        let Spec::ApiKey(k) = v.spec else {
            panic!("{:?}", v.spec)
        };
        assert_eq!(k.role, Role::Operator);
        assert_eq!(k.user.as_deref(), Some("alice@example.com"));
        assert_eq!(k.rate_limit.requests_per_minute, NonZeroU32::new(600));
        assert_eq!(k.rate_limit.tokens_per_minute, None);
        assert_eq!(k.groups, ["finance-approvers"]);
        assert_eq!(k.expire_time.map(|t| t.as_second()), Some(1_900_000_000));
        assert_eq!(
            v.references,
            [Reference {
                kind: Kind::Agent,
                name: "support".into(),
                field: "api_key.allowed_agents[0]".into()
            }]
        );
    }

    #[test]
    fn api_key_defaults() {
        let v = validate(&resource(pb::ApiKeySpec {
            role: pb::Role::Caller as i32,
            ..Default::default()
        }))
        .unwrap();
        let Spec::ApiKey(k) = v.spec else {
            panic!("{:?}", v.spec)
        };
        assert_eq!(k.user, None);
        assert_eq!(k.expire_time, None);
        assert_eq!(k.rate_limit, RateLimit::default());
        assert!(k.allowed_agents.is_empty());
    }

    #[test]
    fn role_is_required_and_known() {
        for role in [0, 99] {
            let mut s = api_key_spec();
            s.role = role;
            assert_eq!(fields(&resource(s)), ["api_key.role"], "{role}");
        }
    }

    #[test]
    fn expire_time_must_be_a_valid_timestamp() {
        let mut s = api_key_spec();
        s.expire_time = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        });
        assert_eq!(fields(&resource(s)), ["api_key.expire_time"]);
    }

    #[test]
    fn allowed_agents_and_groups_are_names_without_repeats() {
        let mut s = api_key_spec();
        s.allowed_agents = vec!["support".into(), "Bad".into(), "support".into()];
        s.groups = vec!["ops".into(), "ops".into(), "".into()];
        assert_eq!(
            fields(&resource(s)),
            [
                "api_key.allowed_agents[1]",
                "api_key.allowed_agents[2]",
                "api_key.groups[1]",
                "api_key.groups[2]",
            ]
        );
    }

    #[test]
    fn output_only_secret_fields_are_kept_not_checked() {
        let mut s = api_key_spec();
        s.secret_hash = "not even a hash".into();
        s.key_prefix = "whatever".into();
        let v = validate(&resource(s)).unwrap();
        let Spec::ApiKey(k) = v.spec else {
            panic!("{:?}", v.spec)
        };
        assert_eq!(k.secret_hash, "not even a hash");
        assert_eq!(k.key_prefix, "whatever");
    }
}
