//! Field-level conversions shared by the spec validators: durations,
//! timestamps, money and enums. Each records a violation on the field's path
//! and returns `None` when the value is bad.

use std::time::Duration;

use crate::Usd;
use crate::violation::Ctx;

/// The largest `google.protobuf.Duration`, in seconds (10,000 years).
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

/// A well-formed, non-negative `google.protobuf.Duration`.
pub(crate) fn duration(ctx: &mut Ctx, d: &prost_types::Duration, path: &str) -> Option<Duration> {
    let (s, n) = (d.seconds, d.nanos);
    if !(-999_999_999..=999_999_999).contains(&n)
        || (s > 0 && n < 0)
        || (s < 0 && n > 0)
        || s.abs() > MAX_DURATION_SECONDS
    {
        ctx.violation(
            path,
            "is not a valid duration (seconds and nanos out of range or of opposite signs)",
        );
        return None;
    }
    if s < 0 || n < 0 {
        ctx.violation(path, "must not be negative");
        return None;
    }
    Some(Duration::new(s.unsigned_abs(), n.unsigned_abs()))
}

/// An optional duration that must be > 0 when set, with `default` when unset.
/// A zero timeout or deadline would fail every call, so the strict reading of
/// "Unset = <default>" is that a set value is a real, positive duration.
pub(crate) fn positive_duration(
    ctx: &mut Ctx,
    d: Option<&prost_types::Duration>,
    default: Duration,
    path: &str,
) -> Option<Duration> {
    let Some(d) = d else {
        return Some(default);
    };
    let d = duration(ctx, d, path)?;
    if d.is_zero() {
        ctx.violation(path, "must be > 0 (leave it unset for the default)");
        return None;
    }
    Some(d)
}

/// The range `google.protobuf.Timestamp` allows: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999999999Z, in Unix seconds.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A valid `google.protobuf.Timestamp` (in the range above, nanos in
/// `0..1e9`). jiff's range ends about a day earlier than the proto's; the
/// few instants past it clamp to `jiff::Timestamp::MAX`.
pub(crate) fn timestamp(
    ctx: &mut Ctx,
    t: &prost_types::Timestamp,
    path: &str,
) -> Option<jiff::Timestamp> {
    if !(0..=999_999_999).contains(&t.nanos)
        || !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&t.seconds)
    {
        ctx.violation(
            path,
            "is not a valid timestamp (0001-01-01 to 9999-12-31 UTC)",
        );
        return None;
    }
    Some(jiff::Timestamp::new(t.seconds, t.nanos).unwrap_or(jiff::Timestamp::MAX))
}

/// A finite, non-negative amount of money.
pub(crate) fn usd_non_negative(ctx: &mut Ctx, usd: f64, path: &str) -> Option<Usd> {
    if usd < 0.0 {
        ctx.violation(path, "must not be negative");
        return None;
    }
    match Usd::from_f64(usd) {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.violation(path, e.to_string());
            None
        }
    }
}

/// An optional amount where `0` means "none": `None` inside for 0. A positive
/// amount too small to survive rounding to micro-USD is rejected rather than
/// silently turned into "none".
pub(crate) fn usd_zero_is_none(ctx: &mut Ctx, usd: f64, path: &str) -> Option<Option<Usd>> {
    let v = usd_non_negative(ctx, usd, path)?;
    if v.is_zero() && usd > 0.0 {
        ctx.violation(
            path,
            "rounds to 0 micro-USD; use 0 for no limit or at least 0.000001",
        );
        return None;
    }
    Some((!v.is_zero()).then_some(v))
}

/// A domain enum with a proto counterpart whose 0 is `*_UNSPECIFIED`.
pub(crate) trait ProtoEnum: Sized {
    /// The domain value of a known, specified wire value.
    fn from_proto(value: i32) -> Option<Self>;
}

/// An enum field that may be unspecified: `Some(None)` for 0, a violation
/// for values this build does not know.
pub(crate) fn optional_enum<E: ProtoEnum>(
    ctx: &mut Ctx,
    value: i32,
    path: &str,
) -> Option<Option<E>> {
    if value == 0 {
        return Some(None);
    }
    match E::from_proto(value) {
        Some(e) => Some(Some(e)),
        None => {
            ctx.violation(path, format!("unknown value {value}"));
            None
        }
    }
}

/// An enum field whose UNSPECIFIED means `default`.
pub(crate) fn defaulted_enum<E: ProtoEnum>(
    ctx: &mut Ctx,
    value: i32,
    default: E,
    path: &str,
) -> Option<E> {
    Some(optional_enum(ctx, value, path)?.unwrap_or(default))
}

/// A required enum field: UNSPECIFIED is rejected.
pub(crate) fn required_enum<E: ProtoEnum>(ctx: &mut Ctx, value: i32, path: &str) -> Option<E> {
    let e = optional_enum(ctx, value, path)?;
    if e.is_none() {
        ctx.violation(path, "is required");
    }
    e
}

