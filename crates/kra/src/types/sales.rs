//! The sale (`saveTrnsSalesOsdc`, §2.4) and its lookup (`selectInvoiceDetails`, §2.5).

use serde::{Deserialize, Serialize};

use crate::wire::{Amount, Date8, DateTime14, Int, Qty, Rate};

/// `TrnsSalesSaveWrReq`: a sale (`rcptTyCd` S) or credit note (R).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaleRequest {
    /// Identity in the body as well as the headers: the VSCU JAR reads it here.
    pub tin: Option<String>,
    pub bhf_id: Option<String>,
    /// The trader's own invoice reference.
    pub trd_invc_no: String,
    /// KRA's invoice number for the branch: the previous one + 1 (§6).
    pub invc_no: Int,
    /// 0 for a sale; the original `invcNo` for a credit note.
    pub org_invc_no: Int,
    pub cust_tin: Option<String>,
    pub cust_nm: Option<String>,
    /// N normal, C copy, P proforma, T training; with `rcpt_ty_cd` it makes the label.
    pub sales_ty_cd: Option<String>,
    pub rcpt_ty_cd: String,
    pub pmt_ty_cd: Option<String>,
    pub sales_stts_cd: String,
    pub cfm_dt: DateTime14,
    pub sales_dt: Date8,
    pub stock_rls_dt: Option<DateTime14>,
    pub cncl_req_dt: Option<DateTime14>,
    pub cncl_dt: Option<DateTime14>,
    pub rfd_dt: Option<DateTime14>,
    pub rfd_rsn_cd: Option<String>,
    pub tot_item_cnt: Int,
    pub taxbl_amt_a: Amount,
    pub taxbl_amt_b: Amount,
    pub taxbl_amt_c: Amount,
    pub taxbl_amt_d: Amount,
    pub taxbl_amt_e: Amount,
    pub tax_rt_a: Rate,
    pub tax_rt_b: Rate,
    pub tax_rt_c: Rate,
    pub tax_rt_d: Rate,
    pub tax_rt_e: Rate,
    pub tax_amt_a: Amount,
    pub tax_amt_b: Amount,
    pub tax_amt_c: Amount,
    pub tax_amt_d: Amount,
    pub tax_amt_e: Amount,
    pub tot_taxbl_amt: Amount,
    pub tot_tax_amt: Amount,
    pub tot_amt: Amount,
    pub prchr_acptc_yn: String,
    pub remark: Option<String>,
    pub regr_id: String,
    pub regr_nm: String,
    pub modr_id: String,
    pub modr_nm: String,
    pub receipt: SaleReceiptInfo,
    pub item_list: Vec<SaleItem>,
}

impl SaleRequest {
    /// The per-band header fields as arrays indexed A..E: (taxable, rate, tax).
    pub fn band_fields(&self) -> [(Amount, Rate, Amount); 5] {
        [
            (self.taxbl_amt_a, self.tax_rt_a, self.tax_amt_a),
            (self.taxbl_amt_b, self.tax_rt_b, self.tax_amt_b),
            (self.taxbl_amt_c, self.tax_rt_c, self.tax_amt_c),
            (self.taxbl_amt_d, self.tax_rt_d, self.tax_amt_d),
            (self.taxbl_amt_e, self.tax_rt_e, self.tax_amt_e),
        ]
    }

    /// The receipt label: `salesTyCd` + `rcptTyCd` (`NS`, `NR`, `TS`, …).
    pub fn label(&self) -> String {
        format!(
            "{}{}",
            self.sales_ty_cd.as_deref().unwrap_or("N"),
            self.rcpt_ty_cd
        )
    }
}

/// `TrnsSalesSaveWrReceipt`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaleReceiptInfo {
    pub cust_tin: Option<String>,
    pub cust_mbl_no: Option<String>,
    pub rcpt_pbct_dt: DateTime14,
    pub trde_nm: Option<String>,
    pub adrs: Option<String>,
    pub top_msg: Option<String>,
    pub btm_msg: Option<String>,
    pub prchr_acptc_yn: String,
    /// The report (day) number, in VSCU payloads.
    pub rpt_no: Option<Int>,
}

/// `TrnsSalesSaveWrItem`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaleItem {
    pub item_seq: Int,
    pub item_cls_cd: Option<String>,
    pub item_cd: String,
    pub item_nm: String,
    pub bcd: Option<String>,
    pub pkg_unit_cd: String,
    pub pkg: Qty,
    pub qty_unit_cd: String,
    pub qty: Qty,
    pub prc: Amount,
    pub sply_amt: Amount,
    pub dc_rt: Rate,
    pub dc_amt: Amount,
    pub isrcc_cd: Option<String>,
    pub isrcc_nm: Option<String>,
    pub isrc_rt: Option<Rate>,
    pub isrc_amt: Option<Amount>,
    pub tax_ty_cd: String,
    pub taxbl_amt: Amount,
    /// The spec table says `totTaxAmt`; the sample and every client say `taxAmt`.
    #[serde(alias = "totTaxAmt")]
    pub tax_amt: Amount,
    pub tot_amt: Amount,
}

/// The signed receipt. OSCU answers `curRcptNo` and `sdcDateTime`; the VSCU JAR
/// `rcptNo`, `vsdcRcptPbctDate`, `sdcId` and `mrcNo` (§2.4, §2.7): both are read here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaleResponse {
    #[serde(alias = "rcptNo")]
    pub cur_rcpt_no: Int,
    pub tot_rcpt_no: Int,
    pub intrl_data: String,
    pub rcpt_sign: String,
    #[serde(alias = "vsdcRcptPbctDate", alias = "VSCURcptPbctDate")]
    pub sdc_date_time: DateTime14,
    #[serde(default)]
    pub sdc_id: Option<String>,
    #[serde(default)]
    pub mrc_no: Option<String>,
}

/// The VSCU JAR's spelling of the receipt, as the sandbox emits it in VSCU mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VscuSaleResponse {
    pub rcpt_no: Int,
    pub tot_rcpt_no: Int,
    pub intrl_data: String,
    pub rcpt_sign: String,
    pub vsdc_rcpt_pbct_date: DateTime14,
    pub sdc_id: String,
    pub mrc_no: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceDetailsRequest {
    pub invc_no: Int,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceDetailsResponse {
    pub sales_list: Vec<StoredSale>,
}

/// A signed sale as `selectInvoiceDetails` returns it: the stored request and its receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSale {
    pub invc_no: Int,
    pub org_invc_no: Int,
    pub trd_invc_no: String,
    pub cust_tin: Option<String>,
    pub cust_nm: Option<String>,
    pub rcpt_ty_cd: String,
    pub sales_ty_cd: Option<String>,
    pub pmt_ty_cd: Option<String>,
    pub sales_stts_cd: String,
    pub cfm_dt: DateTime14,
    pub sales_dt: Date8,
    pub tot_item_cnt: Int,
    pub tot_taxbl_amt: Amount,
    pub tot_tax_amt: Amount,
    pub tot_amt: Amount,
    pub item_list: Vec<SaleItem>,
    pub receipt: StoredReceipt,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredReceipt {
    #[serde(alias = "rcptNo")]
    pub cur_rcpt_no: Int,
    pub tot_rcpt_no: Int,
    pub intrl_data: String,
    pub rcpt_sign: String,
    /// KRA answers `YYYY-MM-DD HH:MM:SS.0` here; read in any of the forms.
    pub sdc_date_time: DateTime14,
}
