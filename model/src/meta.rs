//! `ObjectMeta`: identity, labels and placement.

use std::collections::{BTreeMap, BTreeSet};

use aios_proto::v1 as pb;

use crate::labels::{self, LabelSelector, LabelSet};
use crate::violation::Ctx;
use crate::{Kind, SYSTEM_TENANT, validate_name};

/// Which data-plane nodes receive a resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Regions it is delivered to, each a valid name, no repeats. Empty =
    /// every region.
    pub regions: Vec<String>,
    /// Further limits nodes by their labels. Empty = every node in
    /// `regions`.
    pub node_selector: LabelSelector,
}

impl Placement {
    /// Whether a node in `region` with `node_labels` receives the resource.
    pub fn includes(&self, region: &str, node_labels: &impl LabelSet) -> bool {
        (self.regions.is_empty() || self.regions.iter().any(|r| r == region))
            && self.node_selector.matches(node_labels)
    }
}

/// Validated metadata.
#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) tenant: String,
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) placement: Placement,
    pub(crate) resource_version: i64,
}

/// Checks `metadata`. `kind` decides the tenant rule; `None` (no spec) checks
/// only the tenant's syntax.
pub(crate) fn convert(
    ctx: &mut Ctx,
    meta: Option<&pb::ObjectMeta>,
    kind: Option<Kind>,
) -> Option<Meta> {
    let Some(meta) = meta else {
        ctx.violation("metadata", "is required");
        return None;
    };
    let before = ctx.violations.len();

    if let Err(reason) = validate_name(&meta.name) {
        ctx.violation("metadata.name", reason);
    } else if kind == Some(Kind::Tenant) && meta.name == SYSTEM_TENANT {
        ctx.violation(
            "metadata.name",
            format!("'{SYSTEM_TENANT}' is reserved for platform objects"),
        );
    }

    match kind {
        Some(Kind::Tenant) => {
            if !meta.tenant.is_empty() {
                ctx.violation("metadata.tenant", "must be empty for Tenant resources");
            }
        }
        Some(_) => {
            if let Err(reason) = validate_name(&meta.tenant) {
                ctx.violation("metadata.tenant", reason);
            }
        }
        None => {
            if !meta.tenant.is_empty()
                && let Err(reason) = validate_name(&meta.tenant)
            {
                ctx.violation("metadata.tenant", reason);
            }
        }
    }

    ctx.extend(labels::validate_labels(&meta.labels));

    let mut seen = BTreeSet::new();
    for (i, region) in meta.regions.iter().enumerate() {
        let field = format!("metadata.regions[{i}]");
        if let Err(reason) = validate_name(region) {
            ctx.violation(field, reason);
        } else if !seen.insert(region.as_str()) {
            ctx.violation(field, format!("duplicate region '{region}'"));
        }
    }

    let node_selector = match LabelSelector::parse(&meta.node_selector) {
        Ok(s) => s,
        Err(reason) => {
            ctx.violation("metadata.node_selector", reason);
            LabelSelector::default()
        }
    };

    if meta.resource_version < 0 {
        ctx.violation(
            "metadata.resource_version",
            "must not be negative (0 = no precondition)",
        );
    }

    (ctx.violations.len() == before).then(|| Meta {
        tenant: meta.tenant.clone(),
        name: meta.name.clone(),
        labels: meta
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        placement: Placement {
            regions: meta.regions.clone(),
            node_selector,
        },
        resource_version: meta.resource_version,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::fixtures::{fields, resource, tenant_spec, tool_spec};
    use crate::validate;

    #[test]
    fn missing_metadata_is_a_violation_on_metadata() {
        let mut r = resource(tool_spec());
        r.metadata = None;
        assert_eq!(fields(&r), ["metadata"]);
    }

    #[test]
    fn name_is_required_and_checked() {
        for (name, _why) in [("", "empty"), ("Bad_Name", "syntax"), ("-x", "edge")] {
            let mut r = resource(tool_spec());
            r.metadata.as_mut().unwrap().name = name.into();
            assert_eq!(fields(&r), ["metadata.name"], "{name:?}");
        }
    }

    #[test]
    fn tenant_scoped_kinds_need_a_valid_tenant() {
        for tenant in ["", "Acme", "acme corp"] {
            let mut r = resource(tool_spec());
            r.metadata.as_mut().unwrap().tenant = tenant.into();
            assert_eq!(fields(&r), ["metadata.tenant"], "{tenant:?}");
        }
        let mut r = resource(tool_spec());
        r.metadata.as_mut().unwrap().tenant = SYSTEM_TENANT.into();
        assert!(validate(&r).is_ok(), "platform objects live in `system`");
    }

    #[test]
    fn tenants_have_no_tenant_and_cannot_be_named_system() {
        let mut r = resource(tenant_spec());
        r.metadata.as_mut().unwrap().tenant = "acme".into();
        assert_eq!(fields(&r), ["metadata.tenant"]);

        let mut r = resource(tenant_spec());
        r.metadata.as_mut().unwrap().tenant.clear();
        r.metadata.as_mut().unwrap().name = SYSTEM_TENANT.into();
        assert_eq!(fields(&r), ["metadata.name"]);
    }

    #[test]
    fn regions_are_names_without_repeats() {
        let mut r = resource(tool_spec());
        r.metadata.as_mut().unwrap().regions =
            vec!["eu-west".into(), "US".into(), "eu-west".into(), "".into()];
        assert_eq!(
            fields(&r),
            [
                "metadata.regions[1]",
                "metadata.regions[2]",
                "metadata.regions[3]"
            ]
        );
    }

    #[test]
    fn node_selector_must_parse() {
        let mut r = resource(tool_spec());
        r.metadata.as_mut().unwrap().node_selector = "gpu=a100,,zone".into();
        assert_eq!(fields(&r), ["metadata.node_selector"]);
    }

    #[test]
    fn negative_resource_version_is_rejected() {
        let mut r = resource(tool_spec());
        r.metadata.as_mut().unwrap().resource_version = -1;
        assert_eq!(fields(&r), ["metadata.resource_version"]);
    }

    #[test]
    fn output_only_fields_are_ignored() {
        let mut r = resource(tool_spec());
        let m = r.metadata.as_mut().unwrap();
        m.generation = -5;
        m.uid = "anything at all".into();
        m.create_time = Some(prost_types::Timestamp {
            seconds: -1,
            nanos: -1,
        });
        m.update_time = Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 2_000_000_000,
        });
        assert!(validate(&r).is_ok());
    }

    #[test]
    fn labels_are_checked_with_their_key_in_the_path() {
        let mut r = resource(tool_spec());
        r.metadata
            .as_mut()
            .unwrap()
            .labels
            .insert("Bad Key".into(), "v".into());
        assert_eq!(fields(&r), [r#"metadata.labels["Bad Key"]"#]);
    }

    #[test]
    fn placement_filters_by_region_and_node_labels() {
        let mut r = resource(tool_spec());
        let m = r.metadata.as_mut().unwrap();
        m.regions = vec!["eu".into(), "us".into()];
        m.node_selector = "gpu".into();
        m.labels.insert("team".into(), "pay".into());
        let v = validate(&r).unwrap();
        let gpu: BTreeMap<String, String> = [("gpu".to_string(), "a100".to_string())].into();
        let none = BTreeMap::new();
        assert!(v.placement.includes("eu", &gpu));
        assert!(!v.placement.includes("ap", &gpu));
        assert!(!v.placement.includes("us", &none));
        assert_eq!(v.labels.get("team").map(String::as_str), Some("pay"));
        assert!(Placement::default().includes("anywhere", &none));
    }
}
