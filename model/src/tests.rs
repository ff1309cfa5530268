//! Whole-resource tests: every kind, and reports across metadata and spec.

use aios_proto::v1 as pb;

use crate::fixtures::*;
use crate::*;

#[test]
fn a_valid_example_of_every_kind_passes() {
    let examples = [
        resource(tenant_spec()),
        resource(api_key_spec()),
        resource(budget_spec()),
        resource(policy_spec()),
        resource(model_spec()),
        resource(local_model_spec()),
        resource(routing_table_spec()),
        resource(agent_spec()),
        resource(tool_spec()),
        resource(alert_rule_spec()),
    ];
    let mut kinds = Vec::new();
    for r in &examples {
        let v = validate(r).unwrap_or_else(|e| panic!("{:?}: {e}", kind_of(r)));
        assert_eq!(Some(v.kind), kind_of(r));
        assert_eq!(v.spec.kind(), v.kind);
        assert_eq!(v.name, r.metadata.as_ref().unwrap().name);
        assert_eq!(v.tenant, r.metadata.as_ref().unwrap().tenant);
        assert_eq!(Validated::try_from(r).as_ref(), Ok(&v));
        kinds.push(v.kind);
    }
    kinds.dedup();
    assert_eq!(kinds, Kind::ALL);
}

#[test]
fn missing_spec_is_a_violation_on_spec() {
    let mut r = resource(tool_spec());
    r.spec = None;
    assert_eq!(fields(&r), ["spec"]);
}

#[test]
fn an_empty_resource_reports_metadata_and_spec() {
    assert_eq!(fields(&pb::Resource::default()), ["metadata", "spec"]);
}

#[test]
fn missing_spec_still_checks_metadata() {
    let r = pb::Resource {
        metadata: Some(pb::ObjectMeta {
            name: "Bad".into(),
            tenant: "Bad Tenant".into(),
            ..Default::default()
        }),
        spec: None,
    };
    assert_eq!(fields(&r), ["metadata.name", "metadata.tenant", "spec"]);
}

#[test]
fn metadata_and_spec_violations_are_reported_together() {
    let mut r = resource(pb::BudgetSpec {
        limit_usd: 0.0,
        ..budget_spec()
    });
    let m = r.metadata.as_mut().unwrap();
    m.name = "Monthly Budget".into();
    m.labels.insert("Bad Key".into(), "v".into());
    m.regions = vec!["eu".into(), "eu".into()];
    let err = validate(&r).unwrap_err();
    let got: Vec<&str> = err.violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        got,
        [
            "metadata.name",
            r#"metadata.labels["Bad Key"]"#,
            "metadata.regions[1]",
            "budget.limit_usd",
        ]
    );
    assert!(
        err.to_string()
            .starts_with("4 invalid field(s): metadata.name: ")
    );
    assert!(err.violations.iter().all(|v| !v.description.is_empty()));
}

#[test]
fn a_spec_with_many_faults_reports_each() {
    let r = resource(pb::AgentSpec {
        routing_table: String::new(),
        policy: "P".into(),
        allowed_tools: vec!["t".into(), "t".into()],
        default_deadline: dur(-1),
        ..agent_spec()
    });
    assert_eq!(
        fields(&r),
        [
            "agent.routing_table",
            "agent.policy",
            "agent.allowed_tools[1]",
            "agent.default_deadline",
        ]
    );
}

#[test]
fn system_tenant_constant() {
    assert_eq!(SYSTEM_TENANT, "system");
    assert_eq!(validate_name(SYSTEM_TENANT), Ok(()));
}

#[test]
fn node_keys_belong_to_the_system_tenant() {
    let mut spec = api_key_spec();
    spec.role = pb::Role::Node as i32;
    let mut r = resource(spec);
    assert_eq!(fields(&r), ["api_key.role"]);
    if let Some(meta) = r.metadata.as_mut() {
        meta.tenant = SYSTEM_TENANT.into();
    }
    let key = validate(&r).expect("a system NODE key is valid");
    assert!(matches!(key.spec, Spec::ApiKey(k) if k.role == Role::Node));
}
