//! Approval errors and their one mapping to `tonic::Status`, in one
//! exhaustive `match`: every refusal of the state machine gets its code and
//! a stable `ErrorInfo` reason a client can branch on.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, PreconditionViolation, StatusExt};

use super::machine::{Refusal, state_name};
use crate::{
    admin::{AdminError, error::ERROR_DOMAIN},
    auth::AuthError,
    store::StoreError,
};

/// Why an approval request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Fields are invalid; every bad field is listed.
    #[error("invalid request: {}", .0.iter().map(|(f, w)| format!("{f}: {w}")).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<(String, String)>),
    /// No such approval in the tenant.
    #[error("approval {id} not found in tenant {tenant}")]
    NotFound {
        /// Tenant searched.
        tenant: String,
        /// The id.
        id: String,
    },
    /// The lifecycle forbids it.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// Writers kept racing for the record; retry.
    #[error("approval {0} is changing concurrently; retry")]
    Contended(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApprovalError {
    /// One invalid field.
    pub fn invalid(field: &str, why: impl Into<String>) -> Self {
        Self::Invalid(vec![(field.to_string(), why.into())])
    }
}

impl From<ApprovalError> for Status {
    fn from(error: ApprovalError) -> Self {
        let message = error.to_string();
        match error {
            ApprovalError::Auth(auth) => AdminError::from(auth).into(),
            ApprovalError::Invalid(fields) => AdminError::Invalid(fields).into(),
            ApprovalError::NotFound { tenant, id } => Status::with_error_details(
                Code::NotFound,
                message,
                ErrorDetails::with_resource_info("Approval", id, tenant, "not found"),
            ),
            ApprovalError::Refused(refusal) => refused(refusal, message),
            ApprovalError::Contended(_) => reason(Code::Aborted, message, "CONTENDED"),
            ApprovalError::Store(store) => AdminError::from(store).into(),
        }
    }
}

fn refused(refusal: Refusal, message: String) -> Status {
    let precondition =
        |reason_text: &str| reason(Code::FailedPrecondition, message.clone(), reason_text);
    match refusal {
        Refusal::Closed(state) => {
            let mut details = ErrorDetails::with_error_info(
                "APPROVAL_CLOSED",
                ERROR_DOMAIN,
                HashMap::from([("state".to_string(), state_name(state).to_string())]),
            );
            details.set_precondition_failure(vec![PreconditionViolation::new(
                "STATE",
                "approval",
                format!("is {}", state_name(state)),
            )]);
            Status::with_error_details(Code::FailedPrecondition, message, details)
        }
        Refusal::Expired => precondition("APPROVAL_EXPIRED"),
        Refusal::SelfApproval => reason(Code::PermissionDenied, message, "SELF_APPROVAL"),
        Refusal::AlreadyDecided(_) => precondition("ALREADY_DECIDED"),
        Refusal::NotInGroup(group) => Status::with_error_details(
            Code::PermissionDenied,
            message,
            ErrorDetails::with_error_info(
                "NOT_IN_ESCALATION_GROUP",
                ERROR_DOMAIN,
                HashMap::from([("group".to_string(), group)]),
            ),
        ),
        Refusal::NotApproved(_) => precondition("NOT_APPROVED"),
        Refusal::AlreadyExecuted => precondition("ALREADY_EXECUTED"),
        Refusal::Mismatch(fields) => {
            let mut details =
                ErrorDetails::with_error_info("BINDING_MISMATCH", ERROR_DOMAIN, HashMap::new());
            details.set_precondition_failure(
                fields
                    .into_iter()
                    .map(|(field, why)| PreconditionViolation::new("BINDING", field, why))
                    .collect::<Vec<_>>(),
            );
            Status::with_error_details(Code::FailedPrecondition, message, details)
        }
        Refusal::NoVerdict => AdminError::Invalid(vec![(
            "verdict".into(),
            "required: APPROVE or REJECT".into(),
        )])
        .into(),
    }
}

fn reason(code: Code, message: String, reason: &str) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use aios_proto::v1::ApprovalState;

    use super::*;

    fn reason_of(status: &Status) -> String {
        status.get_details_error_info().unwrap().reason
    }

    #[test]
    fn refusals_carry_their_code_and_reason() {
        let cases = [
            (
                Refusal::SelfApproval,
                Code::PermissionDenied,
                "SELF_APPROVAL",
            ),
            (
                Refusal::AlreadyDecided("a".into()),
                Code::FailedPrecondition,
                "ALREADY_DECIDED",
            ),
            (
                Refusal::Closed(ApprovalState::Rejected),
                Code::FailedPrecondition,
                "APPROVAL_CLOSED",
            ),
            (
                Refusal::AlreadyExecuted,
                Code::FailedPrecondition,
                "ALREADY_EXECUTED",
            ),
            (
                Refusal::NotInGroup("oncall".into()),
                Code::PermissionDenied,
                "NOT_IN_ESCALATION_GROUP",
            ),
        ];
        for (refusal, code, expected) in cases {
            let status = Status::from(ApprovalError::Refused(refusal));
            assert_eq!(status.code(), code);
            assert_eq!(reason_of(&status), expected);
        }
    }

    #[test]
    fn a_mismatch_names_every_differing_field() {
        let status = Status::from(ApprovalError::Refused(Refusal::Mismatch(vec![
            ("arguments".into(), "differ".into()),
            ("agent".into(), "is b".into()),
        ])));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&status), "BINDING_MISMATCH");
        let subjects: Vec<String> = status
            .get_details_precondition_failure()
            .unwrap()
            .violations
            .into_iter()
            .map(|v| v.subject)
            .collect();
        assert_eq!(subjects, ["arguments", "agent"]);
    }
}
