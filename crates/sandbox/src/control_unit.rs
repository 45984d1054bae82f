//! The control unit itself: what each endpoint does with the state, KRA's codes when it
//! refuses, and the VSCU rules (24-hour offline ceiling, day close). No HTTP here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use chrono::{Duration, NaiveDateTime};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use ushuru_kra::types::*;
use ushuru_kra::wire::{Amount, Date8, DateTime14, Int, from_value_lenient};
use ushuru_kra::{EndpointName, Profile, ResultCode};
use ushuru_tax::TaxRates;

use crate::catalog;
use crate::clock::SandboxClock;
use crate::persist::{PersistError, StateFile};
use crate::sale_rules;
use crate::sign::{self, ReceiptData};
use crate::state::{
    Changes, Device, Kind, ParsedSale, SignedSale, Stamped, State, branch_prefix, key, sale_key,
    stamp,
};

/// OSCU (KRA's server) or VSCU (a JAR beside the business, signing offline up to 24 h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Oscu,
    Vscu,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "oscu" => Ok(Mode::Oscu),
            "vscu" => Ok(Mode::Vscu),
            other => Err(format!("unknown mode {other:?}: expected oscu or vscu")),
        }
    }
}

/// How the sandbox behaves.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    /// Relaxes invoice numbering (any unused number) and item registration checks.
    pub lenient: bool,
    /// Device serials KRA has approved; `None` approves every serial.
    pub approved_serials: Option<BTreeSet<String>>,
    pub rates: TaxRates,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Oscu,
            lenient: false,
            approved_serials: None,
            rates: TaxRates::kenya(),
        }
    }
}

/// Who calls: the identity headers (and, on VSCU paths, the body) of a request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller<'a> {
    pub tin: Option<&'a str>,
    pub bhf_id: Option<&'a str>,
    pub cmc_key: Option<&'a str>,
}

/// The answer of an endpoint, before it is put in an envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub code: ResultCode,
    pub message: String,
    pub data: Option<Value>,
}

impl Reply {
    fn ok(data: Option<Value>) -> Self {
        Reply {
            code: ResultCode::Succeeded,
            message: "It is succeeded".into(),
            data,
        }
    }

    fn empty() -> Self {
        Reply {
            code: ResultCode::NoSearchResult,
            message: "There is no search result".into(),
            data: None,
        }
    }

    pub fn refuse(code: ResultCode, detail: impl std::fmt::Display) -> Self {
        let message = format!("{}: {detail}", code.meaning());
        Reply {
            code,
            message,
            data: None,
        }
    }
}

type Answer = Result<Reply, Reply>;

fn refuse<T>(code: ResultCode, detail: impl std::fmt::Display) -> Result<T, Reply> {
    Err(Reply::refuse(code, detail))
}

fn json<T: Serialize>(value: &T) -> Result<Value, Reply> {
    serde_json::to_value(value)
        .map_err(|e| Reply::refuse(ResultCode::UnknownError, format!("cannot encode: {e}")))
}

/// Reads a request body into its typed form; what does not fit is KRA's 910.
fn parse<T: DeserializeOwned>(value: Value) -> Result<T, Reply> {
    from_value_lenient(value).map_err(|e| Reply::refuse(ResultCode::RequestParameterError, e))
}

fn lookup<T: Serialize>(items: Vec<T>, wrap: impl FnOnce(Vec<T>) -> Value) -> Answer {
    if items.is_empty() {
        Ok(Reply::empty())
    } else {
        Ok(Reply::ok(Some(wrap(items))))
    }
}

/// A PIN: a letter, 9 digits, a letter.
pub fn is_pin(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 11
        && b[0].is_ascii_uppercase()
        && b[1..10].iter().all(u8::is_ascii_digit)
        && b[10].is_ascii_uppercase()
}

fn is_branch_id(text: &str) -> bool {
    text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit())
}

/// The control unit: configuration, clock and the state behind one lock.
pub struct ControlUnit {
    config: Config,
    clock: SandboxClock,
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    file: Option<StateFile>,
}

impl ControlUnit {
    /// A control unit with its state in memory, or in `file` (loaded if it exists).
    pub fn new(config: Config, file: Option<StateFile>) -> Result<Self, PersistError> {
        let state = match &file {
            Some(file) => file.load()?,
            None => State::default(),
        };
        let clock = SandboxClock::default();
        clock.set_offset_ms(state.settings.clock_offset_ms);
        let mut unit = ControlUnit {
            config,
            clock,
            inner: Mutex::new(Inner { state, file }),
        };
        unit.seed();
        Ok(unit)
    }

