//! The arithmetic of KRA eTIMS invoices, exactly as the `taxid-etims` 0.8.1 reference
//! computes it (`../shared/reference/taxid-api.md` §5), with types that can only hold
//! valid values.
//!
//! ```
//! use ushuru_tax::{calculate_line, InvoiceTotals, LineInput, LineText, Pricing, TaxRates};
//!
//! let rates = TaxRates::kenya();
//! let text = LineText { price: "650", band: "B", qty: "5", pricing: Pricing::VatInclusive,
//!                       discount: None, discount_rate: Some("10") };
//! let line = calculate_line(&LineInput::parse(&text)?, &rates)?;
//! assert_eq!(line.tot_amt.to_string(), "2925.00");
//! assert_eq!(line.taxbl_amt.to_string(), "2521.55");
//! assert_eq!(line.tax_amt.to_string(), "403.45");
//!
//! let totals = InvoiceTotals::from_lines(&[line], &rates)?;
//! assert_eq!(totals.tot_tax_amt.to_string(), "403.45");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Pure: no I/O, no async, no floating point.

mod band;
mod fixed;
mod invoice;
mod line;

pub use band::{RateError, TaxBand, TaxRate, TaxRates, UnknownBand};
pub use fixed::{
    Fixed, Kes, MAX_INTEGER_DIGITS, Money, NumberError, Pct, Percent, Quantity, Rounding, Unit,
    Units,
};
pub use invoice::{BandTotals, InvoiceTotals, TotalsOutOfRange};
pub use line::{
    Discount, LineError, LineField, LineInput, LineText, PricedLine, Pricing, calculate_line,
};
