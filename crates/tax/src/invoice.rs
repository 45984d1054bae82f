//! Invoice totals: the header amounts of KRA's sale payload, from its lines
//! (taxid-api.md §5.3 for the totals, kra-protocol.md §2.4 for the per-band fields).

use crate::band::{TaxBand, TaxRate, TaxRates};
use crate::fixed::Money;
use crate::line::PricedLine;

/// One band's header fields: `taxblAmtX`, `taxRtX`, `taxAmtX`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BandTotals {
    pub taxbl_amt: Money,
    pub tax_rt: TaxRate,
    pub tax_amt: Money,
}

/// The header amounts of an invoice.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InvoiceTotals {
    pub tot_item_cnt: usize,
    pub tot_taxbl_amt: Money,
    pub tot_tax_amt: Money,
    pub tot_amt: Money,
    /// Indexed by [`TaxBand::index`]; KRA wants all five, zeros included.
    pub bands: [BandTotals; 5],
}

/// The sums overflow the supported range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the invoice total is beyond the supported range (at most 20 integer digits)")]
pub struct TotalsOutOfRange;

impl InvoiceTotals {
    /// Sums the lines as the reference `build_invoice_totals` does, then applies its
    /// residual rule: whatever `totAmt − totTaxblAmt − totTaxAmt` remains goes to the tax
    /// total, so the header always adds up. Lines from [`crate::calculate_line`] add up
    /// already, so for them the residue is zero; lines taken from elsewhere need not.
    ///
    /// The per-band fields are the plain sums of their lines, which is what KRA checks.
    pub fn from_lines(lines: &[PricedLine], rates: &TaxRates) -> Result<Self, TotalsOutOfRange> {
        let mut bands = TaxBand::ALL.map(|band| BandTotals {
            tax_rt: rates.rate(band),
            ..BandTotals::default()
        });
        let (mut taxable, mut tax, mut total) = (Money::ZERO, Money::ZERO, Money::ZERO);
        for line in lines {
            let band = &mut bands[line.tax_ty_cd.index()];
            band.taxbl_amt = band
                .taxbl_amt
                .checked_add(line.taxbl_amt)
                .ok_or(TotalsOutOfRange)?;
            band.tax_amt = band
                .tax_amt
                .checked_add(line.tax_amt)
                .ok_or(TotalsOutOfRange)?;
            taxable = taxable
                .checked_add(line.taxbl_amt)
                .ok_or(TotalsOutOfRange)?;
            tax = tax.checked_add(line.tax_amt).ok_or(TotalsOutOfRange)?;
            total = total.checked_add(line.tot_amt).ok_or(TotalsOutOfRange)?;
        }
        let residue = total
            .checked_sub(taxable)
            .and_then(|r| r.checked_sub(tax))
            .ok_or(TotalsOutOfRange)?;
        let tax = tax.checked_add(residue).ok_or(TotalsOutOfRange)?;
        Ok(InvoiceTotals {
            tot_item_cnt: lines.len(),
            tot_taxbl_amt: taxable,
            tot_tax_amt: tax,
            tot_amt: total,
            bands,
        })
    }

