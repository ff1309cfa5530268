//! Stage 4, policy: may this caller run this agent and this action, how
//! critical is it, and does it run for real or in forensic (dry-run) mode.
//!
//! Refusals by policy are results (`ExecutionStatus::BLOCKED` with a stable
//! reason), not errors; only "no such agent" and "this key may not run that
//! agent" are errors (NOT_FOUND, PERMISSION_DENIED).
//!
//! A HIGH or CRITICAL request runs only with a ticket, issued by the
//! approval gate (`crate::approvals`) for a request that names an approval:
//! the stage admits the request only if the ticket matches what it is
//! about to run, and puts the ticket's claim on the call. The agent loop
//! makes that claim (APPROVED → EXECUTED on the control plane) right before
//! the request runs, so a request refused by a later stage leaves its
//! approval unused. Without a ticket the stage ends the request as
//! `APPROVAL_REQUIRED`, which the gate turns into an approval request.

use std::time::Duration;

use aios_model::{Agent, Criticality, Kind, OnTimeout, Policy};

use super::{
    authn::Caller,
    call::{Call, Input, Outcome},
    catalog::Catalog,
    error::ExecError,
    stage::{Flow, Stage},
};
use crate::approvals::tickets;

/// The action a conversation is, for policy rules.
pub const CHAT_ACTION: &str = "chat";
/// Reason of the outcome that ends an unapproved HIGH or CRITICAL request.
pub const APPROVAL_REQUIRED: &str = "APPROVAL_REQUIRED";

/// What policy decided for an admitted request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The action policy saw (`chat` or the tool name).
    pub action: String,
    /// The effective criticality: the higher of the policy's and the agent's.
    pub criticality: Criticality,
    /// Side-effecting tools are skipped.
    pub forensic: bool,
    /// For HIGH and CRITICAL: what an approval of it is bound to.
    pub approval: Option<ApprovalTerms>,
    /// The approval this request executes (HIGH and CRITICAL only).
    pub approval_id: Option<String>,
}

/// How an approval of a request behaves, from the policy in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalTerms {
    /// resource_version of the agent's policy (0 = the agent has none).
    pub policy_version: i64,
    /// How long the approval waits (each stage: pending, escalated, approved).
    pub timeout: Duration,
    /// The group it escalates to at the timeout; `None` = it expires.
    pub escalate_to: Option<String>,
}

/// The arguments an approval of `input` is bound to: an action's
/// `arguments_json` as sent, or a conversation as a JSON array of
/// `{role, content}`.
pub fn approval_arguments(input: &Input) -> String {
    match input {
        Input::Action { arguments_json, .. } => arguments_json.clone(),
        Input::Messages(messages) => serde_json::Value::Array(
            messages
                .iter()
                .map(|m| serde_json::json!({"role": format!("{:?}", m.role).to_lowercase(), "content": m.content}))
                .collect(),
        )
        .to_string(),
    }
}

/// A policy refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// Stable UPPER_SNAKE reason (`AGENT_DISABLED`, `ACTION_DENIED`, …).
    pub reason: &'static str,
    /// Why, for the caller.
    pub message: String,
}

/// What the request asks for, as far as policy goes.
#[derive(Clone, Copy, Debug)]
pub enum Ask<'a> {
    /// A conversation (action `chat`).
    Chat,
    /// One named action (a tool of the agent).
    Action(&'a str),
}

/// Decides on `agent` for `caller`. `forensic` is the request's own flag.
pub fn decide(
    catalog: &Catalog,
    caller: &Caller,
    agent_name: &str,
    ask: Ask<'_>,
    forensic: bool,
) -> Result<Result<Admitted, Blocked>, ExecError> {
    let agent = catalog
        .agent(&caller.tenant, agent_name)
        .ok_or_else(|| ExecError::NotFound {
            kind: "Agent",
            name: agent_name.to_string(),
        })?;
    if !caller.may_run(agent_name) {
        return Err(ExecError::PermissionDenied {
            reason: "AGENT_NOT_ALLOWED",
            message: format!(
                "API key {}/{} may not run agent {agent_name}",
                caller.tenant, caller.key_name
            ),
        });
    }
    Ok(judge(
        catalog,
        &caller.tenant,
        agent_name,
        agent,
        ask,
        forensic,
    ))
}

