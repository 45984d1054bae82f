//! VSCU behaviour under a driven clock: the 24-hour offline ceiling, sync on restore, and
//! the day close (Z) and reading (X) rules.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use ushuru_kra::endpoints::*;
use ushuru_kra::types::*;
use ushuru_kra::wire::{Date8, Int};
use ushuru_kra::{Outcome, Profile};
use ushuru_sandbox::{Config, Mode};

async fn cut(handle: &ushuru_sandbox::SandboxHandle, cut: bool) -> serde_json::Value {
    let (status, answer) = control(
        handle,
        reqwest::Method::POST,
        "/_sandbox/upstream",
        Some(json!({"cut": cut})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_offline_for_24_hours_then_refuses_until_the_link_returns() {
    let handle = start(Config {
        mode: Mode::Vscu,
        ..Config::default()
    })
    .await;
    set_clock(&handle, json!({"set": "20260707080000"})).await;
    let jar = initialised(&handle, Profile::Vscu, TIN, "00").await;
    register(&jar, "SODA", "B").await;
    sign(&jar, 1, "SODA", "116").await; // online: last contact 08:00

    cut(&handle, true).await;
    sign(&jar, 2, "SODA", "116").await;
    set_clock(&handle, json!({"advance_seconds": 23 * 3600 + 59 * 60})).await; // 07:59 next day
    sign(&jar, 3, "SODA", "116").await;
    let dump = handle.sandbox().unit().dump();
    assert_eq!(dump["unsynced_sales"], 2);

    set_clock(&handle, json!({"advance_seconds": 60})).await; // 24 h after the last contact
    let request = sale(TIN, "00", 4, vec![line("SODA", priced("116", "B", "1"))]);
    let (code, message) = rejected(jar.call::<SignSale>(&request).await.outcome);
    assert_eq!(code, "894");
    assert!(message.contains("24 hours"), "{message}");
    // Still refused a day later: offline time does not reset itself.
    set_clock(&handle, json!({"advance_seconds": 86400})).await;
    assert_eq!(
        rejected(jar.call::<SignSale>(&request).await.outcome).0,
        "894"
    );
    // Initialising a new branch needs KRA too.
    let branch = client(&handle, Profile::Vscu, TIN, "01");
    let init = InitRequest {
        tin: TIN.into(),
        bhf_id: "01".into(),
        dvc_srl_no: "POS-2".into(),
    };
    assert_eq!(
        rejected(branch.call::<InitDevice>(&init).await.outcome).0,
        "894"
    );

    // The link returns: what was signed offline syncs, and invoice 4 signs.
    let restored = cut(&handle, false).await;
    assert_eq!(restored["synced"], 2);
    assert_eq!(handle.sandbox().unit().dump()["unsynced_sales"], 0);
    let receipt = ok(jar.call::<SignSale>(&request).await.outcome).unwrap();
    assert_eq!(receipt.tot_rcpt_no, Int(4));
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oscu_has_no_upstream_link() {
    let handle = start(Config::default()).await;
    let (status, body) = control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/upstream",
        Some(json!({"cut": true})),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (409, Some("NOT_VSCU")));
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_closes_once_in_order_and_a_reading_changes_nothing() {
    let handle = start(Config {
        mode: Mode::Vscu,
        ..Config::default()
    })
    .await;
    set_clock(&handle, json!({"set": "20260707090000"})).await;
    let jar = initialised(&handle, Profile::Vscu, TIN, "00").await;
    register(&jar, "SODA", "B").await;
    sign(&jar, 1, "SODA", "116").await;
    sign(&jar, 2, "SODA", "232").await;
    let refund = credit_note(TIN, "00", 3, 1, vec![line("SODA", priced("116", "B", "1"))]);
    ok(jar.call::<SignSale>(&refund).await.outcome);
    let mut training = sale(TIN, "00", 4, vec![line("SODA", priced("116", "B", "1"))]);
    training.sales_ty_cd = Some("T".into());
    ok(jar.call::<SignSale>(&training).await.outcome);

    let day = ReportRequest {
        rpt_de: Date8::parse("20260707").unwrap(),
    };
    let first = ok(jar.call::<ReadDay>(&day).await.outcome).unwrap();
    let second = ok(jar.call::<ReadDay>(&day).await.outcome).unwrap();
    assert_eq!(first, second, "an X reading changes nothing");
    assert_eq!((first.closed_yn.as_str(), first.rpt_no), ("N", Int(1)));
    assert_eq!(
        (
            first.normal.sale_cnt,
            first.normal.refund_cnt,
            first.training.sale_cnt
        ),
        (Int(2), Int(1), Int(1))
    );
    assert_eq!(first.normal.sale_amt.to_string(), "348.00");
    assert_eq!(first.normal.refund_amt.to_string(), "116.00");
    assert_eq!(
        (first.normal.opening_rcpt_no, first.normal.closing_rcpt_no),
        (Some(Int(1)), Some(Int(3)))
    );

    // A day still to come cannot be closed; today can (the 23:59 Z).
    let tomorrow = ReportRequest {
        rpt_de: Date8::parse("20260708").unwrap(),
    };
    let (code, message) = rejected(jar.call::<CloseDay>(&tomorrow).await.outcome);
    assert_eq!(code, "910");
    assert!(message.contains("still to come"), "{message}");
    set_clock(&handle, json!({"set": "20260707235900"})).await;
    let closed = ok(jar.call::<CloseDay>(&day).await.outcome).unwrap();
    set_clock(&handle, json!({"set": "20260708000100"})).await;
    assert_eq!((closed.closed_yn.as_str(), closed.rpt_no), ("Y", Int(1)));
    // Closing it again is refused; the closed report reads back unchanged.
    let (code, message) = rejected(jar.call::<CloseDay>(&day).await.outcome);
    assert_eq!(code, "994");
    assert!(message.contains("already closed (Z 1)"), "{message}");
    assert_eq!(ok(jar.call::<ReadDay>(&day).await.outcome).unwrap(), closed);
    // An earlier day cannot be closed after a later one.
    let earlier = ReportRequest {
        rpt_de: Date8::parse("20260706").unwrap(),
    };
    assert_eq!(
        rejected(jar.call::<CloseDay>(&earlier).await.outcome).0,
        "910"
    );

    // The report number advanced irreversibly: the new day reads as Z 2.
    sign(&jar, 5, "SODA", "116").await;
    let next = ok(jar
        .call::<ReadDay>(&ReportRequest {
            rpt_de: Date8::parse("20260708").unwrap(),
        })
        .await
        .outcome)
    .unwrap();
    assert_eq!((next.rpt_no, next.normal.sale_cnt), (Int(2), Int(1)));
    let found = ok(jar
        .call::<InvoiceDetails>(&InvoiceDetailsRequest { invc_no: Int(5) })
        .await
        .outcome)
    .unwrap();
    assert_eq!(found.sales_list.len(), 1);
    let dump = handle.sandbox().unit().dump();
    assert_eq!(dump["sales"][format!("{TIN}/00/{:020}", 5)]["report_no"], 2);
    assert_eq!(dump["sales"][format!("{TIN}/00/{:020}", 1)]["report_no"], 1);
    assert!(matches!(
        jar.call::<ReadDay>(&day).await.outcome,
        Outcome::Ok { .. }
    ));
    handle.stop().await;
}