    pub fn band(&self, band: TaxBand) -> &BandTotals {
        &self.bands[band.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::{Percent, Quantity, Rounding};
    use crate::line::{LineInput, LineText, Pricing, calculate_line};

    fn line(price: &str, band: &str, qty: &str) -> PricedLine {
        let text = LineText {
            price,
            band,
            qty,
            pricing: Pricing::VatInclusive,
            discount: None,
            discount_rate: None,
        };
        calculate_line(&LineInput::parse(&text).unwrap(), &TaxRates::kenya()).unwrap()
    }

    fn shown(t: &InvoiceTotals) -> (usize, String, String, String) {
        (
            t.tot_item_cnt,
            t.tot_taxbl_amt.to_string(),
            t.tot_tax_amt.to_string(),
            t.tot_amt.to_string(),
        )
    }

    fn totals(lines: &[PricedLine]) -> InvoiceTotals {
        InvoiceTotals::from_lines(lines, &TaxRates::kenya()).unwrap()
    }

    #[test]
    fn worked_examples_of_the_reference() {
        // taxid-api.md §5.5, T1–T6, T9, T10.
        let many = |n| vec![line("999.99", "B", "1"); n];
        let s = |v: &str| v.to_string();
        assert_eq!(
            shown(&totals(&many(1))),
            (1, s("862.06"), s("137.93"), s("999.99"))
        );
        assert_eq!(
            shown(&totals(&many(3))),
            (3, s("2586.18"), s("413.79"), s("2999.97"))
        );
        assert_eq!(
            shown(&totals(&many(100))),
            (100, s("86206.00"), s("13793.00"), s("99999.00"))
        );
        assert_eq!(
            shown(&totals(&many(1000))),
            (1000, s("862060.00"), s("137930.00"), s("999990.00"))
        );
        assert_eq!(
            shown(&totals(&[line("999.99", "B", "100")])),
            (1, s("86206.03"), s("13792.97"), s("99999.00"))
        );
        let mixed = [
            line("200", "A", "2"),
            line("70", "B", "2"),
            line("179.30", "E", "12.345"),
        ];
        assert_eq!(
            shown(&totals(&mixed)),
            (3, s("2570.19"), s("183.27"), s("2753.46"))
        );
        assert_eq!(shown(&totals(&[])), (0, s("0.00"), s("0.00"), s("0.00")));
        assert_eq!(
            shown(&totals(&[line("10", "B", "1"), line("20", "B", "1")])),
            (2, s("25.86"), s("4.14"), s("30.00"))
        );
    }

    #[test]
    fn per_band_fields_for_a_mixed_invoice() {
        let mixed = [
            line("200", "A", "2"),
            line("70", "B", "2"),
            line("179.30", "E", "12.345"),
            line("10", "B", "1"),
        ];
        let t = totals(&mixed);
        let band = |b| {
            let f = t.band(b);
            (
                f.taxbl_amt.to_string(),
                f.tax_rt.percent().to_string(),
                f.tax_amt.to_string(),
            )
        };
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(band(TaxBand::A), s("400.00", "0.00", "0.00"));
        assert_eq!(band(TaxBand::B), s("129.31", "16.00", "20.69"));
        assert_eq!(band(TaxBand::C), s("0.00", "0.00", "0.00"));
        assert_eq!(band(TaxBand::D), s("0.00", "0.00", "0.00"));
        assert_eq!(band(TaxBand::E), s("2049.50", "8.00", "163.96"));
    }

    #[test]
    fn residue_of_foreign_lines_goes_to_the_tax_total() {
        // A line received from elsewhere whose parts do not add up (taxable 1.01 + tax 0.98
        // for a total of 2.00): as the reference, the header's tax absorbs the residue.
        let money = |t: &str| Money::parse(t, Rounding::Exact).unwrap();
        let foreign = PricedLine {
            qty: Quantity::parse("1", Rounding::Exact).unwrap(),
            uprc: money("2.00"),
            sply_amt: money("2.00"),
            dc_rt: Percent::ZERO,
            dc_amt: Money::ZERO,
            taxbl_amt: money("1.01"),
            tax_amt: money("0.98"),
            tot_amt: money("2.00"),
            tax_ty_cd: TaxBand::B,
        };
        let t = totals(&[foreign, line("10", "B", "1")]);
        assert_eq!(shown(&t), (2, "9.63".into(), "2.37".into(), "12.00".into()));
        // The band fields stay the plain line sums.
        assert_eq!(t.band(TaxBand::B).tax_amt.to_string(), "2.36");
    }

    #[test]
    fn totals_beyond_range_are_refused() {
        let big = line("99999999999999999999.99", "A", "1");
        assert_eq!(
            InvoiceTotals::from_lines(&[big, big], &TaxRates::kenya()),
            Err(TotalsOutOfRange)
        );
    }
}