/// The policy stage.
#[derive(Debug, Default)]
pub struct PolicyStage;

impl Stage for PolicyStage {
    fn before(&self, call: &mut Call) -> Result<Flow, ExecError> {
        let Some(caller) = &call.caller else {
            return Ok(Flow::Continue);
        };
        let ask = match &call.request.input {
            Input::Messages(_) => Ask::Chat,
            Input::Action { name, .. } => Ask::Action(name),
        };
        match decide(
            &call.catalog,
            caller,
            &call.request.agent,
            ask,
            call.request.forensic,
        )? {
            Ok(mut admitted) => {
                if admitted.approval.is_some() {
                    let claim = tickets::take(&call.metadata).filter(|claim| {
                        claim.admits(
                            caller,
                            &call.request.agent,
                            &admitted.action,
                            &approval_arguments(&call.request.input),
                        )
                    });
                    let Some(claim) = claim else {
                        return Ok(Flow::Done(Box::new(Outcome {
                            criticality: admitted.criticality,
                            ..Outcome::blocked(
                                APPROVAL_REQUIRED,
                                format!(
                                    "action {} is {:?} and needs approval",
                                    admitted.action, admitted.criticality
                                ),
                            )
                        })));
                    };
                    admitted.approval_id = Some(claim.approval_id().to_string());
                    call.claim = Some(claim);
                }
                call.admitted = Some(admitted);
                Ok(Flow::Continue)
            }
            Err(blocked) => Ok(Flow::Done(Box::new(Outcome::blocked(
                blocked.reason,
                blocked.message,
            )))),
        }
    }
}

