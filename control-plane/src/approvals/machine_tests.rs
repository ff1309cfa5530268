//! The lifecycle rules, one test each.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aios_proto::v1::{self as pb, ApprovalState as S, Verdict};

use super::*;

const T0: u64 = 1_700_000_000;
const TIMEOUT: Duration = Duration::from_secs(600);

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + seconds)
}

fn approval(criticality: pb::Criticality) -> pb::Approval {
    pb::Approval {
        id: "apr_1".into(),
        tenant: "acme".into(),
        agent: "refunder".into(),
        action: "payments.refund".into(),
        caller: "ci".into(),
        arguments_json: r#"{"id":"p1"}"#.into(),
        arguments_sha256: vec![7; 32],
        criticality: criticality as i32,
        policy_version: 5,
        create_time: stamp(at(0)),
        expire_time: stamp(at(600)),
        state: S::Pending as i32,
        required_approvals: required_approvals(criticality).unwrap(),
        timeout: prost_types::Duration::try_from(TIMEOUT).ok(),
        ..Default::default()
    }
}

fn approver(name: &str) -> Approver {
    Approver {
        tenant: "acme".into(),
        key_name: name.into(),
        groups: vec![],
    }
}

fn binding() -> Binding {
    Binding {
        tenant: "acme".into(),
        caller: "ci".into(),
        agent: "refunder".into(),
        action: "payments.refund".into(),
        arguments_sha256: vec![7; 32],
        policy_version: 5,
    }
}

#[test]
fn high_needs_one_approver_and_critical_two() {
    assert_eq!(required_approvals(pb::Criticality::High), Some(1));
    assert_eq!(required_approvals(pb::Criticality::Critical), Some(2));
    assert_eq!(required_approvals(pb::Criticality::Medium), None);

    let mut high = approval(pb::Criticality::High);
    assert_eq!(
        decide(&mut high, &approver("alice"), Verdict::Approve, "ok", at(1)),
        Ok(S::Approved)
    );

    let mut critical = approval(pb::Criticality::Critical);
    assert_eq!(
        decide(
            &mut critical,
            &approver("alice"),
            Verdict::Approve,
            "",
            at(1)
        ),
        Ok(S::Pending),
        "one approval of two leaves it pending"
    );
    assert_eq!(
        decide(&mut critical, &approver("bob"), Verdict::Approve, "", at(2)),
        Ok(S::Approved)
    );
    assert_eq!(critical.decisions.len(), 2);
    assert_eq!(critical.decisions[1].approver, "bob");
}

#[test]
fn approval_opens_an_execution_window_of_one_timeout() {
    let mut a = approval(pb::Criticality::High);
    decide(&mut a, &approver("alice"), Verdict::Approve, "", at(100)).unwrap();
    assert_eq!(a.expire_time, stamp(at(100) + TIMEOUT));
    assert_eq!(a.update_time, stamp(at(100)));
}

#[test]
fn one_reject_rejects() {
    let mut a = approval(pb::Criticality::Critical);
    decide(&mut a, &approver("alice"), Verdict::Approve, "", at(1)).unwrap();
    assert_eq!(
        decide(&mut a, &approver("bob"), Verdict::Reject, "no", at(2)),
        Ok(S::Rejected)
    );
    assert_eq!(
        decide(&mut a, &approver("carol"), Verdict::Approve, "", at(3)),
        Err(Refusal::Closed(S::Rejected))
    );
}

#[test]
fn the_requester_cannot_approve_their_own_request() {
    let mut a = approval(pb::Criticality::High);
    assert_eq!(
        decide(&mut a, &approver("ci"), Verdict::Approve, "", at(1)),
        Err(Refusal::SelfApproval)
    );
    // The same key name in another tenant is another key.
    let platform = Approver {
        tenant: "system".into(),
        ..approver("ci")
    };
    assert_eq!(
        decide(&mut a, &platform, Verdict::Approve, "", at(1)),
        Ok(S::Approved)
    );
    assert_eq!(a.decisions[0].approver, "system/ci");
}

#[test]
fn deciding_twice_is_refused() {
    let mut a = approval(pb::Criticality::Critical);
    decide(&mut a, &approver("alice"), Verdict::Approve, "", at(1)).unwrap();
    assert_eq!(
        decide(&mut a, &approver("alice"), Verdict::Approve, "", at(2)),
        Err(Refusal::AlreadyDecided("alice".into())),
        "two verdicts of one approver are not two approvers"
    );
    assert_eq!(state(&a), S::Pending);
}

#[test]
fn closed_approvals_take_no_verdicts() {
    for closed in [S::Approved, S::Rejected, S::Expired, S::Executed] {
        let mut a = approval(pb::Criticality::High);
        a.state = closed as i32;
        assert_eq!(
            decide(&mut a, &approver("alice"), Verdict::Approve, "", at(1)),
            Err(Refusal::Closed(closed))
        );
    }
}

