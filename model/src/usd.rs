//! Money: integer micro-USD.
//!
//! The wire carries USD as `double`; aios does all arithmetic in integer
//! micro-USD (1e-6 USD) and converts once, here, rounding half-up to the
//! nearest micro-USD as `common.proto` states.

use std::fmt;

/// Micro-USD per USD.
pub const MICROS_PER_USD: i64 = 1_000_000;

/// An amount of US dollars, held as whole micro-USD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Usd(i64);

/// A `double` that is no amount of money.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum UsdError {
    /// NaN or ±infinity.
    #[error("must be a finite number")]
    NotFinite,
    /// Beyond what i64 micro-USD can hold (about 9.2 trillion USD).
    #[error("{0} is out of range (at most ±9.2e12 USD)")]
    OutOfRange(f64),
}

impl Usd {
    /// Zero dollars.
    pub const ZERO: Usd = Usd(0);
    /// The largest amount.
    pub const MAX: Usd = Usd(i64::MAX);

    /// Converts a wire amount, rounding to the nearest micro-USD with halves
    /// rounded away from zero (half-up for the non-negative amounts the API
    /// uses). The rounding is decimal: `0.0000005` (as typed, though its
    /// binary value is a hair below) gives 1 micro-USD.
    pub fn from_f64(usd: f64) -> Result<Usd, UsdError> {
        if !usd.is_finite() {
            return Err(UsdError::NotFinite);
        }
        // 9.2e12 USD keeps |micros| well inside i64.
        if usd.abs() > 9.2e12 {
            return Err(UsdError::OutOfRange(usd));
        }
        if usd.abs() < 4e-7 {
            // Rounds to zero; also keeps the decimal text below short.
            return Ok(Usd::ZERO);
        }
        // `Display` for f64 prints the shortest decimal that reads back as
        // the same double, never in exponent form: round that decimal.
        let text = format!("{}", usd.abs());
        let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
        let mut micros: i64 = 0;
        for d in whole
            .bytes()
            .chain(frac.bytes().chain(std::iter::repeat(b'0')).take(6))
        {
            micros = micros
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(d.wrapping_sub(b'0'))))
                .ok_or(UsdError::OutOfRange(usd))?;
        }
        if frac.as_bytes().get(6).is_some_and(|d| *d >= b'5') {
            micros = micros.checked_add(1).ok_or(UsdError::OutOfRange(usd))?;
        }
        Ok(Usd(if usd < 0.0 { -micros } else { micros }))
    }

    /// An amount of whole micro-USD.
    pub const fn from_micros(micros: i64) -> Usd {
        Usd(micros)
    }

    /// The amount in micro-USD.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// The amount in USD, for the wire.
    #[allow(clippy::cast_precision_loss)] // exact up to 2^53 micro-USD (9e9 USD)
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_USD as f64
    }

    /// Whether the amount is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        self.0.checked_add(other.0).map(Usd)
    }

    /// `self - other`, or `None` on overflow.
    pub fn checked_sub(self, other: Usd) -> Option<Usd> {
        self.0.checked_sub(other.0).map(Usd)
    }

    /// `self + other`, clamped.
    pub fn saturating_add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }

    /// `self - other`, clamped.
    pub fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0))
    }
}

/// `$12.50`, `$0.000125`, `-$3.00`: at least two decimals, at most six, no
/// trailing zeros beyond the second.
impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / MICROS_PER_USD.unsigned_abs();
        let frac = format!("{:06}", abs % MICROS_PER_USD.unsigned_abs());
        let trimmed = frac.trim_end_matches('0');
        let shown = if trimmed.len() < 2 {
            frac.get(..2).unwrap_or("00")
        } else {
            trimmed
        };
        write!(f, "{sign}${whole}.{shown}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_the_nearest_micro_usd_half_up() {
        let table: &[(f64, i64)] = &[
            (0.0, 0),
            (-0.0, 0),
            (1.0, 1_000_000),
            (0.000001, 1),
            (0.0000004, 0),
            (0.00000049, 0),
            (0.0000005, 1),
            (0.0000015, 2),
            (0.0000025, 3),
            (1.0000005, 1_000_001),
            (1.0000004999, 1_000_000),
            (0.1 + 0.2, 300_000),
            (12.345678, 12_345_678),
            (12.3456785, 12_345_679),
            (0.15, 150_000),
            (2.5e-6, 3),
            (1e-7, 0),
            (123456789.123456, 123_456_789_123_456),
            (9.2e12, 9_200_000_000_000_000_000),
            (-0.0000005, -1),
            (-1.25, -1_250_000),
        ];
        for (usd, micros) in table {
            assert_eq!(Usd::from_f64(*usd), Ok(Usd::from_micros(*micros)), "{usd}");
        }
    }

    #[test]
    fn rejects_non_finite_and_huge_amounts() {
        assert_eq!(Usd::from_f64(f64::NAN), Err(UsdError::NotFinite));
        assert_eq!(Usd::from_f64(f64::INFINITY), Err(UsdError::NotFinite));
        assert_eq!(Usd::from_f64(f64::NEG_INFINITY), Err(UsdError::NotFinite));
        assert!(matches!(Usd::from_f64(1e13), Err(UsdError::OutOfRange(_))));
        assert!(matches!(
            Usd::from_f64(-1e300),
            Err(UsdError::OutOfRange(_))
        ));
    }

    #[test]
    fn converts_back_to_f64() {
        assert_eq!(Usd::from_micros(1_500_000).to_f64(), 1.5);
        assert_eq!(Usd::from_f64(0.123456).unwrap().to_f64(), 0.123456);
    }

    #[test]
    fn displays_dollars() {
        let table: &[(i64, &str)] = &[
            (0, "$0.00"),
            (1, "$0.000001"),
            (125, "$0.000125"),
            (10_000, "$0.01"),
            (12_500_000, "$12.50"),
            (12_345_678, "$12.345678"),
            (100_000, "$0.10"),
            (-3_000_000, "-$3.00"),
            (i64::MIN, "-$9223372036854.775808"),
        ];
        for (micros, text) in table {
            assert_eq!(Usd::from_micros(*micros).to_string(), *text);
        }
    }

    #[test]
    fn arithmetic_is_checked() {
        let a = Usd::from_micros(5);
        assert_eq!(a.checked_add(a), Some(Usd::from_micros(10)));
        assert_eq!(Usd::MAX.checked_add(a), None);
        assert_eq!(Usd::ZERO.saturating_sub(a), Usd::from_micros(-5));
        assert_eq!(Usd::MAX.saturating_add(a), Usd::MAX);
        assert!(Usd::ZERO.is_zero());
    }
}
