//! Exact fixed-point numbers: a count of minor units (cents, ten-thousandths) in an `i128`.
//!
//! Why integers and not `rust_decimal::Decimal` arithmetic: the reference (Python `Decimal`,
//! 28 significant digits) is exact for every amount we accept, and so is integer arithmetic
//! on minor units, including the one division of the tax split (`taxblAmt = totAmt / (1 +
//! rate)`), which we do as an exact rational division with a single HALF_UP rounding. Values
//! convert losslessly to and from `Decimal` at the crate's edges.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use rust_decimal::Decimal;

/// The largest number of integer digits any value may have: amounts up to
/// 99 999 999 999 999 999 999.99. Below this bound every intermediate result of the
/// reference's arithmetic fits Python's 28 significant digits, so the reference is exact
/// there and we agree with it digit for digit.
pub const MAX_INTEGER_DIGITS: u32 = 20;

/// What a fixed-point type counts: its scale (decimal places) and a name for messages.
pub trait Unit: Copy + Eq + Ord + Hash + Default + fmt::Debug + 'static {
    /// Decimal places held exactly.
    const SCALE: u32;
    /// `10^SCALE`.
    const ONE: i128 = 10i128.pow(Self::SCALE);
    /// Exclusive bound on the absolute number of minor units.
    const LIMIT: i128 = 10i128.pow(MAX_INTEGER_DIGITS + Self::SCALE);
}

/// Kenyan shillings with cents: 2 decimal places.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Kes;
impl Unit for Kes {
    const SCALE: u32 = 2;
}

/// Quantities of goods: 4 decimal places (fuel in litres, weights in kg).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Units;
impl Unit for Units {
    const SCALE: u32 = 4;
}

/// Percentages (tax rates, discount rates): 2 decimal places, as KRA's NUMBER(7,2)/(5,2).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Pct;
impl Unit for Pct {
    const SCALE: u32 = 2;
}

/// A money amount in KES, exactly 2 decimal places.
pub type Money = Fixed<Kes>;
/// A quantity, exactly 4 decimal places.
pub type Quantity = Fixed<Units>;
/// A percentage, exactly 2 decimal places (`16.00` means 16 %).
pub type Percent = Fixed<Pct>;

/// Why a text is not a valid number of some fixed-point type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("is not a decimal number")]
    NotANumber,
    #[error("is beyond the supported range (at most {MAX_INTEGER_DIGITS} integer digits)")]
    OutOfRange,
    #[error("has more than {max_decimals} decimal places")]
    TooPrecise { max_decimals: u32 },
}

/// How surplus decimal places are treated when text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Round half away from zero, as the reference's `ROUND_HALF_UP`.
    HalfUp,
    /// Refuse any non-zero digit beyond the scale.
    Exact,
}

/// An exact decimal with `U::SCALE` places, held as a count of minor units.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fixed<U: Unit> {
    minor: i128,
    unit: PhantomData<U>,
}

impl<U: Unit> Fixed<U> {
    pub const ZERO: Self = Self {
        minor: 0,
        unit: PhantomData,
    };

    /// From a count of minor units (cents for `Money`), if within range.
    pub fn from_minor(minor: i128) -> Result<Self, NumberError> {
        if minor.unsigned_abs() < U::LIMIT.unsigned_abs() {
            Ok(Self {
                minor,
                unit: PhantomData,
            })
        } else {
            Err(NumberError::OutOfRange)
        }
    }

    /// A constant the caller knows to be in range (a crate-internal table entry).
    pub(crate) const fn known(minor: i128) -> Self {
        Self {
            minor,
            unit: PhantomData,
        }
    }

    /// From a whole number of units (shillings for `Money`).
    pub fn from_whole(whole: i64) -> Result<Self, NumberError> {
        Self::from_minor(i128::from(whole) * U::ONE)
    }

    /// The count of minor units: cents for `Money`, ten-thousandths for `Quantity`.
    pub fn minor(self) -> i128 {
        self.minor
    }

    /// Reads decimal text: optional sign, digits with an optional point, an optional
    /// exponent (`1.5e3`), surrounding whitespace ignored. Surplus places are rounded or
    /// refused as `rounding` says.
    pub fn parse(text: &str, rounding: Rounding) -> Result<Self, NumberError> {
        Self::from_minor(parse_minor_units(text, U::SCALE, rounding)?)
    }

