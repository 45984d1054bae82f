//! Purchases and stock (§2.3): purchase-sales declared to you, purchases, stock moves,
//! stock in/out, stock master.

use serde::{Deserialize, Serialize};

use crate::wire::{Amount, Date8, DateTime14, Int, Qty, Rate};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurchaseSalesListResponse {
    pub sale_list: Vec<SupplierSale>,
}

/// A sale a supplier declared with this taxpayer as buyer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupplierSale {
    pub spplr_tin: String,
    pub spplr_nm: Option<String>,
    pub spplr_bhf_id: String,
    pub spplr_invc_no: Int,
    pub spplr_sdc_id: Option<String>,
    pub rcpt_ty_cd: String,
    pub pmt_ty_cd: Option<String>,
    /// Purchase lists give `YYYY-MM-DD HH:MM:SS` here; read in either form.
    pub cfm_dt: DateTime14,
    pub sales_dt: Date8,
    pub stock_rls_dt: Option<DateTime14>,
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
    pub remark: Option<String>,
    pub item_list: Vec<TradeItem>,
}

/// A line of a purchase, supplier sale or stock movement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TradeItem {
    pub item_seq: Int,
    pub item_cls_cd: Option<String>,
    pub item_cd: Option<String>,
    pub item_nm: String,
    pub bcd: Option<String>,
    pub pkg_unit_cd: String,
    pub pkg: Qty,
    pub qty_unit_cd: String,
    pub qty: Qty,
    pub prc: Amount,
    pub sply_amt: Amount,
    pub dc_rt: Option<Rate>,
    pub dc_amt: Option<Amount>,
    pub tot_dc_amt: Option<Amount>,
    pub tax_ty_cd: String,
    pub taxbl_amt: Amount,
    pub tax_amt: Amount,
    pub tot_amt: Amount,
    pub item_expr_dt: Option<Date8>,
}

/// `insertTrnsPurchase`: confirm a KRA-fed purchase (`regTyCd` A) or record one (M).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurchaseRequest {
    pub spplr_tin: Option<String>,
    pub invc_no: Int,
    pub org_invc_no: Int,
    pub spplr_bhf_id: Option<String>,
    pub spplr_nm: Option<String>,
    pub spplr_invc_no: Option<Int>,
    pub reg_ty_cd: String,
    pub pchs_ty_cd: String,
    pub rcpt_ty_cd: String,
    pub pmt_ty_cd: String,
    pub pchs_stts_cd: String,
    pub cfm_dt: Option<DateTime14>,
    pub pchs_dt: Date8,
    pub wrhs_dt: Option<DateTime14>,
    pub cncl_req_dt: Option<DateTime14>,
    pub cncl_dt: Option<DateTime14>,
    pub rfd_dt: Option<DateTime14>,
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
    pub remark: Option<String>,
    pub regr_id: String,
    pub regr_nm: String,
    pub modr_id: String,
    pub modr_nm: String,
    pub item_list: Vec<TradeItem>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockMoveListResponse {
    pub stock_list: Vec<StockMove>,
}

/// Stock moved to this branch by another branch of the taxpayer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockMove {
    pub cust_tin: Option<String>,
    pub cust_bhf_id: Option<String>,
    pub sar_no: Int,
    pub ocrn_dt: Date8,
    pub tot_item_cnt: Int,
    pub tot_taxbl_amt: Amount,
    pub tot_tax_amt: Amount,
    pub tot_amt: Amount,
    pub remark: Option<String>,
    pub item_list: Vec<TradeItem>,
}

/// `insertStockIO`: stock in or out, `sarTyCd` from code class 12.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockIoRequest {
    pub sar_no: Int,
    pub org_sar_no: Int,
    pub reg_ty_cd: String,
    pub cust_tin: Option<String>,
    pub cust_nm: Option<String>,
    pub cust_bhf_id: Option<String>,
    pub sar_ty_cd: String,
    pub ocrn_dt: Date8,
    pub tot_item_cnt: Int,
    pub tot_taxbl_amt: Amount,
    pub tot_tax_amt: Amount,
    pub tot_amt: Amount,
    pub remark: Option<String>,
    pub regr_id: String,
    pub regr_nm: String,
    pub modr_id: String,
    pub modr_nm: String,
    pub item_list: Vec<TradeItem>,
}

/// `saveStockMaster`: the remaining quantity of an item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockMasterRequest {
    pub item_cd: String,
    pub rsd_qty: Qty,
    pub regr_id: String,
    pub regr_nm: String,
    pub modr_id: String,
    pub modr_nm: String,
}