    fn seed(&mut self) {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for taxpayer in catalog::registered_taxpayers() {
            inner
                .state
                .taxpayers
                .entry(taxpayer.tin.clone())
                .or_insert(taxpayer);
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn clock(&self) -> &SandboxClock {
        &self.clock
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state as it was at the panic; a
        // sandbox carries on with it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `change` on the state and writes what it changed to the state file.
    fn with_state<R>(
        &self,
        change: impl FnOnce(&mut State, &mut Changes) -> R,
    ) -> Result<R, PersistError> {
        let mut inner = self.lock();
        let mut changes = Changes::default();
        let result = change(&mut inner.state, &mut changes);
        let Inner { state, file } = &mut *inner;
        if let Some(file) = file {
            if let Err(e) = file.write(state, &changes) {
                // Memory must not run ahead of the file: go back to what the file holds, so
                // the refused call leaves no trace (a resend is not a duplicate, a restart
                // agrees).
                match file.load() {
                    Ok(stored) => *state = stored,
                    Err(reload) => {
                        tracing::error!(error = %reload, "sandbox state could not be reloaded")
                    }
                }
                return Err(e);
            }
            // The file holds the sales now: they are read back from it when needed.
            state.sales.flush();
        }
        Ok(result)
    }

    /// Handles one call of a KRA endpoint.
    pub fn handle(
        &self,
        endpoint: EndpointName,
        profile: Profile,
        caller: Caller<'_>,
        body: &[u8],
    ) -> Reply {
        let value = match serde_json::from_slice::<Value>(body) {
            Ok(value @ Value::Object(_)) => value,
            Ok(_) => {
                return Reply::refuse(
                    ResultCode::NoRequestFullText,
                    "the body must be a JSON object",
                );
            }
            Err(e) => {
                return Reply::refuse(
                    ResultCode::NoRequestFullText,
                    format!("the body is not JSON ({e})"),
                );
            }
        };
        let now = self.clock.now();
        let outcome = self.with_state(|state, changes| {
            let answer = if endpoint == EndpointName::SelectInitOsdcInfo {
                self.initialise(state, changes, value, now)
            } else {
                authenticate(state, self.config.mode, profile, caller, &value).and_then(|device| {
                    let call = Incoming {
                        device: &device,
                        value,
                        body,
                        now,
                    };
                    self.dispatch(state, changes, endpoint, call)
                })
            };
            answer.unwrap_or_else(|refusal| refusal)
        });
        outcome.unwrap_or_else(|e| {
            tracing::error!(error = %e, "sandbox state file write failed");
            Reply::refuse(
                ResultCode::UnknownError,
                format!("the sandbox could not store its state: {e}"),
            )
        })
    }

    fn dispatch(
        &self,
        state: &mut State,
        changes: &mut Changes,
        endpoint: EndpointName,
        call: Incoming<'_>,
    ) -> Answer {
        use EndpointName::*;
        let Incoming {
            device,
            value,
            body,
            now,
        } = call;
        let (tin, bhf_id) = {
            let d = &state.devices[device];
            (d.tin.clone(), d.bhf_id.clone())
        };
        let since = |value: Value| parse::<LastRequest>(value).map(|r| r.last_req_dt.0);
        match endpoint {
            SelectInitOsdcInfo => self.initialise(state, changes, value, now),
            SelectCodeList => {
                let since = since(value)?;
                let classes = if since < catalog::published() {
                    catalog::code_classes(&self.config.rates)
                } else {
                    Vec::new()
                };
                lookup(
                    classes,
                    |cls_list| serde_json::json!({ "clsList": cls_list }),
                )
            }
            SelectItemClsList => {
                let since = since(value)?;
                let classes = if since < catalog::published() {
                    catalog::item_classes()
                } else {
                    Vec::new()
                };
                lookup(classes, |list| serde_json::json!({ "itemClsList": list }))
            }
            SelectNoticeList => {
                let since = since(value)?;
                let notices = catalog::notices()
                    .into_iter()
                    .filter(|n| n.reg_dt.0 > since)
                    .collect();
                lookup(notices, |list| serde_json::json!({ "noticeList": list }))
            }
            SelectCustomer => {
                let request: CustomerLookupRequest = parse(value)?;
                let found: Vec<&Taxpayer> = state
                    .taxpayers
                    .get(request.custm_tin.trim())
                    .into_iter()
                    .collect();
                lookup(found, |list| serde_json::json!({ "custList": list }))
            }
            SelectBhfList => {
                let since = since(value)?;
                let branches = state
                    .devices
                    .values()
                    .filter(|d| d.tin == tin && d.installed.0 > since)
                    .map(|d| branch_of(d, state.taxpayers.get(&d.tin)))
                    .collect();
                lookup(branches, |list| serde_json::json!({ "bhfList": list }))
            }
            SaveBhfCustomer => {
                let request: SaveCustomerRequest = parse(value)?;
                require_pin("custTin", &request.cust_tin)?;
                store(
                    &mut state.customers,
                    changes,
                    Kind::Customer,
                    key(&[&tin, &bhf_id, &request.cust_no]),
                    request,
                    now,
                )
            }
            SaveBhfUser => {
                let request: SaveUserRequest = parse(value)?;
                store(
                    &mut state.users,
                    changes,
                    Kind::User,
                    key(&[&tin, &bhf_id, &request.user_id]),
                    request,
                    now,
                )
            }
            SaveBhfInsurance => {
                let request: SaveInsuranceRequest = parse(value)?;
                if request.isrc_rt.0 > 100 {
                    return refuse(
                        ResultCode::RequestParameterError,
                        "isrcRt is a percentage, at most 100",
                    );
                }
                store(
                    &mut state.insurances,
                    changes,
                    Kind::Insurance,
                    key(&[&tin, &bhf_id, &request.isrcc_cd]),
                    request,
                    now,
                )
            }
            SaveItem => self.save_item(state, changes, &tin, &bhf_id, parse(value)?, now),
            SaveItemComposition => {
                let request: SaveItemCompositionRequest = parse(value)?;
                for code in [&request.item_cd, &request.cpst_item_cd] {
                    if !state.items.contains_key(&key(&[&tin, code])) {
                        return refuse(
                            ResultCode::RequestParameterError,
                            format!("item {code} is not registered: saveItem first"),
                        );
                    }
                }
                if !request.cpst_qty.0.is_positive() {
                    return refuse(
                        ResultCode::RequestParameterError,
                        "cpstQty must be above zero",
                    );
                }
                let record_key = key(&[&tin, &request.item_cd, &request.cpst_item_cd]);
                store(
                    &mut state.compositions,
                    changes,
                    Kind::Composition,
                    record_key,
                    request,
                    now,
                )
            }
            SelectItemList => {
                let since = since(value)?;
                let prefix = format!("{tin}/");
                let items = state
                    .items
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(_, item)| item.changed.0 > since)
                    .map(|(_, item)| item.value.clone())
                    .collect();
                lookup(items, |list| serde_json::json!({ "itemList": list }))
            }
            SelectImportItemList => {
                let since = since(value)?;
                let prefix = format!("{tin}/");
                let items = state
                    .imports
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(_, item)| item.changed.0 > since)
                    .map(|(_, item)| item.value.clone())
                    .collect();
                lookup(items, |list| serde_json::json!({ "itemList": list }))
            }
            UpdateImportItem => {
                let request: UpdateImportItemRequest = parse(value)?;
                let record_key = key(&[&tin, &request.task_cd, &request.item_seq.to_string()]);
                if !["1", "2", "3", "4"].contains(&request.impt_item_stts_cd.as_str()) {
                    return refuse(
                        ResultCode::RequestParameterError,
                        "imptItemSttsCd must be 1, 2, 3 or 4 (code class 26)",
                    );
                }
                if !state.items.contains_key(&key(&[&tin, &request.item_cd])) {
                    return refuse(
                        ResultCode::RequestParameterError,
                        format!("item {} is not registered: saveItem first", request.item_cd),
                    );
                }
                let Some(import) = state.imports.get_mut(&record_key) else {
                    return refuse(
                        ResultCode::RequestParameterError,
                        format!(
                            "no import item taskCd {} itemSeq {} under {tin}",
                            request.task_cd, request.item_seq
                        ),
                    );
                };
                import.value.impt_item_stts_cd = request.impt_item_stts_cd;
                import.changed = stamp(now);
                changes.touch(Kind::Import, record_key);
                Ok(Reply::ok(None))
            }
            SaveTrnsSalesOsdc => self.sign_sale(state, changes, device, value, body, now),
            SelectInvoiceDetails => {
                let request: InvoiceDetailsRequest = parse(value)?;
                let sale = state
                    .sales
                    .get(&sale_key(&tin, &bhf_id, request.invc_no.0))
                    .map_err(unreadable)?;
                let found: Vec<StoredSale> = sale
                    .map(|s| stored_sale(&s))
                    .transpose()?
                    .into_iter()
                    .collect();
                lookup(found, |list| serde_json::json!({ "salesList": list }))
            }
            SelectTrnsPurchaseSalesList => {
                let since = since(value)?;
                let mut sales = Vec::new();
                for sale_key in state.sales.bought_by(&tin, since) {
                    if let Some(s) = state.sales.get(&sale_key).map_err(unreadable)? {
                        sales.push(supplier_sale(&s, state.taxpayers.get(&*s.tin))?);
                    }
                }
                lookup(sales, |list| serde_json::json!({ "saleList": list }))
            }
            InsertTrnsPurchase => {
                let request: PurchaseRequest = parse(value)?;
                check_item_count(request.tot_item_cnt, request.item_list.len())?;
                let record_key = key(&[&tin, &bhf_id, &request.invc_no.to_string()]);
                store(
                    &mut state.purchases,
                    changes,
                    Kind::Purchase,
                    record_key,
                    request,
                    now,
                )
            }
            SelectStockMoveList => {
                let since = since(value)?;
                // Stock another branch of the taxpayer moved out (class 12, code 13) to this one.
                let moves = state
                    .stock_io
                    .iter()
                    .filter(|(k, io)| {
                        k.starts_with(&format!("{tin}/"))
                            && !k.starts_with(&branch_prefix(&tin, &bhf_id))
                            && io.value.sar_ty_cd == "13"
                            && io.value.cust_bhf_id.as_deref() == Some(bhf_id.as_str())
                            && io.changed.0 > since
                    })
                    .map(|(_, io)| stock_move(&tin, &io.value))
                    .collect();
                lookup(moves, |list| serde_json::json!({ "stockList": list }))
            }
            InsertStockIo => {
                let request: StockIoRequest = parse(value)?;
                check_item_count(request.tot_item_cnt, request.item_list.len())?;
                const STOCK_CODES: [&str; 12] = [
                    "01", "02", "03", "04", "05", "06", "11", "12", "13", "14", "15", "16",
                ];
                if !STOCK_CODES.contains(&request.sar_ty_cd.as_str()) {
                    return refuse(
                        ResultCode::RequestParameterError,
                        "sarTyCd is not a stock in/out code (class 12)",
                    );
                }
                let record_key = key(&[&tin, &bhf_id, &request.sar_no.to_string()]);
                store(
                    &mut state.stock_io,
                    changes,
                    Kind::StockIo,
                    record_key,
                    request,
                    now,
                )
            }
            SaveStockMaster => {
                let request: StockMasterRequest = parse(value)?;
                if !state.items.contains_key(&key(&[&tin, &request.item_cd])) {
                    return refuse(
                        ResultCode::RequestParameterError,
                        format!("item {} is not registered", request.item_cd),
                    );
                }
                let record_key = key(&[&tin, &bhf_id, &request.item_cd]);
                store(
                    &mut state.stock_master,
                    changes,
                    Kind::StockMaster,
                    record_key,
                    request,
                    now,
                )
            }
            SaveReportZ => self.close_day(state, changes, device, parse(value)?, now),
            CheckReportZ => {
                let request: ReportRequest = parse(value)?;
                let report = read_day(state, device, request.rpt_de);
                Ok(Reply::ok(Some(json(&report)?)))
            }
        }
    }

    fn initialise(
        &self,
        state: &mut State,
        changes: &mut Changes,
        value: Value,
        now: NaiveDateTime,
    ) -> Answer {
        let request: InitRequest = parse(value)?;
        if !is_pin(&request.tin) {
            return refuse(
                ResultCode::RequestParameterError,
                format!("tin {:?} is not a PIN (A123456789B)", request.tin),
            );
        }
        if !is_branch_id(&request.bhf_id) {
            return refuse(
                ResultCode::RequestParameterError,
                format!("bhfId {:?} must be two digits", request.bhf_id),
            );
        }
        if request.dvc_srl_no.trim().is_empty() || request.dvc_srl_no.len() > 100 {
            return refuse(
                ResultCode::RequestParameterError,
                "dvcSrlNo must be 1 to 100 characters",
            );
        }
        if self.config.mode == Mode::Vscu && state.settings.upstream_cut {
            return refuse(
                ResultCode::ServerCommunicationError,
                "the VSCU cannot reach KRA to initialise",
            );
        }
        let device_key = key(&[&request.tin, &request.bhf_id]);
        if state.devices.contains_key(&device_key) {
            // KRA does not hand the key out twice (kra-protocol.md §2.2).
            return Err(Reply {
                data: None,
                ..Reply::refuse(ResultCode::DeviceInstalled, "the key is not issued again")
            });
        }
        if let Some(approved) = &self.config.approved_serials
            && !approved.contains(&request.dvc_srl_no)
        {
            return refuse(
                ResultCode::InvalidDevice,
                format!(
                    "serial {:?} is not approved for this PIN",
                    request.dvc_srl_no
                ),
            );
        }
        state.settings.next_device_no += 1;
        let number = state.settings.next_device_no;
        let device = Device {
            tin: request.tin.clone(),
            bhf_id: request.bhf_id.clone(),
            dvc_srl_no: request.dvc_srl_no.clone(),
            dvc_id: format!("99999{number:011}"),
            sdc_id: format!("KRACU{number:010}"),
            mrc_no: format!("WIS{number:08}"),
            cmc_key: data_encoding::HEXUPPER.encode(&sign::random_bytes::<16>()),
            signing_secret: data_encoding::HEXLOWER.encode(&sign::random_bytes::<32>()),
            installed: stamp(now),
            last_invc_no: 0,
            receipt_counters: BTreeMap::new(),
            tot_rcpt_no: 0,
            last_upstream_contact: stamp(now),
            open_report_no: 1,
            last_closed_day: None,
        };
        let taxpayer = state
            .taxpayers
            .entry(request.tin.clone())
            .or_insert_with(|| {
                catalog::taxpayer(&request.tin, &format!("Sandbox Taxpayer {}", request.tin))
            })
            .clone();
        changes.touch(Kind::Taxpayer, request.tin.clone());
        // Two customs imports per new taxpayer, so the import endpoints have something to show.
        if !state
            .imports
            .keys()
            .any(|k| k.starts_with(&format!("{}/", request.tin)))
        {
            for (seq, item) in [(1u64, "Laptops"), (2, "Cooking oil")] {
                let record_key = key(&[&request.tin, "SBX-TASK-1", &seq.to_string()]);
                state.imports.insert(
                    record_key.clone(),
                    Stamped {
                        changed: stamp(now),
                        value: sample_import(seq, item),
                    },
                );
                changes.touch(Kind::Import, record_key);
            }
        }
        let info = InitInfo {
            tin: device.tin.clone(),
            taxpr_nm: Some(taxpayer.taxpr_nm.clone()),
            bsns_actv: Some("Retail".into()),
            bhf_id: device.bhf_id.clone(),
            bhf_nm: Some(branch_name(&device.bhf_id)),
            bhf_open_dt: Some(now.format("%Y%m%d").to_string()),
            prvnc_nm: taxpayer.prvnc_nm.clone(),
            dstrt_nm: taxpayer.dstrt_nm.clone(),
            sctr_nm: taxpayer.sctr_nm.clone(),
            loc_desc: taxpayer.loc_desc.clone(),
            hq_yn: Some(if device.bhf_id == "00" { "Y" } else { "N" }.into()),
            mgr_nm: Some("Sandbox Manager".into()),
            mgr_tel_no: Some("0700000000".into()),
            mgr_email: Some("manager@example.com".into()),
            dvc_id: device.dvc_id.clone(),
            sdc_id: device.sdc_id.clone(),
            mrc_no: device.mrc_no.clone(),
            cmc_key: device.cmc_key.clone(),
        };
        state.devices.insert(device_key.clone(), device);
        changes.touch(Kind::Device, device_key);
        changes.touch(Kind::Settings, State::settings_key());
        Ok(Reply::ok(Some(json(&InitResponse { info })?)))
    }

    fn save_item(
        &self,
        state: &mut State,
        changes: &mut Changes,
        tin: &str,
        bhf_id: &str,
        request: SaveItemRequest,
        now: NaiveDateTime,
    ) -> Answer {
        if !["1", "2", "3"].contains(&request.item_ty_cd.as_str()) {
            return refuse(
                ResultCode::RequestParameterError,
                "itemTyCd must be 1, 2 or 3 (code class 24)",
            );
        }
        if request.tax_ty_cd.parse::<ushuru_tax::TaxBand>().is_err() {
            return refuse(
                ResultCode::RequestParameterError,
                "taxTyCd must be A, B, C, D or E (code class 04)",
            );
        }
        let class = &request.item_cls_cd;
        if !(8..=10).contains(&class.len()) || !class.bytes().all(|b| b.is_ascii_digit()) {
            return refuse(
                ResultCode::RequestParameterError,
                "itemClsCd must be 8 to 10 digits",
            );
        }
        if request.item_cd.is_empty() || request.item_cd.len() > 20 {
            return refuse(
                ResultCode::RequestParameterError,
                "itemCd must be 1 to 20 characters",
            );
        }
        let record = ItemRecord {
            tin: tin.to_owned(),
            item_cd: request.item_cd.clone(),
            item_cls_cd: request.item_cls_cd,
            item_ty_cd: request.item_ty_cd,
            item_nm: request.item_nm,
            item_std_nm: request.item_std_nm,
            orgn_nat_cd: request.orgn_nat_cd,
            pkg_unit_cd: request.pkg_unit_cd,
            qty_unit_cd: request.qty_unit_cd,
            tax_ty_cd: request.tax_ty_cd,
            btch_no: request.btch_no,
            reg_bhf_id: Some(bhf_id.to_owned()),
            bcd: request.bcd,
            dft_prc: request.dft_prc,
            grp_prc_l1: request.grp_prc_l1,
            grp_prc_l2: request.grp_prc_l2,
            grp_prc_l3: request.grp_prc_l3,
            grp_prc_l4: request.grp_prc_l4,
            grp_prc_l5: request.grp_prc_l5,
            add_info: request.add_info,
            sfty_qty: request.sfty_qty,
            isrc_aplcb_yn: request.isrc_aplcb_yn,
            rra_mod_yn: Some("N".into()),
            use_yn: request.use_yn,
        };
        // Saving an existing code updates it (kra-protocol.md §2.3).
        let record_key = key(&[tin, &request.item_cd]);
        store(
            &mut state.items,
            changes,
            Kind::Item,
            record_key,
            record,
            now,
        )
    }

    fn sign_sale(
        &self,
        state: &mut State,
        changes: &mut Changes,
        device_key: &str,
        value: Value,
        body: &[u8],
        now: NaiveDateTime,
    ) -> Answer {
        let request: SaleRequest = parse(value)?;
        let device = &state.devices[device_key];
        let (tin, bhf_id) = (device.tin.clone(), device.bhf_id.clone());
        let invc_no = request.invc_no.0;

        // A number already signed is a duplicate, whatever else the request says (§6).
        if state.sales.contains(device_key, invc_no) {
            return refuse(
                ResultCode::OverlappedData,
                format!("invcNo {invc_no} was already signed"),
            );
        }
        sale_rules::check(&request, &self.config, state, &tin, &bhf_id)?;
        if let Some(closed) = device.last_closed_day
            && now.date() <= closed.0
        {
            return refuse(
                ResultCode::RequestParameterError,
                format!(
                    "day {} is closed by its Z report: no more receipts on it",
                    closed.digits()
                ),
            );
        }
        if !self.config.lenient && invc_no != device.last_invc_no + 1 {
            return refuse(
                ResultCode::RequestParameterError,
                format!(
                    "invcNo {invc_no} is not the next number: the last signed is {}, so {} is expected",
                    device.last_invc_no,
                    device.last_invc_no + 1
                ),
            );
        }
        if self.config.mode == Mode::Vscu
            && state.settings.upstream_cut
            && now - device.last_upstream_contact.0 >= Duration::hours(24)
        {
            return refuse(
                ResultCode::ServerCommunicationError,
                format!(
                    "the VSCU has not reached KRA since {} and stops signing after 24 hours offline",
                    device.last_upstream_contact.digits()
                ),
            );
        }

        let label = request.label();
        let online = !(self.config.mode == Mode::Vscu && state.settings.upstream_cut);
        let device = state
            .devices
            .get_mut(device_key)
            .ok_or_else(|| Reply::refuse(ResultCode::InvalidDevice, "device vanished"))?;
        let counter = device.receipt_counters.entry(label.clone()).or_insert(0);
        *counter += 1;
        let cur_rcpt_no = *counter;
        device.tot_rcpt_no += 1;
        device.last_invc_no = device.last_invc_no.max(invc_no);
        if online {
            device.last_upstream_contact = stamp(now);
        }
        let sdc_date_time = DateTime14(now);
        let payload_sha256 = sign::payload_digest(body);
        let secret = data_encoding::HEXLOWER
            .decode(device.signing_secret.as_bytes())
            .unwrap_or_default();
        let receipt_data = ReceiptData {
            tin: &tin,
            bhf_id: &bhf_id,
            sdc_id: &device.sdc_id,
            mrc_no: &device.mrc_no,
            invc_no,
            label: &label,
            cur_rcpt_no,
            tot_rcpt_no: device.tot_rcpt_no,
            sdc_date_time: &sdc_date_time.digits(),
            payload_sha256: &payload_sha256,
        };
        let (intrl_data, rcpt_sign) = sign::sign(&secret, &receipt_data);
        let receipt = StoredReceipt {
            cur_rcpt_no: Int(cur_rcpt_no),
            tot_rcpt_no: Int(device.tot_rcpt_no),
            intrl_data,
            rcpt_sign,
            sdc_date_time,
        };
        let data = match self.config.mode {
            Mode::Oscu => json(&SaleResponse {
                cur_rcpt_no: receipt.cur_rcpt_no,
                tot_rcpt_no: receipt.tot_rcpt_no,
                intrl_data: receipt.intrl_data.clone(),
                rcpt_sign: receipt.rcpt_sign.clone(),
                sdc_date_time,
                sdc_id: None,
                mrc_no: None,
            })?,
            Mode::Vscu => json(&VscuSaleResponse {
                rcpt_no: receipt.cur_rcpt_no,
                tot_rcpt_no: receipt.tot_rcpt_no,
                intrl_data: receipt.intrl_data.clone(),
                rcpt_sign: receipt.rcpt_sign.clone(),
                vsdc_rcpt_pbct_date: sdc_date_time,
                sdc_id: device.sdc_id.clone(),
                mrc_no: device.mrc_no.clone(),
            })?,
        };
        // The OSCU answer has no sdcId/mrcNo keys at all (kra-protocol.md §2.4).
        let data = strip_nulls(data);
        let signed = SignedSale::try_from(ParsedSale {
            tin: tin.clone(),
            bhf_id: bhf_id.clone(),
            sdc_id: device.sdc_id.clone(),
            mrc_no: device.mrc_no.clone(),
            label,
            report_no: device.open_report_no,
            synced: online,
            payload_sha256,
            request,
            receipt,
        })
        .map_err(|e| Reply::refuse(ResultCode::UnknownError, format!("cannot store: {e}")))?;
        let record_key = sale_key(&tin, &bhf_id, invc_no);
        state.insert_sale(record_key.clone(), Box::new(signed));
        changes.touch(Kind::Sale, record_key);
        changes.touch(Kind::Device, device_key);
        Ok(Reply::ok(Some(data)))
    }

    fn close_day(
        &self,
        state: &mut State,
        changes: &mut Changes,
        device_key: &str,
        request: ReportRequest,
        now: NaiveDateTime,
    ) -> Answer {
        let day = request.rpt_de;
        let report_key = format!("{device_key}/{}", day.digits());
        if let Some(closed) = state.day_reports.get(&report_key) {
            return refuse(
                ResultCode::OverlappedData,
                format!(
                    "day {} is already closed (Z {}); a Z cannot be issued twice",
                    day.digits(),
                    closed.rpt_no
                ),
            );
        }
        if day.0 > now.date() {
            return refuse(
                ResultCode::RequestParameterError,
                format!("day {} is still to come", day.digits()),
            );
        }
        let device = &state.devices[device_key];
        if let Some(last) = device.last_closed_day
            && day <= last
        {
            return refuse(
                ResultCode::RequestParameterError,
                format!(
                    "days close in order: {} was closed last, so {} cannot be closed now",
                    last.digits(),
                    day.digits()
                ),
            );
        }
        // A day with receipts may not be skipped: its Z could never be issued afterwards.
        let skipped = state
            .sales
            .first_day_between(device_key, device.last_closed_day.map(|d| d.0), day.0)
            .map(Date8);
        if let Some(skipped) = skipped {
            return refuse(
                ResultCode::RequestParameterError,
                format!(
                    "close {} first: it has receipts and no Z report",
                    skipped.digits()
                ),
            );
        }
        let mut report = read_day(state, device_key, day);
        report.closed_yn = "Y".into();
        let device = state
            .devices
            .get_mut(device_key)
            .ok_or_else(|| Reply::refuse(ResultCode::InvalidDevice, "device vanished"))?;
        device.open_report_no += 1;
        device.last_closed_day = Some(day);
        state.day_reports.insert(report_key.clone(), report.clone());
        changes.touch(Kind::DayReport, report_key);
        changes.touch(Kind::Device, device_key);
        Ok(Reply::ok(Some(json(&report)?)))
    }

    // ---- control API operations ---------------------------------------------------

    /// Cuts or restores the VSCU's link to KRA. Restoring syncs what was signed offline.
    pub fn set_upstream(&self, cut: bool) -> Result<usize, PersistError> {
        let now = self.clock.now();
        self.with_state(|state, changes| {
            let was_cut = std::mem::replace(&mut state.settings.upstream_cut, cut);
            changes.touch(Kind::Settings, State::settings_key());
            if cut {
                if was_cut {
                    return Ok(0); // already cut: the last contact stays where it was
                }
                // The link was up until now: that is every device's last contact.
                for (device_key, device) in &mut state.devices {
                    device.last_upstream_contact = stamp(now);
                    changes.touch(Kind::Device, device_key.clone());
                }
                return Ok(0);
            }
            let mut synced = 0;
            for record_key in state.sales.unsynced() {
                if state.sales.set_synced(&record_key)? {
                    synced += 1;
                    changes.touch(Kind::Sale, record_key);
                }
            }
            for (device_key, device) in &mut state.devices {
                device.last_upstream_contact = stamp(now);
                changes.touch(Kind::Device, device_key.clone());
            }
            Ok(synced)
        })?
    }

    pub fn upstream_cut(&self) -> bool {
        self.lock().state.settings.upstream_cut
    }

    /// Records the clock's offset so that it survives a restart.
    pub fn save_clock(&self) -> Result<(), PersistError> {
        let offset = self.clock.offset_ms();
        self.with_state(|state, changes| {
            state.settings.clock_offset_ms = offset;
            changes.touch(Kind::Settings, State::settings_key());
        })
    }

    pub fn reset(&self) -> Result<(), PersistError> {
        let mut inner = self.lock();
        let Inner { state, file } = &mut *inner;
        self.clock.set_offset_ms(0);
        match file {
            Some(file) => {
                file.clear()?;
                // Empty now, its sales kept in the file as before.
                *state = file.load()?;
            }
            None => *state = State::default(),
        }
        for taxpayer in catalog::registered_taxpayers() {
            state.taxpayers.insert(taxpayer.tin.clone(), taxpayer);
        }
        Ok(())
    }

    pub fn dump(&self) -> Value {
        let inner = self.lock();
        let mut dump = inner.state.dump();
        if let Value::Object(map) = &mut dump {
            map.insert("mode".into(), serde_json::json!(self.config.mode));
            map.insert("lenient".into(), Value::Bool(self.config.lenient));
            map.insert(
                "clock".into(),
                Value::String(DateTime14(self.clock.now()).digits()),
            );
            let unsynced = inner.state.sales.unsynced_count();
            map.insert("unsynced_sales".into(), serde_json::json!(unsynced));
        }
        dump
    }

    /// How many signed sales are held in memory in full (see [`crate::sales::Sales::held`]).
    pub fn sales_held_in_memory(&self) -> usize {
        self.lock().state.sales.held()
    }

    /// Checks a receipt against what this sandbox signed for `tin`/`bhf_id`/`invc_no`.
    pub fn verify(
        &self,
        tin: &str,
        bhf_id: &str,
        invc_no: u64,
        intrl_data: &str,
        rcpt_sign: &str,
    ) -> Option<bool> {
        let inner = self.lock();
        let sale = inner
            .state
            .sales
            .get(&sale_key(tin, bhf_id, invc_no))
            .ok()??;
        let device = inner.state.devices.get(&key(&[tin, bhf_id]))?;
        let secret = data_encoding::HEXLOWER
            .decode(device.signing_secret.as_bytes())
            .ok()?;
        let receipt = ReceiptData {
            tin,
            bhf_id,
            sdc_id: &sale.sdc_id,
            mrc_no: &sale.mrc_no,
            invc_no,
            label: &sale.label,
            cur_rcpt_no: sale.receipt.cur_rcpt_no.0,
            tot_rcpt_no: sale.receipt.tot_rcpt_no.0,
            sdc_date_time: &sale.receipt.sdc_date_time.digits(),
            payload_sha256: &sale.payload_sha256,
        };
        Some(sign::verify(&secret, &receipt, intrl_data, rcpt_sign))
    }
}

/// An authenticated call: the caller's device, its body parsed and as received, and when.
struct Incoming<'a> {
    device: &'a str,
    value: Value,
    body: &'a [u8],
    now: NaiveDateTime,
}

