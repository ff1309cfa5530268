//! Budget errors and their one mapping to `tonic::Status`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{admin::AdminError, auth::AuthError, store::StoreError};

/// Why a budget call failed.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Fields are invalid; every bad field is listed as (field, why).
    #[error("invalid request: {0:?}")]
    Invalid(Vec<(String, String)>),
    /// No such budget in the tenant.
    #[error("budget {name} not found in tenant {tenant}")]
    NotFound {
        /// Tenant searched.
        tenant: String,
        /// Budget name.
        name: String,
    },
    /// Other writers kept winning the race for the same ledgers.
    #[error("could not update the budget ledgers after {0} attempts; retry")]
    Contended(u32),
    /// The replica cannot apply lines now (its writer stopped, or the
    /// batch this request was in failed).
    #[error("budget ledgers unavailable: {0}")]
    Unavailable(String),
    /// A stored ledger does not decode.
    #[error("corrupt budget ledger {0}")]
    Corrupt(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<BudgetError> for Status {
    fn from(error: BudgetError) -> Self {
        let message = error.to_string();
        match error {
            BudgetError::Auth(auth) => AdminError::Auth(auth).into(),
            BudgetError::Invalid(violations) => AdminError::Invalid(violations).into(),
            BudgetError::NotFound { name, .. } => Status::with_error_details(
                Code::NotFound,
                message,
                ErrorDetails::with_resource_info("Budget", name, "", "not found"),
            ),
            BudgetError::Contended(_) | BudgetError::Unavailable(_) => Status::unavailable(message),
            BudgetError::Corrupt(_) => Status::internal(message),
            BudgetError::Store(store) => AdminError::Store(store).into(),
        }
    }
}
