//! The control unit's records: devices, master data, signed sales, day reports. Every
//! record sits in a map under a text key, so the optional state file can write each
//! changed record through as it changes (see [`crate::persist`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use ushuru_kra::types::{
    DayReport, ImportItem, ItemRecord, PurchaseRequest, SaleRequest, SaveCustomerRequest,
    SaveInsuranceRequest, SaveItemCompositionRequest, SaveUserRequest, StockIoRequest,
    StockMasterRequest, StoredReceipt, Taxpayer,
};
use ushuru_kra::wire::{Amount, Date8, DateTime14};

use crate::sales::Sales;

/// A record and when it last changed (for `lastReqDt` lookups).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stamped<T> {
    pub changed: DateTime14,
    pub value: T,
}

/// An initialised device of one branch.
#[derive(Clone, Serialize, Deserialize)]
pub struct Device {
    pub tin: String,
    pub bhf_id: String,
    pub dvc_srl_no: String,
    pub dvc_id: String,
    pub sdc_id: String,
    pub mrc_no: String,
    pub cmc_key: String,
    /// The HMAC key of the device's receipt signatures, hex.
    pub signing_secret: String,
    pub installed: DateTime14,
    pub last_invc_no: u64,
    /// `curRcptNo` per receipt label (NS, NR, CS, CR, TS, TR, PS).
    pub receipt_counters: BTreeMap<String, u64>,
    pub tot_rcpt_no: u64,
    /// VSCU: the last time the device reached KRA; it stops signing 24 h after.
    pub last_upstream_contact: DateTime14,
    /// The number of the day report (Z) that is open now.
    pub open_report_no: u64,
    pub last_closed_day: Option<Date8>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("tin", &self.tin)
            .field("bhf_id", &self.bhf_id)
            .field("sdc_id", &self.sdc_id)
            .field("last_invc_no", &self.last_invc_no)
            .finish_non_exhaustive()
    }
}

/// A sale or credit note the device signed.
///
/// The request is held as the compact JSON text the state file stores (about half the
/// memory of the parsed request) and parsed again by the few lookups that need all of it
/// ([`SignedSale::request`]); what every sale is scanned for (day reports, purchase lists,
/// credit notes) is kept beside it, parsed, in [`SaleSummary`]. It serializes exactly as
/// a [`ParsedSale`] with the same request does, and reads through one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "ParsedSale")]
pub struct SignedSale {
    // The device's names and the label: shared by the sales of a device (State::insert_sale).
    #[serde(serialize_with = "text")]
    pub tin: Arc<str>,
    #[serde(serialize_with = "text")]
    pub bhf_id: Arc<str>,
    #[serde(serialize_with = "text")]
    pub sdc_id: Arc<str>,
    #[serde(serialize_with = "text")]
    pub mrc_no: Arc<str>,
    #[serde(serialize_with = "text")]
    pub label: Arc<str>,
    pub report_no: u64,
    /// VSCU: whether KRA has received it (false while the upstream link is cut).
    pub synced: bool,
    /// SHA-256 (hex) of the request bytes as received; the receipt signature covers it.
    pub payload_sha256: String,
    /// The request as `serde_json::to_string` writes the parsed [`SaleRequest`].
    request: Box<RawValue>,
    pub receipt: StoredReceipt,
    #[serde(skip)]
    summary: SaleSummary,
}

/// The fields of a signed sale's request that scans over every sale read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleSummary {
    pub rcpt_ty: ReceiptType,
    pub org_invc_no: u64,
    pub cust_tin: Option<Box<str>>,
    pub tot_amt: Amount,
    pub tot_tax_amt: Amount,
}

/// `rcptTyCd`: signing admits only S and R; a state file could hold anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptType {
    /// `S`
    Sale,
    /// `R`
    CreditNote,
    Other,
}

impl ReceiptType {
    fn of(code: &str) -> Self {
        match code {
            "S" => ReceiptType::Sale,
            "R" => ReceiptType::CreditNote,
            _ => ReceiptType::Other,
        }
    }
}

/// A signed sale with its request parsed: what signing builds and what the state file's
/// record of a sale reads as.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParsedSale {
    pub tin: String,
    pub bhf_id: String,
    pub sdc_id: String,
    pub mrc_no: String,
    pub label: String,
    pub report_no: u64,
    pub synced: bool,
    pub payload_sha256: String,
    pub request: SaleRequest,
    pub receipt: StoredReceipt,
}

impl TryFrom<ParsedSale> for SignedSale {
    type Error = serde_json::Error;

