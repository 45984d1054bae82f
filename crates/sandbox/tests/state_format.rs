//! The state file's format: rows written by an earlier sandbox (before sales were held as
//! JSON text, `fixtures/state_rows_v1.json`) load, serve their sales and are written back
//! byte for byte as they were read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use ushuru_kra::{EndpointName, Profile};
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::state::{Kind, State};
use ushuru_sandbox::{Caller, Config, ControlUnit};

const TIN: &str = "P051234567A";
const CMC_KEY: &str = "33D406BEA59F87569F95D63E7162A3EE";

fn rows() -> Vec<(String, String, String)> {
    let text = include_str!("fixtures/state_rows_v1.json");
    let rows: Vec<Value> = serde_json::from_str(text).unwrap();
    rows.into_iter()
        .map(|row| {
            let field = |name: &str| row[name].as_str().unwrap().to_owned();
            (field("kind"), field("key"), field("value"))
        })
        .collect()
}

#[test]
fn every_record_is_written_back_as_it_was_read() {
    let mut state = State::default();
    let rows = rows();
    for (kind, key, value) in &rows {
        let kind = Kind::from_name(kind).unwrap();
        state.restore(kind, key.clone(), value).unwrap();
    }
    assert_eq!(state.sales.len(), 3);
    for (kind, key, value) in &rows {
        let kind = Kind::from_name(kind).unwrap();
        let written = state.record(kind, key).unwrap().unwrap();
        assert_eq!(&written, value, "{kind:?} {key}");
    }
}

#[test]
fn a_state_file_of_the_earlier_layout_serves_its_sales() {
    let dir = std::env::temp_dir().join(format!("ushuru-sandbox-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.sqlite");
    let _ = std::fs::remove_file(&path);
    drop(StateFile::open(&path).unwrap());
    {
        let connection = rusqlite::Connection::open(&path).unwrap();
        for (kind, key, value) in rows() {
            connection
                .execute(
                    "INSERT INTO records (kind, key, value) VALUES (?1, ?2, ?3)",
                    rusqlite::params![kind, key, value],
                )
                .unwrap();
        }
    }
    let unit = ControlUnit::new(Config::default(), Some(StateFile::open(&path).unwrap())).unwrap();
    let caller = Caller {
        tin: Some(TIN),
        bhf_id: Some("00"),
        cmc_key: Some(CMC_KEY),
    };
    let call = |endpoint, body: Value| {
        unit.handle(
            endpoint,
            Profile::Oscu,
            caller,
            &serde_json::to_vec(&body).unwrap(),
        )
    };

    // selectInvoiceDetails answers from the stored request.
    let found = call(EndpointName::SelectInvoiceDetails, json!({"invcNo": 1}));
    assert_eq!(found.code.code(), "000", "{}", found.message);
    let sale = &found.data.unwrap()["salesList"][0];
    assert_eq!(sale["custTin"], "P000000001A");
    assert_eq!(sale["totAmt"].to_string(), "2570.50");
    assert_eq!(sale["itemList"].as_array().unwrap().len(), 2);
    assert_eq!(sale["receipt"]["rcptSign"], "JI6UHRZUNWAM3DC3");

    // Its receipt still verifies.
    assert_eq!(
        unit.verify(
            TIN,
            "00",
            1,
            "LXHWMUIKYCIDJLYAE6L6LV36GU",
            "JI6UHRZUNWAM3DC3"
        ),
        Some(true)
    );

    // The dump shows the request as the file holds it.
    let dump = unit.dump();
    let stored: Value = serde_json::from_str(
        &rows()
            .into_iter()
            .find(|(kind, key, _)| kind == "sale" && key.ends_with("/00000000000000000001"))
            .unwrap()
            .2,
    )
    .unwrap();
    assert_eq!(
        dump["sales"]["P051234567A/00/00000000000000000001"]["request"],
        stored["request"]
    );
    assert_eq!(
        dump["sales"]["P051234567A/00/00000000000000000001"]["request"]["totAmt"].to_string(),
        "2570.50"
    );

    // Credit notes count what the stored note 3 already returned of invoice 1: one of its
    // two ITEM-B remains, so the same note again signs once and then no more.
    let three: Value = serde_json::from_str(
        &rows()
            .into_iter()
            .find(|(kind, key, _)| kind == "sale" && key.ends_with("/00000000000000000003"))
            .unwrap()
            .2,
    )
    .unwrap();
    let again = |invc_no: u64| {
        let mut note = three["request"].clone();
        note["invcNo"] = json!(invc_no);
        note["trdInvcNo"] = json!(format!("INV-{invc_no}"));
        call(EndpointName::SaveTrnsSalesOsdc, note)
    };
    let signed = again(4);
    assert_eq!(signed.code.code(), "000", "{}", signed.message);
    let refused = again(5);
    assert_ne!(refused.code.code(), "000");
    assert!(refused.message.contains("remain"), "{}", refused.message);
    let _ = std::fs::remove_dir_all(&dir);
}
