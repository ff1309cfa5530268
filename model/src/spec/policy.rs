//! Policies: action rules, guardrails and approval settings.

use std::num::NonZeroU32;
use std::time::Duration;

use aios_proto::v1 as pb;

use crate::Criticality;
use crate::common::proto_enum;
use crate::convert;
use crate::glob::Glob;
use crate::names::validate_name;
use crate::violation::Ctx;

/// How long an approval stays pending when the policy says nothing.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest approval timeout.
pub const MAX_APPROVAL_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which actions are allowed, how critical they are, what guardrails apply
/// and how approvals behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Action rules, first match wins.
    pub rules: Vec<ActionRule>,
    /// Input checks; the default checks nothing.
    pub input: InputGuardrails,
    /// Output rewrites; the default rewrites nothing.
    pub output: OutputGuardrails,
    /// Approval timeouts and escalation.
    pub approval: ApprovalPolicy,
}

impl Policy {
    /// The first rule matching `action`; none = allowed with LOW.
    pub fn rule_for(&self, action: &str) -> Option<&ActionRule> {
        self.rules.iter().find(|r| r.action_glob.matches(action))
    }
}

/// Classifies the actions whose name matches a glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionRule {
    /// Which actions.
    pub action_glob: Glob,
    /// Their criticality (UNSPECIFIED = LOW).
    pub criticality: Criticality,
    /// True = refused.
    pub deny: bool,
}

/// Checks on input before any model or tool runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputGuardrails {
    /// Largest input in bytes; `None` = no limit.
    pub max_input_bytes: Option<NonZeroU32>,
    /// Handling of prompt injection; never `Redact`. UNSPECIFIED = ALLOW.
    pub prompt_injection: GuardrailAction,
    /// Handling of personal data. UNSPECIFIED = ALLOW.
    pub pii: GuardrailAction,
    /// Kinds detected, no repeats; empty = every kind.
    pub pii_kinds: Vec<PiiKind>,
}

impl Default for InputGuardrails {
    fn default() -> Self {
        Self {
            max_input_bytes: None,
            prompt_injection: GuardrailAction::Allow,
            pii: GuardrailAction::Allow,
            pii_kinds: Vec::new(),
        }
    }
}

/// Rewrites of model output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputGuardrails {
    /// Replace personal data with `[REDACTED:<KIND>]`.
    pub redact_pii: bool,
    /// Replace credentials with `[REDACTED:SECRET]`.
    pub redact_secrets: bool,
    /// Kinds redacted when `redact_pii`, no repeats; empty = every kind.
    pub pii_kinds: Vec<PiiKind>,
}

proto_enum! {
    /// What a guardrail does when it detects something.
    pub enum GuardrailAction from pb::GuardrailAction {
        /// Let it through.
        Allow,
        /// Refuse the request.
        Block,
        /// Replace the match and go on.
        Redact,
        /// Let it through and mark the span.
        Flag,
    }
}

proto_enum! {
    /// Kinds of personal or secret data guardrails detect.
    pub enum PiiKind from pb::PiiKind {
        /// E-mail addresses.
        Email,
        /// Phone numbers.
        Phone,
        /// Payment card numbers (Luhn-checked).
        CardNumber,
        /// US social security numbers.
        Ssn,
        /// IPv4 and IPv6 addresses.
        IpAddress,
        /// Credentials.
        Secret,
    }
}

/// How pending approvals time out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// How long an approval stays pending: > 0 and at most 7 days.
    pub timeout: Duration,
    /// What happens at the timeout.
    pub on_timeout: OnTimeout,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_APPROVAL_TIMEOUT,
            on_timeout: OnTimeout::Reject,
        }
    }
}

/// What happens when an approval times out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OnTimeout {
    /// The approval expires; the action never runs (also UNSPECIFIED).
    Reject,
    /// The approval goes to this approver group, waits one more timeout,
    /// then expires.
    Escalate {
        /// The approver group (`ApiKeySpec.groups`).
        group: String,
    },
}

