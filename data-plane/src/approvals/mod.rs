//! The approval gate: what happens to a request that policy rates HIGH or
//! CRITICAL (see ARCHITECTURE.md, "Approvals").
//!
//! The gate sits between the edge and the pipeline. A request runs through
//! the pipeline as usual; when the policy stage ends it as
//! `APPROVAL_REQUIRED`, the gate asks the control plane for an approval
//! bound to {caller, tenant, agent, action, argument digest, policy
//! version, expiry} and answers PENDING_APPROVAL with its id, or, when the
//! caller asked to wait, long-polls it until it is decided or the caller's
//! deadline nears.
//!
//! A request naming an approval (or one that waited and was approved) runs
//! with a ticket ([`tickets`]) that lets this one request past the policy
//! stage: a [`Claim`], bound to what was approved, that the agent loop makes right before
//! the request's action (or first model call) runs: the control plane moves
//! the approval from APPROVED to EXECUTED by compare-and-swap only if the
//! request matches what was approved, so it runs exactly once and with the
//! approved arguments only. Claiming at the point of execution means a
//! request refused before it ran (a rate limit, a budget, a guardrail)
//! leaves the approval APPROVED, and says so: the caller re-submits with
//! the same approval. A refused claim ends the request as the refusal says
//! (still pending, rejected, expired, already executed, bound to other
//! arguments).

pub mod claim;
pub mod client;
pub mod tickets;

use std::time::Duration;

use aios_model::Criticality;
use aios_proto::v1::{self as pb, ApprovalState};
use tokio::{sync::mpsc, time::Instant};
use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::StatusExt;

use self::claim::{unused_in_error, unused_in_outcome};
pub use self::{claim::Claim, client::ApprovalClient};
use crate::{
    pipeline::{
        Caller, CatalogHandle, DEFAULT_DEADLINE, Event, ExecError, ExecRequest, Input, Outcome,
        Pipeline, Status as RunStatus, authn,
        policy::{self, APPROVAL_REQUIRED, Admitted, ApprovalTerms, Ask},
    },
    telemetry::{TraceContext, trace::new_span_id},
};

/// Longest single long poll of a waiting request (the control plane
/// answers sooner when the approval closes).
pub const LONG_POLL: Duration = Duration::from_secs(20);
/// Pause after a failed poll (the control plane unreachable).
pub const RETRY_AFTER: Duration = Duration::from_millis(250);
/// A waiting request stops waiting this long before its deadline, so an
/// approval that arrives then still has time to run.
pub const RUN_MARGIN: Duration = Duration::from_secs(1);

/// What the caller said about approvals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApprovalAsk {
    /// An approval to execute (empty = none).
    pub approval_id: String,
    /// Wait for the verdict, up to the deadline, instead of answering
    /// PENDING_APPROVAL at once.
    pub wait: bool,
}

/// How a request passed the gate.
#[derive(Debug)]
pub enum Gated {
    /// It ran through the pipeline (or was refused there).
    Ran {
        /// The pipeline's outcome.
        outcome: Box<Outcome>,
        /// The approval it executed, if any.
        approval_id: Option<String>,
    },
    /// It waits for approval.
    Pending {
        /// The approval to re-submit with once APPROVED.
        approval_id: String,
        /// Why it waits.
        message: String,
    },
    /// An approver rejected it, or its approval expired.
    Rejected {
        /// The approval.
        approval_id: String,
        /// `APPROVAL_REJECTED` or `APPROVAL_EXPIRED`.
        reason: &'static str,
        /// Who and why, for the caller.
        message: String,
    },
}

/// The gate; cheap to clone.
#[derive(Clone, Debug)]
pub struct Approvals {
    client: Option<ApprovalClient>,
    catalog: CatalogHandle,
}

/// What an approval of one request is bound to.
struct Subject {
    caller: Caller,
    admitted: Admitted,
    terms: ApprovalTerms,
    arguments: String,
}

