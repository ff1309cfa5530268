//! Why a request failed, and the gRPC status each failure becomes, with
//! `google.rpc` details a client can act on (field violations, the quota
//! that ran out and when to retry, the resource that is missing).
//!
//! Policy outcomes (blocked, rejected, pending approval) are not errors:
//! they are results with an `ExecutionStatus`.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, QuotaViolation, StatusExt};

/// The `google.rpc.ErrorInfo` domain of every aios error.
pub const ERROR_DOMAIN: &str = "aios.dev";

/// A failed request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// No key, or a key this node does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// The key may not do this.
    #[error("{message}")]
    PermissionDenied {
        /// Stable UPPER_SNAKE reason.
        reason: &'static str,
        /// What and why.
        message: String,
    },
    /// Fields of the request are invalid; each is listed.
    #[error("invalid request: {}", summary(.0))]
    Invalid(Vec<(String, String)>),
    /// The named object is not in this node's config.
    #[error("{kind} {name} not found")]
    NotFound {
        /// Kind display name.
        kind: &'static str,
        /// Name.
        name: String,
    },
    /// A rate limit ran out.
    #[error("rate limit exceeded: {description}; retry in {}ms", retry_after.as_millis())]
    RateLimited {
        /// What is limited, e.g. `api_key:acme/ci` or `user:acme/u-42`.
        subject: String,
        /// Which limit, e.g. `60 requests per minute`.
        description: String,
        /// When a retry can succeed.
        retry_after: Duration,
    },
    /// A budget cannot cover the request (BLOCK budgets, and DEGRADE ones
    /// whose cheaper route does not fit either).
    #[error("budget exhausted: {description}")]
    BudgetExhausted {
        /// Which budget, e.g. `budget:acme/daily` or `budget:acme/per-user/u-42`.
        subject: String,
        /// What is left and why it is not enough.
        description: String,
    },
    /// The request conflicts with the state of what it names (an approval
    /// that is not approved, already executed, or bound to other arguments).
    #[error("{message}")]
    FailedPrecondition {
        /// Stable UPPER_SNAKE reason, e.g. `BINDING_MISMATCH`.
        reason: String,
        /// What and why.
        message: String,
        /// (subject, why) for each violated condition, e.g. the fields that
        /// differ from what was approved.
        violations: Vec<(String, String)>,
    },
    /// No model could serve the request.
    #[error("{0}")]
    Unavailable(String),
    /// The deadline passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or an impossible state; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

fn summary(items: &[(String, String)]) -> String {
    items
        .iter()
        .map(|(field, why)| format!("{field}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ExecError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(vec![(field.into(), description.into())])
    }
}

impl From<ExecError> for Status {
    fn from(error: ExecError) -> Self {
        let message = error.to_string();
        match error {
            ExecError::Unauthenticated(_) => info(
                Code::Unauthenticated,
                message,
                "UNAUTHENTICATED",
                HashMap::new(),
            ),
            ExecError::PermissionDenied { reason, .. } => {
                info(Code::PermissionDenied, message, reason, HashMap::new())
            }
            ExecError::Invalid(fields) => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request(
                    fields
                        .into_iter()
                        .map(|(f, d)| FieldViolation::new(f, d))
                        .collect::<Vec<_>>(),
                ),
            ),
            ExecError::NotFound { kind, name } => Status::with_error_details(
                Code::NotFound,
                message,
                ErrorDetails::with_resource_info(kind, name, "", "not found"),
            ),
            ExecError::RateLimited {
                subject,
                description,
                retry_after,
            } => {
                let mut details = ErrorDetails::with_quota_failure(vec![QuotaViolation::new(
                    subject,
                    description,
                )]);
                details.set_retry_info(Some(retry_after));
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            ExecError::BudgetExhausted {
                subject,
                description,
            } => {
                let mut details = ErrorDetails::with_quota_failure(vec![QuotaViolation::new(
                    subject,
                    description,
                )]);
                details.set_error_info("BUDGET_EXHAUSTED", ERROR_DOMAIN, HashMap::new());
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            ExecError::FailedPrecondition {
                reason, violations, ..
            } => {
                let mut details =
                    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
                if !violations.is_empty() {
                    details.set_precondition_failure(
                        violations
                            .into_iter()
                            .map(|(subject, why)| {
                                PreconditionViolation::new("APPROVAL", subject, why)
                            })
                            .collect::<Vec<_>>(),
                    );
                }
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            ExecError::Unavailable(_) => Status::unavailable(message),
            ExecError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            ExecError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal(message)
            }
        }
    }
}

fn info(code: Code, message: String, reason: &str, metadata: HashMap<String, String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rate_limits_carry_the_quota_and_when_to_retry() {
        let status = Status::from(ExecError::RateLimited {
            subject: "api_key:acme/ci".into(),
            description: "2 requests per minute".into(),
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let quota = status.get_details_quota_failure().unwrap();
        assert_eq!(quota.violations[0].subject, "api_key:acme/ci");
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn internal_details_stay_in_the_logs() {
        let status = Status::from(ExecError::Internal("secret detail".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