/// Identity: headers first, the body as fallback (the VSCU JAR reads it there). OSCU and
/// GavaConnect calls also need the device's cmcKey.
fn authenticate(
    state: &State,
    mode: Mode,
    profile: Profile,
    caller: Caller<'_>,
    body: &Value,
) -> Result<String, Reply> {
    let from_body = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let tin = caller
        .tin
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .or_else(|| from_body("tin"));
    let bhf_id = caller
        .bhf_id
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .or_else(|| from_body("bhfId"));
    let (Some(tin), Some(bhf_id)) = (tin, bhf_id) else {
        return refuse(
            ResultCode::NoHeaderInformation,
            "tin and bhfId are required (headers, or the body for a VSCU)",
        );
    };
    // Only a VSCU JAR, called on its own paths, does without the cmcKey.
    let needs_key = !(profile == Profile::Vscu && mode == Mode::Vscu);
    if needs_key && caller.cmc_key.is_none() {
        return refuse(
            ResultCode::NoHeaderInformation,
            "the cmcKey header is required",
        );
    }
    let device_key = key(&[tin, bhf_id]);
    let Some(device) = state.devices.get(&device_key) else {
        return refuse(
            ResultCode::InvalidDevice,
            format!("no device is initialised for {tin} branch {bhf_id}"),
        );
    };
    if needs_key && caller.cmc_key.map(str::trim) != Some(device.cmc_key.as_str()) {
        return refuse(
            ResultCode::InvalidDevice,
            "the cmcKey does not match the device",
        );
    }
    for (name, expected) in [("tin", tin), ("bhfId", bhf_id)] {
        if let Some(given) = from_body(name)
            && given != expected
        {
            return refuse(
                ResultCode::RequestParameterError,
                format!("{name} {given} in the body differs from the caller's {expected}"),
            );
        }
    }
    Ok(device_key)
}