#[test]
fn a_due_approval_takes_no_verdicts_even_before_the_sweeper_runs() {
    let mut a = approval(pb::Criticality::High);
    assert_eq!(
        decide(&mut a, &approver("alice"), Verdict::Approve, "", at(600)),
        Err(Refusal::Expired)
    );
}

#[test]
fn an_unspecified_verdict_is_refused() {
    let mut a = approval(pb::Criticality::High);
    assert_eq!(
        decide(&mut a, &approver("alice"), Verdict::Unspecified, "", at(1)),
        Err(Refusal::NoVerdict)
    );
}

#[test]
fn timeout_rejects_without_an_escalation_group() {
    let mut a = approval(pb::Criticality::High);
    assert_eq!(expire(&mut a, at(599)), None, "not due yet");
    assert_eq!(expire(&mut a, at(600)), Some(Timeout::Expired));
    assert_eq!(state(&a), S::Expired);
    assert_eq!(expire(&mut a, at(700)), None, "expires once");
}

#[test]
fn timeout_escalates_then_expires() {
    let mut a = approval(pb::Criticality::High);
    a.escalate_to = "oncall".into();
    assert_eq!(expire(&mut a, at(601)), Some(Timeout::Escalated));
    assert_eq!(state(&a), S::Escalated);
    assert_eq!(a.escalation_group, "oncall");
    assert_eq!(a.expire_time, stamp(at(601) + TIMEOUT));
    assert_eq!(expire(&mut a, at(1000)), None);
    assert_eq!(expire(&mut a, at(1201)), Some(Timeout::Expired));
    assert_eq!(state(&a), S::Expired);
}

#[test]
fn after_escalation_only_the_group_decides() {
    let mut a = approval(pb::Criticality::High);
    a.escalate_to = "oncall".into();
    expire(&mut a, at(601)).unwrap();
    assert_eq!(
        decide(&mut a, &approver("alice"), Verdict::Approve, "", at(602)),
        Err(Refusal::NotInGroup("oncall".into()))
    );
    let oncall = Approver {
        groups: vec!["oncall".into()],
        ..approver("bob")
    };
    assert_eq!(
        decide(&mut a, &oncall, Verdict::Approve, "", at(603)),
        Ok(S::Approved)
    );
}

#[test]
fn an_approved_request_not_executed_in_time_expires() {
    let mut a = approval(pb::Criticality::High);
    decide(&mut a, &approver("alice"), Verdict::Approve, "", at(10)).unwrap();
    assert_eq!(expire(&mut a, at(609)), None);
    assert_eq!(
        claim(&mut a.clone(), &binding(), at(610)),
        Err(Refusal::Expired)
    );
    assert_eq!(expire(&mut a, at(610)), Some(Timeout::Expired));
}

#[test]
fn a_claim_executes_exactly_once() {
    let mut a = approval(pb::Criticality::High);
    assert_eq!(
        claim(&mut a, &binding(), at(1)),
        Err(Refusal::NotApproved(S::Pending))
    );
    decide(&mut a, &approver("alice"), Verdict::Approve, "", at(1)).unwrap();
    assert_eq!(claim(&mut a, &binding(), at(2)), Ok(()));
    assert_eq!(state(&a), S::Executed);
    assert_eq!(
        claim(&mut a, &binding(), at(3)),
        Err(Refusal::AlreadyExecuted)
    );
    assert_eq!(expire(&mut a, at(10_000)), None, "executed is final");
}

#[test]
fn a_claim_must_match_every_bound_field() {
    let mut a = approval(pb::Criticality::High);
    decide(&mut a, &approver("alice"), Verdict::Approve, "", at(1)).unwrap();
    type Change = fn(&mut Binding);
    let changes: [(&str, Change); 6] = [
        ("tenant", |b| b.tenant = "globex".into()),
        ("caller", |b| b.caller = "other".into()),
        ("agent", |b| b.agent = "other".into()),
        ("action", |b| b.action = "payments.charge".into()),
        ("arguments", |b| b.arguments_sha256 = vec![8; 32]),
        ("policy_version", |b| b.policy_version = 6),
    ];
    for (field, change) in changes {
        let mut request = binding();
        change(&mut request);
        let Err(Refusal::Mismatch(fields)) = claim(&mut a, &request, at(2)) else {
            panic!("{field}: a changed request must not run");
        };
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].0, field);
        assert_eq!(state(&a), S::Approved, "a refused claim changes nothing");
    }
}

#[test]
fn rejected_and_expired_approvals_cannot_be_claimed() {
    for closed in [S::Rejected, S::Expired] {
        let mut a = approval(pb::Criticality::High);
        a.state = closed as i32;
        assert_eq!(
            claim(&mut a, &binding(), at(1)),
            Err(Refusal::Closed(closed))
        );
    }
}
