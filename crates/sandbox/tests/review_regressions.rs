//! Rules and robustness found missing by review, each pinned by a test.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use ushuru_kra::endpoints::*;
use ushuru_kra::types::*;
use ushuru_kra::wire::{Amount, Int, Qty};
use ushuru_kra::{ClientConfig, KraClient, Outcome, Profile, Timeouts};
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::{Config, Mode};

fn says(outcome: Outcome<SaleResponse>, expected: &str) {
    let (code, message) = rejected(outcome);
    assert_eq!(code, "910", "{message}");
    assert!(
        message.contains(expected),
        "{expected:?} not in {message:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_notes_add_up_their_lines_and_match_the_original() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    register(&hq, "SODA", "B").await;
    ok(hq
        .call::<SignSale>(&sale(
            TIN,
            "00",
            1,
            vec![line("SODA", priced("116", "B", "2"))],
        ))
        .await
        .outcome);
    // Two lines of 2 for an item sold twice: 4 of 2.
    let split = credit_note(
        TIN,
        "00",
        2,
        1,
        vec![
            line("SODA", priced("58", "B", "2")),
            line("SODA", priced("58", "B", "2")),
        ],
    );
    says(
        hq.call::<SignSale>(&split).await.outcome,
        "only 2.0000 remain",
    );
    // A training credit note cannot reverse a normal sale.
    let mut training = credit_note(TIN, "00", 2, 1, vec![line("SODA", priced("116", "B", "1"))]);
    training.sales_ty_cd = Some("T".into());
    says(
        hq.call::<SignSale>(&training).await.outcome,
        "cannot reverse invoice 1 of type N",
    );
    // A B2B sale is reversed only for its buyer.
    let mut b2b = sale(TIN, "00", 2, vec![line("SODA", priced("116", "B", "1"))]);
    b2b.cust_tin = Some("P051234567X".into());
    ok(hq.call::<SignSale>(&b2b).await.outcome);
    let other_buyer = credit_note(TIN, "00", 3, 2, vec![line("SODA", priced("116", "B", "1"))]);
    says(
        hq.call::<SignSale>(&other_buyer).await.outcome,
        "custTin must be the original's buyer",
    );
    let mut right_buyer = other_buyer.clone();
    right_buyer.cust_tin = Some("P051234567X".into());
    ok(hq.call::<SignSale>(&right_buyer).await.outcome);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_must_add_up_and_match_its_item() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    register(&hq, "SODA", "B").await;
    let good = sale(TIN, "00", 1, vec![line("SODA", priced("116", "B", "1"))]);
    // A line total far from its parts, with the header following it.
    let mut inflated = good.clone();
    inflated.item_list[0].tot_amt = Amount::parse("99999").unwrap();
    inflated.tot_amt = Amount::parse("99999").unwrap();
    says(
        hq.call::<SignSale>(&inflated).await.outcome,
        "do not add up",
    );
    // A taxable amount that is neither the supply less discount nor the total less tax.
    let mut shrunk = good.clone();
    shrunk.item_list[0].taxbl_amt = Amount::parse("1").unwrap();
    shrunk.item_list[0].tax_amt = Amount::parse("0.16").unwrap();
    shrunk.taxbl_amt_b = Amount::parse("1").unwrap();
    shrunk.tax_amt_b = Amount::parse("0.16").unwrap();
    shrunk.tot_taxbl_amt = Amount::parse("1").unwrap();
    shrunk.tot_tax_amt = Amount::parse("0.16").unwrap();
    says(hq.call::<SignSale>(&shrunk).await.outcome, "do not add up");
    // A band-B item sold as band A.
    let as_exempt = sale(TIN, "00", 1, vec![line("SODA", priced("116", "A", "1"))]);
    says(
        hq.call::<SignSale>(&as_exempt).await.outcome,
        "registered under band B",
    );
    // An item taken out of use.
    let mut retired = item_request("SODA", "B");
    retired.use_yn = "N".into();
    ok(hq.call::<SaveItemEndpoint>(&retired).await.outcome);
    says(hq.call::<SignSale>(&good).await.outcome, "not in use");
    register(&hq, "SODA", "B").await;
    // qty × prc beyond range is refused, not wrapped around.
    let mut huge = good.clone();
    huge.item_list[0].qty = Qty::whole(1_000_000_000_000_000_000);
    huge.item_list[0].prc = Amount::parse("10000000000000000000").unwrap();
    says(
        hq.call::<SignSale>(&huge).await.outcome,
        "beyond the supported range",
    );
    // An invoice number beyond 2^63.
    let mut far = good.clone();
    far.invc_no = Int(u64::MAX);
    says(
        hq.call::<SignSale>(&far).await.outcome,
        "invcNo must be between",
    );
    ok(hq.call::<SignSale>(&good).await.outcome);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oscu_needs_the_key_on_every_path() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    register(&hq, "SODA", "B").await;
    let body = serde_json::to_string(&sale(
        TIN,
        "00",
        1,
        vec![line("SODA", priced("116", "B", "1"))],
    ))
    .unwrap();
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/trnsSales/saveSales", handle.url()))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["resultCd"], "900", "{answer}");
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_days_take_no_receipts_and_none_is_skipped() {
    let handle = start(Config {
        mode: Mode::Vscu,
        ..Config::default()
    })
    .await;
    set_clock(&handle, json!({"set": "20260707100000"})).await;
    let jar = initialised(&handle, Profile::Vscu, TIN, "00").await;
    register(&jar, "SODA", "B").await;
    sign(&jar, 1, "SODA", "116").await;
    set_clock(&handle, json!({"set": "20260709100000"})).await;
    sign(&jar, 2, "SODA", "116").await;
    // The 7th has receipts: the 9th cannot be closed before it.
    let ninth = ReportRequest {
        rpt_de: ushuru_kra::wire::Date8::parse("20260709").unwrap(),
    };
    let (code, message) = rejected(jar.call::<CloseDay>(&ninth).await.outcome);
    assert_eq!(code, "910");
    assert!(message.contains("close 20260707 first"), "{message}");
    let seventh = ReportRequest {
        rpt_de: ushuru_kra::wire::Date8::parse("20260707").unwrap(),
    };
    ok(jar.call::<CloseDay>(&seventh).await.outcome);
    ok(jar.call::<CloseDay>(&ninth).await.outcome);
    // Today is closed: no more receipts on it, nor with the clock turned back.
    let next = sale(TIN, "00", 3, vec![line("SODA", priced("116", "B", "1"))]);
    says(
        jar.call::<SignSale>(&next).await.outcome,
        "closed by its Z report",
    );
    set_clock(&handle, json!({"set": "20260708120000"})).await;
    says(
        jar.call::<SignSale>(&next).await.outcome,
        "closed by its Z report",
    );
    set_clock(&handle, json!({"set": "20260710000100"})).await;
    ok(jar.call::<SignSale>(&next).await.outcome);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_clock_starts_when_the_link_is_cut() {
    let handle = start(Config {
        mode: Mode::Vscu,
        ..Config::default()
    })
    .await;
    set_clock(&handle, json!({"set": "20260707080000"})).await;
    let jar = initialised(&handle, Profile::Vscu, TIN, "00").await;
    register(&jar, "SODA", "B").await;
    // Two idle days with the link up, then a cut: the 24 hours start now.
    set_clock(&handle, json!({"advance_seconds": 48 * 3600})).await;
    control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/upstream",
        Some(json!({"cut": true})),
    )
    .await;
    sign(&jar, 1, "SODA", "116").await;
    // Cutting it again does not restart them.
    set_clock(&handle, json!({"advance_seconds": 20 * 3600})).await;
    control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/upstream",
        Some(json!({"cut": true})),
    )
    .await;
    set_clock(&handle, json!({"advance_seconds": 5 * 3600})).await;
    let next = sale(TIN, "00", 2, vec![line("SODA", priced("116", "B", "1"))]);
    assert_eq!(rejected(jar.call::<SignSale>(&next).await.outcome).0, "894");
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_fault_count_is_just_a_number() {
    let handle = start(Config::default()).await;
    let body = json!({"endpoint": "saveItem", "fault": {"kind": "result_code", "code": "999"}, "count": 4_294_967_295u32});
    let (status, _) = control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/faults",
        Some(body),
    )
    .await;
    assert_eq!(status, 200);
    let (_, pending) = control(&handle, reqwest::Method::GET, "/_sandbox/faults", None).await;
    assert_eq!(pending["saveItem"][0]["count"], 4_294_967_295u32);
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    assert_eq!(
        rejected(
            hq.call::<SaveItemEndpoint>(&item_request("X", "B"))
                .await
                .outcome
        )
        .0,
        "999"
    );
    let (_, pending) = control(&handle, reqwest::Method::GET, "/_sandbox/faults", None).await;
    assert_eq!(pending["saveItem"][0]["count"], 4_294_967_294u32);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_ambiguous_and_gateway_duplicates_stay_duplicates() {
    let handle = start(Config::default()).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    let envelope =
        json!({"resultCd": "999", "resultMsg": "busy", "resultDt": "20260707000000", "data": null})
            .to_string();
    let fault = json!({"endpoint": "saveItem", "fault": {"kind": "http_status", "status": 503, "body": envelope}});
    control(
        &handle,
        reqwest::Method::POST,
        "/_sandbox/faults",
        Some(fault),
    )
    .await;
    let call = hq.call::<SaveItemEndpoint>(&item_request("X", "B")).await;
    assert!(
        matches!(call.outcome, Outcome::Ambiguous { .. }),
        "a 503 may come after the work: {:?}",
        call.outcome
    );

    let gateway = initialised(&handle, Profile::GavaConnect, "P051234567X", "00").await;
    register(&gateway, "SODA", "B").await;
    let first = sale(
        "P051234567X",
        "00",
        1,
        vec![line("SODA", priced("116", "B", "1"))],
    );
    ok(gateway.call::<SignSale>(&first).await.outcome);
    match gateway.call::<SignSale>(&first).await.outcome {
        Outcome::Rejected { code, .. } => assert!(code.is_duplicate(), "{code}"),
        other => panic!("{other:?}"),
    }
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_refused_not_followed() {
    // A server that redirects every POST elsewhere (to a port nobody listens on).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::TEMPORARY_REDIRECT,
            [("location", format!("http://127.0.0.1:{closed}/x"))],
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = KraClient::new(ClientConfig {
        base_url: format!("http://{addr}"),
        profile: Profile::Oscu,
        tin: TIN.into(),
        bhf_id: "00".into(),
        cmc_key: Some(ushuru_kra::Secret::new("KEY")),
        timeouts: Timeouts::default(),
        gateway: None,
    })
    .unwrap();
    let (code, _) = rejected(
        client
            .call::<SaveItemEndpoint>(&item_request("X", "B"))
            .await
            .outcome,
    );
    assert_eq!(code, "HTTP307");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issued_key_stays_out_of_the_exchange() {
    let handle = start(Config::default()).await;
    let client = client(&handle, Profile::Oscu, TIN, "00");
    let call = client
        .call::<InitDevice>(&InitRequest {
            tin: TIN.into(),
            bhf_id: "00".into(),
            dvc_srl_no: "P".into(),
        })
        .await;
    let key = match &call.outcome {
        Outcome::Ok {
            data: Some(response),
            ..
        } => response.info.cmc_key.clone(),
        other => panic!("{other:?}"),
    };
    let body = call.exchange.response_body.clone().unwrap();
    assert!(
        !body.contains(&key) && body.contains("<redacted>"),
        "{body}"
    );
    assert!(!format!("{call:?}").contains(&key));
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_state_write_leaves_no_trace() {
    let dir = std::env::temp_dir().join(format!("ushuru-sandbox-locked-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.sqlite");
    let _ = std::fs::remove_file(&path);
    let handle = start_with(Config::default(), Some(StateFile::open(&path).unwrap())).await;
    let hq = initialised(&handle, Profile::Oscu, TIN, "00").await;
    register(&hq, "SODA", "B").await;
    let first = sale(TIN, "00", 1, vec![line("SODA", priced("116", "B", "1"))]);
    // Another process holds the file's write lock: the sale is refused...
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (code, message) = rejected(hq.call::<SignSale>(&first).await.outcome);
    assert_eq!(code, "999", "{message}");
    blocker.execute_batch("ROLLBACK").unwrap();
    // ...and left nothing behind: not a duplicate, not a used number, not a counter.
    let receipt = ok(hq.call::<SignSale>(&first).await.outcome).unwrap();
    assert_eq!((receipt.cur_rcpt_no, receipt.tot_rcpt_no), (Int(1), Int(1)));
    handle.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_let_go() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use ushuru_sandbox::server::GatewayAccess;
    use ushuru_sandbox::{ControlUnit, Limits, Sandbox};

    let limits = Limits {
        header_read: Duration::from_millis(300),
        request: Duration::from_millis(500),
    };
    let unit = ControlUnit::new(Config::default(), None).unwrap();
    let handle = Sandbox::with_limits(unit, GatewayAccess::default(), limits)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    // Headers that never end: the connection is closed.
    let mut stream = tokio::net::TcpStream::connect(handle.addr).await.unwrap();
    stream
        .write_all(b"POST /saveItem HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was held");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A body that never arrives: 408.
    let mut stream = tokio::net::TcpStream::connect(handle.addr).await.unwrap();
    stream
        .write_all(b"POST /saveItem HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..read]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    handle.stop().await;
}