impl Approvals {
    /// A gate asking the control plane through `client`; without one, HIGH
    /// and CRITICAL requests stay refused as `APPROVAL_REQUIRED`.
    pub fn new(client: Option<ApprovalClient>, catalog: CatalogHandle) -> Self {
        Self { client, catalog }
    }

    /// Runs `request` through `pipeline` under the approval rules.
    #[allow(clippy::too_many_arguments)] // the pipeline's own arguments, plus the ask
    pub async fn execute(
        &self,
        pipeline: &Pipeline,
        trace: TraceContext,
        mut metadata: MetadataMap,
        request: ExecRequest,
        ask: ApprovalAsk,
        timeout: Option<Duration>,
        events: Option<mpsc::Sender<Event>>,
    ) -> Result<Gated, ExecError> {
        tickets::strip(&mut metadata);
        let deadline = Instant::now() + timeout.unwrap_or(DEFAULT_DEADLINE);
        if !ask.approval_id.is_empty() {
            return self
                .run_approved(
                    pipeline,
                    trace,
                    metadata,
                    request,
                    &ask.approval_id,
                    deadline,
                    events,
                )
                .await;
        }
        let outcome = pipeline
            .execute_traced(
                trace,
                metadata.clone(),
                request.clone(),
                timeout,
                events.clone(),
            )
            .await?;
        let needs_approval = outcome.status == RunStatus::Blocked
            && outcome
                .error
                .as_ref()
                .is_some_and(|(reason, _)| reason == APPROVAL_REQUIRED);
        let (true, Some(client)) = (needs_approval, &self.client) else {
            return Ok(Gated::Ran {
                outcome: Box::new(outcome),
                approval_id: None,
            });
        };
        let Some(subject) = self.subject(&metadata, &request)? else {
            return Ok(Gated::Ran {
                outcome: Box::new(outcome),
                approval_id: None,
            });
        };
        let approval = client
            .request(pb::RequestApprovalRequest {
                tenant: subject.caller.tenant.clone(),
                agent: request.agent.clone(),
                action: subject.admitted.action.clone(),
                caller: subject.caller.key_name.clone(),
                arguments_json: subject.arguments.clone(),
                criticality: subject.admitted.criticality.to_proto() as i32,
                policy_version: subject.terms.policy_version,
                timeout: prost_types::Duration::try_from(subject.terms.timeout).ok(),
                escalate_to: subject.terms.escalate_to.clone().unwrap_or_default(),
                user: subject.caller.user.clone().unwrap_or_default(),
                trace_id: trace.trace_id_hex(),
            })
            .await
            .map_err(|status| unreachable(&status))?;
        tracing::info!(approval = %approval.id, tenant = %approval.tenant, action = %approval.action, "approval requested");
        if !ask.wait {
            return Ok(pending(&approval, &subject.admitted));
        }
        let decided = wait(client, &approval, deadline).await;
        match ApprovalState::try_from(decided.state).unwrap_or(ApprovalState::Unspecified) {
            ApprovalState::Approved => {
                let next = TraceContext {
                    span_id: new_span_id(),
                    ..trace
                };
                self.run_approved(
                    pipeline,
                    next,
                    metadata,
                    request,
                    &approval.id,
                    deadline,
                    events,
                )
                .await
            }
            ApprovalState::Pending | ApprovalState::Escalated => {
                Ok(pending(&decided, &subject.admitted))
            }
            ApprovalState::Rejected => Ok(rejected(&decided)),
            ApprovalState::Expired => Ok(expired(&decided.id)),
            ApprovalState::Executed | ApprovalState::Unspecified => {
                Err(ExecError::FailedPrecondition {
                    reason: "ALREADY_EXECUTED".into(),
                    message: format!("approval {} was executed by another request", decided.id),
                    violations: Vec::new(),
                })
            }
        }
    }

