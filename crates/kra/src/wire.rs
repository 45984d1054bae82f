//! The scalar types of KRA's JSON: amounts, quantities, rates and counters as JSON numbers,
//! dates as digit strings. Emitted strictly, read leniently (kra-protocol.md §1.3–1.4):
//! numbers may arrive as strings, dates in their dashed forms, keys with stray spaces.

use std::fmt;

use chrono::{NaiveDate, NaiveDateTime};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use ushuru_tax::{Fixed, Money, Percent, Quantity, Rounding, Unit};

/// Writes exact decimal text as a JSON number (not a string, not through a float).
fn serialize_number<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    let raw = serde_json::value::RawValue::from_string(text.to_owned())
        .map_err(serde::ser::Error::custom)?;
    raw.serialize(serializer)
}

/// The text of a JSON number or of a string holding one.
fn number_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        // With serde_json's arbitrary_precision the number keeps its exact digits.
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => Ok(s.trim().to_owned()),
        other => Err(D::Error::custom(format_args!(
            "expected a number, found {other}"
        ))),
    }
}

macro_rules! decimal_wire_type {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize_number(&self.0.to_string(), serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = number_text(deserializer)?;
                <$inner>::parse(&text, Rounding::HalfUp)
                    .map($name)
                    .map_err(|e| D::Error::custom(format_args!("{text:?} {e}")))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                $name(value)
            }
        }
    };
}

decimal_wire_type!(
    /// A money amount, KRA's NUMBER(18,2), as a JSON number.
    Amount,
    Money
);
decimal_wire_type!(
    /// A quantity as a JSON number (KRA declares NUMBER(13,2); 4 places are kept, as the
    /// taxid SDK sends them).
    Qty,
    Quantity
);
decimal_wire_type!(
    /// A percentage (tax rate, discount rate), KRA's NUMBER(7,2)/(5,2), as a JSON number.
    Rate,
    Percent
);

impl Amount {
    pub const ZERO: Amount = Amount(Money::ZERO);

    /// From text known to be a valid amount (tests, constants).
    pub fn parse(text: &str) -> Result<Self, ushuru_tax::NumberError> {
        Money::parse(text, Rounding::HalfUp).map(Amount)
    }
}

impl Rate {
    pub fn whole(percent: i64) -> Self {
        Rate(Fixed::<ushuru_tax::Pct>::from_whole(percent).unwrap_or_default())
    }
}

impl Qty {
    pub fn whole(units: i64) -> Self {
        Qty(Quantity::from_whole(units).unwrap_or_default())
    }
}

/// Absolute difference in minor units, for KRA's ±0.01 tolerances.
pub fn minor_difference<U: Unit>(a: Fixed<U>, b: Fixed<U>) -> u128 {
    (a.minor() - b.minor()).unsigned_abs()
}

/// A whole number (counters, sequence numbers), as a JSON number; read from a number or a
/// numeric string (`"curRcptNo": "1"` in the spec sample).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Int(pub u64);

impl Serialize for Int {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = number_text(deserializer)?;
        let text = text.strip_suffix(".0").unwrap_or(&text);
        text.parse()
            .map(Int)
            .map_err(|_| D::Error::custom(format_args!("{text:?} is not a whole number")))
    }
}

impl fmt::Display for Int {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A date-time, `yyyyMMddHHmmss` (EAT) on the wire; also read as `yyyy-MM-dd HH:mm:ss`
/// with an optional fraction (`selectInvoiceDetails`, purchase lists).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime14(pub NaiveDateTime);

impl DateTime14 {
    pub const FORMAT: &'static str = "%Y%m%d%H%M%S";

    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        NaiveDateTime::parse_from_str(text, Self::FORMAT)
            .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
            .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f"))
            .ok()
            .map(DateTime14)
    }

    pub fn digits(&self) -> String {
        self.0.format(Self::FORMAT).to_string()
    }
}

impl fmt::Debug for DateTime14 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.digits())
    }
}

impl Serialize for DateTime14 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.format(Self::FORMAT))
    }
}

impl<'de> Deserialize<'de> for DateTime14 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = number_text_or_string(deserializer)?;
        DateTime14::parse(&text).ok_or_else(|| {
            D::Error::custom(format_args!("{text:?} is not a date-time (yyyyMMddHHmmss)"))
        })
    }
}

/// A date, `yyyyMMdd` on the wire; also read as `yyyy-MM-dd`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date8(pub NaiveDate);