fn store<T: Serialize>(
    map: &mut BTreeMap<String, Stamped<T>>,
    changes: &mut Changes,
    kind: Kind,
    record_key: String,
    value: T,
    now: NaiveDateTime,
) -> Answer {
    map.insert(
        record_key.clone(),
        Stamped {
            changed: stamp(now),
            value,
        },
    );
    changes.touch(kind, record_key);
    Ok(Reply::ok(None))
}

fn require_pin(field: &str, text: &str) -> Result<(), Reply> {
    if is_pin(text) {
        Ok(())
    } else {
        refuse(
            ResultCode::RequestParameterError,
            format!("{field} {text:?} is not a PIN"),
        )
    }
}

fn check_item_count(declared: Int, actual: usize) -> Result<(), Reply> {
    if declared.0 == actual as u64 {
        Ok(())
    } else {
        refuse(
            ResultCode::RequestParameterError,
            format!("totItemCnt is {declared} but itemList has {actual} lines"),
        )
    }
}

fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

fn branch_name(bhf_id: &str) -> String {
    if bhf_id == "00" {
        "Headquarter".into()
    } else {
        format!("Branch {bhf_id}")
    }
}

fn branch_of(device: &Device, taxpayer: Option<&Taxpayer>) -> Branch {
    Branch {
        tin: device.tin.clone(),
        bhf_id: device.bhf_id.clone(),
        bhf_nm: branch_name(&device.bhf_id),
        bhf_stts_cd: "01".into(),
        prvnc_nm: taxpayer.and_then(|t| t.prvnc_nm.clone()),
        dstrt_nm: taxpayer.and_then(|t| t.dstrt_nm.clone()),
        sctr_nm: taxpayer.and_then(|t| t.sctr_nm.clone()),
        loc_desc: taxpayer.and_then(|t| t.loc_desc.clone()),
        mgr_nm: Some("Sandbox Manager".into()),
        mgr_tel_no: Some("0700000000".into()),
        mgr_email: Some("manager@example.com".into()),
        hq_yn: if device.bhf_id == "00" { "Y" } else { "N" }.into(),
    }
}

