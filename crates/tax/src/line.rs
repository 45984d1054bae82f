//! One invoice line: from unit price, band, quantity and discount to KRA's line amounts,
//! with exactly the rules of the reference `calculate_item` (taxid-api.md §5.2).

use std::fmt;

use crate::band::{TaxBand, TaxRates};
use crate::fixed::{
    Fixed, Money, NumberError, Percent, Quantity, Rounding, Unit, Units, div_half_up,
};

/// Whether a unit price includes VAT (what the customer pays) or excludes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pricing {
    VatInclusive,
    VatExclusive,
}

/// A line discount off `qty × unit price` (VAT-inclusive): an amount or a percentage.
/// One enum, so "both forms at once" cannot be represented past parsing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Discount {
    Amount(Money),
    Rate(Percent),
}

/// The input fields of a line, for errors that point at one of them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LineField {
    Price,
    Band,
    Qty,
    Discount,
    DiscountRate,
}

impl LineField {
    /// The field's name in `ushuru calc` input and in the reference vectors.
    pub fn name(self) -> &'static str {
        match self {
            LineField::Price => "price",
            LineField::Band => "band",
            LineField::Qty => "qty",
            LineField::Discount => "discount",
            LineField::DiscountRate => "discount_rate",
        }
    }
}

impl fmt::Display for LineField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can be wrong with a line. Each variant has a stable [`LineError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("{field} {text:?} {reason}")]
    InvalidNumber {
        field: LineField,
        text: String,
        reason: NumberError,
    },
    #[error("{0}")]
    UnknownBand(#[from] crate::band::UnknownBand),
    #[error("price {price} is negative: a line's unit price must be zero or more")]
    NegativePrice { price: Money },
    #[error("qty {text:?} is {rounded} at 4 decimal places: a line needs a quantity above zero")]
    NonPositiveQuantity { text: String, rounded: Quantity },
    #[error("discount and discount_rate are both given: pass one of them")]
    BothDiscountForms,
    #[error("discount {0} is negative: a discount must be zero or more")]
    NegativeDiscount(Money),
    #[error("discount_rate {0} is outside 0–100 percent")]
    DiscountRateOutOfBounds(Percent),
    #[error("discount {discount} exceeds the line amount qty × price = {line_amount}")]
    DiscountExceedsLine { discount: Money, line_amount: Money },
    #[error(
        "the line amount qty × price is beyond the supported range (at most 20 integer digits)"
    )]
    AmountOutOfRange,
}

impl LineError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LineError::InvalidNumber {
                reason: NumberError::NotANumber,
                ..
            } => "NOT_A_NUMBER",
            LineError::InvalidNumber {
                reason: NumberError::OutOfRange,
                ..
            } => "OUT_OF_RANGE",
            LineError::InvalidNumber {
                reason: NumberError::TooPrecise { .. },
                ..
            } => "TOO_PRECISE",
            LineError::UnknownBand(_) => "UNKNOWN_TAX_BAND",
            LineError::NegativePrice { .. } => "NEGATIVE_PRICE",
            LineError::NonPositiveQuantity { .. } => "NON_POSITIVE_QUANTITY",
            LineError::BothDiscountForms => "BOTH_DISCOUNT_FORMS",
            LineError::NegativeDiscount(_) => "NEGATIVE_DISCOUNT",
            LineError::DiscountRateOutOfBounds(_) => "DISCOUNT_RATE_OUT_OF_BOUNDS",
            LineError::DiscountExceedsLine { .. } => "DISCOUNT_EXCEEDS_LINE",
            LineError::AmountOutOfRange => "OUT_OF_RANGE",
        }
    }

    /// The input field at fault, when there is one.
    pub fn field(&self) -> Option<LineField> {
        match self {
            LineError::InvalidNumber { field, .. } => Some(*field),
            LineError::UnknownBand(_) => Some(LineField::Band),
            LineError::NegativePrice { .. } => Some(LineField::Price),
            LineError::NonPositiveQuantity { .. } => Some(LineField::Qty),
            LineError::BothDiscountForms | LineError::NegativeDiscount(_) => {
                Some(LineField::Discount)
            }
            LineError::DiscountRateOutOfBounds(_) => Some(LineField::DiscountRate),
            LineError::DiscountExceedsLine { .. } => Some(LineField::Discount),
            // A product of price and quantity: neither field alone is at fault.
            LineError::AmountOutOfRange => None,
        }
    }
}

/// A line as text, the way APIs and files carry it (numbers as decimal text).
#[derive(Clone, Copy, Debug)]
pub struct LineText<'a> {
    pub price: &'a str,
    pub band: &'a str,
    pub qty: &'a str,
    pub pricing: Pricing,
    pub discount: Option<&'a str>,
    pub discount_rate: Option<&'a str>,
}

/// A valid line: unit price ≥ 0 (2 dp), quantity > 0 (4 dp), a band, and at most one
/// non-negative discount.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LineInput {
    unit_price: Money,
    band: TaxBand,
    quantity: Quantity,
    pricing: Pricing,
    discount: Option<Discount>,
}

impl LineInput {
    pub fn new(
        unit_price: Money,
        band: TaxBand,
        quantity: Quantity,
        pricing: Pricing,
        discount: Option<Discount>,
    ) -> Result<Self, LineError> {
        if unit_price.is_negative() {
            return Err(LineError::NegativePrice { price: unit_price });
        }
        if !quantity.is_positive() {
            return Err(LineError::NonPositiveQuantity {
                text: quantity.to_string(),
                rounded: quantity,
            });
        }
        match discount {
            Some(Discount::Amount(amount)) if amount.is_negative() => {
                return Err(LineError::NegativeDiscount(amount));
            }
            Some(Discount::Rate(rate)) if rate.is_negative() || rate.minor() > 100 * 100 => {
                return Err(LineError::DiscountRateOutOfBounds(rate));
            }
            _ => {}
        }
        Ok(LineInput {
            unit_price,
            band,
            quantity,
            pricing,
            discount,
        })
    }

    /// Reads a line from text as the reference does: price rounded HALF_UP to 2 dp,
    /// quantity to 4 dp, discount amount to 2 dp; a discount rate with more than 2 dp is
    /// refused (the reference's `ItemDetail` refuses it too).
    ///
    /// One deliberate difference: a quantity that rounds to 0.0000 is refused here, where
    /// the reference silently prices it at zero (its example C19).
    pub fn parse(text: &LineText<'_>) -> Result<Self, LineError> {
        let band: TaxBand = text.band.parse()?;
        let unit_price: Money = number(LineField::Price, text.price, Rounding::HalfUp)?;
        let quantity: Quantity = number(LineField::Qty, text.qty, Rounding::HalfUp)?;
        if !quantity.is_positive() {
            return Err(LineError::NonPositiveQuantity {
                text: text.qty.to_owned(),
                rounded: quantity,
            });
        }
        let discount = match (text.discount, text.discount_rate) {
            (Some(_), Some(_)) => return Err(LineError::BothDiscountForms),
            (Some(amount), None) => Some(Discount::Amount(number(
                LineField::Discount,
                amount,
                Rounding::HalfUp,
            )?)),
            (None, Some(rate)) => Some(Discount::Rate(number(
                LineField::DiscountRate,
                rate,
                Rounding::Exact,
            )?)),
            (None, None) => None,
        };
        LineInput::new(unit_price, band, quantity, text.pricing, discount)
    }

    pub fn unit_price(&self) -> Money {
        self.unit_price
    }
    pub fn band(&self) -> TaxBand {
        self.band
    }
    pub fn quantity(&self) -> Quantity {
        self.quantity
    }
    pub fn pricing(&self) -> Pricing {
        self.pricing
    }
    pub fn discount(&self) -> Option<Discount> {
        self.discount
    }
}

fn number<U: Unit>(
    field: LineField,
    text: &str,
    rounding: Rounding,
) -> Result<Fixed<U>, LineError> {
    Fixed::parse(text, rounding).map_err(|reason| LineError::InvalidNumber {
        field,
        text: text.to_owned(),
        reason,
    })
}

/// KRA's amounts for one line (`itemList[]` of `saveTrnsSalesOsdc`).
///
/// Built by [`calculate_line`], where `taxbl_amt + tax_amt == tot_amt` always holds; the
/// fields are public so that lines received from elsewhere (a KRA payload) can be totalled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PricedLine {
    pub qty: Quantity,
    /// Unit price, VAT-inclusive.
    pub uprc: Money,
    /// `qty × uprc`, before the discount.
    pub sply_amt: Money,
    pub dc_rt: Percent,
    pub dc_amt: Money,
    /// The line total without VAT.
    pub taxbl_amt: Money,
    pub tax_amt: Money,
    /// The line total with VAT: `sply_amt − dc_amt`.
    pub tot_amt: Money,
    pub tax_ty_cd: TaxBand,
}

/// Prices one line with the reference's rules (taxid-api.md §5.2), all HALF_UP:
///
/// 1. `uprc` = the price, or for a VAT-exclusive price `round₂(price × (1 + rate))` per unit;
/// 2. `splyAmt = round₂(uprc × qty)`;
/// 3. `dcAmt` = the amount, or `round₂(splyAmt × dcRt / 100)`; it may not exceed `splyAmt`;
/// 4. `totAmt = splyAmt − dcAmt`;
/// 5. `taxblAmt = round₂(totAmt / (1 + rate))`, VAT split from the line total, never per unit;
/// 6. `taxAmt = totAmt − taxblAmt`, so the two always add up to the total.
pub fn calculate_line(input: &LineInput, rates: &TaxRates) -> Result<PricedLine, LineError> {
    // Every amount below is ≥ 0 (checked at construction), so unsigned arithmetic on minor
    // units is exact; every product is checked and every result range-checked.
    const RATE_ONE: u128 = 10_000; // a rate's fraction is hundredths-of-percent / 10 000
    let rate = rates.rate(input.band).basis_points_hundredths();
    let money = |minor: u128| {
        i128::try_from(minor)
            .ok()
            .and_then(|m| Money::from_minor(m).ok())
    };

    let price = input.unit_price.minor().unsigned_abs();
    let gross_unit = match input.pricing {
        Pricing::VatInclusive => price,
        Pricing::VatExclusive => {
            let grossed = price
                .checked_mul(RATE_ONE + rate)
                .ok_or(LineError::AmountOutOfRange)?;
            div_half_up(grossed, RATE_ONE)
        }
    };
    let uprc = money(gross_unit).ok_or(LineError::AmountOutOfRange)?;

    let quantity = input.quantity.minor().unsigned_abs();
    let quantity_one = Units::ONE.unsigned_abs();
    let supply = gross_unit
        .checked_mul(quantity)
        .ok_or(LineError::AmountOutOfRange)?;
    let supply = div_half_up(supply, quantity_one);
    let sply_amt = money(supply).ok_or(LineError::AmountOutOfRange)?;

    let (dc_rt, discount) = match input.discount {
        None => (Percent::ZERO, 0),
        Some(Discount::Amount(amount)) => (Percent::ZERO, amount.minor().unsigned_abs()),
        // |supply| < 10^22 and the rate ≤ 10 000, so the product fits easily.
        Some(Discount::Rate(rate)) => (
            rate,
            div_half_up(supply * rate.minor().unsigned_abs(), 100 * 100),
        ),
    };
    let dc_amt = money(discount).ok_or(LineError::AmountOutOfRange)?;
    if discount > supply {
        return Err(LineError::DiscountExceedsLine {
            discount: dc_amt,
            line_amount: sply_amt,
        });
    }

    let total = supply - discount;
    // total / (1 + rate) = total × 10 000 / (10 000 + rate), one exact rational division.
    let taxable = div_half_up(total * RATE_ONE, RATE_ONE + rate);
    let tax = total - taxable;

    Ok(PricedLine {
        qty: input.quantity,
        uprc,
        sply_amt,
        dc_rt,
        dc_amt,
        taxbl_amt: money(taxable).ok_or(LineError::AmountOutOfRange)?,
        tax_amt: money(tax).ok_or(LineError::AmountOutOfRange)?,
        tot_amt: money(total).ok_or(LineError::AmountOutOfRange)?,
        tax_ty_cd: input.band,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn priced(text: LineText<'_>) -> Result<PricedLine, LineError> {
        calculate_line(&LineInput::parse(&text)?, &TaxRates::kenya())
    }

    fn text<'a>(price: &'a str, band: &'a str, qty: &'a str) -> LineText<'a> {
        LineText {
            price,
            band,
            qty,
            pricing: Pricing::VatInclusive,
            discount: None,
            discount_rate: None,
        }
    }

    /// (qty, uprc, sply, dcAmt, tot, taxbl, tax) as text.
    fn shown(l: &PricedLine) -> [String; 7] {
        [
            l.qty.to_string(),
            l.uprc.to_string(),
            l.sply_amt.to_string(),
            l.dc_amt.to_string(),
            l.tot_amt.to_string(),
            l.taxbl_amt.to_string(),
            l.tax_amt.to_string(),
        ]
    }

    #[test]
    fn worked_examples_of_the_reference() {
        // taxid-api.md §5.5, C1–C26 (C19 differs on purpose, see LineInput::parse).
        let cases: &[(LineText<'_>, [&str; 7])] = &[
            (
                text("5800", "B", "1"),
                [
                    "1.0000", "5800.00", "5800.00", "0.00", "5800.00", "5000.00", "800.00",
                ],
            ),
            (
                LineText {
                    pricing: Pricing::VatExclusive,
                    ..text("1000", "B", "1")
                },
                [
                    "1.0000", "1160.00", "1160.00", "0.00", "1160.00", "1000.00", "160.00",
                ],
            ),
            (
                text("100", "B", "10"),
                [
                    "10.0000", "100.00", "1000.00", "0.00", "1000.00", "862.07", "137.93",
                ],
            ),
            (
                text("209.40", "B", "15.456"),
                [
                    "15.4560", "209.40", "3236.49", "0.00", "3236.49", "2790.08", "446.41",
                ],
            ),
            (
                LineText {
                    discount: Some("50"),
                    ..text("650", "B", "5")
                },
                [
                    "5.0000", "650.00", "3250.00", "50.00", "3200.00", "2758.62", "441.38",
                ],
            ),
            (
                LineText {
                    discount_rate: Some("10"),
                    ..text("650", "B", "5")
                },
                [
                    "5.0000", "650.00", "3250.00", "325.00", "2925.00", "2521.55", "403.45",
                ],
            ),
            (
                text("108", "E", "1"),
                [
                    "1.0000", "108.00", "108.00", "0.00", "108.00", "100.00", "8.00",
                ],
            ),
            (
                text("200", "A", "2"),
                [
                    "2.0000", "200.00", "400.00", "0.00", "400.00", "400.00", "0.00",
                ],
            ),
            (
                text("5000", "B", "1"),
                [
                    "1.0000", "5000.00", "5000.00", "0.00", "5000.00", "4310.34", "689.66",
                ],
            ),
            (
                text("0.01", "B", "1"),
                ["1.0000", "0.01", "0.01", "0.00", "0.01", "0.01", "0.00"],
            ),
            (
                text("0.03", "B", "1"),
                ["1.0000", "0.03", "0.03", "0.00", "0.03", "0.03", "0.00"],
            ),
            (
                text("0.04", "B", "1"),
                ["1.0000", "0.04", "0.04", "0.00", "0.04", "0.03", "0.01"],
            ),
            (
                text("0.05", "B", "1"),
                ["1.0000", "0.05", "0.05", "0.00", "0.05", "0.04", "0.01"],
            ),
            (
                text("0.07", "B", "1"),
                ["1.0000", "0.07", "0.07", "0.00", "0.07", "0.06", "0.01"],
            ),
            (
                LineText {
                    pricing: Pricing::VatExclusive,
                    ..text("0.01", "B", "1")
                },
                ["1.0000", "0.01", "0.01", "0.00", "0.01", "0.01", "0.00"],
            ),
            (
                text("0.004", "B", "1"),
                ["1.0000", "0.00", "0.00", "0.00", "0.00", "0.00", "0.00"],
            ),
            (
                text("0.005", "B", "1"),
                ["1.0000", "0.01", "0.01", "0.00", "0.01", "0.01", "0.00"],
            ),
            (
                text("0.125", "B", "1"),
                ["1.0000", "0.13", "0.13", "0.00", "0.13", "0.11", "0.02"],
            ),
            (
                text("0.25", "B", "0.5"),
                ["0.5000", "0.25", "0.13", "0.00", "0.13", "0.11", "0.02"],
            ),
            (
                LineText {
                    pricing: Pricing::VatExclusive,
                    ..text("0.3125", "B", "1")
                },
                ["1.0000", "0.36", "0.36", "0.00", "0.36", "0.31", "0.05"],
            ),
            (
                text("100", "B", "1.00005"),
                [
                    "1.0001", "100.00", "100.01", "0.00", "100.01", "86.22", "13.79",
                ],
            ),
            (
                text("3", "B", "0.33335"),
                ["0.3334", "3.00", "1.00", "0.00", "1.00", "0.86", "0.14"],
            ),
            (
                text("0.99", "E", "2.5"),
                ["2.5000", "0.99", "2.48", "0.00", "2.48", "2.30", "0.18"],
            ),
            (
                text("99999999999.99", "B", "1"),
                [
                    "1.0000",
                    "99999999999.99",
                    "99999999999.99",
                    "0.00",
                    "99999999999.99",
                    "86206896551.72",
                    "13793103448.27",
                ],
            ),
            (
                text("98765.43", "B", "1234.5678"),
                [
                    "1234.5678",
                    "98765.43",
                    "121932619.63",
                    "0.00",
                    "121932619.63",
                    "105114327.27",
                    "16818292.36",
                ],
            ),
            (
                text("9999999999999999.99", "E", "9999.9999"),
                [
                    "9999.9999",
                    "9999999999999999.99",
                    "99999998999999999900.00",
                    "0.00",
                    "99999998999999999900.00",
                    "92592591666666666574.07",
                    "7407407333333333325.93",
                ],
            ),
            (
                text("19.99", "B", "1"),
                ["1.0000", "19.99", "19.99", "0.00", "19.99", "17.23", "2.76"],
            ),
            (
                text("19.99", "B", "0.1"),
                ["0.1000", "19.99", "2.00", "0.00", "2.00", "1.72", "0.28"],
            ),
            (
                text("179.30", "E", "12.345"),
                [
                    "12.3450", "179.30", "2213.46", "0.00", "2213.46", "2049.50", "163.96",
                ],
            ),
        ];
        for (input, expected) in cases {
            let got = priced(*input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(shown(&got), expected.map(String::from), "{input:?}");
            assert_eq!(got.taxbl_amt.checked_add(got.tax_amt), Some(got.tot_amt));
        }
    }

    #[test]
    fn every_invalid_input_has_its_own_error() {
        let cases: Vec<(LineText<'_>, &str, Option<LineField>)> = vec![
            (
                text("-1", "B", "1"),
                "NEGATIVE_PRICE",
                Some(LineField::Price),
            ),
            (
                text("1", "B", "0"),
                "NON_POSITIVE_QUANTITY",
                Some(LineField::Qty),
            ),
            (
                text("1", "B", "-2"),
                "NON_POSITIVE_QUANTITY",
                Some(LineField::Qty),
            ),
            (
                text("100", "B", "0.00004"),
                "NON_POSITIVE_QUANTITY",
                Some(LineField::Qty),
            ),
            (
                text("1", "F", "1"),
                "UNKNOWN_TAX_BAND",
                Some(LineField::Band),
            ),
            (
                LineText {
                    discount: Some("1"),
                    discount_rate: Some("1"),
                    ..text("10", "B", "1")
                },
                "BOTH_DISCOUNT_FORMS",
                Some(LineField::Discount),
            ),
            (
                LineText {
                    discount: Some("2"),
                    ..text("1", "B", "1")
                },
                "DISCOUNT_EXCEEDS_LINE",
                Some(LineField::Discount),
            ),
            (
                LineText {
                    discount: Some("-2"),
                    ..text("10", "B", "1")
                },
                "NEGATIVE_DISCOUNT",
                Some(LineField::Discount),
            ),
            (
                LineText {
                    discount_rate: Some("10.125"),
                    ..text("100", "B", "1")
                },
                "TOO_PRECISE",
                Some(LineField::DiscountRate),
            ),
            (
                LineText {
                    discount_rate: Some("100.01"),
                    ..text("100", "B", "1")
                },
                "DISCOUNT_RATE_OUT_OF_BOUNDS",
                Some(LineField::DiscountRate),
            ),
            (
                LineText {
                    discount_rate: Some("-1"),
                    ..text("100", "B", "1")
                },
                "DISCOUNT_RATE_OUT_OF_BOUNDS",
                Some(LineField::DiscountRate),
            ),
            (
                text("1e30", "B", "1"),
                "OUT_OF_RANGE",
                Some(LineField::Price),
            ),
            (
                text("1", "B", "123456789012345678901"),
                "OUT_OF_RANGE",
                Some(LineField::Qty),
            ),
            (
                text("99999999999999999999", "B", "10"),
                "OUT_OF_RANGE",
                None,
            ),
            (
                text("12abc", "B", "1"),
                "NOT_A_NUMBER",
                Some(LineField::Price),
            ),
            (text("1", "B", "one"), "NOT_A_NUMBER", Some(LineField::Qty)),
            (
                LineText {
                    discount: Some("ten"),
                    ..text("10", "B", "1")
                },
                "NOT_A_NUMBER",
                Some(LineField::Discount),
            ),
        ];
        for (input, code, field) in cases {
            let error = priced(input).expect_err(&format!("{input:?} must be refused"));
            assert_eq!(error.code(), code, "{input:?}: {error}");
            assert_eq!(error.field(), field, "{input:?}");
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn discount_equal_to_the_line_leaves_zero() {
        let got = priced(LineText {
            discount: Some("10"),
            ..text("10", "B", "1")
        })
        .unwrap();
        assert!(got.tot_amt.is_zero() && got.taxbl_amt.is_zero() && got.tax_amt.is_zero());
        let got = priced(LineText {
            discount_rate: Some("100"),
            ..text("10", "B", "3")
        })
        .unwrap();
        assert!(got.tot_amt.is_zero());
    }

    #[test]
    fn configured_rates_are_used() {
        let rates = TaxRates::kenya().with_rate(TaxBand::B, "14".parse().unwrap());
        let input = LineInput::parse(&text("114", "B", "1")).unwrap();
        let got = calculate_line(&input, &rates).unwrap();
        assert_eq!(
            (got.taxbl_amt.to_string(), got.tax_amt.to_string()),
            ("100.00".into(), "14.00".into())
        );
    }

    #[test]
    fn error_messages_say_what_and_where() {
        let error = priced(LineText {
            discount: Some("2"),
            ..text("1", "B", "1")
        })
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "discount 2.00 exceeds the line amount qty × price = 1.00"
        );
        let error = priced(text("1", "B", "0.00004")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "qty \"0.00004\" is 0.0000 at 4 decimal places: a line needs a quantity above zero"
        );
        let error = priced(text("12abc", "B", "1")).unwrap_err();
        assert_eq!(error.to_string(), "price \"12abc\" is not a decimal number");
    }
}
