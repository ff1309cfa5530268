//! Domain forms of the shared types in `common.proto`.

use std::time::Duration;

use aios_proto::v1 as pb;

use crate::convert;
use crate::violation::Ctx;
use crate::{FieldViolation, Usd};

/// Defines a domain enum mirroring a proto enum minus its UNSPECIFIED case,
/// with `from_proto` (None for UNSPECIFIED and unknown values) and
/// `to_proto`. Variant names are the generated ones.
macro_rules! proto_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident from $pb:path {
            $( $(#[$vmeta:meta])* $variant:ident, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in proto order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The domain value of a wire value; `None` for UNSPECIFIED and
            /// values this build does not know.
            pub fn from_proto(value: i32) -> Option<Self> {
                use $pb as P;
                match P::try_from(value).ok()? {
                    $( P::$variant => Some($name::$variant), )+
                    P::Unspecified => None,
                }
            }

            /// The wire value.
            pub fn to_proto(self) -> $pb {
                use $pb as P;
                match self {
                    $( $name::$variant => P::$variant, )+
                }
            }
        }

        impl $crate::convert::ProtoEnum for $name {
            fn from_proto(value: i32) -> Option<Self> {
                $name::from_proto(value)
            }
        }
    };
}
pub(crate) use proto_enum;

proto_enum! {
    /// How dangerous an action is. Ordered: `Low < Medium < High < Critical`,
    /// so "the higher of" two is `max`.
    pub enum Criticality from pb::Criticality {
        /// Runs without approval.
        Low,
        /// Runs without approval; recorded on the span.
        Medium,
        /// Needs one approver.
        High,
        /// Needs two distinct approvers.
        Critical,
    }
}

impl Criticality {
    /// How many distinct approvers an action of this criticality needs.
    pub fn approvers_needed(self) -> usize {
        match self {
            Criticality::Low | Criticality::Medium => 0,
            Criticality::High => 1,
            Criticality::Critical => 2,
        }
    }
}

proto_enum! {
    /// What an API key may do inside its tenant.
    pub enum Role from pb::Role {
        /// Every operation in the tenant.
        Admin,
        /// Manages agents, models, routing tables, tools and budgets.
        Operator,
        /// Decides approvals; reads all.
        Approver,
        /// Reads resources, telemetry, budgets and approvals.
        Viewer,
        /// Calls the data plane only.
        Caller,
        /// A data-plane node (config stream, telemetry); platform tenant only.
        Node,
    }
}

proto_enum! {
    /// How hard a task is.
    pub enum Complexity from pb::Complexity {
        /// Short lookups, classification, extraction.
        Simple,
        /// Multi-step answers, summaries, ordinary tool use.
        Moderate,
        /// Long reasoning, code, planning.
        Complex,
    }
}

proto_enum! {
    /// A capability a model offers and a request may require.
    pub enum ModelCapability from pb::ModelCapability {
        /// Chat / text generation.
        Chat,
        /// Function (tool) calling.
        Tools,
        /// Image inputs.
        Vision,
        /// Vector embeddings.
        Embeddings,
    }
}

/// Limits the router respects when it picks a model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteConstraints {
    /// Largest estimated cost of one request. `None` = no limit.
    pub max_cost: Option<Usd>,
    /// Largest expected (p95) latency of a model. `None` = no limit; when
    /// set it is > 0 (a zero bound would exclude every model).
    pub max_latency: Option<Duration>,
    /// Capabilities the chosen model must have, no repeats. Empty = none
    /// beyond CHAT.
    pub required_capabilities: Vec<ModelCapability>,
}

impl RouteConstraints {
    /// Validates constraints found at `path` (e.g.
    /// `spec.routing_table.default_constraints`, or a request's
    /// `constraints`).
    pub fn from_proto(c: &pb::RouteConstraints, path: &str) -> Result<Self, Vec<FieldViolation>> {
        let mut ctx = Ctx::default();
        match Self::convert(&mut ctx, c, path) {
            Some(v) if ctx.violations.is_empty() => Ok(v),
            _ => Err(ctx.violations),
        }
    }

    pub(crate) fn convert(ctx: &mut Ctx, c: &pb::RouteConstraints, path: &str) -> Option<Self> {
        let max_cost =
            convert::usd_zero_is_none(ctx, c.max_cost_usd, &format!("{path}.max_cost_usd"));
        let max_latency = match &c.max_latency {
            None => Some(None),
            Some(d) => convert::positive_duration(
                ctx,
                Some(d),
                Duration::ZERO,
                &format!("{path}.max_latency"),
            )
            .map(Some),
        };
        let required_capabilities = convert::enum_set(
            ctx,
            &c.required_capabilities,
            &format!("{path}.required_capabilities"),
        );
        Some(RouteConstraints {
            max_cost: max_cost?,
            max_latency: max_latency?,
            required_capabilities: required_capabilities?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_and_skip_unspecified() {
        for c in Criticality::ALL {
            assert_eq!(Criticality::from_proto(c.to_proto() as i32), Some(*c));
        }
        for r in Role::ALL {
            assert_eq!(Role::from_proto(r.to_proto() as i32), Some(*r));
        }
        assert_eq!(Role::from_proto(0), None);
        assert_eq!(Role::from_proto(7), None);
        assert_eq!(Complexity::ALL.len(), 3);
        assert_eq!(ModelCapability::ALL.len(), 4);
    }

    #[test]
    fn criticality_orders_by_danger() {
        assert!(Criticality::Low < Criticality::Medium);
        assert!(Criticality::High < Criticality::Critical);
        assert_eq!(
            Criticality::Medium.max(Criticality::High),
            Criticality::High
        );
        assert_eq!(Criticality::Critical.approvers_needed(), 2);
        assert_eq!(Criticality::High.approvers_needed(), 1);
        assert_eq!(Criticality::Medium.approvers_needed(), 0);
    }

    #[test]
    fn route_constraints() {
        let ok = pb::RouteConstraints {
            max_cost_usd: 0.05,
            max_latency: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            required_capabilities: vec![pb::ModelCapability::Tools as i32],
        };
        assert_eq!(
            RouteConstraints::from_proto(&ok, "c"),
            Ok(RouteConstraints {
                max_cost: Some(Usd::from_micros(50_000)),
                max_latency: Some(Duration::from_secs(2)),
                required_capabilities: vec![ModelCapability::Tools],
            })
        );
        assert_eq!(
            RouteConstraints::from_proto(&pb::RouteConstraints::default(), "c"),
            Ok(RouteConstraints::default())
        );
        let bad = pb::RouteConstraints {
            max_cost_usd: -1.0,
            max_latency: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            required_capabilities: vec![0],
        };
        let fields: Vec<String> = RouteConstraints::from_proto(&bad, "c")
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "c.max_cost_usd",
                "c.max_latency",
                "c.required_capabilities[0]"
            ]
        );
    }
}