    fn try_from(sale: ParsedSale) -> Result<Self, serde_json::Error> {
        let request = &sale.request;
        let summary = SaleSummary {
            rcpt_ty: ReceiptType::of(&request.rcpt_ty_cd),
            org_invc_no: request.org_invc_no.0,
            cust_tin: request.cust_tin.as_deref().map(Box::from),
            tot_amt: request.tot_amt,
            tot_tax_amt: request.tot_tax_amt,
        };
        // RawValue::from_string keeps the text in an allocation of its exact length.
        let request = RawValue::from_string(serde_json::to_string(request)?)?;
        Ok(SignedSale {
            tin: sale.tin.into(),
            bhf_id: sale.bhf_id.into(),
            sdc_id: sale.sdc_id.into(),
            mrc_no: sale.mrc_no.into(),
            label: sale.label.into(),
            report_no: sale.report_no,
            synced: sale.synced,
            payload_sha256: sale.payload_sha256,
            request,
            receipt: sale.receipt,
            summary,
        })
    }
}

impl SignedSale {
    /// The request, parsed from the stored text.
    pub fn request(&self) -> Result<SaleRequest, serde_json::Error> {
        serde_json::from_str(self.request.get())
    }

    /// The request's JSON text, as stored.
    pub fn request_json(&self) -> &str {
        self.request.get()
    }

    pub fn summary(&self) -> &SaleSummary {
        &self.summary
    }

    /// Replaces the names by equal ones already in `names`, adding those not there yet.
    pub(crate) fn share_names(&mut self, names: &mut BTreeSet<Arc<str>>) {
        for name in [
            &mut self.tin,
            &mut self.bhf_id,
            &mut self.sdc_id,
            &mut self.mrc_no,
            &mut self.label,
        ] {
            match names.get(&**name) {
                Some(shared) => *name = Arc::clone(shared),
                None => {
                    names.insert(Arc::clone(name));
                }
            }
        }
    }
}

fn text<S: serde::Serializer>(text: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(text)
}

/// The kinds of record, one map each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Device,
    Taxpayer,
    Item,
    Customer,
    User,
    Insurance,
    Composition,
    Import,
    Purchase,
    StockIo,
    StockMaster,
    Sale,
    DayReport,
    Settings,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Device,
        Kind::Taxpayer,
        Kind::Item,
        Kind::Customer,
        Kind::User,
        Kind::Insurance,
        Kind::Composition,
        Kind::Import,
        Kind::Purchase,
        Kind::StockIo,
        Kind::StockMaster,
        Kind::Sale,
        Kind::DayReport,
        Kind::Settings,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::Taxpayer => "taxpayer",
            Kind::Item => "item",
            Kind::Customer => "customer",
            Kind::User => "user",
            Kind::Insurance => "insurance",
            Kind::Composition => "composition",
            Kind::Import => "import",
            Kind::Purchase => "purchase",
            Kind::StockIo => "stock_io",
            Kind::StockMaster => "stock_master",
            Kind::Sale => "sale",
            Kind::DayReport => "day_report",
            Kind::Settings => "settings",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Settings that survive a restart with the state file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Settings {
    pub clock_offset_ms: i64,
    pub upstream_cut: bool,
    pub next_device_no: u64,
}

/// Everything the control unit knows.
#[derive(Debug, Default, Serialize)]
pub struct State {
    pub devices: BTreeMap<String, Device>,
    pub taxpayers: BTreeMap<String, Taxpayer>,
    pub items: BTreeMap<String, Stamped<ItemRecord>>,
    pub customers: BTreeMap<String, Stamped<SaveCustomerRequest>>,
    pub users: BTreeMap<String, Stamped<SaveUserRequest>>,
    pub insurances: BTreeMap<String, Stamped<SaveInsuranceRequest>>,
    pub compositions: BTreeMap<String, Stamped<SaveItemCompositionRequest>>,
    pub imports: BTreeMap<String, Stamped<ImportItem>>,
    pub purchases: BTreeMap<String, Stamped<PurchaseRequest>>,
    pub stock_io: BTreeMap<String, Stamped<StockIoRequest>>,
    pub stock_master: BTreeMap<String, Stamped<StockMasterRequest>>,
    /// In memory, or (with a state file) read back from it as needed.
    pub sales: Sales,
    pub day_reports: BTreeMap<String, DayReport>,
    pub settings: Settings,
}

/// The key of a record: its parts joined by `/` (PINs, branch ids and codes never hold one).
pub fn key(parts: &[&str]) -> String {
    parts.join("/")
}

/// The key of a sale: invoice numbers zero-padded, so the map orders them numerically.
pub fn sale_key(tin: &str, bhf_id: &str, invc_no: u64) -> String {
    format!("{tin}/{bhf_id}/{invc_no:020}")
}

/// The key prefix of a branch's records.
pub fn branch_prefix(tin: &str, bhf_id: &str) -> String {
    format!("{tin}/{bhf_id}/")
}

const SETTINGS_KEY: &str = "settings";

