//! Properties over random valid inputs, and an independent oracle: the reference's
//! formulas written again with `rust_decimal` (28 significant digits, like Python's
//! `Decimal`), which must agree with the fixed-point implementation on every line.

// A test (or bench) crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};
use ushuru_tax::{
    Discount, InvoiceTotals, LineInput, Money, Percent, PricedLine, Pricing, Quantity, TaxBand,
    TaxRates, calculate_line,
};

fn band() -> impl Strategy<Value = TaxBand> {
    prop::sample::select(TaxBand::ALL.to_vec())
}

/// Prices up to 10^9 KES and quantities up to 10^5, with any number of cents and
/// ten-thousandths; sometimes a discount (amount or rate) that fits the line.
fn line_input() -> impl Strategy<Value = LineInput> {
    (
        0i128..100_000_000_000,
        1i128..1_000_000_000,
        band(),
        any::<bool>(),
        0u8..3,
        0i128..=10_000,
        0u32..=1000,
    )
        .prop_map(
            |(price, qty, band, inclusive, discount_kind, rate, share)| {
                let unit_price = Money::from_minor(price).unwrap();
                let quantity = Quantity::from_minor(qty).unwrap();
                let pricing = if inclusive {
                    Pricing::VatInclusive
                } else {
                    Pricing::VatExclusive
                };
                let discount = match discount_kind {
                    1 => Some(Discount::Rate(Percent::from_minor(rate).unwrap())),
                    2 => {
                        // A share (‰) of the line amount, so it never exceeds it.
                        let undiscounted =
                            LineInput::new(unit_price, band, quantity, pricing, None).unwrap();
                        let sply = calculate_line(&undiscounted, &TaxRates::kenya())
                            .unwrap()
                            .sply_amt
                            .minor();
                        Some(Discount::Amount(
                            Money::from_minor(sply * i128::from(share) / 1000).unwrap(),
                        ))
                    }
                    _ => None,
                };
                LineInput::new(unit_price, band, quantity, pricing, discount).unwrap()
            },
        )
}

fn half_up(value: Decimal, places: u32) -> Decimal {
    value.round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero)
}

/// `calculate_item` of taxid-etims 0.8.1, line for line, in `Decimal`.
fn oracle(input: &LineInput, rates: &TaxRates) -> [Decimal; 6] {
    let rate = rates.rate(input.band()).percent().to_decimal() / Decimal::ONE_HUNDRED;
    let price = input.unit_price().to_decimal();
    let gross_unit = match input.pricing() {
        Pricing::VatInclusive => price,
        Pricing::VatExclusive => half_up(price * (Decimal::ONE + rate), 2),
    };
    let gross = half_up(gross_unit * input.quantity().to_decimal(), 2);
    let discount = match input.discount() {
        None => Decimal::ZERO,
        Some(Discount::Amount(amount)) => amount.to_decimal(),
        Some(Discount::Rate(rate)) => half_up(gross * rate.to_decimal() / Decimal::ONE_HUNDRED, 2),
    };
    let total = gross - discount;
    let taxable = half_up(total / (Decimal::ONE + rate), 2);
    [gross_unit, gross, discount, total, taxable, total - taxable]
}

fn band_sums(totals: &InvoiceTotals) -> (Money, Money) {
    totals
        .bands
        .iter()
        .fold((Money::ZERO, Money::ZERO), |(taxable, tax), band| {
            (
                taxable.checked_add(band.taxbl_amt).unwrap(),
                tax.checked_add(band.tax_amt).unwrap(),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn a_line_adds_up_and_nothing_is_negative(input in line_input()) {
        let line = calculate_line(&input, &TaxRates::kenya()).unwrap();
        prop_assert_eq!(line.taxbl_amt.checked_add(line.tax_amt), Some(line.tot_amt));
        prop_assert_eq!(line.sply_amt.checked_sub(line.dc_amt), Some(line.tot_amt));
        for amount in [line.uprc, line.sply_amt, line.dc_amt, line.taxbl_amt, line.tax_amt, line.tot_amt] {
            prop_assert!(!amount.is_negative());
        }
        prop_assert!(line.tax_amt <= line.tot_amt);
    }

    #[test]
    fn a_line_agrees_with_the_decimal_oracle(input in line_input()) {
        let line = calculate_line(&input, &TaxRates::kenya()).unwrap();
        let got = [line.uprc, line.sply_amt, line.dc_amt, line.tot_amt, line.taxbl_amt, line.tax_amt].map(Money::to_decimal);
        prop_assert_eq!(got, oracle(&input, &TaxRates::kenya()));
    }

    #[test]
    fn invoice_fields_equal_the_sums_of_band_fields(inputs in prop::collection::vec(line_input(), 0..40)) {
        let rates = TaxRates::kenya();
        let lines: Vec<PricedLine> = inputs.iter().map(|i| calculate_line(i, &rates).unwrap()).collect();
        let totals = InvoiceTotals::from_lines(&lines, &rates).unwrap();
        let (band_taxable, band_tax) = band_sums(&totals);
        prop_assert_eq!(totals.tot_item_cnt, lines.len());
        prop_assert_eq!(totals.tot_taxbl_amt, band_taxable);
        prop_assert_eq!(totals.tot_tax_amt, band_tax);
        prop_assert_eq!(band_taxable.checked_add(band_tax), Some(totals.tot_amt));
        prop_assert_eq!(totals.tot_taxbl_amt.checked_add(totals.tot_tax_amt), Some(totals.tot_amt));
        for band in TaxBand::ALL {
            let of_band = lines.iter().filter(|l| l.tax_ty_cd == band);
            let taxable = of_band.clone().fold(Money::ZERO, |s, l| s.checked_add(l.taxbl_amt).unwrap());
            let tax = of_band.fold(Money::ZERO, |s, l| s.checked_add(l.tax_amt).unwrap());
            let fields = totals.band(band);
            prop_assert_eq!(fields.taxbl_amt, taxable);
            prop_assert_eq!(fields.tax_amt, tax);
            prop_assert_eq!(fields.tax_rt, rates.rate(band));
            prop_assert!(!fields.taxbl_amt.is_negative() && !fields.tax_amt.is_negative());
        }
        for amount in [totals.tot_taxbl_amt, totals.tot_tax_amt, totals.tot_amt] {
            prop_assert!(!amount.is_negative());
        }
    }
}
