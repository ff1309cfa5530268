//! Resource kinds as people type and read them: `aiosctl get agents`,
//! `agent/support-bot`.
//!
//! A small local table rather than `aios_model::Kind`, so this lightweight
//! client does not pull in the server-side domain crate.

use aios_proto::v1::{Kind, Resource, resource::Spec};

/// Every concrete kind, in the contract's order.
pub const KINDS: [Kind; 9] = [
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

/// A kind name that matches no kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown kind '{0}': expected one of tenant, apikey, budget, policy, model, routingtable, agent, tool, alertrule"
)]
pub struct UnknownKind(pub String);

/// Parses a kind as typed on the command line: singular or plural, any
/// case, and `-` or `_` between the words of two-word kinds (`api-keys`,
/// `routing_table`).
pub fn parse_kind(text: &str) -> Result<Kind, UnknownKind> {
    let kind = match text.to_ascii_lowercase().as_str() {
        "tenant" | "tenants" => Kind::Tenant,
        "apikey" | "apikeys" | "api-key" | "api-keys" | "api_key" | "api_keys" => Kind::ApiKey,
        "budget" | "budgets" => Kind::Budget,
        "policy" | "policies" => Kind::Policy,
        "model" | "models" => Kind::Model,
        "routingtable" | "routingtables" | "routing-table" | "routing-tables" | "routing_table"
        | "routing_tables" => Kind::RoutingTable,
        "agent" | "agents" => Kind::Agent,
        "tool" | "tools" => Kind::Tool,
        "alertrule" | "alertrules" | "alert-rule" | "alert-rules" | "alert_rule"
        | "alert_rules" => Kind::AlertRule,
        _ => return Err(UnknownKind(text.to_string())),
    };
    Ok(kind)
}

/// Like [`parse_kind`], and `all` for every kind (`None`), which List
/// sends as `KIND_UNSPECIFIED`.
pub fn parse_kind_or_all(text: &str) -> Result<Option<Kind>, UnknownKind> {
    if text.eq_ignore_ascii_case("all") {
        Ok(None)
    } else {
        parse_kind(text).map(Some)
    }
}

/// The short lowercase name used in `kind/name` labels (`apikey`,
/// `routingtable`).
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Unspecified => "unknown",
        Kind::Tenant => "tenant",
        Kind::ApiKey => "apikey",
        Kind::Budget => "budget",
        Kind::Policy => "policy",
        Kind::Model => "model",
        Kind::RoutingTable => "routingtable",
        Kind::Agent => "agent",
        Kind::Tool => "tool",
        Kind::AlertRule => "alertrule",
    }
}

/// The kind a resource's spec decides; `Unspecified` without a spec.
pub fn kind_of(resource: &Resource) -> Kind {
    match &resource.spec {
        None => Kind::Unspecified,
        Some(Spec::Tenant(_)) => Kind::Tenant,
        Some(Spec::ApiKey(_)) => Kind::ApiKey,
        Some(Spec::Budget(_)) => Kind::Budget,
        Some(Spec::Policy(_)) => Kind::Policy,
        Some(Spec::Model(_)) => Kind::Model,
        Some(Spec::RoutingTable(_)) => Kind::RoutingTable,
        Some(Spec::Agent(_)) => Kind::Agent,
        Some(Spec::Tool(_)) => Kind::Tool,
        Some(Spec::AlertRule(_)) => Kind::AlertRule,
    }
}

/// `agent/support-bot`: how commands name one resource.
pub fn label(resource: &Resource) -> String {
    let name = resource.metadata.as_ref().map_or("", |m| m.name.as_str());
    format!("{}/{}", kind_name(kind_of(resource)), name)
}

#[cfg(test)]
mod tests {
    use aios_proto::v1::{AgentSpec, ObjectMeta};

    use super::*;

    #[test]
    fn accepts_every_documented_spelling_in_any_case() {
        let cases = [
            ("tenant", Kind::Tenant),
            ("Tenants", Kind::Tenant),
            ("apikey", Kind::ApiKey),
            ("APIKEYS", Kind::ApiKey),
            ("api-key", Kind::ApiKey),
            ("api_keys", Kind::ApiKey),
            ("budget", Kind::Budget),
            ("policies", Kind::Policy),
            ("Policy", Kind::Policy),
            ("models", Kind::Model),
            ("RoutingTable", Kind::RoutingTable),
            ("routing-tables", Kind::RoutingTable),
            ("routing_table", Kind::RoutingTable),
            ("agents", Kind::Agent),
            ("tool", Kind::Tool),
            ("alert-rules", Kind::AlertRule),
            ("AlertRule", Kind::AlertRule),
        ];
        for (text, kind) in cases {
            assert_eq!(parse_kind(text), Ok(kind), "{text}");
        }
    }

    #[test]
    fn rejects_near_misses_with_the_valid_names() {
        let error = parse_kind("agnet").unwrap_err();
        assert_eq!(error, UnknownKind("agnet".into()));
        assert!(error.to_string().contains("routingtable, agent, tool"));
        // `all` is only a List target, and separators only join two words.
        assert!(parse_kind("all").is_err());
        assert!(parse_kind("ag-ent").is_err());
        assert!(parse_kind("policys").is_err());
    }

    #[test]
    fn all_means_every_kind() {
        assert_eq!(parse_kind_or_all("ALL"), Ok(None));
        assert_eq!(parse_kind_or_all("tools"), Ok(Some(Kind::Tool)));
    }

    #[test]
    fn labels_name_kind_and_object() {
        let resource = Resource {
            metadata: Some(ObjectMeta {
                name: "support-bot".into(),
                ..Default::default()
            }),
            spec: Some(Spec::Agent(AgentSpec::default())),
        };
        assert_eq!(label(&resource), "agent/support-bot");
        assert_eq!(kind_name(Kind::RoutingTable), "routingtable");
        for kind in KINDS {
            assert_eq!(parse_kind(kind_name(kind)), Ok(kind));
        }
    }
}