fn sample_import(seq: u64, item: &str) -> ImportItem {
    ImportItem {
        task_cd: "SBX-TASK-1".into(),
        dcl_de: "20240101".into(),
        item_seq: Int(seq),
        dcl_no: format!("24MBSIM40000000{seq}"),
        hs_cd: if seq == 1 { "8471300000" } else { "1511900000" }.into(),
        item_nm: item.into(),
        impt_item_stts_cd: "2".into(),
        orgn_nat_cd: "CN".into(),
        expt_nat_cd: "CN".into(),
        pkg: ushuru_kra::wire::Qty::whole(10),
        pkg_unit_cd: Some("CT".into()),
        qty: ushuru_kra::wire::Qty::whole(100),
        qty_unit_cd: "U".into(),
        tot_wt: None,
        net_wt: None,
        spplr_nm: "Sandbox Exporter Co".into(),
        agnt_nm: Some("Sandbox Clearing Agent".into()),
        invc_fcur_amt: Amount::parse("15000").unwrap_or(Amount::ZERO),
        invc_fcur_cd: "USD".into(),
        invc_fcur_excrt: Amount::parse("129.5").ok(),
    }
}

/// A stored sale that cannot be read back (the state file failing): 999.
pub(crate) fn unreadable(error: crate::sales::SaleReadError) -> Reply {
    Reply::refuse(
        ResultCode::UnknownError,
        format!("the sandbox could not read a stored sale: {error}"),
    )
}