    /// Runs `request` under approval `id`: the ticket lets it past policy,
    /// and the agent loop claims the approval right before it runs.
    #[allow(clippy::too_many_arguments)]
    async fn run_approved(
        &self,
        pipeline: &Pipeline,
        trace: TraceContext,
        mut metadata: MetadataMap,
        mut request: ExecRequest,
        id: &str,
        deadline: Instant,
        events: Option<mpsc::Sender<Event>>,
    ) -> Result<Gated, ExecError> {
        let subject = match (&self.client, self.subject(&metadata, &request)?) {
            (Some(client), Some(subject)) => Some((client, subject)),
            _ => None,
        };
        let Some((client, subject)) = subject else {
            // Policy does not ask for approval of this request (or this
            // node cannot take approvals): it runs, or is refused, as usual.
            let timeout = deadline.saturating_duration_since(Instant::now());
            let outcome = pipeline
                .execute_traced(trace, metadata, request, Some(timeout), events)
                .await?;
            return Ok(Gated::Ran {
                outcome: Box::new(outcome),
                approval_id: None,
            });
        };
        let claim = Claim::new(
            client.clone(),
            pb::ClaimApprovalRequest {
                id: id.to_string(),
                tenant: subject.caller.tenant,
                caller: subject.caller.key_name,
                agent: request.agent.clone(),
                action: subject.admitted.action.clone(),
                arguments_sha256: aios_runtime::keys::arguments_sha256(&subject.arguments).to_vec(),
                policy_version: subject.terms.policy_version,
            },
        );
        let _issued = tickets::issue(claim.clone(), &mut metadata);
        // The approval is what makes this run once; a replayed
        // idempotency key must not answer with the earlier refusal.
        request.idempotency_key.clear();
        trace.answer(&mut metadata);
        let timeout = deadline.saturating_duration_since(Instant::now());
        let ran = pipeline
            .execute_traced(trace, metadata, request, Some(timeout), events)
            .await;
        match claim.made() {
            // The claim's refusal says why, whatever the pipeline made of it.
            Some(Err(status)) => claim_refused(id, status, &subject.admitted),
            Some(Ok(())) => Ok(Gated::Ran {
                outcome: Box::new(ran?),
                approval_id: Some(id.to_string()),
            }),
            None => {
                tracing::info!(approval = %id, "request ended before it ran; approval not used");
                match ran {
                    Ok(outcome) => Ok(Gated::Ran {
                        outcome: Box::new(unused_in_outcome(outcome, id)),
                        approval_id: None,
                    }),
                    Err(error) => Err(unused_in_error(error, id)),
                }
            }
        }
    }

    /// The caller and policy's terms for `request`, from the config in
    /// force; `None` when policy does not ask for approval of it.
    fn subject(
        &self,
        metadata: &MetadataMap,
        request: &ExecRequest,
    ) -> Result<Option<Subject>, ExecError> {
        let catalog = self.catalog.load();
        let caller =
            authn::authenticate(&catalog, metadata, &request.user, jiff::Timestamp::now())?;
        let ask = match &request.input {
            Input::Messages(_) => Ask::Chat,
            Input::Action { name, .. } => Ask::Action(name),
        };
        let Ok(admitted) =
            policy::decide(&catalog, &caller, &request.agent, ask, request.forensic)?
        else {
            return Ok(None);
        };
        let Some(terms) = admitted.approval.clone() else {
            return Ok(None);
        };
        Ok(Some(Subject {
            caller,
            admitted,
            terms,
            arguments: policy::approval_arguments(&request.input),
        }))
    }
}