/// A list of enum values where UNSPECIFIED is rejected and none may repeat.
pub(crate) fn enum_set<E: ProtoEnum + PartialEq>(
    ctx: &mut Ctx,
    values: &[i32],
    path: &str,
) -> Option<Vec<E>> {
    let mut out: Vec<E> = Vec::with_capacity(values.len());
    let mut ok = true;
    for (i, value) in values.iter().enumerate() {
        let field = format!("{path}[{i}]");
        match required_enum::<E>(ctx, *value, &field) {
            Some(e) if out.contains(&e) => {
                ctx.violation(field, "duplicate value");
                ok = false;
            }
            Some(e) => out.push(e),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn dur(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn durations() {
        let mut ctx = Ctx::default();
        assert_eq!(duration(&mut ctx, &dur(0, 0), "d"), Some(Duration::ZERO));
        assert_eq!(
            duration(&mut ctx, &dur(1, 500), "d"),
            Some(Duration::new(1, 500))
        );
        assert!(ctx.violations.is_empty());
        for (s, n) in [
            (-1, 0),
            (0, -1),
            (1, -1),
            (-1, 1),
            (0, 1_000_000_000),
            (MAX_DURATION_SECONDS + 1, 0),
        ] {
            let mut ctx = Ctx::default();
            assert_eq!(duration(&mut ctx, &dur(s, n), "x.timeout"), None, "{s} {n}");
            assert_eq!(ctx.violations[0].field, "x.timeout");
        }
    }

    #[test]
    fn positive_durations_default_when_unset_and_reject_zero() {
        let mut ctx = Ctx::default();
        let default = Duration::from_secs(60);
        assert_eq!(
            positive_duration(&mut ctx, None, default, "t"),
            Some(default)
        );
        assert_eq!(
            positive_duration(&mut ctx, Some(&dur(2, 0)), default, "t"),
            Some(Duration::from_secs(2))
        );
        assert!(ctx.violations.is_empty());
        assert_eq!(
            positive_duration(&mut ctx, Some(&dur(0, 0)), default, "t"),
            None
        );
        assert_eq!(ctx.violations.len(), 1);
    }

    #[test]
    fn timestamps() {
        let mut ctx = Ctx::default();
        let ok = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        assert!(timestamp(&mut ctx, &ok, "t").is_some());
        let last = prost_types::Timestamp {
            seconds: MAX_TIMESTAMP_SECONDS,
            nanos: 999_999_999,
        };
        assert_eq!(timestamp(&mut ctx, &last, "t"), Some(jiff::Timestamp::MAX));
        let first = prost_types::Timestamp {
            seconds: MIN_TIMESTAMP_SECONDS,
            nanos: 0,
        };
        assert_eq!(
            timestamp(&mut ctx, &first, "t").map(|t| t.as_second()),
            Some(MIN_TIMESTAMP_SECONDS)
        );
        assert!(ctx.violations.is_empty());
        for (seconds, nanos) in [
            (0, -1),
            (0, 1_000_000_000),
            (i64::MAX, 0),
            (MAX_TIMESTAMP_SECONDS + 1, 0),
            (MIN_TIMESTAMP_SECONDS - 1, 0),
        ] {
            let mut ctx = Ctx::default();
            let bad = prost_types::Timestamp { seconds, nanos };
            assert!(
                timestamp(&mut ctx, &bad, "t").is_none(),
                "{seconds} {nanos}"
            );
        }
    }

    #[test]
    fn money() {
        let mut ctx = Ctx::default();
        assert_eq!(usd_zero_is_none(&mut ctx, 0.0, "m"), Some(None));
        assert_eq!(
            usd_zero_is_none(&mut ctx, 1.5, "m"),
            Some(Some(Usd::from_micros(1_500_000)))
        );
        assert!(ctx.violations.is_empty());
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e-9] {
            let mut ctx = Ctx::default();
            assert_eq!(usd_zero_is_none(&mut ctx, bad, "m"), None, "{bad}");
            assert_eq!(ctx.violations.len(), 1, "{bad}");
        }
    }

    #[test]
    fn enums() {
        use crate::Role;
        let mut ctx = Ctx::default();
        assert_eq!(required_enum::<Role>(&mut ctx, 1, "r"), Some(Role::Admin));
        assert_eq!(optional_enum::<Role>(&mut ctx, 0, "r"), Some(None));
        assert_eq!(
            defaulted_enum(&mut ctx, 0, Role::Viewer, "r"),
            Some(Role::Viewer)
        );
        assert!(ctx.violations.is_empty());
        assert_eq!(required_enum::<Role>(&mut ctx, 0, "r"), None);
        assert_eq!(required_enum::<Role>(&mut ctx, 42, "r"), None);
        assert_eq!(optional_enum::<Role>(&mut ctx, -3, "r"), None);
        let descriptions: Vec<&str> = ctx
            .violations
            .iter()
            .map(|v| v.description.as_str())
            .collect();
        assert_eq!(
            descriptions,
            ["is required", "unknown value 42", "unknown value -3"]
        );
    }

    #[test]
    fn enum_sets_reject_unspecified_unknown_and_duplicates() {
        use crate::ModelCapability;
        let mut ctx = Ctx::default();
        assert_eq!(
            enum_set::<ModelCapability>(&mut ctx, &[1, 4], "c"),
            Some(vec![ModelCapability::Chat, ModelCapability::Embeddings])
        );
        assert!(ctx.violations.is_empty());
        assert_eq!(
            enum_set::<ModelCapability>(&mut ctx, &[1, 0, 9, 1], "c"),
            None
        );
        let fields: Vec<&str> = ctx.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["c[1]", "c[2]", "c[3]"]);
    }
}