/// A signed sale's request, parsed from the text it is held as. It was written from a
/// parsed request, so it reads back; were it ever not to, the call fails as 999, naming it.
pub(crate) fn stored_request(sale: &SignedSale) -> Result<SaleRequest, Reply> {
    sale.request().map_err(|e| {
        Reply::refuse(
            ResultCode::UnknownError,
            format!(
                "the stored request of {}/{} receipt {} does not read back: {e}",
                sale.tin, sale.bhf_id, sale.receipt.tot_rcpt_no
            ),
        )
    })
}

fn stored_sale(sale: &SignedSale) -> Result<StoredSale, Reply> {
    let r = stored_request(sale)?;
    Ok(StoredSale {
        invc_no: r.invc_no,
        org_invc_no: r.org_invc_no,
        trd_invc_no: r.trd_invc_no.clone(),
        cust_tin: r.cust_tin.clone(),
        cust_nm: r.cust_nm.clone(),
        rcpt_ty_cd: r.rcpt_ty_cd.clone(),
        sales_ty_cd: r.sales_ty_cd.clone(),
        pmt_ty_cd: r.pmt_ty_cd.clone(),
        sales_stts_cd: r.sales_stts_cd.clone(),
        cfm_dt: r.cfm_dt,
        sales_dt: r.sales_dt,
        tot_item_cnt: r.tot_item_cnt,
        tot_taxbl_amt: r.tot_taxbl_amt,
        tot_tax_amt: r.tot_tax_amt,
        tot_amt: r.tot_amt,
        item_list: r.item_list,
        receipt: sale.receipt.clone(),
    })
}

