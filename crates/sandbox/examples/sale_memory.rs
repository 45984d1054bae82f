//! Resident memory per signed sale, measured: signs N valid sales (two lines each, one
//! with a buyer PIN every third sale) through a `ControlUnit` and prints the growth of the
//! resident set (`/proc/self/statm`) divided by N, and the signing rate. Linux only.
//!
//! ```text
//! cargo run --release -p ushuru-sandbox --example sale_memory -- 50000
//! cargo run --release -p ushuru-sandbox --example sale_memory -- 50000 --state
//! ```
//!
//! `--state` gives the unit a state file (a fresh one in the temporary directory), as
//! `ushuru serve` does. The requests are serialized before the first measurement, so only
//! what the control unit keeps (and the allocator's overhead for it) is counted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use ushuru_kra::types::SaleRequest;
use ushuru_kra::{DraftLine, EndpointName, Profile, SaleDraft};
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::{Caller, Config, ControlUnit};
use ushuru_tax::{LineInput, LineText, Pricing, TaxRates, calculate_line};

const TIN: &str = "P051234567A";
const BUYER: &str = "P000000001A";

/// The resident set in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux)");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // Every Linux target this runs on has 4 KiB pages.
    pages * 4096
}

fn line(code: &str, price: &str, band: &str, qty: &str) -> DraftLine {
    let text = LineText {
        price,
        band,
        qty,
        pricing: Pricing::VatInclusive,
        discount: None,
        discount_rate: None,
    };
    DraftLine {
        item_cd: code.into(),
        item_nm: format!("Item {code}"),
        item_cls_cd: Some("50202306".into()),
        pkg_unit_cd: "NT".into(),
        qty_unit_cd: "U".into(),
        priced: calculate_line(&LineInput::parse(&text).unwrap(), &TaxRates::kenya()).unwrap(),
    }
}

fn request(invc_no: u64) -> SaleRequest {
    let buyer = invc_no.is_multiple_of(3);
    SaleDraft {
        tin: TIN.into(),
        bhf_id: "00".into(),
        invc_no,
        org_invc_no: 0,
        trd_invc_no: format!("INV-{invc_no}"),
        rcpt_ty_cd: "S".into(),
        sales_ty_cd: "N".into(),
        pmt_ty_cd: Some("01".into()),
        cust_tin: buyer.then(|| BUYER.into()),
        cust_nm: buyer.then(|| "Buyer Ltd".into()),
        rfd_rsn_cd: None,
        confirmed: chrono::NaiveDate::from_ymd_opt(2026, 7, 7)
            .unwrap()
            .and_hms_opt(11, 41, 22)
            .unwrap(),
        operator: "admin".into(),
        lines: vec![
            line("ITEM-B", "1160.00", "B", "2"),
            line("ITEM-A", "250.50", "A", "1"),
        ],
    }
    .into_request(&TaxRates::kenya())
    .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let with_file = args.iter().any(|a| a == "--state");
    let n: u64 = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse().expect("N, a whole number"))
        .unwrap_or(50_000);
    let dir = std::env::temp_dir().join(format!("ushuru-sale-memory-{}", std::process::id()));
    let file = with_file.then(|| {
        std::fs::create_dir_all(&dir).unwrap();
        StateFile::open(&dir.join("state.sqlite")).unwrap()
    });
    let unit = ControlUnit::new(Config::default(), file).unwrap();
    let init = unit.handle(
        EndpointName::SelectInitOsdcInfo,
        Profile::Oscu,
        Caller::default(),
        br#"{"tin":"P051234567A","bhfId":"00","dvcSrlNo":"POS-1"}"#,
    );
    let cmc_key = init.data.unwrap()["info"]["cmcKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let caller = Caller {
        tin: Some(TIN),
        bhf_id: Some("00"),
        cmc_key: Some(&cmc_key),
    };
    for (code, band) in [("ITEM-A", "A"), ("ITEM-B", "B")] {
        let item = serde_json::json!({"itemCd": code, "itemClsCd": "50202306", "itemTyCd": "2", "itemNm": format!("Item {code}"), "orgnNatCd": "KE", "pkgUnitCd": "NT", "qtyUnitCd": "U", "taxTyCd": band, "dftPrc": 1, "isrcAplcbYn": "N", "useYn": "Y", "regrId": "admin", "regrNm": "Admin", "modrId": "admin", "modrNm": "Admin"});
        let reply = unit.handle(
            EndpointName::SaveItem,
            Profile::Oscu,
            caller,
            &serde_json::to_vec(&item).unwrap(),
        );
        assert_eq!(reply.code.code(), "000");
    }

    let bodies: Vec<Vec<u8>> = (1..=n)
        .map(|i| serde_json::to_vec(&request(i)).unwrap())
        .collect();
    let mean_body = bodies.iter().map(Vec::len).sum::<usize>() as u64 / n.max(1);
    // The bodies are built before measuring: only what signing keeps is counted.
    let before = rss();
    let started = std::time::Instant::now();
    for body in &bodies {
        let reply = unit.handle(EndpointName::SaveTrnsSalesOsdc, Profile::Oscu, caller, body);
        assert_eq!(reply.code.code(), "000", "{:?}", reply.message);
    }
    let elapsed = started.elapsed();
    let after = rss();
    // The sales are still held: the unit is alive until here.
    let dump = unit.dump();
    let held = dump["sales"].as_object().map_or(0, serde_json::Map::len);
    assert_eq!(held as u64, n);
    drop(dump);
    println!(
        "N = {n} sales (request body {mean_body} bytes on average), {}: resident memory {} kB -> {} kB: {} bytes per signed sale; {} sales/s",
        if with_file {
            "with a state file"
        } else {
            "in memory"
        },
        before / 1000,
        after / 1000,
        (after.saturating_sub(before)) / n.max(1),
        u128::from(n) * 1000 / elapsed.as_millis().max(1),
    );
    drop(unit);
    let _ = std::fs::remove_dir_all(&dir);
}
