//! Model routing: which model serves a request, and why.
//!
//! Three steps, one file each: [`complexity`] classifies the request
//! (simple, moderate, complex) from cheap features and says why;
//! [`select`] picks the routing table's tier for that class, drops the
//! models the constraints exclude, splits traffic by weight (sticky per
//! user where the table says so) and returns the chosen model followed by
//! the tier's fallbacks, for the reliability layer to walk; [`savings`]
//! prices a call's actual usage against the table's baseline model.

pub mod complexity;
mod keywords;
pub mod savings;
pub mod select;

pub use complexity::{Analysis, Feature, Signal, analyze};
pub use savings::{Savings, cost, savings};
pub use select::{
    ASSUMED_OUTPUT_TOKENS, Excluded, Exclusion, LatencyLookup, Route, RouteError, RouteRequest,
    effective_constraints, route,
};

#[cfg(test)]
mod testing;