    /// From a `Decimal`, rounding surplus places HALF_UP.
    pub fn from_decimal(value: Decimal) -> Result<Self, NumberError> {
        let rounded = value.round_dp_with_strategy(
            U::SCALE,
            rust_decimal::RoundingStrategy::MidpointAwayFromZero,
        );
        let rescale = U::SCALE.saturating_sub(rounded.scale());
        let minor = rounded
            .mantissa()
            .checked_mul(10i128.pow(rescale))
            .ok_or(NumberError::OutOfRange)?;
        Self::from_minor(minor)
    }

    /// The same value as a `Decimal` with exactly `U::SCALE` places.
    pub fn to_decimal(self) -> Decimal {
        // |minor| < 10^(20 + scale) ≤ 10^24, far inside Decimal's 96-bit mantissa.
        Decimal::from_i128_with_scale(self.minor, U::SCALE)
    }

    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.minor
            .checked_add(other.minor)
            .and_then(|m| Self::from_minor(m).ok())
    }

    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.minor
            .checked_sub(other.minor)
            .and_then(|m| Self::from_minor(m).ok())
    }

    pub fn is_negative(self) -> bool {
        self.minor < 0
    }

    pub fn is_zero(self) -> bool {
        self.minor == 0
    }

    pub fn is_positive(self) -> bool {
        self.minor > 0
    }

    /// Appends the canonical text (fixed scale, e.g. `1160.00`, `2.0000`) to `out`.
    /// Used on hot paths instead of `Display` to skip the formatting machinery.
    #[inline]
    pub fn write_to(self, out: &mut Vec<u8>) {
        if self.minor < 0 {
            out.push(b'-');
        }
        let magnitude = self.minor.unsigned_abs();
        let mut digits = [0u8; 48];
        let mut at = digits.len();
        let mut emit = |digit: u8| {
            at -= 1;
            digits[at] = digit;
        };
        // Nearly every amount fits 64 bits, where dividing by 10 is a multiplication; the
        // range limit (10^24 minor units) needs the 128-bit path only above 1.8 × 10^19.
        match u64::try_from(magnitude) {
            Ok(small) => emit_fixed_digits(small, U::SCALE, &mut emit),
            Err(_) => emit_fixed_digits(magnitude, U::SCALE, &mut emit),
        }
        out.extend_from_slice(&digits[at..]);
    }
}

/// Emits the digits of `minor` with a decimal point `scale` places from the right, from
/// right to left, for `u64` and `u128`.
fn emit_fixed_digits<T>(mut rest: T, scale: u32, emit: &mut impl FnMut(u8))
where
    T: Copy + PartialEq + From<u8> + std::ops::Div<Output = T> + std::ops::Rem<Output = T>,
    u8: TryFrom<T>,
{
    let (ten, zero) = (T::from(10), T::from(0));
    let next_digit = |rest: &mut T| {
        let digit = u8::try_from(*rest % ten).unwrap_or(0);
        *rest = *rest / ten;
        b'0' + digit
    };
    for _ in 0..scale {
        emit(next_digit(&mut rest));
    }
    if scale > 0 {
        emit(b'.');
    }
    loop {
        emit(next_digit(&mut rest));
        if rest == zero {
            break;
        }
    }
}

impl<U: Unit> fmt::Display for Fixed<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(32);
        self.write_to(&mut text);
        // write_to emits ASCII digits, '-' and '.' only.
        f.pad(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl<U: Unit> fmt::Debug for Fixed<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<U: Unit> std::str::FromStr for Fixed<U> {
    type Err = NumberError;

    /// Strict parsing: the canonical text, no rounding of surplus places.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text, Rounding::Exact)
    }
}

