//! VSCU day close (Z) and reading (X), after the upstream VSDC API (§2.8, §6).

use serde::{Deserialize, Serialize};

use crate::wire::{Amount, Date8, Int};

/// `saveReportZ`: close the day `rpt_de`. Irreversible: closing it again is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportRequest {
    pub rpt_de: Date8,
}

/// A day's report: what `saveReportZ` closed, or what `checkReportZ` reads (an X reading
/// when the day is still open). Counts and amounts per receipt category.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DayReport {
    pub rpt_de: Date8,
    /// The Z number the day has (closed) or will get (open).
    pub rpt_no: Int,
    /// `Y` once the day is closed.
    pub closed_yn: String,
    pub normal: ReportCategory,
    pub copy: ReportCategory,
    pub training: ReportCategory,
    pub proforma: ReportCategory,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReportCategory {
    pub sale_cnt: Int,
    pub refund_cnt: Int,
    pub opening_rcpt_no: Option<Int>,
    pub closing_rcpt_no: Option<Int>,
    pub sale_amt: Amount,
    pub sale_tax_amt: Amount,
    pub refund_amt: Amount,
    pub refund_tax_amt: Amount,
}