fn trade_item(item: &SaleItem) -> TradeItem {
    TradeItem {
        item_seq: item.item_seq,
        item_cls_cd: item.item_cls_cd.clone(),
        item_cd: Some(item.item_cd.clone()),
        item_nm: item.item_nm.clone(),
        bcd: item.bcd.clone(),
        pkg_unit_cd: item.pkg_unit_cd.clone(),
        pkg: item.pkg,
        qty_unit_cd: item.qty_unit_cd.clone(),
        qty: item.qty,
        prc: item.prc,
        sply_amt: item.sply_amt,
        dc_rt: Some(item.dc_rt),
        dc_amt: Some(item.dc_amt),
        tot_dc_amt: None,
        tax_ty_cd: item.tax_ty_cd.clone(),
        taxbl_amt: item.taxbl_amt,
        tax_amt: item.tax_amt,
        tot_amt: item.tot_amt,
        item_expr_dt: None,
    }
}

fn supplier_sale(sale: &SignedSale, supplier: Option<&Taxpayer>) -> Result<SupplierSale, Reply> {
    let r = stored_request(sale)?;
    Ok(SupplierSale {
        spplr_tin: sale.tin.to_string(),
        spplr_nm: supplier.map(|t| t.taxpr_nm.clone()),
        spplr_bhf_id: sale.bhf_id.to_string(),
        spplr_invc_no: r.invc_no,
        spplr_sdc_id: Some(sale.sdc_id.to_string()),
        rcpt_ty_cd: r.rcpt_ty_cd.clone(),
        pmt_ty_cd: r.pmt_ty_cd.clone(),
        cfm_dt: r.cfm_dt,
        sales_dt: r.sales_dt,
        stock_rls_dt: r.stock_rls_dt,
        tot_item_cnt: r.tot_item_cnt,
        taxbl_amt_a: r.taxbl_amt_a,
        taxbl_amt_b: r.taxbl_amt_b,
        taxbl_amt_c: r.taxbl_amt_c,
        taxbl_amt_d: r.taxbl_amt_d,
        taxbl_amt_e: r.taxbl_amt_e,
        tax_rt_a: r.tax_rt_a,
        tax_rt_b: r.tax_rt_b,
        tax_rt_c: r.tax_rt_c,
        tax_rt_d: r.tax_rt_d,
        tax_rt_e: r.tax_rt_e,
        tax_amt_a: r.tax_amt_a,
        tax_amt_b: r.tax_amt_b,
        tax_amt_c: r.tax_amt_c,
        tax_amt_d: r.tax_amt_d,
        tax_amt_e: r.tax_amt_e,
        tot_taxbl_amt: r.tot_taxbl_amt,
        tot_tax_amt: r.tot_tax_amt,
        tot_amt: r.tot_amt,
        remark: r.remark.clone(),
        item_list: r.item_list.iter().map(trade_item).collect(),
    })
}

