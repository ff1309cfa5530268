//! The kinds of stored resources and their spellings.

use std::fmt;
use std::str::FromStr;

use aios_proto::v1 as pb;

/// The kind of a stored resource; one per `Resource.spec` case.
///
/// The order (`Ord`) is the proto's, which is also the order `List` returns
/// kinds in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A tenant: the unit of isolation.
    Tenant,
    /// An API key.
    ApiKey,
    /// A spend limit over a calendar window.
    Budget,
    /// Action rules, guardrails and approval settings.
    Policy,
    /// A model in the catalog.
    Model,
    /// Tiers of models chosen by task complexity.
    RoutingTable,
    /// An agent.
    Agent,
    /// A tool served by a ToolService.
    Tool,
    /// A condition on the live rollups; evaluated by the control plane.
    AlertRule,
}

impl Kind {
    /// Every kind, in proto order.
    pub const ALL: [Kind; 9] = [
        Kind::Tenant,
        Kind::ApiKey,
        Kind::Budget,
        Kind::Policy,
        Kind::Model,
        Kind::RoutingTable,
        Kind::Agent,
        Kind::Tool,
        Kind::AlertRule,
    ];

    /// The snake_case name used in storage keys and as the `Resource.spec`
    /// field name: `tenant`, `api_key`, … , `routing_table`, `agent`, `tool`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tenant => "tenant",
            Kind::ApiKey => "api_key",
            Kind::Budget => "budget",
            Kind::Policy => "policy",
            Kind::Model => "model",
            Kind::RoutingTable => "routing_table",
            Kind::Agent => "agent",
            Kind::Tool => "tool",
            Kind::AlertRule => "alert_rule",
        }
    }

    /// The PascalCase name used in YAML `kind:` and in messages.
    pub fn display_name(self) -> &'static str {
        match self {
            Kind::Tenant => "Tenant",
            Kind::ApiKey => "ApiKey",
            Kind::Budget => "Budget",
            Kind::Policy => "Policy",
            Kind::Model => "Model",
            Kind::RoutingTable => "RoutingTable",
            Kind::Agent => "Agent",
            Kind::Tool => "Tool",
            Kind::AlertRule => "AlertRule",
        }
    }

    /// The plural used by the CLI (`aiosctl get policies`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Tenant => "tenants",
            Kind::ApiKey => "apikeys",
            Kind::Budget => "budgets",
            Kind::Policy => "policies",
            Kind::Model => "models",
            Kind::RoutingTable => "routingtables",
            Kind::Agent => "agents",
            Kind::Tool => "tools",
            Kind::AlertRule => "alertrules",
        }
    }

    /// The wire enum value.
    pub fn to_proto(self) -> pb::Kind {
        match self {
            Kind::Tenant => pb::Kind::Tenant,
            Kind::ApiKey => pb::Kind::ApiKey,
            Kind::Budget => pb::Kind::Budget,
            Kind::Policy => pb::Kind::Policy,
            Kind::Model => pb::Kind::Model,
            Kind::RoutingTable => pb::Kind::RoutingTable,
            Kind::Agent => pb::Kind::Agent,
            Kind::Tool => pb::Kind::Tool,
            Kind::AlertRule => pb::Kind::AlertRule,
        }
    }

    /// The kind of a wire enum value; `None` for `KIND_UNSPECIFIED` and for
    /// values this build does not know.
    pub fn from_proto(value: i32) -> Option<Kind> {
        match pb::Kind::try_from(value).ok()? {
            pb::Kind::Unspecified => None,
            pb::Kind::Tenant => Some(Kind::Tenant),
            pb::Kind::ApiKey => Some(Kind::ApiKey),
            pb::Kind::Budget => Some(Kind::Budget),
            pb::Kind::Policy => Some(Kind::Policy),
            pb::Kind::Model => Some(Kind::Model),
            pb::Kind::RoutingTable => Some(Kind::RoutingTable),
            pb::Kind::Agent => Some(Kind::Agent),
            pb::Kind::Tool => Some(Kind::Tool),
            pb::Kind::AlertRule => Some(Kind::AlertRule),
        }
    }

    /// Whether resources of this kind live inside a tenant. Only tenants
    /// themselves do not.
    pub fn is_tenant_scoped(self) -> bool {
        !matches!(self, Kind::Tenant)
    }

    /// Whether nodes receive resources of this kind. Alert rules are the
    /// control plane's own: no node acts on them.
    pub fn reaches_nodes(self) -> bool {
        !matches!(self, Kind::AlertRule)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

/// The kind of a resource, from its `spec` case; `None` when no spec is set.
pub fn kind_of(resource: &pb::Resource) -> Option<Kind> {
    use pb::resource::Spec;
    Some(match resource.spec.as_ref()? {
        Spec::Tenant(_) => Kind::Tenant,
        Spec::ApiKey(_) => Kind::ApiKey,
        Spec::Budget(_) => Kind::Budget,
        Spec::Policy(_) => Kind::Policy,
        Spec::Model(_) => Kind::Model,
        Spec::RoutingTable(_) => Kind::RoutingTable,
        Spec::Agent(_) => Kind::Agent,
        Spec::Tool(_) => Kind::Tool,
        Spec::AlertRule(_) => Kind::AlertRule,
    })
}

/// A string that names no kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind '{input}'; valid kinds: {}", valid_kinds())]
pub struct ParseKindError {
    /// What was given.
    pub input: String,
}

fn valid_kinds() -> String {
    Kind::ALL
        .iter()
        .map(|k| k.display_name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Kind {
    type Err = ParseKindError;

    /// Accepts any case, with or without `-`/`_` between words, singular or
    /// plural: `ApiKey`, `api_key`, `api-key`, `apikeys`, `RoutingTable`,
    /// `routing-tables`, `policies`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let folded: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_'))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Kind::ALL
            .into_iter()
            .find(|k| {
                let singular = k.display_name().to_ascii_lowercase();
                folded == singular || folded == k.plural()
            })
            .ok_or_else(|| ParseKindError {
                input: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        let table: &[(&str, Kind)] = &[
            ("Tenant", Kind::Tenant),
            ("tenant", Kind::Tenant),
            ("tenants", Kind::Tenant),
            ("TENANTS", Kind::Tenant),
            ("ApiKey", Kind::ApiKey),
            ("apikey", Kind::ApiKey),
            ("api-key", Kind::ApiKey),
            ("api_key", Kind::ApiKey),
            ("apikeys", Kind::ApiKey),
            ("api-keys", Kind::ApiKey),
            ("API_KEYS", Kind::ApiKey),
            ("Budget", Kind::Budget),
            ("budgets", Kind::Budget),
            ("Policy", Kind::Policy),
            ("policy", Kind::Policy),
            ("policies", Kind::Policy),
            ("Model", Kind::Model),
            ("models", Kind::Model),
            ("RoutingTable", Kind::RoutingTable),
            ("routingtable", Kind::RoutingTable),
            ("routing-table", Kind::RoutingTable),
            ("routing_table", Kind::RoutingTable),
            ("routingtables", Kind::RoutingTable),
            ("routing-tables", Kind::RoutingTable),
            ("Agent", Kind::Agent),
            ("agents", Kind::Agent),
            ("Tool", Kind::Tool),
            ("tools", Kind::Tool),
        ];
        for (input, want) in table {
            assert_eq!(input.parse::<Kind>(), Ok(*want), "{input}");
        }
    }

    #[test]
    fn every_kind_round_trips_through_its_names() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
            assert_eq!(kind.display_name().parse::<Kind>(), Ok(kind));
            assert_eq!(kind.plural().parse::<Kind>(), Ok(kind));
            assert_eq!(Kind::from_proto(kind.to_proto() as i32), Some(kind));
        }
    }

    #[test]
    fn rejects_unknown_spellings_and_lists_valid_kinds() {
        for input in ["", "policys", "tenantss", "api key", "key", "node"] {
            let err = input.parse::<Kind>().unwrap_err();
            assert_eq!(err.input, input);
            let msg = err.to_string();
            assert!(
                msg.contains("Tenant, ApiKey, Budget, Policy, Model, RoutingTable, Agent, Tool"),
                "{msg}"
            );
        }
    }

    #[test]
    fn proto_unspecified_and_unknown_values_are_no_kind() {
        assert_eq!(Kind::from_proto(0), None);
        assert_eq!(Kind::from_proto(99), None);
        assert_eq!(Kind::from_proto(-1), None);
    }

    #[test]
    fn only_tenants_are_not_tenant_scoped() {
        let unscoped: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| !k.is_tenant_scoped())
            .collect();
        assert_eq!(unscoped, vec![Kind::Tenant]);
    }

    #[test]
    fn storage_names_are_the_spec_field_names() {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "tenant",
                "api_key",
                "budget",
                "policy",
                "model",
                "routing_table",
                "agent",
                "tool",
                "alert_rule"
            ]
        );
    }

    #[test]
    fn kind_of_follows_the_spec_case() {
        use pb::resource::Spec;
        let mut r = pb::Resource::default();
        assert_eq!(kind_of(&r), None);
        r.spec = Some(Spec::Tool(pb::ToolSpec::default()));
        assert_eq!(kind_of(&r), Some(Kind::Tool));
        r.spec = Some(Spec::RoutingTable(pb::RoutingTableSpec::default()));
        assert_eq!(kind_of(&r), Some(Kind::RoutingTable));
    }
}
