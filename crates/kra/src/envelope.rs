//! The response envelopes: KRA's own, and GavaConnect's wrapper around it (§1.1, §1.3).

use serde::{Deserialize, Serialize};

use crate::codes::ResultCode;

/// `{resultCd, resultMsg, resultDt, data}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    pub result_cd: ResultCode,
    #[serde(default)]
    pub result_msg: String,
    #[serde(default)]
    pub result_dt: Option<String>,
    #[serde(default = "none")]
    pub data: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

/// GavaConnect's wrapper: `{responseHeader:{…}, responseBody:{resultCd, …}}`. Business
/// failures come as HTTP 400 with `responseBody: null`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayEnvelope<T> {
    pub response_header: GatewayHeader,
    #[serde(default = "none")]
    pub response_body: Option<Envelope<T>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayHeader {
    #[serde(default)]
    pub response_code: Option<String>,
    #[serde(default, rename = "responseRefID")]
    pub response_ref_id: Option<String>,
    #[serde(default)]
    pub customer_message: Option<String>,
    #[serde(default)]
    pub debug_message: Option<String>,
}
