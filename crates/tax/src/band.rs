//! Tax bands (KRA code class 04, `taxTyCd`) and their rates.

use std::fmt;
use std::str::FromStr;

use crate::fixed::{NumberError, Percent, Rounding};

/// A KRA tax type: A exempt, B standard VAT, C zero-rated, D non-VAT, E special rate.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize)]
pub enum TaxBand {
    A,
    B,
    C,
    D,
    E,
}

impl TaxBand {
    pub const ALL: [TaxBand; 5] = [TaxBand::A, TaxBand::B, TaxBand::C, TaxBand::D, TaxBand::E];

    /// Position in `ALL`, for per-band arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// KRA's code: `"A"`..`"E"`.
    pub fn code(self) -> &'static str {
        ["A", "B", "C", "D", "E"][self.index()]
    }
}

impl fmt::Display for TaxBand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The text is not one of the bands A–E.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tax band {0:?}: expected one of A, B, C, D, E")]
pub struct UnknownBand(pub String);

impl FromStr for TaxBand {
    type Err = UnknownBand;

    /// Case-insensitive and trimmed, as the reference SDK (`" b "` is band B).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().as_bytes() {
            [c] => match c.to_ascii_uppercase() {
                b'A' => Ok(TaxBand::A),
                b'B' => Ok(TaxBand::B),
                b'C' => Ok(TaxBand::C),
                b'D' => Ok(TaxBand::D),
                b'E' => Ok(TaxBand::E),
                _ => Err(UnknownBand(text.to_owned())),
            },
            _ => Err(UnknownBand(text.to_owned())),
        }
    }
}

/// A tax rate in percent, 0–100 with at most 2 decimals (KRA's `taxRtX`, NUMBER(7,2)).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct TaxRate(Percent);

/// Why a rate is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("rate {0}")]
    Number(#[from] NumberError),
    #[error("rate must be between 0 and 100 percent")]
    OutOfBounds,
}

impl TaxRate {
    pub fn new(percent: Percent) -> Result<Self, RateError> {
        if percent.is_negative() || percent.minor() > 100 * 100 {
            return Err(RateError::OutOfBounds);
        }
        Ok(TaxRate(percent))
    }

    /// The rate in percent, e.g. `16.00`.
    pub fn percent(self) -> Percent {
        self.0
    }

    /// Hundredths of a percent: 16 % is 1600, so the fraction is this over 10 000.
    pub(crate) fn basis_points_hundredths(self) -> u128 {
        self.0.minor().unsigned_abs()
    }
}

impl FromStr for TaxRate {
    type Err = RateError;

    /// A percentage such as `16` or `8.5`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        TaxRate::new(Percent::parse(text, Rounding::Exact)?)
    }
}

/// The rate of each band. KRA publishes them in code class 04 (`userDfnCd1`), so they are
/// configuration, never constants at the call sites.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TaxRates([TaxRate; 5]);

impl TaxRates {
    /// Kenya's rates since 2023: A 0 %, B 16 %, C 0 %, D 0 %, E 8 %.
    pub fn kenya() -> Self {
        let percent = |whole: i128| TaxRate(Percent::known(whole * 100));
        TaxRates([percent(0), percent(16), percent(0), percent(0), percent(8)])
    }

    pub fn rate(&self, band: TaxBand) -> TaxRate {
        self.0[band.index()]
    }

    /// The same table with one band's rate replaced.
    pub fn with_rate(mut self, band: TaxBand, rate: TaxRate) -> Self {
        self.0[band.index()] = rate;
        self
    }
}

impl Default for TaxRates {
    fn default() -> Self {
        TaxRates::kenya()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_parse_like_the_reference() {
        assert_eq!(" b ".parse::<TaxBand>().unwrap(), TaxBand::B);
        assert_eq!("E".parse::<TaxBand>().unwrap(), TaxBand::E);
        assert_eq!("F".parse::<TaxBand>(), Err(UnknownBand("F".into())));
        assert_eq!("".parse::<TaxBand>(), Err(UnknownBand("".into())));
        assert_eq!("BB".parse::<TaxBand>(), Err(UnknownBand("BB".into())));
        assert_eq!("é".parse::<TaxBand>(), Err(UnknownBand("é".into())));
    }

    #[test]
    fn kenyan_rates() {
        let rates = TaxRates::kenya();
        let shown: Vec<String> = TaxBand::ALL
            .iter()
            .map(|&b| rates.rate(b).percent().to_string())
            .collect();
        assert_eq!(shown, ["0.00", "16.00", "0.00", "0.00", "8.00"]);
    }

    #[test]
    fn rates_are_validated() {
        assert_eq!("16".parse::<TaxRate>().unwrap().percent().minor(), 1600);
        assert_eq!("100".parse::<TaxRate>().unwrap().percent().minor(), 10000);
        assert_eq!("100.01".parse::<TaxRate>(), Err(RateError::OutOfBounds));
        assert_eq!("-1".parse::<TaxRate>(), Err(RateError::OutOfBounds));
        assert_eq!(
            "16.125".parse::<TaxRate>(),
            Err(RateError::Number(NumberError::TooPrecise {
                max_decimals: 2
            }))
        );
        assert_eq!(
            "x".parse::<TaxRate>(),
            Err(RateError::Number(NumberError::NotANumber))
        );
    }
}