impl Date8 {
    pub const FORMAT: &'static str = "%Y%m%d";

    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        NaiveDate::parse_from_str(text, Self::FORMAT)
            .or_else(|_| NaiveDate::parse_from_str(text, "%Y-%m-%d"))
            .ok()
            .map(Date8)
    }

    pub fn digits(&self) -> String {
        self.0.format(Self::FORMAT).to_string()
    }
}

impl fmt::Debug for Date8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.digits())
    }
}

impl Serialize for Date8 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.format(Self::FORMAT))
    }
}

impl<'de> Deserialize<'de> for Date8 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = number_text_or_string(deserializer)?;
        Date8::parse(&text)
            .ok_or_else(|| D::Error::custom(format_args!("{text:?} is not a date (yyyyMMdd)")))
    }
}

/// Dates are strings, but a digits-only date sometimes arrives as a JSON number.
fn number_text_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    number_text(deserializer)
}

/// Parses KRA JSON leniently: keys are trimmed at every depth (the spec samples carry
/// `"curRcptNo "`), then the typed value is read with the lenient scalar types above.
pub fn from_slice_lenient<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let value: Value = serde_json::from_slice(bytes)?;
    from_value_lenient(value)
}

/// As [`from_slice_lenient`], from an already parsed value.
pub fn from_value_lenient<T: DeserializeOwned>(mut value: Value) -> Result<T, serde_json::Error> {
    trim_keys(&mut value);
    serde_json::from_value(value)
}

/// Trims keys in place; a map is rebuilt only when one of its keys needs it (rarely).
fn trim_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.keys().any(|k| k.trim().len() != k.len()) {
                let entries = std::mem::take(map);
                *map = entries
                    .into_iter()
                    .map(|(k, v)| (k.trim().to_owned(), v))
                    .collect();
            }
            map.values_mut().for_each(trim_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(trim_keys),
        _ => {}
    }
}

/// The fixed-point value of an optional amount, zero when absent.
pub fn money_or_zero(amount: Option<Amount>) -> Money {
    amount.map_or(Money::ZERO, |a| a.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Sample {
        tot_amt: Amount,
        qty: Qty,
        tax_rt_b: Rate,
        cur_rcpt_no: Int,
        sdc_date_time: DateTime14,
        sales_dt: Date8,
    }

    #[test]
    fn emits_numbers_and_digit_dates() {
        let sample = Sample {
            tot_amt: Amount::parse("5800").unwrap(),
            qty: Qty::whole(2),
            tax_rt_b: Rate::whole(16),
            cur_rcpt_no: Int(152),
            sdc_date_time: DateTime14::parse("20260707114122").unwrap(),
            sales_dt: Date8::parse("20260707").unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&sample).unwrap(),
            r#"{"totAmt":5800.00,"qty":2.0000,"taxRtB":16.00,"curRcptNo":152,"sdcDateTime":"20260707114122","salesDt":"20260707"}"#
        );
    }

    #[test]
    fn reads_leniently() {
        let text = br#"{" totAmt ":"5800.005","qty":"2","taxRtB":16,"curRcptNo ":"152","sdcDateTime":"2026-07-07 11:41:22.0","salesDt":"2026-07-07"}"#;
        let sample: Sample = from_slice_lenient(text).unwrap();
        assert_eq!(sample.tot_amt.to_string(), "5800.01");
        assert_eq!(sample.qty.to_string(), "2.0000");
        assert_eq!(sample.cur_rcpt_no, Int(152));
        assert_eq!(sample.sdc_date_time.digits(), "20260707114122");
        assert_eq!(sample.sales_dt.digits(), "20260707");
    }

    #[test]
    fn exact_digits_survive_large_amounts() {
        let text = br#"{"totAmt":9999999999999999.99,"qty":1,"taxRtB":16,"curRcptNo":1,"sdcDateTime":"20260101000000","salesDt":"20260101"}"#;
        let sample: Sample = from_slice_lenient(text).unwrap();
        assert_eq!(sample.tot_amt.to_string(), "9999999999999999.99");
    }

    #[test]
    fn refuses_what_is_not_a_number_or_date() {
        assert!(from_slice_lenient::<Sample>(br#"{"totAmt":"abc","qty":1,"taxRtB":16,"curRcptNo":1,"sdcDateTime":"20260101000000","salesDt":"20260101"}"#).is_err());
        assert!(from_slice_lenient::<Sample>(br#"{"totAmt":1,"qty":1,"taxRtB":16,"curRcptNo":1.5,"sdcDateTime":"20260101000000","salesDt":"20260101"}"#).is_err());
        assert!(from_slice_lenient::<Sample>(br#"{"totAmt":1,"qty":1,"taxRtB":16,"curRcptNo":1,"sdcDateTime":"2026-13-01","salesDt":"20260101"}"#).is_err());
    }
}