fn stock_move(tin: &str, io: &StockIoRequest) -> StockMove {
    StockMove {
        cust_tin: Some(tin.to_owned()),
        cust_bhf_id: io.cust_bhf_id.clone(),
        sar_no: io.sar_no,
        ocrn_dt: io.ocrn_dt,
        tot_item_cnt: io.tot_item_cnt,
        tot_taxbl_amt: io.tot_taxbl_amt,
        tot_tax_amt: io.tot_tax_amt,
        tot_amt: io.tot_amt,
        remark: io.remark.clone(),
        item_list: io.item_list.clone(),
    }
}

/// A day's report from the receipts signed on it: the closed Z when there is one, else an
/// X reading with the number the day's Z will get. Reading changes nothing.
fn read_day(state: &State, device_key: &str, day: Date8) -> DayReport {
    if let Some(closed) = state
        .day_reports
        .get(&format!("{device_key}/{}", day.digits()))
    {
        return closed.clone();
    }
    let device = &state.devices[device_key];
    // The running totals of the day's receipts, kept as they are signed.
    let mut categories = state
        .sales
        .day(device_key, day.0)
        .cloned()
        .unwrap_or_default();
    let mut take = |c: char| categories.remove(&c).unwrap_or_default();
    DayReport {
        rpt_de: day,
        rpt_no: Int(device.open_report_no),
        closed_yn: "N".into(),
        normal: take('N'),
        copy: take('C'),
        training: take('T'),
        proforma: take('P'),
    }
}
