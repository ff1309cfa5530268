//! Telemetry errors and their one mapping to `tonic::Status`, in one
//! exhaustive `match`. Authentication, field violations and store failures
//! map exactly as the admin API maps them.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{admin::AdminError, auth::AuthError, store::StoreError};

/// Why a telemetry call failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Fields are invalid; every bad field is listed as (field, why).
    #[error("invalid request: {0:?}")]
    Invalid(Vec<(String, String)>),
    /// The trace is unknown here, or has aged out of the recent-trace index.
    #[error("trace {0} not found: unknown, not visible to this key, or aged out")]
    TraceNotFound(String),
    /// The replica is shutting down; the caller should reconnect elsewhere.
    #[error("the control-plane replica is shutting down; reconnect")]
    ShuttingDown,
    /// Other replicas kept winning the race for the same node's sequence.
    #[error("could not take the batch after {0} attempts; retry")]
    Contended(u32),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TelemetryError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self::Invalid(vec![(field.into(), why.into())])
    }
}

impl From<TelemetryError> for Status {
    fn from(error: TelemetryError) -> Self {
        let message = error.to_string();
        match error {
            TelemetryError::Auth(auth) => AdminError::Auth(auth).into(),
            TelemetryError::Invalid(violations) => AdminError::Invalid(violations).into(),
            TelemetryError::TraceNotFound(id) => Status::with_error_details(
                Code::NotFound,
                message,
                ErrorDetails::with_resource_info("Trace", id, "", "not found"),
            ),
            TelemetryError::ShuttingDown | TelemetryError::Contended(_) => {
                Status::unavailable(message)
            }
            TelemetryError::Store(store) => AdminError::Store(store).into(),
        }
    }
}