impl<U: Unit> serde::Serialize for Fixed<U> {
    /// As a JSON string with the fixed scale, the way KRA and the reference print amounts.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `round(n / d)` with halves rounded up, for `n ≥ 0`, `d > 0`.
pub(crate) fn div_half_up(n: u128, d: u128) -> u128 {
    // Almost every line fits in 64 bits, where division is several times cheaper.
    if let (Ok(n), Ok(d)) = (u64::try_from(n), u64::try_from(d)) {
        let (q, r) = (n / d, n % d);
        return u128::from(q + u64::from(r >= d - r));
    }
    let (q, r) = (n / d, n % d);
    q + u128::from(r >= d - r)
}

/// Reads decimal text into a count of `10^-scale` units (see [`Fixed::parse`]).
fn parse_minor_units(text: &str, scale: u32, rounding: Rounding) -> Result<i128, NumberError> {
    let bytes = text
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .as_bytes();
    let (negative, unsigned) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, bytes),
    };
    let (mantissa, exponent) = match unsigned.iter().position(|&b| b == b'e' || b == b'E') {
        Some(at) => (&unsigned[..at], parse_exponent(&unsigned[at + 1..])?),
        None => (unsigned, 0),
    };
    let (integer, fraction) = match mantissa.iter().position(|&b| b == b'.') {
        Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
        None => (mantissa, &[][..]),
    };
    if (integer.is_empty() && fraction.is_empty())
        || !integer.iter().chain(fraction).all(u8::is_ascii_digit)
    {
        return Err(NumberError::NotANumber);
    }

    // The digits of integer‖fraction, with the decimal point after `point` of them. All
    // positions are i64 with saturating arithmetic: the exponent may be absurdly large.
    let digit_count = integer.len() + fraction.len();
    let digit_at = |i: usize| -> u8 {
        if i < integer.len() {
            integer[i] - b'0'
        } else {
            fraction[i - integer.len()] - b'0'
        }
    };
    let Some(lead) = (0..digit_count).find(|&i| digit_at(i) != 0) else {
        return Ok(0); // zero, however written
    };
    let point = (integer.len() as i64).saturating_add(exponent);
    // The result is the digits before position `keep`, rounded by those from `keep` on.
    let keep = point.saturating_add(i64::from(scale));
    let significant = keep.saturating_sub(lead as i64);
    // i128 holds 38 digits; anything longer is far beyond every range we accept.
    if significant > 38 {
        return Err(NumberError::OutOfRange);
    }
    let mut minor: i128 = 0;
    for i in lead as i64..keep {
        let digit = usize::try_from(i)
            .ok()
            .filter(|&i| i < digit_count)
            .map_or(0, digit_at);
        minor = minor * 10 + i128::from(digit);
    }
    match rounding {
        Rounding::HalfUp => {
            // HALF_UP depends only on the first dropped digit; when `keep` is before the
            // first significant digit, that is a zero and the value rounds down to 0.
            let first_dropped = usize::try_from(keep)
                .ok()
                .filter(|&k| k >= lead && k < digit_count);
            if first_dropped.is_some_and(|k| digit_at(k) >= 5) {
                minor += 1;
            }
        }
        Rounding::Exact => {
            let dropped_from = usize::try_from(keep.max(0)).unwrap_or(usize::MAX).max(lead);
            if (dropped_from..digit_count).any(|i| digit_at(i) != 0) {
                return Err(NumberError::TooPrecise {
                    max_decimals: scale,
                });
            }
        }
    }
    Ok(if negative { -minor } else { minor })
}

