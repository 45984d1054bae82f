//! The arithmetic alone, on one core: one line, and a 10-line invoice.
//!
//! `parse_and_calculate` starts from text, as the reference `calculate_item` does (it takes
//! its numbers as strings and converts them); `calculate` starts from parsed inputs.
//! bench/tax-vs-reference compares these rates with the reference's.

// A test (or bench) crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ushuru_tax::{InvoiceTotals, LineInput, LineText, Pricing, TaxRates, calculate_line};

/// A mixed basket: every band, inclusive and exclusive prices, fractional quantities, both
/// discount forms.
fn basket() -> Vec<LineText<'static>> {
    let line = |price, band, qty, pricing, discount, discount_rate| LineText {
        price,
        band,
        qty,
        pricing,
        discount,
        discount_rate,
    };
    vec![
        line("5800.00", "B", "1", Pricing::VatInclusive, None, None),
        line("209.40", "B", "15.456", Pricing::VatInclusive, None, None),
        line("650", "B", "5", Pricing::VatInclusive, None, Some("10")),
        line("1000", "B", "3", Pricing::VatExclusive, None, None),
        line("179.30", "E", "12.345", Pricing::VatInclusive, None, None),
        line("200.00", "A", "2", Pricing::VatInclusive, None, None),
        line("70.00", "C", "24", Pricing::VatInclusive, Some("50"), None),
        line("99.99", "D", "1", Pricing::VatInclusive, None, None),
        line("0.99", "E", "2.5", Pricing::VatExclusive, None, None),
        line(
            "12345.67",
            "B",
            "1.25",
            Pricing::VatInclusive,
            None,
            Some("12.5"),
        ),
    ]
}

fn benches(c: &mut Criterion) {
    let rates = TaxRates::kenya();
    let texts = basket();
    let inputs: Vec<LineInput> = texts
        .iter()
        .map(|t| LineInput::parse(t).expect("valid basket"))
        .collect();

    let mut group = c.benchmark_group("line");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_and_calculate", |b| {
        b.iter(|| {
            calculate_line(
                &LineInput::parse(black_box(&texts[2])).expect("valid"),
                &rates,
            )
        })
    });
    group.bench_function("calculate", |b| {
        b.iter(|| calculate_line(black_box(&inputs[2]), &rates))
    });
    group.finish();

    let mut group = c.benchmark_group("invoice_10_lines");
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.bench_function("parse_and_calculate", |b| {
        b.iter(|| {
            let lines: Vec<_> = black_box(&texts)
                .iter()
                .map(|t| {
                    calculate_line(&LineInput::parse(t).expect("valid"), &rates).expect("in range")
                })
                .collect();
            InvoiceTotals::from_lines(&lines, &rates)
        })
    });
    group.bench_function("calculate", |b| {
        b.iter(|| {
            let lines: Vec<_> = black_box(&inputs)
                .iter()
                .map(|i| calculate_line(i, &rates).expect("in range"))
                .collect();
            InvoiceTotals::from_lines(&lines, &rates)
        })
    });
    group.finish();
}

criterion_group!(arithmetic, benches);
criterion_main!(arithmetic);
