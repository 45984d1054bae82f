//! Every fault kind, and how the client classifies what it sees.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use ushuru_kra::endpoints::*;
use ushuru_kra::types::*;
use ushuru_kra::wire::Int;
use ushuru_kra::{ClientConfig, KraClient, Outcome, Profile, Timeouts};
use ushuru_sandbox::Config;

async fn queue(
    handle: &ushuru_sandbox::SandboxHandle,
    endpoint: &str,
    fault: serde_json::Value,
    count: u32,
) {
    let (status, body) = control(
        handle,
        reqwest::Method::POST,
        "/_sandbox/faults",
        Some(json!({"endpoint": endpoint, "fault": fault, "count": count})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

fn signed_count(handle: &ushuru_sandbox::SandboxHandle) -> usize {
    handle.sandbox().unit().dump()["sales"]
        .as_object()
        .map_or(0, |s| s.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_code_and_http_status_faults_process_nothing() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    register(&hq, "SODA", "B").await;
    let request = sale(TIN, "00", 1, vec![line("SODA", priced("116", "B", "1"))]);

    queue(
        &handle,
        "saveTrnsSalesOsdc",
        json!({"kind": "result_code", "code": "999", "message": "KRA is busy"}),
        1,
    )
    .await;
    let (code, message) = rejected(hq.call::<SignSale>(&request).await.outcome);
    assert_eq!((code.as_str(), message.as_str()), ("999", "KRA is busy"));

    queue(
        &handle,
        "/trnsSales/saveSales",
        json!({"kind": "http_status", "status": 502}),
        2,
    )
    .await;
    for _ in 0..2 {
        let call = hq.call::<SignSale>(&request).await;
        assert!(
            matches!(call.outcome, Outcome::Ambiguous { .. }),
            "a 502 may hide a processed call: {:?}",
            call.outcome
        );
        assert_eq!(call.exchange.http_status, Some(502));
    }
    queue(
        &handle,
        "saveTrnsSalesOsdc",
        json!({"kind": "http_status", "status": 403, "body": "<html>Forbidden</html>"}),
        1,
    )
    .await;
    let (code, message) = rejected(hq.call::<SignSale>(&request).await.outcome);
    assert_eq!(code, "HTTP403");
    assert!(message.contains("Forbidden"));

    assert_eq!(
        signed_count(&handle),
        0,
        "no fault of these kinds processed the sale"
    );
    // The queue ran out: the next call is served.
    ok(hq.call::<SignSale>(&request).await.outcome);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_holds_the_answer() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    queue(
        &handle,
        "selectCodeList",
        json!({"kind": "delay", "ms": 400}),
        1,
    )
    .await;
    let request = LastRequest {
        last_req_dt: ushuru_kra::wire::DateTime14::parse("20180101000000").unwrap(),
    };
    let started = Instant::now();
    ok(hq.call::<CodeLists>(&request).await.outcome);
    assert!(started.elapsed() >= Duration::from_millis(400));

    // Longer than the client waits: the call is ambiguous, as a real timeout is.
    queue(
        &handle,
        "selectCodeList",
        json!({"kind": "delay", "ms": 3000}),
        1,
    )
    .await;
    let mut config = hq.config().clone();
    config.timeouts = Timeouts {
        lookup: Duration::from_millis(300),
        ..config.timeouts
    };
    let impatient = KraClient::new(config).unwrap();
    let call = impatient.call::<CodeLists>(&request).await;
    assert!(
        matches!(call.outcome, Outcome::Ambiguous { ref reason } if reason.contains("in time")),
        "{:?}",
        call.outcome
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_processed_nothing_and_a_lost_answer_committed() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    register(&hq, "SODA", "B").await;
    let first = sale(TIN, "00", 1, vec![line("SODA", priced("116", "B", "1"))]);

    // Dropped before processing: ambiguous to the client, nothing signed.
    queue(&handle, "saveTrnsSalesOsdc", json!({"kind": "drop"}), 1).await;
    let call = hq.call::<SignSale>(&first).await;
    assert!(
        matches!(call.outcome, Outcome::Ambiguous { .. }),
        "{:?}",
        call.outcome
    );
    assert_eq!(call.exchange.http_status, None);
    let lookup = hq
        .call::<InvoiceDetails>(&InvoiceDetailsRequest { invc_no: Int(1) })
        .await
        .outcome;
    assert!(
        matches!(lookup, Outcome::Ok { data: None, .. }),
        "not signed: {lookup:?}"
    );
    // So the identical payload is simply sent again.
    let receipt = ok(hq.call::<SignSale>(&first).await.outcome).unwrap();

    // Lost answer: signed and committed, the client hears nothing.
    let second = sale(TIN, "00", 2, vec![line("SODA", priced("232", "B", "1"))]);
    queue(
        &handle,
        "saveTrnsSalesOsdc",
        json!({"kind": "lost_answer"}),
        1,
    )
    .await;
    let call = hq.call::<SignSale>(&second).await;
    assert!(
        matches!(call.outcome, Outcome::Ambiguous { .. }),
        "{:?}",
        call.outcome
    );
    // Recovery: look it up, adopt the receipt; resending would be a duplicate.
    let found = ok(hq
        .call::<InvoiceDetails>(&InvoiceDetailsRequest { invc_no: Int(2) })
        .await
        .outcome)
    .unwrap();
    let stored = &found.sales_list[0].receipt;
    assert_eq!((stored.cur_rcpt_no, stored.tot_rcpt_no), (Int(2), Int(2)));
    let (code, _) = rejected(hq.call::<SignSale>(&second).await.outcome);
    assert!(ushuru_kra::ResultCode::parse(&code).is_duplicate());
    assert_eq!(
        signed_count(&handle),
        2,
        "one signature per invoice, however often it was sent"
    );
    assert_ne!(stored.rcpt_sign, receipt.rcpt_sign);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_not_sent() {
    // Bind and release a port so that nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = KraClient::new(ClientConfig {
        base_url: format!("http://127.0.0.1:{port}"),
        profile: Profile::Oscu,
        tin: TIN.into(),
        bhf_id: "00".into(),
        cmc_key: None,
        timeouts: Timeouts::default(),
        gateway: None,
    })
    .unwrap();
    let call = client
        .call::<InitDevice>(&InitRequest {
            tin: TIN.into(),
            bhf_id: "00".into(),
            dvc_srl_no: "X".into(),
        })
        .await;
    assert!(
        matches!(call.outcome, Outcome::NotSent { .. }),
        "{:?}",
        call.outcome
    );
    assert!(call.exchange.request_body.contains("dvcSrlNo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_managed_through_the_control_api() {
    let handle = start(Config::default()).await;
    queue(
        &handle,
        "/etims-oscu/api/v1/sendSalesTransaction",
        json!({"kind": "drop"}),
        3,
    )
    .await;
    let (_, pending) = control(&handle, reqwest::Method::GET, "/_sandbox/faults", None).await;
    assert_eq!(pending["saveTrnsSalesOsdc"][0]["count"].as_u64(), Some(3));
    for bad in [
        json!({"endpoint": "nope", "fault": {"kind": "drop"}}),
        json!({"endpoint": "saveItem", "fault": {"kind": "explode"}}),
        json!({"endpoint": "saveItem", "fault": {"kind": "drop"}, "count": 0}),
        json!({"endpoint": "saveItem"}),
    ] {
        let (status, body) = control(
            &handle,
            reqwest::Method::POST,
            "/_sandbox/faults",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{bad}");
        assert!(
            body["code"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
    let (status, _) = control(&handle, reqwest::Method::DELETE, "/_sandbox/faults", None).await;
    assert_eq!(status, 200);
    let (_, pending) = control(&handle, reqwest::Method::GET, "/_sandbox/faults", None).await;
    assert_eq!(pending, json!({}));
    handle.stop().await;
}
