use serde::{Deserialize, Serialize};

/// `selectInitOsdcInfo` (§2.2): no `cmcKey` yet, identity in the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    pub tin: String,
    pub bhf_id: String,
    pub dvc_srl_no: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitResponse {
    pub info: InitInfo,
}

/// The device's identity; `cmc_key` is the secret that signs in the taxpayer's name.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitInfo {
    pub tin: String,
    pub taxpr_nm: Option<String>,
    pub bsns_actv: Option<String>,
    pub bhf_id: String,
    pub bhf_nm: Option<String>,
    pub bhf_open_dt: Option<String>,
    pub prvnc_nm: Option<String>,
    pub dstrt_nm: Option<String>,
    pub sctr_nm: Option<String>,
    pub loc_desc: Option<String>,
    pub hq_yn: Option<String>,
    pub mgr_nm: Option<String>,
    pub mgr_tel_no: Option<String>,
    pub mgr_email: Option<String>,
    pub dvc_id: String,
    /// The spec table misspells it `sdicId`.
    #[serde(alias = "sdicId")]
    pub sdc_id: String,
    pub mrc_no: String,
    pub cmc_key: String,
}

impl std::fmt::Debug for InitInfo {
    /// Never prints the cmcKey.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitInfo")
            .field("tin", &self.tin)
            .field("bhf_id", &self.bhf_id)
            .field("dvc_id", &self.dvc_id)
            .field("sdc_id", &self.sdc_id)
            .field("mrc_no", &self.mrc_no)
            .field("cmc_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}
