//! Field violations and the collector the validators share.

use std::fmt;

use crate::{Kind, Reference};

/// One bad field: its path inside `aios.v1.Resource` and what is wrong with it.
///
/// Paths use proto field names joined with `.`, list indices in brackets and
/// map keys quoted in brackets: `spec.budget.limit_usd`,
/// `metadata.labels["Bad Key"]`,
/// `spec.routing_table.tiers[1].targets[0].weight`. They map one to one onto
/// `google.rpc.BadRequest.FieldViolation`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldViolation {
    /// Path of the field, e.g. `spec.budget.limit_usd`.
    pub field: String,
    /// What is wrong, in words a user can act on.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// A resource failed validation. Holds every violation found, in the order of
/// the fields in the proto, not just the first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} invalid field(s): {}", .violations.len(), join(.violations))]
pub struct Invalid {
    /// Every bad field. Never empty.
    pub violations: Vec<FieldViolation>,
}

impl Invalid {
    /// Prepends `prefix.` to every path, for callers whose request wraps the
    /// resource (e.g. `resource` in `ApplyRequest`).
    #[must_use]
    pub fn prefixed(mut self, prefix: &str) -> Self {
        for v in &mut self.violations {
            v.field = format!("{prefix}.{}", v.field);
        }
        self
    }

    /// Whether some violation is about exactly `field`.
    pub fn has(&self, field: &str) -> bool {
        self.violations.iter().any(|v| v.field == field)
    }
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

// === Ctx ===

/// Collects violations and references while one resource is validated.
#[derive(Debug, Default)]
pub(crate) struct Ctx {
    pub(crate) violations: Vec<FieldViolation>,
    pub(crate) references: Vec<Reference>,
}

impl Ctx {
    pub(crate) fn violation(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations
            .push(FieldViolation::new(field, description));
    }

    pub(crate) fn extend(&mut self, violations: impl IntoIterator<Item = FieldViolation>) {
        self.violations.extend(violations);
    }

    /// Records a same-tenant reference from `field` to `kind`/`name`, after
    /// checking the name's syntax. Returns the name when it is valid.
    pub(crate) fn reference(&mut self, kind: Kind, name: &str, field: String) -> Option<String> {
        match crate::validate_name(name) {
            Ok(()) => {
                self.references.push(Reference {
                    kind,
                    name: name.to_string(),
                    field,
                });
                Some(name.to_string())
            }
            Err(reason) => {
                self.violation(field, reason);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_counts_and_lists_every_violation() {
        let err = Invalid {
            violations: vec![
                FieldViolation::new("metadata.name", "is required"),
                FieldViolation::new("budget.limit_usd", "must be > 0"),
            ],
        };
        assert_eq!(
            err.to_string(),
            "2 invalid field(s): metadata.name: is required; budget.limit_usd: must be > 0"
        );
    }

    #[test]
    fn prefixed_rewrites_every_path() {
        let err = Invalid {
            violations: vec![FieldViolation::new("tool.address", "is required")],
        }
        .prefixed("resource");
        assert!(err.has("resource.tool.address"));
        assert!(!err.has("tool.address"));
    }
}
