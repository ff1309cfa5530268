//! The approval lifecycle as a pure state machine: no store, no clock of
//! its own (every rule takes `now`), unit-tested rule by rule in
//! `machine_tests.rs`. The store layer reads a record, applies one of these
//! functions and writes the result by compare-and-swap, so a rule holds
//! however many replicas race.
//!
//! ```text
//! PENDING ──approve×N──▶ APPROVED ──claim──▶ EXECUTED
//!    │  └────reject────▶ REJECTED
//!    └──timeout──▶ ESCALATED (escalate_to set) or EXPIRED
//! ESCALATED ──approve×N / reject / timeout──▶ APPROVED / REJECTED / EXPIRED
//! APPROVED ──timeout (not executed in time)──▶ EXPIRED
//! ```

use std::time::{Duration, SystemTime};

use aios_proto::v1::{self as pb, ApprovalState, Verdict};
use prost_types::Timestamp;

/// Most APPROVE verdicts any approval needs (CRITICAL).
pub const CRITICAL_APPROVALS: u32 = 2;

/// Who is deciding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approver {
    /// The key's tenant.
    pub tenant: String,
    /// The key's name.
    pub key_name: String,
    /// The key's approver groups (`ApiKeySpec.groups`).
    pub groups: Vec<String>,
}

impl Approver {
    /// The name recorded in a decision: the key's name inside the
    /// approval's tenant, `tenant/name` for a key of another tenant (a
    /// platform admin), so two keys never count as one approver.
    pub fn recorded_name(&self, approval_tenant: &str) -> String {
        if self.tenant == approval_tenant {
            self.key_name.clone()
        } else {
            format!("{}/{}", self.tenant, self.key_name)
        }
    }
}

/// What an executing request is, to compare with what was approved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Tenant.
    pub tenant: String,
    /// Caller's key name.
    pub caller: String,
    /// Agent.
    pub agent: String,
    /// Action.
    pub action: String,
    /// SHA-256 of the arguments.
    pub arguments_sha256: Vec<u8>,
    /// Version of the policy in force.
    pub policy_version: i64,
}

/// Why a rule refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No longer open (decided, executed or expired).
    #[error("approval is {} and takes no more verdicts", state_name(*.0))]
    Closed(ApprovalState),
    /// Its time ran out (the sweeper may not have recorded it yet).
    #[error("approval expired at its expire_time")]
    Expired,
    /// The approver is the key that made the request.
    #[error("the key that made a request cannot approve it")]
    SelfApproval,
    /// This approver already gave a verdict.
    #[error("approver {0} already decided this approval")]
    AlreadyDecided(String),
    /// Escalated, and the approver is not in the escalation group.
    #[error("approval is escalated to group {0}; only its members may decide")]
    NotInGroup(String),
    /// Not (yet) approved: nothing to execute.
    #[error("approval is {} and cannot be executed", state_name(*.0))]
    NotApproved(ApprovalState),
    /// Already executed once.
    #[error("approval was already executed; an approval runs exactly once")]
    AlreadyExecuted,
    /// The request differs from what was approved: (field, why) each.
    #[error("request does not match the approval: {}", .0.iter().map(|(f, w)| format!("{f} {w}")).collect::<Vec<_>>().join("; "))]
    Mismatch(Vec<(String, String)>),
    /// A verdict that is neither APPROVE nor REJECT.
    #[error("verdict must be APPROVE or REJECT")]
    NoVerdict,
}

/// What a timeout did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// PENDING went to the escalation group.
    Escalated,
    /// The approval expired.
    Expired,
}

/// Whether approvers can still act on `state` (PENDING, ESCALATED).
pub fn is_open(state: ApprovalState) -> bool {
    matches!(state, ApprovalState::Pending | ApprovalState::Escalated)
}

/// Whether `state` has a clock running: open, or approved and not yet executed.
pub fn is_live(state: ApprovalState) -> bool {
    is_open(state) || state == ApprovalState::Approved
}

/// The state of `approval` (unknown values read as UNSPECIFIED).
pub fn state(approval: &pb::Approval) -> ApprovalState {
    ApprovalState::try_from(approval.state).unwrap_or(ApprovalState::Unspecified)
}

/// APPROVE verdicts `criticality` needs; `None` if it needs no approval.
pub fn required_approvals(criticality: pb::Criticality) -> Option<u32> {
    match criticality {
        pb::Criticality::High => Some(1),
        pb::Criticality::Critical => Some(CRITICAL_APPROVALS),
        pb::Criticality::Unspecified | pb::Criticality::Low | pb::Criticality::Medium => None,
    }
}

/// Whether the approval's clock has run out at `now`.
pub fn is_due(approval: &pb::Approval, now: SystemTime) -> bool {
    approval
        .expire_time
        .and_then(|t| SystemTime::try_from(t).ok())
        .is_some_and(|expire| expire <= now)
}

fn timeout_of(approval: &pb::Approval) -> Duration {
    approval
        .timeout
        .and_then(|t| Duration::try_from(t).ok())
        .unwrap_or(aios_model::DEFAULT_APPROVAL_TIMEOUT)
}