/// Waits for `approval` to close, or until [`RUN_MARGIN`] before
/// `deadline`; returns it as last seen. Each wait is one long poll of the
/// control plane (`Get` with `wait_while_open`), so a decision reaches the
/// caller as soon as the control plane sees it; a failed poll is retried
/// after [`RETRY_AFTER`].
async fn wait(client: &ApprovalClient, approval: &pb::Approval, deadline: Instant) -> pb::Approval {
    let mut last = approval.clone();
    loop {
        let state = ApprovalState::try_from(last.state).unwrap_or(ApprovalState::Unspecified);
        if !matches!(state, ApprovalState::Pending | ApprovalState::Escalated) {
            return last;
        }
        let left = deadline.saturating_duration_since(Instant::now() + RUN_MARGIN);
        if left.is_zero() {
            return last;
        }
        match client
            .get(&approval.tenant, &approval.id, left.min(LONG_POLL))
            .await
        {
            Ok(now) => last = now,
            // Keep waiting: the control plane may be back by the next poll.
            Err(status) => {
                tracing::debug!(approval = %approval.id, error = %status.message(), "approval poll failed");
                tokio::time::sleep(RETRY_AFTER.min(left)).await;
            }
        }
    }
}

fn pending(approval: &pb::Approval, admitted: &Admitted) -> Gated {
    Gated::Pending {
        approval_id: approval.id.clone(),
        message: format!(
            "action {} is {:?} and needs {} approval(s); re-submit with approval_id {} once it is APPROVED",
            admitted.action,
            admitted.criticality,
            approval
                .required_approvals
                .max(pending_required(admitted.criticality)),
            approval.id
        ),
    }
}

fn pending_required(criticality: Criticality) -> u32 {
    if criticality >= Criticality::Critical {
        2
    } else {
        1
    }
}

fn rejected(approval: &pb::Approval) -> Gated {
    let by = approval
        .decisions
        .iter()
        .rev()
        .find(|d| d.verdict == pb::Verdict::Reject as i32);
    Gated::Rejected {
        approval_id: approval.id.clone(),
        reason: "APPROVAL_REJECTED",
        message: match by {
            Some(d) if d.comment.is_empty() => {
                format!("approval {} was rejected by {}", approval.id, d.approver)
            }
            Some(d) => format!(
                "approval {} was rejected by {}: {}",
                approval.id, d.approver, d.comment
            ),
            None => format!("approval {} was rejected", approval.id),
        },
    }
}

fn expired(id: &str) -> Gated {
    Gated::Rejected {
        approval_id: id.to_string(),
        reason: "APPROVAL_EXPIRED",
        message: format!("approval {id} expired: it was not decided (or executed) in time"),
    }
}

/// A refused claim: still pending → PENDING_APPROVAL again; rejected or
/// expired → REJECTED; anything else → the error the control plane gave.
fn claim_refused(id: &str, status: &Status, admitted: &Admitted) -> Result<Gated, ExecError> {
    let info = status.get_details_error_info();
    let reason = info.as_ref().map(|i| i.reason.as_str()).unwrap_or("");
    let state = info
        .as_ref()
        .and_then(|i| i.metadata.get("state").cloned())
        .unwrap_or_default();
    match (status.code(), reason) {
        (Code::FailedPrecondition, "NOT_APPROVED") => Ok(Gated::Pending {
            approval_id: id.to_string(),
            message: format!(
                "approval {id} is not approved yet ({} {:?} action needs its approvers); re-submit once it is APPROVED",
                admitted.action, admitted.criticality
            ),
        }),
        (Code::FailedPrecondition, "APPROVAL_EXPIRED") => Ok(expired(id)),
        (Code::FailedPrecondition, "APPROVAL_CLOSED") if state == "EXPIRED" => Ok(expired(id)),
        (Code::FailedPrecondition, "APPROVAL_CLOSED") => Ok(Gated::Rejected {
            approval_id: id.to_string(),
            reason: "APPROVAL_REJECTED",
            message: format!("approval {id} was rejected"),
        }),
        _ => Err(claim_error(id, status)),
    }
}

