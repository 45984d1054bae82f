//! A state file survives a restart; the control API's clock, verify and reset.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use ushuru_kra::endpoints::*;
use ushuru_kra::types::*;
use ushuru_kra::wire::{DateTime14, Int};
use ushuru_kra::{Outcome, Profile};
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::{Config, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_file_carries_on() {
    let dir = std::env::temp_dir().join(format!("ushuru-sandbox-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.sqlite");
    let _ = std::fs::remove_file(&path);
    let config = Config {
        mode: Mode::Vscu,
        ..Config::default()
    };

    let handle = start_with(config.clone(), Some(StateFile::open(&path).unwrap())).await;
    let (_, clock) = control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/clock",
        Some(json!({"set": "20260707090000"})),
    )
    .await;
    assert_eq!(clock["now"].as_str().map(|s| &s[..10]), Some("2026070709"));
    let jar = initialised(&handle, Profile::Vscu, TIN, "00").await;
    register(&jar, "SODA", "B").await;
    let first = sign(&jar, 1, "SODA", "116").await;
    let second = sign(&jar, 2, "SODA", "232").await;
    let (_, upstream) = control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/upstream",
        Some(json!({"cut": true})),
    )
    .await;
    assert_eq!(upstream["cut"], true);
    handle.stop().await;

    // A new process on the same file: same device, same counters, same clock, link still cut.
    let handle = start_with(config.clone(), Some(StateFile::open(&path).unwrap())).await;
    let (_, clock) = control(&handle, reqwest::Method::GET, "/_sandbox/clock", None).await;
    assert_eq!(
        clock["now"].as_str().map(|s| &s[..10]),
        Some("2026070709"),
        "the virtual clock survives"
    );
    let (_, upstream) = control(&handle, reqwest::Method::GET, "/_sandbox/upstream", None).await;
    assert_eq!(upstream["cut"], true);
    // The cmcKey issued before the restart still works (OSCU paths check it).
    let key = jar.config().cmc_key.clone().unwrap();
    let again = client(&handle, Profile::Oscu, TIN, "00").with_cmc_key(key);
    let third = sign(&again, 3, "SODA", "348").await;
    assert_eq!((third.cur_rcpt_no, third.tot_rcpt_no), (Int(3), Int(3)));
    assert_eq!(
        rejected(
            again
                .call::<SignSale>(&sale(
                    TIN,
                    "00",
                    2,
                    vec![line("SODA", priced("1", "B", "1"))]
                ))
                .await
                .outcome
        )
        .0,
        "994"
    );
    let found = ok(again
        .call::<InvoiceDetails>(&InvoiceDetailsRequest { invc_no: Int(1) })
        .await
        .outcome)
    .unwrap();
    assert_eq!(found.sales_list[0].receipt.rcpt_sign, first.rcpt_sign);
    let items = ok(again
        .call::<Items>(&LastRequest {
            last_req_dt: DateTime14::parse("20180101000000").unwrap(),
        })
        .await
        .outcome)
    .unwrap();
    assert_eq!(items.item_list.len(), 1);
    // Receipts issued before the restart still verify.
    for (invc_no, receipt) in [(1, &first), (2, &second)] {
        let body = json!({"tin": TIN, "bhfId": "00", "invcNo": invc_no, "intrlData": receipt.intrl_data, "rcptSign": receipt.rcpt_sign});
        let (status, answer) = control(
            &handle,
            reqwest::Method::POST,
            "/_sandbox/verify",
            Some(body),
        )
        .await;
        assert_eq!((status, &answer["valid"]), (200, &json!(true)));
    }
    let init = InitRequest {
        tin: TIN.into(),
        bhf_id: "00".into(),
        dvc_srl_no: "POS".into(),
    };
    // Re-initialising the restored device is still refused (link restored for the check).
    control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/upstream",
        Some(json!({"cut": false})),
    )
    .await;
    assert_eq!(
        rejected(
            client(&handle, Profile::Vscu, TIN, "00")
                .call::<InitDevice>(&init)
                .await
                .outcome
        )
        .0,
        "902"
    );
    handle.stop().await;

    // Reset empties the file too.
    let handle = start_with(config.clone(), Some(StateFile::open(&path).unwrap())).await;
    let (status, _) = control(&handle, reqwest::Method::POST, "/_sandbox/reset", None).await;
    assert_eq!(status, 200);
    handle.stop().await;
    let handle = start_with(config, Some(StateFile::open(&path).unwrap())).await;
    assert_eq!(handle.sandbox().unit().dump()["devices"], json!({}));
    handle.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_tells_a_real_receipt_from_a_forged_one() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    register(&hq, "SODA", "B").await;
    let receipt = sign(&hq, 1, "SODA", "116").await;
    let check = |intrl: &str, sign: &str, invc_no: u64| json!({"tin": TIN, "bhfId": "00", "invcNo": invc_no, "intrlData": intrl, "rcptSign": sign});
    let (_, answer) = control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/verify",
        Some(check(&receipt.intrl_data, &receipt.rcpt_sign, 1)),
    )
    .await;
    assert_eq!(answer["valid"], true);
    let forged = format!("{}A", &receipt.rcpt_sign[..15]);
    let forged = if forged == receipt.rcpt_sign {
        format!("{}B", &receipt.rcpt_sign[..15])
    } else {
        forged
    };
    let (_, answer) = control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/verify",
        Some(check(&receipt.intrl_data, &forged, 1)),
    )
    .await;
    assert_eq!(answer["valid"], false);
    let (status, answer) = control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/verify",
        Some(check(&receipt.intrl_data, &receipt.rcpt_sign, 9)),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("NO_SUCH_RECEIPT"))
    );
    let (status, _) = control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/verify",
        Some(json!({"tin": TIN})),
    )
    .await;
    assert_eq!(status, 400);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_is_driven_and_stamps_receipts() {
    let handle = start(Config::default()).await;
    let (status, answer) = control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/clock",
        Some(json!({"set": "20300101120000"})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (_, answer) = control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/clock",
        Some(json!({"advance_seconds": 3600})),
    )
    .await;
    assert_eq!(answer["now"].as_str().map(|s| &s[..10]), Some("2030010113"));
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    register(&hq, "SODA", "B").await;
    let receipt = sign(&hq, 1, "SODA", "116").await;
    assert_eq!(&receipt.sdc_date_time.digits()[..10], "2030010113");
    for bad in [
        json!({"set": "tomorrow"}),
        json!({}),
        json!({"set": "20300101120000", "advance_seconds": 1}),
        json!({"jump": 1}),
    ] {
        let (status, answer) = control(
            &handle,
            reqwest::Method::POST,
            "/_sandbox/clock",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    let (status, help) = control(&handle, reqwest::Method::GET, "/_sandbox", None).await;
    assert_eq!(status, 200);
    assert!(help["endpoints"]["POST /_sandbox/faults"].is_string());
    assert!(matches!(
        hq.call::<SignSale>(&sale(
            TIN,
            "00",
            2,
            vec![line("SODA", priced("1", "B", "1"))]
        ))
        .await
        .outcome,
        Outcome::Ok { .. }
    ));
    handle.stop().await;
}