pub(crate) fn convert(ctx: &mut Ctx, s: &pb::PolicySpec, path: &str) -> Option<Policy> {
    let mut rules = Some(Vec::with_capacity(s.rules.len()));
    for (i, rule) in s.rules.iter().enumerate() {
        let rule = action_rule(ctx, rule, &format!("{path}.rules[{i}]"));
        rules = rules.zip(rule).map(|(mut all, r)| {
            all.push(r);
            all
        });
    }
    let input = match &s.input {
        None => Some(InputGuardrails::default()),
        Some(g) => input(ctx, g, &format!("{path}.input")),
    };
    let output = match &s.output {
        None => Some(OutputGuardrails::default()),
        Some(g) => convert::enum_set(ctx, &g.pii_kinds, &format!("{path}.output.pii_kinds")).map(
            |pii_kinds| OutputGuardrails {
                redact_pii: g.redact_pii,
                redact_secrets: g.redact_secrets,
                pii_kinds,
            },
        ),
    };
    let approval = match &s.approval {
        None => Some(ApprovalPolicy::default()),
        Some(a) => approval(ctx, a, &format!("{path}.approval")),
    };
    Some(Policy {
        rules: rules?,
        input: input?,
        output: output?,
        approval: approval?,
    })
}

fn action_rule(ctx: &mut Ctx, r: &pb::ActionRule, path: &str) -> Option<ActionRule> {
    let glob = match Glob::new(&r.action_glob) {
        Ok(g) => Some(g),
        Err(reason) => {
            ctx.violation(format!("{path}.action_glob"), reason);
            None
        }
    };
    let criticality = convert::defaulted_enum(
        ctx,
        r.criticality,
        Criticality::Low,
        &format!("{path}.criticality"),
    );
    Some(ActionRule {
        action_glob: glob?,
        criticality: criticality?,
        deny: r.deny,
    })
}

fn input(ctx: &mut Ctx, g: &pb::InputGuardrails, path: &str) -> Option<InputGuardrails> {
    let injection_path = format!("{path}.prompt_injection");
    let prompt_injection = convert::defaulted_enum(
        ctx,
        g.prompt_injection,
        GuardrailAction::Allow,
        &injection_path,
    )
    .and_then(|a| {
        if a == GuardrailAction::Redact {
            ctx.violation(
                &injection_path,
                "REDACT is not valid for prompt injection; use BLOCK or FLAG",
            );
            None
        } else {
            Some(a)
        }
    });
    let pii = convert::defaulted_enum(ctx, g.pii, GuardrailAction::Allow, &format!("{path}.pii"));
    let pii_kinds = convert::enum_set(ctx, &g.pii_kinds, &format!("{path}.pii_kinds"));
    Some(InputGuardrails {
        max_input_bytes: NonZeroU32::new(g.max_input_bytes),
        prompt_injection: prompt_injection?,
        pii: pii?,
        pii_kinds: pii_kinds?,
    })
}

/// The contract says the group is "Required for ESCALATE"; the strict
/// reading (as for `BudgetSpec.degrade_routing_table`) is that it must be
/// empty otherwise, since it would never be used.
fn approval(ctx: &mut Ctx, a: &pb::ApprovalPolicy, path: &str) -> Option<ApprovalPolicy> {
    let timeout_path = format!("{path}.timeout");
    let timeout = convert::positive_duration(
        ctx,
        a.timeout.as_ref(),
        DEFAULT_APPROVAL_TIMEOUT,
        &timeout_path,
    )
    .and_then(|t| {
        if t > MAX_APPROVAL_TIMEOUT {
            ctx.violation(&timeout_path, "must be at most 7 days");
            None
        } else {
            Some(t)
        }
    });
    let group_path = format!("{path}.escalation_group");
    let on_timeout = match pb::TimeoutAction::try_from(a.on_timeout) {
        Err(_) => {
            ctx.violation(
                format!("{path}.on_timeout"),
                format!("unknown value {}", a.on_timeout),
            );
            None
        }
        Ok(pb::TimeoutAction::Unspecified | pb::TimeoutAction::Reject) => {
            if a.escalation_group.is_empty() {
                Some(OnTimeout::Reject)
            } else {
                ctx.violation(group_path, "must be empty unless on_timeout is ESCALATE");
                None
            }
        }
        Ok(pb::TimeoutAction::Escalate) => match validate_name(&a.escalation_group) {
            Ok(()) => Some(OnTimeout::Escalate {
                group: a.escalation_group.clone(),
            }),
            Err(reason) => {
                let reason = if a.escalation_group.is_empty() {
                    "is required when on_timeout is ESCALATE".to_string()
                } else {
                    reason
                };
                ctx.violation(group_path, reason);
                None
            }
        },
    };
    Some(ApprovalPolicy {
        timeout: timeout?,
        on_timeout: on_timeout?,
    })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
