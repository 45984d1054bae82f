//! With a state file the control unit keeps no signed sale in memory between calls: every
//! lookup reads it back from the file. The same calls on an in-memory unit are the oracle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use chrono::{Duration, NaiveDate};
use common::{credit_note, item_request, line, priced, sale};
use serde::Serialize;
use serde_json::{Value, json};
use ushuru_kra::types::SaleRequest;
use ushuru_kra::{EndpointName, Profile};
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::{Caller, Config, ControlUnit, Mode, Reply};

const TIN: &str = "P051234567A";
const BUYER: &str = "P052222222B";

fn temp_file(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "ushuru-sandbox-file-backed-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.sqlite");
    (dir, path)
}

fn open(config: &Config, path: &Path) -> ControlUnit {
    ControlUnit::new(config.clone(), Some(StateFile::open(path).unwrap())).unwrap()
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 7, d).unwrap()
}

/// A device of `tin` branch 00 on `unit`; its cmcKey.
fn init(unit: &ControlUnit, tin: &str) -> String {
    let reply = unit.handle(
        EndpointName::SelectInitOsdcInfo,
        Profile::Oscu,
        Caller::default(),
        json!({"tin": tin, "bhfId": "00", "dvcSrlNo": format!("POS-{tin}")})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(reply.code.code(), "000", "{}", reply.message);
    reply.data.unwrap()["info"]["cmcKey"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn call(
    unit: &ControlUnit,
    tin: &str,
    cmc_key: &str,
    endpoint: EndpointName,
    body: &impl Serialize,
) -> Reply {
    let caller = Caller {
        tin: Some(tin),
        bhf_id: Some("00"),
        cmc_key: Some(cmc_key),
    };
    unit.handle(
        endpoint,
        Profile::Oscu,
        caller,
        &serde_json::to_vec(body).unwrap(),
    )
}

fn signed(reply: Reply) -> Value {
    assert_eq!(reply.code.code(), "000", "{}", reply.message);
    reply.data.unwrap_or(Value::Null)
}

/// Sale `invc_no`: two SODA and a BREAD, to the buyer every third.
fn two_lines(invc_no: u64) -> SaleRequest {
    let mut request = sale(
        TIN,
        "00",
        invc_no,
        vec![
            line("SODA", priced("116", "B", "2")),
            line("BREAD", priced("50", "A", "1")),
        ],
    );
    if invc_no.is_multiple_of(3) {
        request.cust_tin = Some(BUYER.into());
        request.cust_nm = Some("Buyer Ltd".into());
    }
    request
}

fn one_soda_back(invc_no: u64, original: u64) -> SaleRequest {
    let mut note = credit_note(
        TIN,
        "00",
        invc_no,
        original,
        vec![line("SODA", priced("116", "B", "1"))],
    );
    note.cust_tin = Some(BUYER.into());
    note
}

/// A unit (in memory or on a file) with devices for the seller and the buyer.
struct Unit {
    unit: ControlUnit,
    seller: String,
    buyer: String,
}

impl Unit {
    fn new(unit: ControlUnit) -> Self {
        unit.clock().set(day(7).and_hms_opt(9, 0, 0).unwrap());
        let seller = init(&unit, TIN);
        let buyer = init(&unit, BUYER);
        for (code, band) in [("SODA", "B"), ("BREAD", "A")] {
            signed(call(
                &unit,
                TIN,
                &seller,
                EndpointName::SaveItem,
                &item_request(code, band),
            ));
        }
        Unit {
            unit,
            seller,
            buyer,
        }
    }

    fn sell(&self, endpoint: EndpointName, body: &impl Serialize) -> Reply {
        call(&self.unit, TIN, &self.seller, endpoint, body)
    }

    /// Sales 1–12 and a credit note (13) returning one SODA of sale 3 on the 7th; sales
    /// 14–20 on the 8th.
    fn sign_two_days(&self) {
        for invc_no in 1..=12 {
            signed(self.sell(EndpointName::SaveTrnsSalesOsdc, &two_lines(invc_no)));
        }
        signed(self.sell(EndpointName::SaveTrnsSalesOsdc, &one_soda_back(13, 3)));
        self.unit.clock().advance(Duration::days(1));
        for invc_no in 14..=20 {
            signed(self.sell(EndpointName::SaveTrnsSalesOsdc, &two_lines(invc_no)));
        }
    }

    fn report(&self, endpoint: EndpointName, d: u32) -> Reply {
        self.sell(endpoint, &json!({"rptDe": format!("202607{d:02}")}))
    }

    fn invoice(&self, invc_no: u64) -> Value {
        signed(self.sell(
            EndpointName::SelectInvoiceDetails,
            &json!({"invcNo": invc_no}),
        ))
    }

    /// The supplier invoice numbers of the buyer's purchase list.
    fn purchases(&self) -> Vec<Value> {
        let reply = call(
            &self.unit,
            BUYER,
            &self.buyer,
            EndpointName::SelectTrnsPurchaseSalesList,
            &json!({"lastReqDt": "20000101000000"}),
        );
        signed(reply)["saleList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| json!([s["spplrTin"], s["spplrInvcNo"], s["rcptTyCd"], s["totAmt"]]))
            .collect()
    }
}

#[test]
fn sales_read_back_from_the_file_answer_as_in_memory_after_a_restart() {
    let (dir, path) = temp_file("restart");
    let config = Config::default();
    let memory = Unit::new(ControlUnit::new(config.clone(), None).unwrap());
    let first = Unit::new(open(&config, &path));
    memory.sign_two_days();
    first.sign_two_days();
    assert_eq!(first.unit.sales_held_in_memory(), 0, "no sale is kept");
    assert_eq!(memory.unit.sales_held_in_memory(), 20);
    let invoice_5 = first.invoice(5);
    let offset = first.unit.clock().offset_ms();
    first.unit.save_clock().unwrap();
    let Unit { seller, buyer, .. } = first;

    // "Restarted": a new unit on the same file.
    let unit = open(&config, &path);
    assert_eq!(unit.clock().offset_ms(), offset);
    let file = Unit {
        unit,
        seller,
        buyer,
    };
    assert_eq!(file.unit.sales_held_in_memory(), 0);

    // selectInvoiceDetails, and the receipt still verifies.
    assert_eq!(file.invoice(5), invoice_5);
    let receipt = &invoice_5["salesList"][0]["receipt"];
    assert_eq!(
        file.unit.verify(
            TIN,
            "00",
            5,
            receipt["intrlData"].as_str().unwrap(),
            receipt["rcptSign"].as_str().unwrap()
        ),
        Some(true)
    );
    assert_eq!(file.invoice(13), {
        let mut note = memory.invoice(13);
        note["salesList"][0]["receipt"] = file.invoice(13)["salesList"][0]["receipt"].clone();
        note
    });

    // Day reports (X readings) from the running totals.
    for d in [7, 8] {
        let from_file = signed(file.report(EndpointName::CheckReportZ, d));
        let from_memory = signed(memory.report(EndpointName::CheckReportZ, d));
        assert_eq!(from_file, from_memory, "day {d}");
    }
    let day_7 = signed(file.report(EndpointName::CheckReportZ, 7));
    assert_eq!(day_7["normal"]["saleCnt"], 12);
    assert_eq!(day_7["normal"]["refundCnt"], 1);

    // Purchase lists by the buyer's PIN, in the same order.
    let bought = file.purchases();
    assert_eq!(bought, memory.purchases());
    assert_eq!(bought.len(), 7, "sales 3, 6, …, 18 and note 13: {bought:?}");

    // Credit notes count what the notes before the restart returned: one SODA of sale 3
    // remains, so a second note signs and a third is refused.
    for unit in [&memory, &file] {
        signed(unit.sell(EndpointName::SaveTrnsSalesOsdc, &one_soda_back(21, 3)));
        let refused = unit.sell(EndpointName::SaveTrnsSalesOsdc, &one_soda_back(22, 3));
        assert_ne!(refused.code.code(), "000");
        assert!(refused.message.contains("remain"), "{}", refused.message);
    }
    // A credit note against a sale signed before the restart, never reversed.
    for unit in [&memory, &file] {
        signed(unit.sell(EndpointName::SaveTrnsSalesOsdc, &one_soda_back(22, 6)));
    }
    // A number signed before the restart is a duplicate; the next one signs.
    let duplicate = file.sell(EndpointName::SaveTrnsSalesOsdc, &two_lines(5));
    assert_eq!(duplicate.code.code(), "994", "{}", duplicate.message);

    // Z reports: the 8th cannot be closed before the 7th; then both close as in memory.
    let skipped = file.report(EndpointName::SaveReportZ, 8);
    assert!(
        skipped.message.contains("close 20260707 first"),
        "{}",
        skipped.message
    );
    for d in [7, 8] {
        let from_file = signed(file.report(EndpointName::SaveReportZ, d));
        let from_memory = signed(memory.report(EndpointName::SaveReportZ, d));
        assert_eq!(from_file, from_memory, "day {d}");
    }
    assert_eq!(
        file.purchases(),
        memory.purchases(),
        "with the notes signed after the restart"
    );

    // The dump reads every sale from the file, in the same shape.
    let (from_file, from_memory) = (file.unit.dump(), memory.unit.dump());
    let sales = from_file["sales"].as_object().unwrap();
    assert_eq!(sales.len(), 22);
    assert_eq!(
        sales.keys().collect::<Vec<_>>(),
        from_memory["sales"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>()
    );
    for (key, sale) in sales {
        assert_eq!(
            sale["request"], from_memory["sales"][key]["request"],
            "{key}"
        );
        assert_eq!(sale["synced"], true);
    }
    assert_eq!(
        sales["P051234567A/00/00000000000000000005"]["request"]["invcNo"],
        5
    );
    assert_eq!(from_file["unsynced_sales"], 0);
    assert_eq!(file.unit.sales_held_in_memory(), 0);
    drop(file);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vscu_sales_signed_offline_sync_from_the_file_after_a_restart() {
    let (dir, path) = temp_file("vscu");
    let config = Config {
        mode: Mode::Vscu,
        ..Config::default()
    };
    let unit = Unit::new(open(&config, &path));
    unit.unit.set_upstream(true).unwrap();
    for invc_no in 1..=3 {
        signed(unit.sell(EndpointName::SaveTrnsSalesOsdc, &two_lines(invc_no)));
    }
    unit.unit.save_clock().unwrap();
    let Unit { seller, buyer, .. } = unit;

    let unit = Unit {
        unit: open(&config, &path),
        seller,
        buyer,
    };
    assert_eq!(unit.unit.dump()["unsynced_sales"], 3);
    signed(unit.sell(EndpointName::SaveTrnsSalesOsdc, &two_lines(4)));
    assert_eq!(unit.unit.set_upstream(false).unwrap(), 4);
    assert_eq!(unit.unit.sales_held_in_memory(), 0);
    drop(unit);

    let unit = open(&config, &path);
    let dump = unit.dump();
    assert_eq!(dump["unsynced_sales"], 0);
    let sales = dump["sales"].as_object().unwrap();
    assert_eq!(sales.len(), 4);
    assert!(sales.values().all(|s| s["synced"] == true), "{sales:?}");
    assert_eq!(unit.set_upstream(false).unwrap(), 0);
    drop(unit);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lenient_numbers_with_gaps_are_duplicates_only_when_signed() {
    let (dir, path) = temp_file("lenient");
    let config = Config {
        lenient: true,
        ..Config::default()
    };
    let unit = Unit::new(open(&config, &path));
    for invc_no in [5, 3, 4, 10, 1] {
        signed(unit.sell(EndpointName::SaveTrnsSalesOsdc, &two_lines(invc_no)));
    }
    let Unit { seller, buyer, .. } = unit;
    let unit = Unit {
        unit: open(&config, &path),
        seller,
        buyer,
    };
    for invc_no in [1, 3, 4, 5, 10] {
        let again = unit.sell(EndpointName::SaveTrnsSalesOsdc, &two_lines(invc_no));
        assert_eq!(again.code.code(), "994", "{invc_no}: {}", again.message);
    }
    for invc_no in [2, 6, 9, 11] {
        signed(unit.sell(EndpointName::SaveTrnsSalesOsdc, &two_lines(invc_no)));
    }
    assert_eq!(unit.unit.dump()["sales"].as_object().unwrap().len(), 9);
    drop(unit);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reset_keeps_the_sales_in_the_file() {
    let (dir, path) = temp_file("reset");
    let config = Config::default();
    let unit = Unit::new(open(&config, &path));
    signed(unit.sell(EndpointName::SaveTrnsSalesOsdc, &two_lines(1)));
    unit.unit.reset().unwrap();
    assert_eq!(unit.unit.dump()["sales"].as_object().unwrap().len(), 0);
    let unit = Unit::new(unit.unit);
    for invc_no in 1..=3 {
        signed(unit.sell(EndpointName::SaveTrnsSalesOsdc, &two_lines(invc_no)));
    }
    assert_eq!(unit.unit.sales_held_in_memory(), 0);
    assert_eq!(unit.invoice(2)["salesList"][0]["invcNo"], 2);
    drop(unit);
    let _ = std::fs::remove_dir_all(&dir);
}