impl State {
    /// A record as JSON, for the state file; `None` when it no longer exists.
    pub fn record(&self, kind: Kind, key: &str) -> Option<Result<String, serde_json::Error>> {
        fn json<T: Serialize>(value: Option<&T>) -> Option<Result<String, serde_json::Error>> {
            value.map(serde_json::to_string)
        }
        match kind {
            Kind::Device => json(self.devices.get(key)),
            Kind::Taxpayer => json(self.taxpayers.get(key)),
            Kind::Item => json(self.items.get(key)),
            Kind::Customer => json(self.customers.get(key)),
            Kind::User => json(self.users.get(key)),
            Kind::Insurance => json(self.insurances.get(key)),
            Kind::Composition => json(self.compositions.get(key)),
            Kind::Import => json(self.imports.get(key)),
            Kind::Purchase => json(self.purchases.get(key)),
            Kind::StockIo => json(self.stock_io.get(key)),
            Kind::StockMaster => json(self.stock_master.get(key)),
            Kind::Sale => self.sales.record(key),
            Kind::DayReport => json(self.day_reports.get(key)),
            Kind::Settings => json(Some(&self.settings)),
        }
    }

    /// Puts back a record read from the state file.
    pub fn restore(
        &mut self,
        kind: Kind,
        key: String,
        json: &str,
    ) -> Result<(), serde_json::Error> {
        fn put<T: serde::de::DeserializeOwned>(
            map: &mut BTreeMap<String, T>,
            key: String,
            json: &str,
        ) -> Result<(), serde_json::Error> {
            map.insert(key, serde_json::from_str(json)?);
            Ok(())
        }
        match kind {
            Kind::Device => put(&mut self.devices, key, json),
            Kind::Taxpayer => put(&mut self.taxpayers, key, json),
            Kind::Item => put(&mut self.items, key, json),
            Kind::Customer => put(&mut self.customers, key, json),
            Kind::User => put(&mut self.users, key, json),
            Kind::Insurance => put(&mut self.insurances, key, json),
            Kind::Composition => put(&mut self.compositions, key, json),
            Kind::Import => put(&mut self.imports, key, json),
            Kind::Purchase => put(&mut self.purchases, key, json),
            Kind::StockIo => put(&mut self.stock_io, key, json),
            Kind::StockMaster => put(&mut self.stock_master, key, json),
            Kind::Sale => {
                self.sales.restore(key, serde_json::from_str(json)?);
                Ok(())
            }
            Kind::DayReport => put(&mut self.day_reports, key, json),
            Kind::Settings => {
                self.settings = serde_json::from_str(json)?;
                Ok(())
            }
        }
    }

    /// Adds a signed sale.
    pub fn insert_sale(&mut self, key: String, sale: Box<SignedSale>) {
        self.sales.insert(key, sale);
    }

    pub fn settings_key() -> &'static str {
        SETTINGS_KEY
    }

    /// The state as JSON for the control API's dump: secrets replaced by `<redacted>`.
    pub fn dump(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(devices) = value.get_mut("devices").and_then(Value::as_object_mut) {
            for device in devices.values_mut() {
                for secret in ["cmc_key", "signing_secret"] {
                    if let Some(slot) = device.get_mut(secret) {
                        *slot = Value::String("<redacted>".into());
                    }
                }
            }
        }
        if let Some(users) = value.get_mut("users").and_then(Value::as_object_mut) {
            for user in users.values_mut() {
                if let Some(slot) = user.pointer_mut("/value/pwd") {
                    *slot = Value::String("<redacted>".into());
                }
            }
        }
        value
    }
}

/// The records changed by an operation, to write through to the state file.
#[derive(Debug, Default)]
pub struct Changes(pub Vec<(Kind, String)>);

impl Changes {
    pub fn touch(&mut self, kind: Kind, key: impl Into<String>) {
        self.0.push((kind, key.into()));
    }
}

pub fn stamp(now: NaiveDateTime) -> DateTime14 {
    DateTime14(now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A stored request that does not read back is an error, never a panic.
    #[test]
    fn a_request_that_does_not_read_back_is_an_error() {
        let rows: Vec<Value> =
            serde_json::from_str(include_str!("../tests/fixtures/state_rows_v1.json")).unwrap();
        let row = rows.iter().find(|row| row["kind"] == "sale").unwrap();
        let mut sale: SignedSale = serde_json::from_str(row["value"].as_str().unwrap()).unwrap();
        assert_eq!(sale.request().unwrap().invc_no.0, 1);

        // Loading checks the request in full, as it did when it was held parsed.
        let mut record: Value = serde_json::from_str(row["value"].as_str().unwrap()).unwrap();
        record["request"] = serde_json::json!({"invcNo": 1});
        assert!(serde_json::from_value::<SignedSale>(record).is_err());

        sale.request = RawValue::from_string(r#"{"invcNo":1}"#.into()).unwrap();
        assert!(sale.request().is_err());
        let reply = crate::control_unit::stored_request(&sale).unwrap_err();
        assert_eq!(reply.code.code(), "999");
        assert!(
            reply.message.contains("does not read back"),
            "{}",
            reply.message
        );
    }
}
