//! Request and response bodies of every OSCU/VSCU endpoint (kra-protocol.md §2), with KRA's
//! exact field names. Optional fields are always emitted (as `null` when absent); required
//! ones cannot be left out. Responses and requests are read leniently (see [`crate::wire`]).

mod init;
mod master;
mod reference;
mod reports;
mod sales;
mod stock;

pub use init::*;
pub use master::*;
pub use reference::*;
pub use reports::*;
pub use sales::*;
pub use stock::*;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `data` of a save: KRA answers `null`, sometimes `{}`; anything is accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoData;

impl Serialize for NoData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_none()
    }
}

impl<'de> Deserialize<'de> for NoData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| NoData)
    }
}

/// `{lastReqDt}`: the incremental lookups return what changed after it (`001` if nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRequest {
    pub last_req_dt: crate::wire::DateTime14,
}
