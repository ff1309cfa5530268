use super::*;
use crate::fixtures::{dur, fields, policy_spec, resource};
use crate::{Spec, validate};

fn policy(s: pb::PolicySpec) -> Policy {
    match validate(&resource(s)).unwrap().spec {
        Spec::Policy(p) => p,
        other => panic!("{other:?}"),
    }
}

#[test]
fn valid_policy() {
    let p = policy(policy_spec());
    assert_eq!(p.rules.len(), 3);
    assert_eq!(
        p.rules[2].criticality,
        Criticality::Low,
        "unspecified = LOW"
    );
    assert!(p.rules[2].deny);
    assert_eq!(
        p.rule_for("payments.refund").map(|r| r.criticality),
        Some(Criticality::Critical),
        "first match wins"
    );
    assert_eq!(
        p.rule_for("payments.charge").map(|r| r.criticality),
        Some(Criticality::High)
    );
    assert!(p.rule_for("kb.search").is_none());
    assert_eq!(p.input.max_input_bytes, NonZeroU32::new(65_536));
    assert_eq!(p.input.prompt_injection, GuardrailAction::Block);
    assert_eq!(p.input.pii, GuardrailAction::Redact);
    assert_eq!(p.input.pii_kinds, [PiiKind::Email, PiiKind::CardNumber]);
    assert!(p.output.redact_pii && p.output.redact_secrets);
    assert_eq!(p.approval.timeout, Duration::from_secs(1800));
    assert_eq!(
        p.approval.on_timeout,
        OnTimeout::Escalate {
            group: "finance-approvers".into()
        }
    );
}

#[test]
fn empty_policy_gets_documented_defaults() {
    let p = policy(pb::PolicySpec::default());
    assert!(p.rules.is_empty());
    assert_eq!(p.input, InputGuardrails::default());
    assert_eq!(p.input.prompt_injection, GuardrailAction::Allow);
    assert_eq!(p.input.max_input_bytes, None);
    assert_eq!(p.output, OutputGuardrails::default());
    assert_eq!(p.approval.timeout, Duration::from_secs(3600));
    assert_eq!(p.approval.on_timeout, OnTimeout::Reject);

    let p = policy(pb::PolicySpec {
        approval: Some(pb::ApprovalPolicy::default()),
        input: Some(pb::InputGuardrails::default()),
        ..Default::default()
    });
    assert_eq!(p.approval, ApprovalPolicy::default());
    assert_eq!(p.input, InputGuardrails::default());
}

#[test]
fn rules_need_a_glob_and_a_known_criticality() {
    let mut s = policy_spec();
    s.rules[0].action_glob.clear();
    s.rules[1].criticality = 17;
    assert_eq!(
        fields(&resource(s)),
        ["policy.rules[0].action_glob", "policy.rules[1].criticality"]
    );
}

#[test]
fn prompt_injection_cannot_be_redact() {
    let mut s = policy_spec();
    s.input.as_mut().unwrap().prompt_injection = pb::GuardrailAction::Redact as i32;
    assert_eq!(fields(&resource(s)), ["policy.input.prompt_injection"]);
    let mut s = policy_spec();
    s.input.as_mut().unwrap().prompt_injection = pb::GuardrailAction::Flag as i32;
    assert_eq!(policy(s).input.prompt_injection, GuardrailAction::Flag);
}

#[test]
fn guardrail_enums_must_be_known() {
    let mut s = policy_spec();
    let input = s.input.as_mut().unwrap();
    input.prompt_injection = 9;
    input.pii = 9;
    assert_eq!(
        fields(&resource(s)),
        ["policy.input.prompt_injection", "policy.input.pii"]
    );
}

#[test]
fn pii_kinds_reject_unspecified_unknown_and_repeats() {
    let mut s = policy_spec();
    s.input.as_mut().unwrap().pii_kinds = vec![1, 0, 1];
    s.output.as_mut().unwrap().pii_kinds = vec![2, 99];
    assert_eq!(
        fields(&resource(s)),
        [
            "policy.input.pii_kinds[1]",
            "policy.input.pii_kinds[2]",
            "policy.output.pii_kinds[1]",
        ]
    );
}

#[test]
fn approval_timeout_is_positive_and_at_most_7_days() {
    for bad in [
        dur(0),
        dur(-1),
        dur(7 * 24 * 3600 + 1),
        Some(prost_types::Duration {
            seconds: 1,
            nanos: -5,
        }),
    ] {
        let mut s = policy_spec();
        s.approval.as_mut().unwrap().timeout = bad;
        assert_eq!(fields(&resource(s)), ["policy.approval.timeout"], "{bad:?}");
    }
    let mut s = policy_spec();
    s.approval.as_mut().unwrap().timeout = dur(7 * 24 * 3600);
    assert_eq!(policy(s).approval.timeout, MAX_APPROVAL_TIMEOUT);
}

#[test]
fn escalation_group_goes_with_escalate_only() {
    let mut s = policy_spec();
    s.approval.as_mut().unwrap().escalation_group.clear();
    assert_eq!(
        fields(&resource(s)),
        ["policy.approval.escalation_group"],
        "required for ESCALATE"
    );

    let mut s = policy_spec();
    s.approval.as_mut().unwrap().escalation_group = "Finance Team".into();
    assert_eq!(
        fields(&resource(s)),
        ["policy.approval.escalation_group"],
        "a group name"
    );

    let mut s = policy_spec();
    s.approval.as_mut().unwrap().on_timeout = pb::TimeoutAction::Reject as i32;
    assert_eq!(
        fields(&resource(s)),
        ["policy.approval.escalation_group"],
        "must be empty for REJECT"
    );

    let mut s = policy_spec();
    s.approval.as_mut().unwrap().on_timeout = 5;
    assert_eq!(fields(&resource(s)), ["policy.approval.on_timeout"]);
}
