//! Master data the taxpayer saves: customers, users, insurers, items, compositions,
//! imports (§2.3). Every save carries the operator fields `regrId`/`regrNm`/`modrId`/`modrNm`.

use serde::{Deserialize, Serialize};

use crate::wire::{Amount, Date8, Int, Qty};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaveCustomerRequest {
    pub cust_no: String,
    pub cust_tin: String,
    pub cust_nm: String,
    pub adrs: Option<String>,
    pub tel_no: Option<String>,
    pub email: Option<String>,
    pub fax_no: Option<String>,
    pub use_yn: String,
    pub remark: Option<String>,
    pub regr_id: String,
    pub regr_nm: String,
    pub modr_id: String,
    pub modr_nm: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaveUserRequest {
    pub user_id: String,
    pub user_nm: String,
    pub pwd: String,
    pub adrs: Option<String>,
    pub cntc: Option<String>,
    pub auth_cd: Option<String>,
    pub remark: Option<String>,
    pub use_yn: String,
    pub regr_id: String,
    pub regr_nm: String,
    pub modr_id: String,
    pub modr_nm: String,
}

impl std::fmt::Debug for SaveUserRequest {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaveUserRequest")
            .field("user_id", &self.user_id)
            .field("user_nm", &self.user_nm)
            .field("pwd", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaveInsuranceRequest {
    pub isrcc_cd: String,
    pub isrcc_nm: String,
    pub isrc_rt: Int,
    pub use_yn: String,
    pub regr_id: String,
    pub regr_nm: String,
    pub modr_id: String,
    pub modr_nm: String,
}

/// `saveItem`: saving an existing `itemCd` updates it; items are never deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaveItemRequest {
    pub item_cd: String,
    pub item_cls_cd: String,
    pub item_ty_cd: String,
    pub item_nm: String,
    pub item_std_nm: Option<String>,
    pub orgn_nat_cd: String,
    pub pkg_unit_cd: String,
    pub qty_unit_cd: String,
    pub tax_ty_cd: String,
    pub btch_no: Option<String>,
    pub bcd: Option<String>,
    pub dft_prc: Amount,
    pub grp_prc_l1: Option<Amount>,
    pub grp_prc_l2: Option<Amount>,
    pub grp_prc_l3: Option<Amount>,
    pub grp_prc_l4: Option<Amount>,
    pub grp_prc_l5: Option<Amount>,
    pub add_info: Option<String>,
    pub sfty_qty: Option<Qty>,
    pub isrc_aplcb_yn: String,
    pub use_yn: String,
    pub regr_id: String,
    pub regr_nm: String,
    pub modr_id: String,
    pub modr_nm: String,
}

impl SaveItemRequest {
    /// A finished product (type 2) of Kenyan origin, in use, not insurable, packed `NT`
    /// and counted in `U`, registered by Ushuru: what a POS item is unless it says more.
    pub fn finished_product(
        item_cd: String,
        item_nm: String,
        item_cls_cd: String,
        tax_ty_cd: String,
        dft_prc: Amount,
    ) -> Self {
        SaveItemRequest {
            item_cd,
            item_cls_cd,
            item_ty_cd: "2".into(),
            item_nm,
            item_std_nm: None,
            orgn_nat_cd: "KE".into(),
            pkg_unit_cd: "NT".into(),
            qty_unit_cd: "U".into(),
            tax_ty_cd,
            btch_no: None,
            bcd: None,
            dft_prc,
            grp_prc_l1: None,
            grp_prc_l2: None,
            grp_prc_l3: None,
            grp_prc_l4: None,
            grp_prc_l5: None,
            add_info: None,
            sfty_qty: None,
            isrc_aplcb_yn: "N".into(),
            use_yn: "Y".into(),
            regr_id: "ushuru".into(),
            regr_nm: "Ushuru".into(),
            modr_id: "ushuru".into(),
            modr_nm: "Ushuru".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemListResponse {
    pub item_list: Vec<ItemRecord>,
}

/// An item as `selectItemList` returns it: the saved fields plus owner and KRA flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemRecord {
    pub tin: String,
    pub item_cd: String,
    pub item_cls_cd: String,
    pub item_ty_cd: String,
    pub item_nm: String,
    pub item_std_nm: Option<String>,
    pub orgn_nat_cd: String,
    pub pkg_unit_cd: String,
    pub qty_unit_cd: String,
    pub tax_ty_cd: String,
    pub btch_no: Option<String>,
    pub reg_bhf_id: Option<String>,
    pub bcd: Option<String>,
    pub dft_prc: Amount,
    pub grp_prc_l1: Option<Amount>,
    pub grp_prc_l2: Option<Amount>,
    pub grp_prc_l3: Option<Amount>,
    pub grp_prc_l4: Option<Amount>,
    pub grp_prc_l5: Option<Amount>,
    pub add_info: Option<String>,
    pub sfty_qty: Option<Qty>,
    pub isrc_aplcb_yn: String,
    pub rra_mod_yn: Option<String>,
    pub use_yn: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaveItemCompositionRequest {
    pub item_cd: String,
    pub cpst_item_cd: String,
    pub cpst_qty: Qty,
    pub regr_id: String,
    pub regr_nm: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportItemListResponse {
    pub item_list: Vec<ImportItem>,
}

/// A customs import declared under the taxpayer's PIN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportItem {
    pub task_cd: String,
    /// The sample has `dclDe: "-1"`, so it is kept as text.
    pub dcl_de: String,
    pub item_seq: Int,
    pub dcl_no: String,
    pub hs_cd: String,
    pub item_nm: String,
    /// The spec spells it `imptItemsttsCd` here.
    #[serde(rename = "imptItemsttsCd", alias = "imptItemSttsCd")]
    pub impt_item_stts_cd: String,
    pub orgn_nat_cd: String,
    pub expt_nat_cd: String,
    pub pkg: Qty,
    pub pkg_unit_cd: Option<String>,
    pub qty: Qty,
    pub qty_unit_cd: String,
    pub tot_wt: Option<Qty>,
    pub net_wt: Option<Qty>,
    pub spplr_nm: String,
    pub agnt_nm: Option<String>,
    pub invc_fcur_amt: Amount,
    pub invc_fcur_cd: String,
    pub invc_fcur_excrt: Option<Amount>,
}

/// `updateImportItem`: approve or reject an import (no `regr*` fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateImportItemRequest {
    pub task_cd: String,
    pub dcl_de: Date8,
    pub item_seq: Int,
    pub hs_cd: String,
    pub item_cls_cd: String,
    pub item_cd: String,
    /// The table spells it `imptItemsttsCd`; the sample, and we, `imptItemSttsCd`.
    #[serde(alias = "imptItemsttsCd")]
    pub impt_item_stts_cd: String,
    pub remark: Option<String>,
    pub modr_id: String,
    pub modr_nm: String,
}