/// An exponent's digits, saturating far beyond any digit count a text can have, so that
/// positions computed from it stay exact where it matters.
fn parse_exponent(text: &[u8]) -> Result<i64, NumberError> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(NumberError::NotANumber);
    }
    let magnitude = digits.iter().fold(0i64, |acc, &d| {
        acc.saturating_mul(10)
            .saturating_add(i64::from(d - b'0'))
            .min(1 << 60)
    });
    Ok(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn money(text: &str) -> Result<String, NumberError> {
        Money::parse(text, Rounding::HalfUp).map(|m| m.to_string())
    }

    #[test]
    fn parses_and_rounds_half_up_like_the_reference() {
        assert_eq!(money("0.125").unwrap(), "0.13"); // HALF_EVEN would give 0.12
        assert_eq!(money("-0.125").unwrap(), "-0.13");
        assert_eq!(money("0.004").unwrap(), "0.00");
        assert_eq!(money("0.005").unwrap(), "0.01");
        assert_eq!(money("1828.686").unwrap(), "1828.69");
        assert_eq!(money("19.99").unwrap(), "19.99");
        assert_eq!(money("  7 ").unwrap(), "7.00");
        assert_eq!(money("+7.").unwrap(), "7.00");
        assert_eq!(money(".5").unwrap(), "0.50");
        assert_eq!(money("1.5e3").unwrap(), "1500.00");
        assert_eq!(money("15E-3").unwrap(), "0.02");
        assert_eq!(money("1e-999999999").unwrap(), "0.00");
        assert_eq!(money("0e999999").unwrap(), "0.00");
        assert_eq!(money("-0.00").unwrap(), "0.00");
        assert_eq!(money("0.30000000000000004441").unwrap(), "0.30");
        // Long digit strings with exponents that undo them (found by review).
        assert_eq!(
            money(&format!("5{}e-1001", "0".repeat(1001))).unwrap(),
            "5.00"
        );
        assert_eq!(
            money(&format!("0.{}5e1003", "0".repeat(1000))).unwrap(),
            "500.00"
        );
        assert_eq!(
            money(&format!("0.{}5e1001", "0".repeat(1000))).unwrap(),
            "5.00"
        );
        assert_eq!(money(&format!("0.{}5", "0".repeat(5000))).unwrap(), "0.00");
        assert_eq!(
            money(&format!("{}1.005", "0".repeat(3000))).unwrap(),
            "1.01"
        );
        assert_eq!(money("5e-3").unwrap(), "0.01");
        assert_eq!(money("4e-3").unwrap(), "0.00");
        assert_eq!(money("5e-4").unwrap(), "0.00");
        assert_eq!(
            money("99999999999999999999.99").unwrap(),
            "99999999999999999999.99"
        );
        assert_eq!(
            Quantity::parse("0.33335", Rounding::HalfUp)
                .unwrap()
                .to_string(),
            "0.3334"
        );
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        for text in [
            "", " ", "-", ".", "abc", "1,000", "1_000", "0x10", "NaN", "Infinity", "1e", "1e+",
            "1.2.3", "--1", "1 2", "٣",
        ] {
            assert_eq!(money(text), Err(NumberError::NotANumber), "{text:?}");
        }
    }

    #[test]
    fn refuses_what_is_out_of_range() {
        assert_eq!(money("100000000000000000000"), Err(NumberError::OutOfRange));
        assert_eq!(
            money("99999999999999999999.995"),
            Err(NumberError::OutOfRange)
        );
        assert_eq!(money("1e20"), Err(NumberError::OutOfRange));
        assert_eq!(
            money("1e999999999999999999999"),
            Err(NumberError::OutOfRange)
        );
        assert_eq!(money(&"9".repeat(60)), Err(NumberError::OutOfRange));
        assert_eq!(
            money(&format!("-{}", "9".repeat(60))),
            Err(NumberError::OutOfRange)
        );
    }

    #[test]
    fn exact_mode_refuses_surplus_places() {
        assert_eq!(
            Percent::parse("10.125", Rounding::Exact),
            Err(NumberError::TooPrecise { max_decimals: 2 })
        );
        assert_eq!(
            Percent::parse("10.1200", Rounding::Exact)
                .unwrap()
                .to_string(),
            "10.12"
        );
        assert_eq!("16".parse::<Percent>().unwrap().minor(), 1600);
        assert_eq!(
            Percent::parse(&format!("1{}e-1001", "0".repeat(1001)), Rounding::Exact)
                .unwrap()
                .to_string(),
            "1.00"
        );
        assert_eq!(
            Percent::parse("1e-5", Rounding::Exact),
            Err(NumberError::TooPrecise { max_decimals: 2 })
        );
        assert_eq!(Percent::parse("0e-99", Rounding::Exact).unwrap().minor(), 0);
    }

    #[test]
    fn converts_to_and_from_decimal() {
        let m = Money::parse("-1234.5", Rounding::HalfUp).unwrap();
        assert_eq!(m.to_decimal().to_string(), "-1234.50");
        assert_eq!(
            Money::from_decimal(Decimal::new(12345, 3))
                .unwrap()
                .to_string(),
            "12.35"
        );
        assert_eq!(
            Money::from_decimal(Decimal::new(7, 0)).unwrap().minor(),
            700
        );
        assert_eq!(
            Money::from_decimal(Decimal::MAX),
            Err(NumberError::OutOfRange)
        );
    }

    #[test]
    fn half_up_division() {
        assert_eq!(div_half_up(5, 2), 3);
        assert_eq!(div_half_up(4, 3), 1);
        assert_eq!(div_half_up(5, 3), 2);
        assert_eq!(div_half_up(u128::MAX / 2 + 1, 2), u128::MAX / 4 + 1);
        assert_eq!(
            div_half_up(u128::from(u64::MAX) * 3 + 1, 3),
            u128::from(u64::MAX)
        );
    }

    proptest! {
        #[test]
        fn text_round_trips(minor in -(Kes::LIMIT - 1)..Kes::LIMIT) {
            let m = Money::from_minor(minor).unwrap();
            prop_assert_eq!(m.to_string().parse::<Money>().unwrap(), m);
            prop_assert_eq!(Money::from_decimal(m.to_decimal()).unwrap(), m);
        }

        #[test]
        fn half_up_parse_matches_decimal_rounding(int in 0u64..10_000_000, frac in 0u32..1_000_000) {
            let text = format!("{int}.{frac:06}");
            let expected = Decimal::from_str_exact(&text).unwrap()
                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            prop_assert_eq!(Money::parse(&text, Rounding::HalfUp).unwrap().to_decimal(), expected);
        }
    }
}
