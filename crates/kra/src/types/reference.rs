//! Reference data: code lists, item classes, taxpayers, branches, notices (§2.3).

use serde::{Deserialize, Serialize};

use crate::wire::{DateTime14, Int};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeListResponse {
    pub cls_list: Vec<CodeClass>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeClass {
    pub cd_cls: String,
    pub cd_cls_nm: String,
    pub cd_cls_desc: Option<String>,
    pub use_yn: String,
    pub user_dfn_nm1: Option<String>,
    pub user_dfn_nm2: Option<String>,
    pub user_dfn_nm3: Option<String>,
    pub dtl_list: Vec<CodeDetail>,
}

/// One code; for class 04 (tax types) `user_dfn_cd1` holds the rate in percent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeDetail {
    pub cd: String,
    pub cd_nm: String,
    pub cd_desc: Option<String>,
    pub use_yn: String,
    pub srt_ord: Option<Int>,
    pub user_dfn_cd1: Option<String>,
    pub user_dfn_cd2: Option<String>,
    pub user_dfn_cd3: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemClassListResponse {
    pub item_cls_list: Vec<ItemClass>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemClass {
    pub item_cls_cd: String,
    pub item_cls_nm: String,
    pub item_cls_lvl: Int,
    pub tax_ty_cd: Option<String>,
    pub mjr_tg_yn: Option<String>,
    pub use_yn: String,
}

/// `selectCustomer`: note KRA's `custmTin`, with the extra `m`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerLookupRequest {
    pub custm_tin: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerLookupResponse {
    pub cust_list: Vec<Taxpayer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Taxpayer {
    pub tin: String,
    pub taxpr_nm: String,
    pub taxpr_stts_cd: String,
    pub prvnc_nm: Option<String>,
    pub dstrt_nm: Option<String>,
    pub sctr_nm: Option<String>,
    pub loc_desc: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchListResponse {
    pub bhf_list: Vec<Branch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Branch {
    pub tin: String,
    pub bhf_id: String,
    pub bhf_nm: String,
    pub bhf_stts_cd: String,
    pub prvnc_nm: Option<String>,
    pub dstrt_nm: Option<String>,
    pub sctr_nm: Option<String>,
    pub loc_desc: Option<String>,
    pub mgr_nm: Option<String>,
    pub mgr_tel_no: Option<String>,
    pub mgr_email: Option<String>,
    pub hq_yn: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NoticeListResponse {
    pub notice_list: Vec<Notice>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub notice_no: Int,
    pub title: String,
    pub cont: String,
    pub dtl_url: Option<String>,
    pub regr_nm: Option<String>,
    pub reg_dt: DateTime14,
}
