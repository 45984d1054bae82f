//! Building a sale payload from priced lines: the one place where `ushuru-tax` results
//! become KRA's `saveTrnsSalesOsdc` body, header sums and all.

use chrono::NaiveDateTime;
use ushuru_tax::{InvoiceTotals, PricedLine, TaxRates, TotalsOutOfRange};

use crate::types::{SaleItem, SaleReceiptInfo, SaleRequest};
use crate::wire::{Amount, Date8, DateTime14, Int, Qty, Rate};

/// A line to sell: the item's KRA identity and its priced amounts.
#[derive(Clone, Debug)]
pub struct DraftLine {
    pub item_cd: String,
    pub item_nm: String,
    pub item_cls_cd: Option<String>,
    pub pkg_unit_cd: String,
    pub qty_unit_cd: String,
    pub priced: PricedLine,
}

/// Everything a sale payload needs beyond its lines.
#[derive(Clone, Debug)]
pub struct SaleDraft {
    pub tin: String,
    pub bhf_id: String,
    pub invc_no: u64,
    /// The original `invcNo` of a credit note; 0 for a sale.
    pub org_invc_no: u64,
    pub trd_invc_no: String,
    /// `S` sale, `R` credit note.
    pub rcpt_ty_cd: String,
    /// `N` normal, `T` training, `P` proforma, `C` copy.
    pub sales_ty_cd: String,
    pub pmt_ty_cd: Option<String>,
    pub cust_tin: Option<String>,
    pub cust_nm: Option<String>,
    /// Credit-note reason (code class 32).
    pub rfd_rsn_cd: Option<String>,
    /// When the sale was confirmed (EAT).
    pub confirmed: NaiveDateTime,
    pub operator: String,
    pub lines: Vec<DraftLine>,
}

impl SaleDraft {
    /// The complete payload, with the header amounts computed from the lines.
    pub fn into_request(self, rates: &TaxRates) -> Result<SaleRequest, TotalsOutOfRange> {
        let priced: Vec<PricedLine> = self.lines.iter().map(|l| l.priced).collect();
        let totals = InvoiceTotals::from_lines(&priced, rates)?;
        let band = |i: usize| &totals.bands[i];
        let confirmed = DateTime14(self.confirmed);
        let credit_note = self.rcpt_ty_cd == "R";
        let item_list = self
            .lines
            .into_iter()
            .enumerate()
            .map(|(index, line)| SaleItem {
                item_seq: Int(index as u64 + 1),
                item_cls_cd: line.item_cls_cd,
                item_cd: line.item_cd,
                item_nm: line.item_nm,
                bcd: None,
                pkg_unit_cd: line.pkg_unit_cd,
                pkg: Qty(line.priced.qty),
                qty_unit_cd: line.qty_unit_cd,
                qty: Qty(line.priced.qty),
                prc: Amount(line.priced.uprc),
                sply_amt: Amount(line.priced.sply_amt),
                dc_rt: Rate(line.priced.dc_rt),
                dc_amt: Amount(line.priced.dc_amt),
                isrcc_cd: None,
                isrcc_nm: None,
                isrc_rt: None,
                isrc_amt: None,
                tax_ty_cd: line.priced.tax_ty_cd.code().to_owned(),
                taxbl_amt: Amount(line.priced.taxbl_amt),
                tax_amt: Amount(line.priced.tax_amt),
                tot_amt: Amount(line.priced.tot_amt),
            })
            .collect();
        Ok(SaleRequest {
            tin: Some(self.tin),
            bhf_id: Some(self.bhf_id),
            trd_invc_no: self.trd_invc_no,
            invc_no: Int(self.invc_no),
            org_invc_no: Int(self.org_invc_no),
            cust_tin: self.cust_tin.clone(),
            cust_nm: self.cust_nm,
            sales_ty_cd: Some(self.sales_ty_cd),
            rcpt_ty_cd: self.rcpt_ty_cd,
            pmt_ty_cd: self.pmt_ty_cd,
            sales_stts_cd: "02".to_owned(),
            cfm_dt: confirmed,
            sales_dt: Date8(self.confirmed.date()),
            stock_rls_dt: Some(confirmed),
            cncl_req_dt: None,
            cncl_dt: None,
            rfd_dt: credit_note.then_some(confirmed),
            rfd_rsn_cd: self.rfd_rsn_cd,
            tot_item_cnt: Int(totals.tot_item_cnt as u64),
            taxbl_amt_a: Amount(band(0).taxbl_amt),
            taxbl_amt_b: Amount(band(1).taxbl_amt),
            taxbl_amt_c: Amount(band(2).taxbl_amt),
            taxbl_amt_d: Amount(band(3).taxbl_amt),
            taxbl_amt_e: Amount(band(4).taxbl_amt),
            tax_rt_a: Rate(band(0).tax_rt.percent()),
            tax_rt_b: Rate(band(1).tax_rt.percent()),
            tax_rt_c: Rate(band(2).tax_rt.percent()),
            tax_rt_d: Rate(band(3).tax_rt.percent()),
            tax_rt_e: Rate(band(4).tax_rt.percent()),
            tax_amt_a: Amount(band(0).tax_amt),
            tax_amt_b: Amount(band(1).tax_amt),
            tax_amt_c: Amount(band(2).tax_amt),
            tax_amt_d: Amount(band(3).tax_amt),
            tax_amt_e: Amount(band(4).tax_amt),
            tot_taxbl_amt: Amount(totals.tot_taxbl_amt),
            tot_tax_amt: Amount(totals.tot_tax_amt),
            tot_amt: Amount(totals.tot_amt),
            prchr_acptc_yn: "N".to_owned(),
            remark: None,
            regr_id: self.operator.clone(),
            regr_nm: self.operator.clone(),
            modr_id: self.operator.clone(),
            modr_nm: self.operator,
            receipt: SaleReceiptInfo {
                cust_tin: self.cust_tin,
                cust_mbl_no: None,
                rcpt_pbct_dt: confirmed,
                trde_nm: None,
                adrs: None,
                top_msg: None,
                btm_msg: None,
                prchr_acptc_yn: "N".to_owned(),
                rpt_no: None,
            },
            item_list,
        })
    }
}