fn stamp(time: SystemTime) -> Option<Timestamp> {
    Some(Timestamp::from(time))
}

/// Records `approver`'s `verdict` on `approval` at `now`. One REJECT
/// rejects; the required number of APPROVEs from distinct approvers
/// approves, and starts the execution window (one `timeout`).
pub fn decide(
    approval: &mut pb::Approval,
    approver: &Approver,
    verdict: Verdict,
    comment: &str,
    now: SystemTime,
) -> Result<ApprovalState, Refusal> {
    if verdict == Verdict::Unspecified {
        return Err(Refusal::NoVerdict);
    }
    let current = state(approval);
    if !is_open(current) {
        return Err(Refusal::Closed(current));
    }
    if is_due(approval, now) {
        return Err(Refusal::Expired);
    }
    if approver.tenant == approval.tenant && approver.key_name == approval.caller {
        return Err(Refusal::SelfApproval);
    }
    if current == ApprovalState::Escalated && !approver.groups.contains(&approval.escalation_group)
    {
        return Err(Refusal::NotInGroup(approval.escalation_group.clone()));
    }
    let name = approver.recorded_name(&approval.tenant);
    if approval.decisions.iter().any(|d| d.approver == name) {
        return Err(Refusal::AlreadyDecided(name));
    }
    approval.decisions.push(pb::Decision {
        approver: name,
        verdict: verdict as i32,
        comment: comment.to_string(),
        time: stamp(now),
    });
    let approvals = approval
        .decisions
        .iter()
        .filter(|d| d.verdict == Verdict::Approve as i32)
        .count();
    let next = if verdict == Verdict::Reject {
        ApprovalState::Rejected
    } else if approvals >= approval.required_approvals.max(1) as usize {
        approval.expire_time = stamp(now + timeout_of(approval));
        ApprovalState::Approved
    } else {
        current
    };
    approval.state = next as i32;
    approval.update_time = stamp(now);
    Ok(next)
}

/// Applies the timeout rule at `now`: a due PENDING approval escalates
/// (when it has somewhere to go) or expires; a due ESCALATED or APPROVED
/// one expires. `None` when nothing is due.
pub fn expire(approval: &mut pb::Approval, now: SystemTime) -> Option<Timeout> {
    let current = state(approval);
    if !is_live(current) || !is_due(approval, now) {
        return None;
    }
    let outcome = if current == ApprovalState::Pending && !approval.escalate_to.is_empty() {
        approval.escalation_group = approval.escalate_to.clone();
        approval.expire_time = stamp(now + timeout_of(approval));
        approval.state = ApprovalState::Escalated as i32;
        Timeout::Escalated
    } else {
        approval.state = ApprovalState::Expired as i32;
        Timeout::Expired
    };
    approval.update_time = stamp(now);
    Some(outcome)
}

/// Moves an APPROVED approval to EXECUTED if `request` is what was
/// approved: same tenant, caller, agent, action, argument digest and policy
/// version, before the execution window closes.
pub fn claim(
    approval: &mut pb::Approval,
    request: &Binding,
    now: SystemTime,
) -> Result<(), Refusal> {
    match state(approval) {
        ApprovalState::Approved => {}
        ApprovalState::Executed => return Err(Refusal::AlreadyExecuted),
        open @ (ApprovalState::Pending | ApprovalState::Escalated) => {
            return Err(Refusal::NotApproved(open));
        }
        closed
        @ (ApprovalState::Rejected | ApprovalState::Expired | ApprovalState::Unspecified) => {
            return Err(Refusal::Closed(closed));
        }
    }
    if is_due(approval, now) {
        return Err(Refusal::Expired);
    }
    let mut differs = Vec::new();
    let mut check = |field: &str, same: bool, why: String| {
        if !same {
            differs.push((field.to_string(), why));
        }
    };
    check(
        "tenant",
        request.tenant == approval.tenant,
        format!("is {}, approved for {}", request.tenant, approval.tenant),
    );
    check(
        "caller",
        request.caller == approval.caller,
        format!(
            "is API key {}, approved for API key {}",
            request.caller, approval.caller
        ),
    );
    check(
        "agent",
        request.agent == approval.agent,
        format!("is {}, approved for {}", request.agent, approval.agent),
    );
    check(
        "action",
        request.action == approval.action,
        format!("is {}, approved for {}", request.action, approval.action),
    );
    check(
        "arguments",
        request.arguments_sha256 == approval.arguments_sha256,
        "differ from the approved arguments (SHA-256 mismatch)".into(),
    );
    check(
        "policy_version",
        request.policy_version == approval.policy_version,
        format!(
            "is {}, approved under {}: the policy changed since",
            request.policy_version, approval.policy_version
        ),
    );
    if !differs.is_empty() {
        return Err(Refusal::Mismatch(differs));
    }
    approval.state = ApprovalState::Executed as i32;
    approval.update_time = stamp(now);
    Ok(())
}

/// `APPROVAL_STATE_PENDING` → `PENDING`.
pub fn state_name(state: ApprovalState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("APPROVAL_STATE_").unwrap_or(name)
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