fn judge(
    catalog: &Catalog,
    tenant: &str,
    agent_name: &str,
    agent: &Agent,
    ask: Ask<'_>,
    forensic: bool,
) -> Result<Admitted, Blocked> {
    let block = |reason, message: String| Err(Blocked { reason, message });
    if agent.disabled {
        return block("AGENT_DISABLED", format!("agent {agent_name} is disabled"));
    }
    let action = match ask {
        Ask::Chat => CHAT_ACTION,
        Ask::Action(action) => {
            if !agent.allowed_tools.iter().any(|t| t == action) {
                return block(
                    "ACTION_NOT_ALLOWED",
                    format!("agent {agent_name} has no tool {action}"),
                );
            }
            action
        }
    };
    let policy: Option<&Policy> = match &agent.policy {
        None => None,
        Some(name) => match catalog.policy(tenant, name) {
            Some(policy) => Some(policy),
            // The node rejected or has not received it: fail closed.
            None => {
                return block(
                    "POLICY_UNAVAILABLE",
                    format!("policy {name} of agent {agent_name} is not in force on this node"),
                );
            }
        },
    };
    let rule = policy.and_then(|p| p.rule_for(action));
    if rule.is_some_and(|r| r.deny) {
        return block(
            "ACTION_DENIED",
            format!("policy denies action {action} to agent {agent_name}"),
        );
    }
    let criticality = rule
        .map(|r| r.criticality)
        .into_iter()
        .chain(agent.criticality_of(action))
        .max()
        .unwrap_or(Criticality::Low);
    let approval = (criticality >= Criticality::High).then(|| {
        let approval = policy.map(|p| &p.approval);
        ApprovalTerms {
            policy_version: agent
                .policy
                .as_ref()
                .and_then(|name| catalog.get(Kind::Policy, tenant, name))
                .map_or(0, |applied| applied.version),
            timeout: approval.map_or(aios_model::DEFAULT_APPROVAL_TIMEOUT, |a| a.timeout),
            escalate_to: approval.and_then(|a| match &a.on_timeout {
                OnTimeout::Reject => None,
                OnTimeout::Escalate { group } => Some(group.clone()),
            }),
        }
    });
    Ok(Admitted {
        action: action.to_string(),
        criticality,
        forensic: forensic || agent.forensic,
        approval,
        approval_id: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aios_model::Role;
    use aios_proto::v1::{self as pb, resource::Spec};

    use super::*;
    use crate::pipeline::testing::{catalog, resource};

    fn caller(allowed: &[&str]) -> Caller {
        Caller {
            tenant: "acme".into(),
            key_name: "ci".into(),
            role: Role::Caller,
            rate_limit: Default::default(),
            allowed_agents: allowed.iter().map(|a| a.to_string()).collect(),
            user: None,
        }
    }

    fn agent(edit: impl FnOnce(&mut pb::AgentSpec)) -> pb::Resource {
        let mut spec = pb::AgentSpec {
            system_prompt: "hi".into(),
            routing_table: "std".into(),
            allowed_tools: vec!["payments.refund".into(), "search".into()],
            policy: "default".into(),
            ..Default::default()
        };
        edit(&mut spec);
        resource("bot", Spec::Agent(spec))
    }

    fn policy() -> pb::Resource {
        resource(
            "default",
            Spec::Policy(pb::PolicySpec {
                rules: vec![
                    pb::ActionRule {
                        action_glob: "payments.*".into(),
                        criticality: pb::Criticality::High as i32,
                        deny: false,
                    },
                    pb::ActionRule {
                        action_glob: "search".into(),
                        criticality: pb::Criticality::Low as i32,
                        deny: true,
                    },
                ],
                ..Default::default()
            }),
        )
    }

    fn reason(result: Result<Result<Admitted, Blocked>, ExecError>) -> &'static str {
        result.unwrap().unwrap_err().reason
    }

    #[test]
    fn chat_is_admitted_with_low_criticality() {
        let c = catalog(vec![agent(|_| {}), policy()]);
        let admitted = decide(&c, &caller(&[]), "bot", Ask::Chat, false)
            .unwrap()
            .unwrap();
        assert_eq!(admitted.action, "chat");
        assert_eq!(admitted.criticality, Criticality::Low);
        assert!(!admitted.forensic);
    }

    #[test]
    fn unknown_agents_and_keys_limited_to_other_agents_are_errors() {
        let c = catalog(vec![agent(|_| {}), policy()]);
        assert!(matches!(
            decide(&c, &caller(&[]), "nope", Ask::Chat, false),
            Err(ExecError::NotFound { .. })
        ));
        assert!(matches!(
            decide(&c, &caller(&["other"]), "bot", Ask::Chat, false),
            Err(ExecError::PermissionDenied {
                reason: "AGENT_NOT_ALLOWED",
                ..
            })
        ));
    }

    #[test]
    fn refusals_are_blocked_results_with_reasons() {
        let c = catalog(vec![agent(|a| a.disabled = true), policy()]);
        assert_eq!(
            reason(decide(&c, &caller(&[]), "bot", Ask::Chat, false)),
            "AGENT_DISABLED"
        );

        let c = catalog(vec![agent(|_| {}), policy()]);
        let run = |action| decide(&c, &caller(&[]), "bot", Ask::Action(action), false);
        assert_eq!(reason(run("delete.everything")), "ACTION_NOT_ALLOWED");
        assert_eq!(reason(run("search")), "ACTION_DENIED");
        let high = run("payments.refund").unwrap().unwrap();
        assert_eq!(high.criticality, Criticality::High);
        assert_eq!(
            high.approval,
            Some(ApprovalTerms {
                policy_version: 1,
                timeout: aios_model::DEFAULT_APPROVAL_TIMEOUT,
                escalate_to: None,
            }),
            "a HIGH action is admitted only with approval terms"
        );

        let c = catalog(vec![agent(|_| {})]);
        assert_eq!(
            reason(decide(&c, &caller(&[]), "bot", Ask::Chat, false)),
            "POLICY_UNAVAILABLE",
            "a policy missing on the node fails closed"
        );
    }

    #[test]
    fn the_higher_criticality_wins_and_forensic_comes_from_either_side() {
        let c = catalog(vec![agent(|a| {
            a.policy = String::new();
            a.forensic = true;
            a.action_criticality = [("sea*".to_string(), pb::Criticality::Medium as i32)].into();
        })]);
        let admitted = decide(&c, &caller(&[]), "bot", Ask::Action("search"), false)
            .unwrap()
            .unwrap();
        assert_eq!(admitted.criticality, Criticality::Medium);
        assert!(admitted.forensic, "the agent is forensic");
    }
}
