//! Every line and every invoice total of the reference vectors (`taxid-etims` 0.8.1
//! `calculate_item` + `build_invoice_totals`), compared as decimals.
//!
//! `tests/data/tax-vectors.json` is a copy of `../shared/tax-vectors.json`; when the shared
//! folder is beside the repository, its current copy is checked too, so an update there
//! cannot go unnoticed.

// A test (or bench) crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;
use ushuru_tax::{
    InvoiceTotals, LineInput, LineText, PricedLine, Pricing, TaxRates, calculate_line,
};

fn decimal(value: &Value) -> Decimal {
    let text = value
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    Decimal::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn text_of(input: &Value, key: &str) -> Option<String> {
    input.get(key).map(|v| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    })
}

fn check_vectors(path: &Path) -> (usize, usize) {
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rates = TaxRates::kenya();
    let invoices = data["invoices"].as_array().unwrap();
    let mut line_count = 0;
    for (n, invoice) in invoices.iter().enumerate() {
        let mut lines: Vec<PricedLine> = Vec::new();
        for (m, vector) in invoice["lines"].as_array().unwrap().iter().enumerate() {
            let input = &vector["input"];
            let (price, band, qty) = (
                text_of(input, "price").unwrap(),
                text_of(input, "band").unwrap(),
                text_of(input, "qty").unwrap(),
            );
            let (discount, discount_rate) =
                (text_of(input, "discount"), text_of(input, "discount_rate"));
            let pricing = if input["price_is_inclusive"].as_bool().unwrap() {
                Pricing::VatInclusive
            } else {
                Pricing::VatExclusive
            };
            let text = LineText {
                price: &price,
                band: &band,
                qty: &qty,
                pricing,
                discount: discount.as_deref(),
                discount_rate: discount_rate.as_deref(),
            };
            let line = LineInput::parse(&text)
                .and_then(|input| calculate_line(&input, &rates))
                .unwrap_or_else(|e| panic!("invoice {n} line {m} {input}: {e}"));
            let expect = &vector["expect"];
            let got = [
                ("qty", line.qty.to_decimal()),
                ("uprc", line.uprc.to_decimal()),
                ("splyAmt", line.sply_amt.to_decimal()),
                ("dcRt", line.dc_rt.to_decimal()),
                ("dcAmt", line.dc_amt.to_decimal()),
                ("taxblAmt", line.taxbl_amt.to_decimal()),
                ("taxAmt", line.tax_amt.to_decimal()),
                ("totAmt", line.tot_amt.to_decimal()),
            ];
            for (field, value) in got {
                assert_eq!(
                    value,
                    decimal(&expect[field]),
                    "invoice {n} line {m} {field}: {input}"
                );
            }
            assert_eq!(line.tax_ty_cd.code(), band.trim().to_ascii_uppercase());
            lines.push(line);
            line_count += 1;
        }
        let totals = InvoiceTotals::from_lines(&lines, &rates).unwrap();
        let expect = &invoice["totals"];
        assert_eq!(
            Decimal::from(totals.tot_item_cnt),
            decimal(&expect["totItemCnt"]),
            "invoice {n}"
        );
        assert_eq!(
            totals.tot_taxbl_amt.to_decimal(),
            decimal(&expect["totTaxblAmt"]),
            "invoice {n}"
        );
        assert_eq!(
            totals.tot_tax_amt.to_decimal(),
            decimal(&expect["totTaxAmt"]),
            "invoice {n}"
        );
        assert_eq!(
            totals.tot_amt.to_decimal(),
            decimal(&expect["totAmt"]),
            "invoice {n}"
        );
    }
    (invoices.len(), line_count)
}

#[test]
fn every_reference_vector_is_reproduced() {
    let (invoices, lines) = check_vectors(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tax-vectors.json"),
    );
    // The file holds 400 invoices with 2,576 lines; fewer would mean a truncated copy.
    assert_eq!((invoices, lines), (400, 2576));
}

#[test]
fn the_shared_copy_matches_too_when_present() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tax-vectors.json");
    if shared.exists() {
        let (invoices, lines) = check_vectors(&shared);
        assert!(invoices >= 400 && lines >= 2576);
    }
}
