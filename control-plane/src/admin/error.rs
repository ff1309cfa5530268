//! Admin errors and their one mapping to `tonic::Status`, with
//! `google.rpc` details, in one exhaustive `match` (no `_` arm): adding a
//! variant forces a decision about its code.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt};

use crate::{auth::AuthError, store::StoreError};

/// `ErrorInfo.domain` of every aios error.
pub const ERROR_DOMAIN: &str = "aios.dev";

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Fields are invalid; every bad field is listed.
    #[error("invalid request: {}", summary(.0))]
    Invalid(Vec<(String, String)>),
    /// The object does not exist.
    #[error("{kind} {name} not found in tenant {tenant}")]
    NotFound {
        /// Kind display name.
        kind: &'static str,
        /// Tenant.
        tenant: String,
        /// Name.
        name: String,
    },
    /// No such node in the fleet view.
    #[error("node {0} is not known: it never connected, or was forgotten after disconnecting")]
    NodeNotFound(String),
    /// The caller's `resource_version` is not the stored one.
    #[error("{kind} {name} has version {actual}, not {expected}: re-read it and apply again")]
    Stale {
        /// Kind display name.
        kind: &'static str,
        /// Name.
        name: String,
        /// Version the caller sent.
        expected: i64,
        /// Version stored (0 = absent).
        actual: i64,
    },
    /// The request is valid but the state forbids it (missing references,
    /// objects still in use).
    #[error("failed precondition: {}", summary(.0))]
    Precondition(Vec<(String, String)>),
    /// A watch asked for history that has been compacted.
    #[error(
        "revision {requested} has been compacted (compact revision {compact_revision}): list again and watch from the list's revision"
    )]
    Compacted {
        /// Requested start revision.
        requested: i64,
        /// The store's compact revision.
        compact_revision: i64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn summary(items: &[(String, String)]) -> String {
    items
        .iter()
        .map(|(what, why)| format!("{what}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<AdminError> for Status {
    fn from(error: AdminError) -> Self {
        let message = error.to_string();
        match error {
            AdminError::Auth(auth) => match auth {
                AuthError::Missing
                | AuthError::Invalid
                | AuthError::Disabled(_)
                | AuthError::Expired(_) => with_reason(
                    Code::Unauthenticated,
                    message,
                    "UNAUTHENTICATED",
                    HashMap::new(),
                ),
                AuthError::TenantDisabled(tenant) => with_reason(
                    Code::PermissionDenied,
                    message,
                    "TENANT_DISABLED",
                    HashMap::from([("tenant".into(), tenant)]),
                ),
                AuthError::Forbidden { role, .. } => with_reason(
                    Code::PermissionDenied,
                    message,
                    "ROLE_FORBIDDEN",
                    HashMap::from([("role".into(), role.as_str().into())]),
                ),
                AuthError::CrossTenant { requested, .. } => with_reason(
                    Code::PermissionDenied,
                    message,
                    "CROSS_TENANT",
                    HashMap::from([("tenant".into(), requested)]),
                ),
                AuthError::Store(store) => store_status(store),
            },
            AdminError::Invalid(violations) => {
                let violations: Vec<FieldViolation> = violations
                    .into_iter()
                    .map(|(f, d)| FieldViolation::new(f, d))
                    .collect();
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            AdminError::NotFound { kind, tenant, name } => Status::with_error_details(
                Code::NotFound,
                message,
                ErrorDetails::with_resource_info(kind, name, tenant, "not found"),
            ),
            AdminError::NodeNotFound(node) => Status::with_error_details(
                Code::NotFound,
                message,
                ErrorDetails::with_resource_info("Node", node, "", "not found"),
            ),
            AdminError::Stale { actual, .. } => with_reason(
                Code::Aborted,
                message,
                "STALE_RESOURCE_VERSION",
                HashMap::from([("current_version".into(), actual.to_string())]),
            ),
            AdminError::Precondition(items) => {
                let violations: Vec<PreconditionViolation> = items
                    .into_iter()
                    .map(|(subject, why)| PreconditionViolation::new("STATE", subject, why))
                    .collect();
                Status::with_error_details(
                    Code::FailedPrecondition,
                    message,
                    ErrorDetails::with_precondition_failure(violations),
                )
            }
            AdminError::Compacted {
                compact_revision, ..
            } => with_reason(
                Code::OutOfRange,
                message,
                "REVISION_COMPACTED",
                HashMap::from([("compact_revision".into(), compact_revision.to_string())]),
            ),
            AdminError::Store(store) => store_status(store),
        }
    }
}

fn with_reason(
    code: Code,
    message: String,
    reason: &str,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Unavailable(_) => with_reason(
            Code::Unavailable,
            "the store is unavailable; retry".into(),
            "STORE_UNAVAILABLE",
            HashMap::new(),
        ),
        StoreError::TooLarge { size, limit } => Status::with_error_details(
            Code::InvalidArgument,
            format!("resource is {size} bytes encoded; the limit is {limit}"),
            ErrorDetails::with_bad_request_violation(
                "resource",
                format!("encoded size {size} exceeds {limit} bytes"),
            ),
        ),
        StoreError::TooManyOps { ops, limit } => Status::with_error_details(
            Code::InvalidArgument,
            format!("request needs {ops} store operations; the limit is {limit}"),
            ErrorDetails::with_bad_request_violation(
                "resources",
                "too many resources for one transaction",
            ),
        ),
        StoreError::Compacted {
            requested,
            compact_revision,
        } => AdminError::Compacted {
            requested,
            compact_revision,
        }
        .into(),
        StoreError::LeaseNotFound(_) | StoreError::Internal(_) => {
            // Internal detail stays in the logs, never in the reply.
            tracing::error!(%error, "store error");
            Status::internal("internal error")
        }
    }
}