/// A refused claim of approval `id` as an error: what the pipeline ends
/// with when the agent loop's claim is refused, and what the caller gets
/// for refusals that are not a state of the approval (already executed,
/// bound to other arguments, unknown, the control plane unreachable).
pub(crate) fn claim_error(id: &str, status: &Status) -> ExecError {
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default();
    match status.code() {
        Code::FailedPrecondition => ExecError::FailedPrecondition {
            reason: if reason.is_empty() {
                "APPROVAL_NOT_EXECUTABLE".to_string()
            } else {
                reason
            },
            message: format!("approval {id}: {}", status.message()),
            violations: status
                .get_details_precondition_failure()
                .map(|p| {
                    p.violations
                        .into_iter()
                        .map(|v| (v.subject, v.description))
                        .collect()
                })
                .unwrap_or_default(),
        },
        Code::NotFound => ExecError::NotFound {
            kind: "Approval",
            name: id.to_string(),
        },
        Code::InvalidArgument => ExecError::invalid("approval_id", status.message()),
        _ => unreachable(status),
    }
}

/// The control plane could not be asked (or refused the node's key).
fn unreachable(status: &Status) -> ExecError {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => ExecError::Unavailable(format!(
            "the control plane refused this node's key for approvals ({}); {}",
            status.message(),
            crate::upstream::CREDENTIAL_HINT
        )),
        _ => ExecError::Unavailable(format!(
            "approvals are unavailable: the control plane did not answer ({})",
            status.message()
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use tonic_types::{ErrorDetails, PreconditionViolation};

    use super::*;

    fn admitted() -> Admitted {
        Admitted {
            action: "pay".into(),
            criticality: Criticality::Critical,
            forensic: false,
            approval: None,
            approval_id: None,
        }
    }

    fn refusal(reason: &str, state: &str) -> Status {
        let mut details = ErrorDetails::with_error_info(
            reason,
            "aios.dev",
            HashMap::from([("state".to_string(), state.to_string())]),
        );
        details.set_precondition_failure(vec![PreconditionViolation::new(
            "BINDING",
            "arguments",
            "differ",
        )]);
        Status::with_error_details(Code::FailedPrecondition, "refused", details)
    }

    #[test]
    fn a_refused_claim_ends_with_a_clear_status() {
        let id = "apr_x";
        let gated = |status: Status| claim_refused(id, &status, &admitted());
        assert!(matches!(
            gated(refusal("NOT_APPROVED", "PENDING")),
            Ok(Gated::Pending { .. })
        ));
        assert!(matches!(
            gated(refusal("APPROVAL_CLOSED", "REJECTED")),
            Ok(Gated::Rejected {
                reason: "APPROVAL_REJECTED",
                ..
            })
        ));
        assert!(matches!(
            gated(refusal("APPROVAL_CLOSED", "EXPIRED")),
            Ok(Gated::Rejected {
                reason: "APPROVAL_EXPIRED",
                ..
            })
        ));
        let Err(ExecError::FailedPrecondition {
            reason, violations, ..
        }) = gated(refusal("BINDING_MISMATCH", ""))
        else {
            panic!("a mismatch is an error");
        };
        assert_eq!(reason, "BINDING_MISMATCH");
        assert_eq!(
            violations,
            [("arguments".to_string(), "differ".to_string())]
        );
        assert!(matches!(
            gated(Status::not_found("x")),
            Err(ExecError::NotFound { .. })
        ));
        assert!(matches!(
            gated(Status::unavailable("down")),
            Err(ExecError::Unavailable(_))
        ));
    }

    #[test]
    fn a_rejection_names_the_approver_and_comment() {
        let approval = pb::Approval {
            id: "apr_1".into(),
            decisions: vec![pb::Decision {
                approver: "alice".into(),
                verdict: pb::Verdict::Reject as i32,
                comment: "not this one".into(),
                time: None,
            }],
            ..Default::default()
        };
        let Gated::Rejected { message, .. } = rejected(&approval) else {
            panic!("rejected");
        };
        assert_eq!(
            message,
            "approval apr_1 was rejected by alice: not this one"
        );
    }
}
