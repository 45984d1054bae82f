//! The sale endpoints over real HTTP: the app in-process with its pipeline, the real
//! sandbox as control unit, on both stores.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::server::GatewayAccess;
use ushuru_sandbox::{Config, ControlUnit, Sandbox};
use ushuru_store::{FindingKind, SaleId, SequenceFinding, Store};

mod common;

use common::*;

async fn post(
    app: &App,
    key: Option<&str>,
    idempotency: Option<&str>,
    body: &Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v2/etims/sale", app.url))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(idempotency) = idempotency {
        request = request.header("Idempotency-Key", idempotency);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, response.json().await.unwrap(), headers)
}

async fn get(app: &App, key: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", app.url))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

// ---- the cases ---------------------------------------------------------------------------

async fn a_flat_sale_is_signed_and_replayed(store: Store) {
    let app = start(store, Duration::from_secs(10)).await;
    let key = app.keys[0].as_str();
    let (status, body, headers) = post(
        &app,
        Some(key),
        Some("P051234567A:INV-0001"),
        &flat("INV-0001", "5800.00", "800.00"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "SIGNED");
    assert!(body["purchaseId"].is_i64());
    let sdc_id = body["sdcId"].as_str().unwrap();
    let cu = body["cuInvoiceNumber"].as_str().unwrap();
    assert_eq!(cu, format!("{sdc_id}/1 NS"));
    let qr: Vec<&str> = body["kraQrPayload"].as_str().unwrap().split('#').collect();
    assert_eq!(qr.len(), 6);
    assert_eq!(
        (qr[2], qr[3], qr[4], qr[5]),
        (
            sdc_id,
            cu,
            body["internalData"].as_str().unwrap(),
            body["receiptSignature"].as_str().unwrap()
        )
    );
    assert_eq!((qr[0].len(), qr[1].len()), (8, 6));
    assert!(
        body["kraQrUrl"]
            .as_str()
            .unwrap()
            .ends_with(&format!("Data=P051234567A00{}", qr[5]))
    );
    assert_eq!(
        (body["invcNo"].as_str(), body["clientReference"].as_str()),
        (Some("1"), Some("INV-0001"))
    );
    assert_eq!(
        headers["x-request-id"].to_str().unwrap(),
        body["requestId"].as_str().unwrap()
    );
    // The sandbox issued exactly this receipt.
    let verified = app.sandbox.sandbox().unit().verify(
        TINS[0],
        "00",
        1,
        body["internalData"].as_str().unwrap(),
        qr[5],
    );
    assert_eq!(verified, Some(true));

    // Same key, same bytes: the same sale and receipt. Same key, other bytes: refused.
    let (again_status, again, _) = post(
        &app,
        Some(key),
        Some("P051234567A:INV-0001"),
        &flat("INV-0001", "5800.00", "800.00"),
    )
    .await;
    assert_eq!(again_status, 200);
    for field in [
        "purchaseId",
        "cuInvoiceNumber",
        "receiptSignature",
        "internalData",
        "kraQrPayload",
    ] {
        assert_eq!(again[field], body[field], "{field}");
    }
    let (reused, error, _) = post(
        &app,
        Some(key),
        Some("P051234567A:INV-0001"),
        &flat("INV-0001", "5900.00", "813.79"),
    )
    .await;
    assert_eq!(
        (reused, error["code"].as_str()),
        (422, Some("IDEMPOTENCY_KEY_REUSED"))
    );
    assert_eq!(
        app.sandbox.sandbox().unit().dump()["sales"]
            .as_object()
            .unwrap()
            .len(),
        1,
        "signed once"
    );

    // Status, by its owner only.
    let id = body["purchaseId"].as_i64().unwrap();
    let (code, status_body) = get(&app, key, &format!("/v2/etims/sales/{id}/status")).await;
    assert_eq!(
        (code, &status_body["receiptSignature"]),
        (200, &body["receiptSignature"])
    );
    let (code, error) = get(&app, &app.keys[1], &format!("/v2/etims/sales/{id}/status")).await;
    assert_eq!(
        (code, error["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "another taxpayer's key"
    );
    assert_eq!(get(&app, key, "/v2/etims/sales/999999/status").await.0, 404);
    assert_eq!(get(&app, key, "/v2/etims/sales/abc/status").await.0, 404);
    finish(app).await;
}

async fn an_itemised_mixed_sale_is_signed(store: Store) {
    let app = start(store, Duration::from_secs(10)).await;
    let body = json!({"supplierPin": TINS[0], "clientReference": "INV-1", "amount": "2753.46", "invoiceDate": "2026-09-25",
        "itemDescription": "Flour, Soda, Fuel", "taxAmount": "183.27", "pmtTyCd": "01",
        "items": [
            {"sku": "FLOUR-2KG", "itemNm": "Flour", "itemClsCd": "50221201", "taxTyCd": "A", "qty": "2.0000", "unitPrice": "200.00", "pkgUnitCd": "NT", "qtyUnitCd": "U"},
            {"sku": "SODA-500", "itemNm": "Soda", "itemClsCd": "50202306", "taxTyCd": "B", "qty": "2.0000", "unitPrice": "70.00", "pkgUnitCd": "NT", "qtyUnitCd": "U"},
            {"sku": "FUEL", "itemNm": "Fuel", "itemClsCd": "15101505", "taxTyCd": "E", "qty": "12.3450", "unitPrice": "179.30", "pkgUnitCd": "NT", "qtyUnitCd": "U"}],
        "buyerPin": "P051234567X", "buyerName": "Buyer Ltd"});
    let (status, answer, _) = post(&app, Some(&app.keys[0]), Some("K-1"), &body).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("SIGNED")),
        "{answer}"
    );
    let sale = &app.sandbox.sandbox().unit().dump()["sales"][format!("{}/00/{:020}", TINS[0], 1)]["request"];
    assert_eq!(
        (
            sale["totAmt"].to_string(),
            sale["taxAmtE"].to_string(),
            sale["custTin"].as_str()
        ),
        ("2753.46".into(), "163.96".into(), Some("P051234567X"))
    );
    finish(app).await;
}

async fn bad_requests_are_refused_and_use_no_number(store: Store) {
    let app = start(store, Duration::from_secs(10)).await;
    let key = app.keys[0].as_str();
    let mut wrong_pin = flat("R", "5800.00", "800.00");
    wrong_pin["supplierPin"] = json!("P000000001Z");
    let mut bad_band = flat("R", "5800.00", "800.00");
    bad_band["taxBand"] = json!("F");
    let mut bad_date = flat("R", "5800.00", "800.00");
    bad_date["invoiceDate"] = json!("25/09/2026");
    let mut bad_buyer = flat("R", "5800.00", "800.00");
    bad_buyer["buyerPin"] = json!("123");
    let cases = [
        (flat("R", "5800.00", "700.00"), 422, "TAX_MISMATCH"),
        (flat("R", "abc", "800.00"), 422, "NOT_A_NUMBER"),
        (wrong_pin, 422, "SUPPLIER_MISMATCH"),
        (bad_band, 422, "UNKNOWN_TAX_BAND"),
        (bad_date, 422, "INVALID_DATE"),
        (bad_buyer, 422, "INVALID_PIN"),
        (json!({"supplierPin": TINS[0]}), 400, "INVALID_BODY"),
        (json!([1, 2]), 400, "INVALID_BODY"),
    ];
    for (body, status, code) in cases {
        let (got, error, _) = post(&app, Some(key), None, &body).await;
        assert_eq!(
            (got, error["code"].as_str()),
            (status, Some(code)),
            "{body}: {error}"
        );
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, body, _) = post(&app, Some(key), None, &flat("OK", "116.00", "16.00")).await;
    assert_eq!(
        (status, body["invcNo"].as_str()),
        (200, Some("1")),
        "no refused request used a number"
    );
    // Keys: none, unknown, revoked, and the X-API-Key header.
    assert_eq!(
        post(&app, None, None, &flat("X", "116.00", "16.00"))
            .await
            .1["code"],
        "UNAUTHENTICATED"
    );
    assert_eq!(
        post(&app, Some("ush_nope"), None, &flat("X", "116.00", "16.00"))
            .await
            .0,
        401
    );
    assert_eq!(get(&app, key, "/v2/etims/sales/1/status").await.0, 200);
    finish(app).await;
}

async fn an_outage_answers_202_then_the_sale_signs(store: Store) {
    let app = start(store, Duration::from_millis(500)).await;
    let key = app.keys[0].clone();
    let addr = app.sandbox.addr.to_string();
    let App {
        url,
        store,
        keys,
        sandbox,
        pipeline,
        state_dir,
        vault,
        sealed_keys,
    } = app;
    sandbox.stop().await; // the control unit is down: nothing listens on its port
    let (status, body, _) = post_to(&url, &key, "OUT-1", &flat("OUT-1", "116.00", "16.00")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("PENDING_SYNC")),
        "{body}"
    );
    assert_eq!(body["cuInvoiceNumber"], Value::Null);
    // The same request again while the sale waits: its 202 answer was kept under the key,
    // so the retry is answered with the same sale (not told to wait with a 425, and not a
    // second sale).
    let (status, pending, _) =
        post_to(&url, &key, "OUT-1", &flat("OUT-1", "116.00", "16.00")).await;
    assert_eq!(
        (status, pending["status"].as_str(), &pending["purchaseId"]),
        (202, Some("PENDING_SYNC"), &body["purchaseId"]),
        "{pending}"
    );
    // The control unit returns: the sale signs, and the status shows it.
    let unit = ControlUnit::new(
        Config::default(),
        Some(StateFile::open(&state_dir.join("cu.sqlite")).unwrap()),
    )
    .unwrap();
    let sandbox = Sandbox::new(unit, GatewayAccess::default())
        .start(addr.parse().unwrap())
        .await
        .unwrap();
    let app = App {
        url,
        store,
        keys,
        sandbox,
        pipeline,
        state_dir,
        vault,
        sealed_keys,
    };
    let id = body["purchaseId"].as_i64().unwrap();
    let mut signed = Value::Null;
    for _ in 0..250 {
        let (_, status_body) = get(&app, &key, &format!("/v2/etims/sales/{id}/status")).await;
        if status_body["status"] == "SIGNED" {
            signed = status_body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(signed["status"], "SIGNED");
    // A replay of the first request now shows the receipt, under the same purchaseId.
    let (status, again, _) = post(
        &app,
        Some(&key),
        Some("OUT-1"),
        &flat("OUT-1", "116.00", "16.00"),
    )
    .await;
    assert_eq!(
        (status, &again["purchaseId"], &again["receiptSignature"]),
        (200, &body["purchaseId"], &signed["receiptSignature"])
    );
    finish(app).await;
}

async fn post_to(
    url: &str,
    key: &str,
    idempotency: &str,
    body: &Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v2/etims/sale"))
        .bearer_auth(key)
        .header("Idempotency-Key", idempotency)
        .json(body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, response.json().await.unwrap(), headers)
}

async fn a_second_request_while_the_first_runs_gets_425(store: Store) {
    let app = start(store, Duration::from_secs(10)).await;
    app.sandbox.sandbox().faults().push(
        ushuru_kra::EndpointName::SaveTrnsSalesOsdc,
        ushuru_sandbox::faults::Fault::Delay { ms: 1000 },
        1,
    );
    let key = app.keys[0].clone();
    let first = {
        let (url, key) = (app.url.clone(), key.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v2/etims/sale"))
                .bearer_auth(key)
                .header("Idempotency-Key", "SLOW")
                .json(&flat("SLOW", "116.00", "16.00"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, error, _) = post(
        &app,
        Some(&key),
        Some("SLOW"),
        &flat("SLOW", "116.00", "16.00"),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (425, Some("IDEMPOTENT_REQUEST_IN_FLIGHT"))
    );
    assert_eq!(first.await.unwrap(), 200);
    finish(app).await;
}

async fn the_journal_device_and_monitoring_views(store: Store) {
    let app = start(store, Duration::from_secs(10)).await;
    let (key, other) = (app.keys[0].as_str(), app.keys[1].as_str());
    let (status, sale, _) = post(
        &app,
        Some(key),
        Some("J-1"),
        &flat("J-1", "116.00", "16.00"),
    )
    .await;
    assert_eq!(
        (status, sale["status"].as_str()),
        (200, Some("SIGNED")),
        "{sale}"
    );
    let id = sale["purchaseId"].as_i64().unwrap();

    // The original: the sale, the exact KRA payload and every exchange with the unit.
    let (status, original) = get(&app, key, &format!("/v2/etims/sales/{id}/original")).await;
    assert_eq!(status, 200, "{original}");
    assert_eq!(original["purchaseId"], id);
    assert_eq!(original["receiptSignature"], sale["receiptSignature"]);
    let request = &original["kraRequest"];
    assert_eq!(
        request["invcNo"].as_u64().map(|n| n.to_string()).as_deref(),
        sale["invcNo"].as_str()
    );
    assert_eq!(request["tin"], TINS[0]);
    assert_eq!(request["totAmt"], 116.0, "{request}");
    // The stored lines agree with what the control unit was sent.
    let lines = original["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{original}");
    assert_eq!(lines[0]["itemSeq"], 1);
    assert_eq!(lines[0]["taxTyCd"], "B");
    assert_eq!(lines[0]["totAmt"], "116.00");
    assert_eq!(lines[0]["taxAmt"], "16.00");
    assert_eq!(lines[0]["itemCd"], request["itemList"][0]["itemCd"]);
    let transport = original["transport"].as_array().unwrap();
    let signing: Vec<&Value> = transport
        .iter()
        .filter(|e| e["endpoint"] == "saveTrnsSalesOsdc")
        .collect();
    assert_eq!(signing.len(), 1, "{transport:?}");
    assert_eq!(signing[0]["outcome"], "ok");
    assert_eq!(signing[0]["httpStatus"], 200);
    assert_eq!(signing[0]["attempt"], 1);
    assert_eq!(signing[0]["response"]["resultCd"], "000");
    assert_eq!(
        signing[0]["response"]["data"]["rcptSign"],
        sale["receiptSignature"]
    );
    // Another taxpayer cannot read it; a malformed or unknown id is a 404.
    let (status, refused) = get(&app, other, &format!("/v2/etims/sales/{id}/original")).await;
    assert_eq!((status, refused["code"].as_str()), (404, Some("NOT_FOUND")));
    assert_eq!(get(&app, key, "/v2/etims/sales/x/original").await.0, 404);
    assert_eq!(
        get(&app, key, "/v2/etims/sales/999999/original").await.0,
        404
    );

    // The device checkpoint shows the identity and never the cmcKey.
    let (status, device) = get(&app, key, "/v2/etims/device").await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["status"], "READY");
    assert_eq!(device["tin"], TINS[0]);
    assert_eq!(device["bhfId"], "00");
    assert_eq!(device["sdcId"], sale["sdcId"]);
    assert_eq!(device["cmcKeyStored"], true);
    let scope = app
        .store
        .authenticate(key, chrono::Utc::now())
        .await
        .unwrap()
        .unwrap()
        .scope;
    let sealed = app.store.device(scope).await.unwrap().unwrap().cmc_key;
    let binding = ushuru_vault::Binding {
        tenant: scope.tenant.0,
        branch: scope.branch.0,
    };
    let cmc_key = app.vault.open_cmc_key(binding, &sealed).unwrap();
    assert_eq!(cmc_key.len(), 32);
    assert!(!device.to_string().contains(cmc_key.as_str()));
    assert!(!original.to_string().contains(cmc_key.as_str()));
    // Stored sealed: the plaintext is in no column the store wrote.
    for stored in [
        &sealed.sealed.ciphertext,
        &sealed.data_key.wrapped.ciphertext,
    ] {
        assert!(!String::from_utf8_lossy(stored).contains(cmc_key.as_str()));
    }

    // Monitoring: healthy after gap-free signing; a finding the auditor stored shows up,
    // for its own branch only.
    let (status, healthy) = get(&app, key, "/v2/etims/device/monitoring").await;
    assert_eq!(status, 200);
    assert_eq!(
        (&healthy["sequenceHealthy"], &healthy["findingCount"]),
        (&json!(true), &json!(0)),
        "{healthy}"
    );
    let sdc_id = sale["sdcId"].as_str().unwrap().to_owned();
    app.store
        .record_finding(
            scope,
            &SequenceFinding {
                sdc_id: sdc_id.clone(),
                kind: FindingKind::Gap,
                expected: Some(2),
                found: 4,
                sale: Some(SaleId(id)),
            },
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let (_, flagged) = get(&app, key, "/v2/etims/device/monitoring").await;
    assert_eq!(flagged["sequenceHealthy"], false);
    assert_eq!(
        flagged["findings"],
        json!([{"sdcId": sdc_id, "kind": "GAP", "expectedRcptNo": 2, "foundRcptNo": 4, "purchaseId": id}])
    );
    let (_, elsewhere) = get(&app, other, "/v2/etims/device/monitoring").await;
    assert_eq!(elsewhere["findingCount"], 0);
    // Without a key: 401.
    let response = reqwest::Client::new()
        .get(format!("{}/v2/etims/device", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    finish(app).await;
}

async fn sales_are_found_by_client_reference(store: Store) {
    let app = start(store, Duration::from_secs(10)).await;
    let (key, other) = (app.keys[0].as_str(), app.keys[1].as_str());
    let mut ids = Vec::new();
    // The same reference twice (a POS may reuse one): the search answers the latest.
    for (idempotency, reference) in [("S-1", "REF/7 A&B"), ("S-2", "REF-8"), ("S-3", "REF/7 A&B")] {
        let (status, body, _) = post(
            &app,
            Some(key),
            Some(idempotency),
            &flat(reference, "116.00", "16.00"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["purchaseId"].as_i64().unwrap());
    }
    let (status, found) = get(
        &app,
        key,
        &format!(
            "/v2/etims/sales/search{}",
            "?clientReference=REF%2F7%20A%26B"
        ),
    )
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        (
            &found["purchaseId"],
            &found["status"],
            &found["clientReference"]
        ),
        (&json!(ids[2]), &json!("SIGNED"), &json!("REF/7 A&B"))
    );
    let (_, found) = get(
        &app,
        key,
        &format!("/v2/etims/sales/search{}", "?clientReference=REF-8"),
    )
    .await;
    assert_eq!(found["purchaseId"], ids[1]);
    // Another taxpayer's key does not see them; an unknown reference is a 404.
    assert_eq!(
        get(
            &app,
            other,
            &format!("/v2/etims/sales/search{}", "?clientReference=REF-8")
        )
        .await
        .0,
        404
    );
    assert_eq!(
        get(
            &app,
            key,
            &format!("/v2/etims/sales/search{}", "?clientReference=NOPE")
        )
        .await
        .0,
        404
    );
    // Exactly one key, non-empty, and one Ushuru records.
    for (query, code) in [
        ("", "SEARCH_KEY_REQUIRED"),
        ("?clientReference=REF-8&requestId=x", "SEARCH_KEY_REQUIRED"),
        ("?clientReference=", "SEARCH_KEY_REQUIRED"),
        ("?requestId=abc", "SEARCH_KEY_UNSUPPORTED"),
        ("?transactionId=12", "SEARCH_KEY_UNSUPPORTED"),
    ] {
        let (status, body) = get(&app, key, &format!("/v2/etims/sales/search{}", query)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
    finish(app).await;
}

fn itemised(reference: &str) -> Value {
    json!({"supplierPin": TINS[0], "clientReference": reference, "amount": "2753.46", "invoiceDate": "2026-09-25",
        "itemDescription": "Flour, Soda, Fuel", "taxAmount": "183.27", "pmtTyCd": "01",
        "items": [
            {"sku": "FLOUR-2KG", "itemNm": "Flour", "itemClsCd": "50221201", "taxTyCd": "A", "qty": "2.0000", "unitPrice": "200.00", "pkgUnitCd": "NT", "qtyUnitCd": "U"},
            {"sku": "SODA-500", "itemNm": "Soda", "itemClsCd": "50202306", "taxTyCd": "B", "qty": "2.0000", "unitPrice": "70.00", "pkgUnitCd": "NT", "qtyUnitCd": "U"},
            {"sku": "FUEL", "itemNm": "Fuel", "itemClsCd": "15101505", "taxTyCd": "E", "qty": "12.3450", "unitPrice": "179.30", "pkgUnitCd": "NT", "qtyUnitCd": "U"}],
        "buyerPin": "P051234567X", "buyerName": "Buyer Ltd"})
}

async fn credit(
    app: &App,
    key: &str,
    sale: i64,
    idempotency: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v2/etims/sale/{sale}/credit-note", app.url))
        .bearer_auth(key);
    if let Some(idempotency) = idempotency {
        request = request.header("Idempotency-Key", idempotency);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The request the sandbox signed for an invoice number of the first taxpayer's branch.
fn signed_request(app: &App, invc_no: u64) -> Value {
    app.sandbox.sandbox().unit().dump()["sales"][format!("{}/00/{:020}", TINS[0], invc_no)]
        ["request"]
        .clone()
}

async fn credit_notes_full_partial_and_refused(store: Store) {
    let app = start(store, Duration::from_secs(10)).await;
    let (key, other) = (app.keys[0].as_str(), app.keys[1].as_str());
    let (status, sale, _) = post(&app, Some(key), Some("CN-SALE"), &itemised("INV-CN")).await;
    assert_eq!(
        (status, sale["status"].as_str()),
        (200, Some("SIGNED")),
        "{sale}"
    );
    let id = sale["purchaseId"].as_i64().unwrap();

    // Partial: one of the two sodas.
    let one_soda = json!({"returnLines": [{"originalItemSeq": 2, "qty": "1"}], "reasonCode": "06",
                          "clientReference": "RET-1", "reason": "customer returned a soda"});
    let (status, partial) = credit(&app, key, id, Some("CN-1"), Some(&one_soda)).await;
    assert_eq!(status, 200, "{partial}");
    assert_eq!(partial["status"], "SIGNED");
    assert_eq!(partial["type"], "CREDIT_NOTE");
    assert_eq!(partial["originalPurchaseId"], id);
    assert_eq!(partial["creditNoteId"], partial["purchaseId"]);
    assert!(
        partial["cuInvoiceNumber"]
            .as_str()
            .unwrap()
            .ends_with(" NR")
    );
    assert_eq!(partial["originalRcptNo"], sale["cuInvoiceNumber"]);
    let signed = signed_request(&app, 2);
    assert_eq!(
        (
            &signed["rcptTyCd"],
            &signed["orgInvcNo"],
            &signed["custTin"],
            &signed["rfdRsnCd"]
        ),
        (&json!("R"), &json!(1), &json!("P051234567X"), &json!("06"))
    );
    assert_eq!(
        (signed["totAmt"].to_string(), signed["taxAmtB"].to_string()),
        ("70.00".into(), "9.66".into())
    );
    // The same key and body: the same note again; the same key, another body: 422.
    let (status, again) = credit(&app, key, id, Some("CN-1"), Some(&one_soda)).await;
    assert_eq!(
        (status, &again["creditNoteId"], &again["receiptSignature"]),
        (200, &partial["creditNoteId"], &partial["receiptSignature"])
    );
    let (status, reused) = credit(&app, key, id, Some("CN-1"), None).await;
    assert_eq!(
        (status, reused["code"].as_str()),
        (422, Some("IDEMPOTENCY_KEY_REUSED"))
    );

    // More than remains: 422 with what remains and what was reversed; no number is used.
    let too_many =
        json!({"returnLines": [{"originalItemSeq": 2, "qty": "1.5"}], "clientReference": "RET-X"});
    let (status, refused) = credit(&app, key, id, None, Some(&too_many)).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("CREDIT_NOTE_EXCEEDS_ORIGINAL")),
        "{refused}"
    );
    assert_eq!(
        (
            refused["remaining"].as_str(),
            refused["alreadyReversed"].as_str()
        ),
        (Some("1.0000"), Some("1.0000"))
    );
    for (body, status, code) in [
        (
            json!({"returnLines": [{"originalItemSeq": 9, "qty": "1"}]}),
            422,
            "UNKNOWN_ORIGINAL_LINE",
        ),
        (
            json!({"returnLines": [{"originalItemSeq": 1, "qty": "0.001"}]}),
            422,
            "INVALID_RETURN_LINE",
        ),
        (
            json!({"returnLines": [{"originalItemSeq": 1, "qty": "-1"}]}),
            422,
            "INVALID_RETURN_LINE",
        ),
        (json!({"returnLines": []}), 422, "INVALID_RETURN_LINE"),
        (
            json!({"returnLines": [{"originalItemSeq": 1, "qty": "1"}], "items": [{"sku": "FUEL"}]}),
            400,
            "INVALID_BODY",
        ),
        (
            json!({"items": [{"sku": "NOT-SOLD"}]}),
            422,
            "UNKNOWN_ORIGINAL_LINE",
        ),
        (json!({"reasonCode": "13"}), 422, "INVALID_REASON_CODE"),
        (json!({"surprise": true}), 400, "INVALID_BODY"),
    ] {
        let (got, refused) = credit(&app, key, id, None, Some(&body)).await;
        assert_eq!(
            (got, refused["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }

    // Full, with no body at all (as the SDK sends it): the rest, to the cent.
    let (status, full) = credit(&app, key, id, Some("CN-2"), None).await;
    assert_eq!(
        (status, full["status"].as_str()),
        (200, Some("SIGNED")),
        "{full}"
    );
    assert_eq!(full["invcNo"], "3", "refusals used no invoice number");
    let signed = signed_request(&app, 3);
    assert_eq!(signed["totAmt"].to_string(), "2683.46");
    assert_eq!(signed["itemList"].as_array().unwrap().len(), 3);
    assert_eq!(signed["itemList"][1]["qty"].to_string(), "1.0000");
    // A second full one: 409 naming the note that exists.
    let (status, conflict) = credit(&app, key, id, Some("CN-3"), None).await;
    assert_eq!(
        (status, conflict["code"].as_str()),
        (409, Some("CREDIT_NOTE_EXISTS")),
        "{conflict}"
    );
    assert_eq!(conflict["existingCreditNoteId"], full["creditNoteId"]);
    assert_eq!(conflict["existingCuInvoiceNo"], full["cuInvoiceNumber"]);

    // The status of a note reads as one; notes cannot be credited; others cannot reach it.
    let note = full["creditNoteId"].as_i64().unwrap();
    let (_, status_body) = get(&app, key, &format!("/v2/etims/sales/{note}/status")).await;
    assert_eq!(status_body["type"], "CREDIT_NOTE");
    assert_eq!(credit(&app, key, note, None, None).await.0, 404);
    assert_eq!(credit(&app, other, id, None, None).await.0, 404);
    assert_eq!(credit(&app, key, 999_999, None, None).await.0, 404);

    // The SDK's legacy `items` selection, by SKU: both sodas of a second sale.
    let (_, second, _) = post(&app, Some(key), Some("CN-SALE-2"), &itemised("INV-CN-2")).await;
    let second_id = second["purchaseId"].as_i64().unwrap();
    let by_sku = json!({"items": [{"sku": "SODA-500"}], "clientReference": "RET-2"});
    let (status, sodas) = credit(&app, key, second_id, None, Some(&by_sku)).await;
    assert_eq!(
        (status, sodas["status"].as_str()),
        (200, Some("SIGNED")),
        "{sodas}"
    );
    let invc_no: u64 = sodas["invcNo"].as_str().unwrap().parse().unwrap();
    let signed = signed_request(&app, invc_no);
    assert_eq!(signed["totAmt"].to_string(), "140.00");
    assert_eq!(signed["itemList"][0]["itemCd"], "SODA-500");

    // Four tills return one soda each at once; two were sold: two notes, two refusals.
    let (_, third, _) = post(&app, Some(key), Some("CN-SALE-3"), &itemised("INV-CN-3")).await;
    let third_id = third["purchaseId"].as_i64().unwrap();
    let one =
        json!({"returnLines": [{"originalItemSeq": 2, "qty": "1"}], "clientReference": "RET-3"});
    let (a, b, c, d) = tokio::join!(
        credit(&app, key, third_id, None, Some(&one)),
        credit(&app, key, third_id, None, Some(&one)),
        credit(&app, key, third_id, None, Some(&one)),
        credit(&app, key, third_id, None, Some(&one)),
    );
    let mut statuses = [a.0, b.0, c.0, d.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 422, 422]);
    finish(app).await;
}

async fn post_json(
    app: &App,
    key: &str,
    path: &str,
    idempotency: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", app.url))
        .bearer_auth(key)
        .json(body);
    if let Some(idempotency) = idempotency {
        request = request.header("Idempotency-Key", idempotency);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn sandbox_state(app: &App) -> Value {
    reqwest::get(format!("{}/_sandbox/state", app.sandbox.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn stock_line(item_cd: &str, io_type: &str, qty: &str) -> Value {
    json!({"itemCd": item_cd, "itemNm": "Laptop", "ioType": io_type, "pkgUnitCd": "NT", "pkgQty": "1",
           "qtyUnitCd": "U", "qty": qty, "prc": "5000", "totDcAmt": "0", "taxTyCd": "B"})
}

async fn stock_moves_are_numbered_priced_and_sent_in_order(store: Store) {
    let app = start(store, Duration::from_secs(10)).await;
    let key = app.keys[0].clone();
    let adjustment =
        json!({"lines": [stock_line("SKU1", "M", "10")], "remark": "Stock in", "orgSarNo": 0});
    // The key is required: it is the operation key.
    let (status, body) =
        post_json(&app, &key, "/v2/etims/stock/adjustment", None, &adjustment).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("IDEMPOTENCY_KEY_REQUIRED")),
        "{body}"
    );
    let (status, first) = post_json(
        &app,
        &key,
        "/v2/etims/stock/adjustment",
        Some("stk/1 x"),
        &adjustment,
    )
    .await;
    assert_eq!(
        (status, first["status"].as_str()),
        (200, Some("SYNCED")),
        "{first}"
    );
    // Priced by the server: 10 × 5000 VAT-inclusive at 16 %.
    assert_eq!(
        (
            &first["sarNo"],
            first["totAmt"].as_str(),
            first["totTaxAmt"].as_str(),
            &first["kraAcknowledged"]
        ),
        (&json!(1), Some("50000.00"), Some("6896.55"), &json!(true)),
        "{first}"
    );
    // The control unit holds the movement under sarNo 1 as stock in (06), and the item
    // it names was registered first (saveItem), since the sale rules need it.
    let state = sandbox_state(&app).await;
    let moved = &state["stock_io"][format!("{}/00/1", TINS[0])]["value"];
    assert_eq!(
        (moved["sarTyCd"].as_str(), moved["totAmt"].as_f64()),
        (Some("06"), Some(50000.0)),
        "{moved}"
    );
    assert!(
        state["items"].get(format!("{}/SKU1", TINS[0])).is_some(),
        "{}",
        state["items"]
    );
    // The same key and body: the same movement; another body: refused.
    let (status, again) = post_json(
        &app,
        &key,
        "/v2/etims/stock/adjustment",
        Some("stk/1 x"),
        &adjustment,
    )
    .await;
    assert_eq!(
        (status, &again["movementId"], &again["sarNo"]),
        (200, &first["movementId"], &json!(1))
    );
    let other = json!({"lines": [stock_line("SKU1", "M", "11")], "orgSarNo": 0});
    let (status, body) = post_json(
        &app,
        &key,
        "/v2/etims/stock/adjustment",
        Some("stk/1 x"),
        &other,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("IDEMPOTENCY_KEY_REUSED")),
        "{body}"
    );
    // Invalid requests use no number.
    for (bad, code) in [
        (json!({"lines": [], "orgSarNo": 0}), "NO_LINES"),
        (
            json!({"lines": [stock_line("SKU1", "M", "1"), stock_line("SKU1", "A", "1")]}),
            "MIXED_IO_TYPES",
        ),
        (
            json!({"lines": [stock_line("SKU1", "X", "1")]}),
            "INVALID_IO_TYPE",
        ),
        (
            json!({"lines": [stock_line("SKU1", "A", "0")]}),
            "NON_POSITIVE_QUANTITY",
        ),
        (
            json!({"lines": [stock_line("", "A", "1")]}),
            "INVALID_ITEM_CODE",
        ),
        (
            json!({"lines": [stock_line("SKU1", "A", "1")], "custTin": "nope"}),
            "INVALID_PIN",
        ),
    ] {
        let (status, body) =
            post_json(&app, &key, "/v2/etims/stock/adjustment", Some(code), &bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some(code)),
            "{bad} → {body}"
        );
    }
    let (status, body) = post_json(
        &app,
        &key,
        "/v2/etims/stock/adjustment",
        Some("typo"),
        &json!({"lines": [], "sarNo": 3}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("INVALID_BODY")),
        "{body}"
    );
    let out = json!({"lines": [stock_line("SKU1", "A", "2.5")], "orgSarNo": 0});
    let (status, second) = post_json(
        &app,
        &key,
        "/v2/etims/stock/adjustment",
        Some("stk-2"),
        &out,
    )
    .await;
    assert_eq!(
        (status, &second["sarNo"], second["status"].as_str()),
        (200, &json!(2), Some("SYNCED")),
        "{second}"
    );
    // Looked up by its key, percent-encoded; another branch's key finds nothing.
    let (status, found) = get(&app, &key, "/v2/etims/stock/operations/stk%2F1%20x").await;
    assert_eq!(
        (status, &found["movementId"]),
        (200, &first["movementId"]),
        "{found}"
    );
    let (status, _) = get(&app, &app.keys[1], "/v2/etims/stock/operations/stk%2F1%20x").await;
    assert_eq!(status, 404);
    let (status, body) = get(&app, &key, "/v2/etims/stock/operations/none").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));

    // The remaining quantity follows a movement that named the item.
    let master = |original: &str, item: &str, qty: &str| json!({"originalIoKey": original, "itemCd": item, "rsdQty": qty});
    for (body, code) in [
        (master("missing", "SKU1", "7.50"), "UNKNOWN_OPERATION"),
        (master("stk-2", "SKU9", "7.50"), "ITEM_NOT_IN_OPERATION"),
        (master("stk-2", "SKU1", "7.505"), "INVALID_QUANTITY"),
        (master("stk-2", "SKU1", "-1"), "INVALID_QUANTITY"),
    ] {
        let (status, answer) =
            post_json(&app, &key, "/v2/etims/stock/master", Some(code), &body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (422, Some(code)),
            "{body} → {answer}"
        );
    }
    let (status, rsd) = post_json(
        &app,
        &key,
        "/v2/etims/stock/master",
        Some("rsd-1"),
        &master("stk-2", "SKU1", "7.50"),
    )
    .await;
    assert_eq!(
        (status, rsd["status"].as_str(), rsd["semantics"].as_str()),
        (200, Some("SYNCED"), Some("ABSOLUTE_RESIDUAL_QUANTITY")),
        "{rsd}"
    );
    let transport = rsd["transport"].as_array().unwrap();
    assert_eq!(transport.len(), 1, "{rsd}");
    assert_eq!(transport[0]["business_sha256"], rsd["payloadSha256"]);
    let state = sandbox_state(&app).await;
    assert_eq!(
        state["stock_master"][format!("{}/00/SKU1", TINS[0])]["value"]["rsdQty"].as_f64(),
        Some(7.5)
    );
    let (status, found) = get(&app, &key, "/v2/etims/stock/master/operations/rsd-1").await;
    assert_eq!(
        (status, &found["payloadSha256"]),
        (200, &rsd["payloadSha256"]),
        "{found}"
    );
    finish(app).await;
}

async fn items_customers_and_init(store: Store) {
    let app = start(store, Duration::from_secs(10)).await;
    let key = app.keys[0].clone();
    // The SDK's register_item body, bcd null sent explicitly.
    let item = json!({"sku": "WATER-500ML", "itemNm": "Water 500ml", "itemClsCd": "50202301", "taxTyCd": "B",
                      "unitPrice": "50.00", "qty": "1", "bcd": null, "pkgUnitCd": "NT", "qtyUnitCd": "U"});
    let (status, body) = post_json(&app, &key, "/v2/etims/items", None, &item).await;
    assert_eq!(
        (status, body["itemCd"].as_str(), &body["vscuRegistered"]),
        (200, Some("WATER-500ML"), &json!(true)),
        "{body}"
    );
    let registered =
        &sandbox_state(&app).await["items"][format!("{}/WATER-500ML", TINS[0])]["value"];
    assert_eq!(
        (
            registered["itemClsCd"].as_str(),
            registered["dftPrc"].as_f64()
        ),
        (Some("50202301"), Some(50.0)),
        "{registered}"
    );
    // A SKU longer than KRA's 20 characters gets the code a sale of it would use.
    let long = json!({"sku": "A-VERY-LONG-SKU-OVER-TWENTY", "itemNm": "Thing", "itemClsCd": "50202301", "taxTyCd": "A", "unitPrice": "1"});
    let (status, body) = post_json(&app, &key, "/v2/etims/items", None, &long).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["itemCd"].as_str().unwrap().starts_with("KE2NTU"),
        "{body}"
    );
    for (field, value, code) in [
        ("itemClsCd", json!("123"), "INVALID_ITEM_CLASS"),
        ("taxTyCd", json!("F"), "INVALID_TAX_BAND"),
        ("unitPrice", json!("1.234"), "INVALID_AMOUNT"),
        ("sku", json!(" "), "INVALID_SKU"),
        ("itemNm", json!(""), "INVALID_ITEM_NAME"),
    ] {
        let mut bad = item.clone();
        bad[field] = value;
        let (status, body) = post_json(&app, &key, "/v2/etims/items", None, &bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some(code)),
            "{field} → {body}"
        );
    }

    // Bulk import: valid rows register, invalid ones say why, 207 for the mix.
    let csv = "sku,itemNm,itemClsCd,taxTyCd,unitPrice\nBREAD,Bread,50181900,B,65.00\nMILK,Milk,50131700,C,60\nBAD,Bad class,12,B,1\n";
    let upload = |text: &'static str, part: &'static str| {
        let form = reqwest::multipart::Form::new().part(
            part,
            reqwest::multipart::Part::bytes(text.as_bytes())
                .file_name("dir/items.csv")
                .mime_str("text/csv")
                .unwrap(),
        );
        reqwest::Client::new()
            .post(format!("{}/v2/etims/items/bulk-import", app.url))
            .bearer_auth(&key)
            .multipart(form)
            .send()
    };
    let response = upload(csv, "file").await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (status, &body["failed"], &body["total"]),
        (207, &json!(1), &json!(3)),
        "{body}"
    );
    let rows = body["results"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["SYNCED", "SYNCED", "INVALID"],
        "{body}"
    );
    assert_eq!(rows[2]["code"], "INVALID_ITEM_CLASS");
    assert!(
        sandbox_state(&app).await["items"]
            .get(format!("{}/MILK", TINS[0]))
            .is_some()
    );
    for (text, part, code) in [
        (
            "sku,itemNm,taxTyCd,unitPrice\nA,B,B,1\n",
            "file",
            "MISSING_COLUMN",
        ),
        ("", "file", "EMPTY_FILE"),
        (
            "sku,itemNm,itemClsCd,taxTyCd,unitPrice\n",
            "file",
            "EMPTY_FILE",
        ),
        (
            "sku,itemNm,itemClsCd,taxTyCd,unitPrice\nA,B,50181900,B,1\n",
            "upload",
            "MISSING_FILE",
        ),
    ] {
        let response = upload(text, part).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{text:?} → {body}"
        );
    }

    // Customers.
    let (status, body) = post_json(
        &app,
        &key,
        "/v2/etims/customers",
        None,
        &json!({"pin": "P000111222Q", "name": "Acme Ltd"}),
    )
    .await;
    assert_eq!(
        (status, body["custNo"].as_str(), &body["registered"]),
        (200, Some("000111222"), &json!(true)),
        "{body}"
    );
    let saved =
        &sandbox_state(&app).await["customers"][format!("{}/00/000111222", TINS[0])]["value"];
    assert_eq!(saved["custNm"].as_str(), Some("Acme Ltd"), "{saved}");
    for (bad, code) in [
        (json!({"pin": "123", "name": "X"}), "INVALID_PIN"),
        (json!({"pin": "P000111222Q", "name": ""}), "INVALID_NAME"),
    ] {
        let (status, body) = post_json(&app, &key, "/v2/etims/customers", None, &bad).await;
        assert_eq!((status, body["code"].as_str()), (422, Some(code)), "{body}");
    }

    // Init: the checkpoint, 902 for a device asked for again, never the cmcKey.
    let (status, body) = post_json(&app, &key, "/v2/etims/init", None, &json!(null)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("READY")),
        "{body}"
    );
    let (status, body) = post_json(
        &app,
        &key,
        "/v2/etims/init",
        None,
        &json!({"tin": TINS[0], "bhfId": "00", "dvcSrlNo": "POS"}),
    )
    .await;
    assert_eq!(
        (status, body["resultCd"].as_str()),
        (200, Some("902")),
        "{body}"
    );
    let (status, body) = post_json(
        &app,
        &key,
        "/v2/etims/init",
        None,
        &json!({"tin": TINS[1], "bhfId": "00", "dvcSrlNo": "POS"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("BRANCH_MISMATCH")),
        "{body}"
    );
    let (status, body) = get(&app, &key, "/v2/etims/init-handshake").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("READY")),
        "{body}"
    );
    assert!(
        !body.to_string().to_lowercase().contains("cmckey"),
        "{body}"
    );
    finish(app).await;
}

async fn fault(app: &App, endpoint: &str, code: &str) {
    let response = reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", app.sandbox.url()))
        .json(&json!({"endpoint": endpoint, "count": 1, "fault": {"kind": "result_code", "code": code, "message": "refused by test"}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

async fn queue_fault(app: &App, endpoint: &str, fault: Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", app.sandbox.url()))
        .json(&json!({"endpoint": endpoint, "count": 1, "fault": fault}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

/// The strict sandbox takes only the next invcNo: a refused sale must give its number to
/// the sales queued behind it, or every one of them would be refused as a gap.
async fn a_refused_sale_gives_its_number_to_the_sales_behind_it(store: Store) {
    let app = start(store, Duration::from_millis(300)).await;
    let key = app.keys[0].clone();
    // The first sale's new item is registered slowly, so two more queue behind it; then the
    // control unit refuses the sale itself (910).
    queue_fault(&app, "saveItem", json!({"kind": "delay", "ms": 800})).await;
    queue_fault(
        &app,
        "saveTrnsSalesOsdc",
        json!({"kind": "result_code", "code": "910", "message": "refused by test"}),
    )
    .await;
    let (_, refused, _) = post(
        &app,
        Some(&key),
        Some("R-1"),
        &flat("R-1", "116.00", "16.00"),
    )
    .await;
    let (_, second, _) = post(
        &app,
        Some(&key),
        Some("R-2"),
        &flat("R-2", "232.00", "32.00"),
    )
    .await;
    let (_, third, _) = post(
        &app,
        Some(&key),
        Some("R-3"),
        &flat("R-3", "348.00", "48.00"),
    )
    .await;
    // (A 202 shows the number as it stands: it is final once the sale is signed.)
    assert_eq!(refused["invcNo"].as_str(), Some("1"), "{refused}");
    let mut settled = Vec::new();
    for sale in [&refused, &second, &third] {
        let id = sale["purchaseId"].as_i64().unwrap();
        let mut last = Value::Null;
        for _ in 0..300 {
            let (_, now) = get(&app, &key, &format!("/v2/etims/sales/{id}/status")).await;
            if now["status"] != "PENDING_SYNC" && now["status"] != "OUTCOME_UNKNOWN" {
                last = now;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        settled.push(last);
    }
    assert_eq!(settled[0]["status"], "FAILED", "{}", settled[0]);
    assert_eq!(
        settled[0]["invcNo"], "1",
        "shown under the number it was refused as"
    );
    for (sale, number) in [(&settled[1], "1"), (&settled[2], "2")] {
        assert_eq!(
            (sale["status"].as_str(), sale["invcNo"].as_str()),
            (Some("SIGNED"), Some(number)),
            "{sale}"
        );
    }
    // The control unit signed 1 and 2, with the second and third sales' amounts.
    let state = sandbox_state(&app).await;
    let signed =
        |n: u64| state["sales"][format!("{}/00/{n:020}", TINS[0])]["request"]["totAmt"].as_f64();
    assert_eq!(
        (signed(1), signed(2), signed(3)),
        (Some(232.0), Some(348.0), None)
    );
    // And the next sale takes 3.
    let (status, next, _) = post(
        &app,
        Some(&key),
        Some("R-4"),
        &flat("R-4", "116.00", "16.00"),
    )
    .await;
    assert_eq!(
        (status, next["status"].as_str(), next["invcNo"].as_str()),
        (200, Some("SIGNED"), Some("3")),
        "{next}"
    );
    finish(app).await;
}

async fn refusals_by_the_control_unit_and_malformed_uploads(store: Store) {
    let app = start(store, Duration::from_secs(10)).await;
    let key = app.keys[0].clone();
    // A request-class refusal (910) ends the operation REJECTED with KRA's code, shown as
    // such: an error for an item or a customer, a REJECTED result for a stock movement.
    fault(&app, "saveItem", "910").await;
    let item = json!({"sku": "NOPE", "itemNm": "Nope", "itemClsCd": "50202301", "taxTyCd": "B", "unitPrice": "1"});
    let (status, body) = post_json(&app, &key, "/v2/etims/items", None, &item).await;
    assert_eq!(
        (status, body["code"].as_str(), body["resultCd"].as_str()),
        (422, Some("CONTROL_UNIT_REJECTED"), Some("910")),
        "{body}"
    );
    fault(&app, "saveBhfCustomer", "910").await;
    let (status, body) = post_json(
        &app,
        &key,
        "/v2/etims/customers",
        None,
        &json!({"pin": "P000111222Q", "name": "Acme"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str(), body["resultCd"].as_str()),
        (422, Some("CONTROL_UNIT_REJECTED"), Some("910")),
        "{body}"
    );
    // The item is registered before the movement; the movement itself is refused.
    fault(&app, "insertStockIO", "910").await;
    let adjustment = json!({"lines": [stock_line("SKU7", "M", "1")]});
    let (status, body) = post_json(
        &app,
        &key,
        "/v2/etims/stock/adjustment",
        Some("refused"),
        &adjustment,
    )
    .await;
    assert_eq!(
        (
            status,
            body["status"].as_str(),
            body["resultCd"].as_str(),
            &body["kraAcknowledged"]
        ),
        (200, Some("REJECTED"), Some("910"), &json!(false)),
        "{body}"
    );
    // A refusal for now (a server error, 99x) is retried: the movement still syncs, once.
    fault(&app, "insertStockIO", "999").await;
    let (status, body) = post_json(
        &app,
        &key,
        "/v2/etims/stock/adjustment",
        Some("retried"),
        &adjustment,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str(), &body["sarNo"]),
        (200, Some("SYNCED"), &json!(2)),
        "{body}"
    );
    let state = sandbox_state(&app).await;
    assert!(
        state["stock_io"].get(format!("{}/00/1", TINS[0])).is_none(),
        "the refused movement is not kept"
    );
    assert!(state["stock_io"].get(format!("{}/00/2", TINS[0])).is_some());

    // An Idempotency-Key beyond 200 characters, and uploads that are not CSV or too long.
    let long_key = "k".repeat(201);
    let (status, body) = post_json(
        &app,
        &key,
        "/v2/etims/stock/adjustment",
        Some(&long_key),
        &adjustment,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("INVALID_IDEMPOTENCY_KEY")),
        "{body}"
    );
    let upload = |bytes: Vec<u8>| {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("items.csv"),
        );
        reqwest::Client::new()
            .post(format!("{}/v2/etims/items/bulk-import", app.url))
            .bearer_auth(&key)
            .multipart(form)
            .send()
    };
    let mut too_many = String::from("sku,itemNm,itemClsCd,taxTyCd,unitPrice\n");
    for row in 0..=5_000 {
        too_many.push_str(&format!("S{row},Item,50202301,B,1\n"));
    }
    for (bytes, code) in [
        (vec![0xff, 0xfe, 0x00], "INVALID_CSV"),
        (
            b"sku,itemNm,itemClsCd,taxTyCd,unitPrice\nA,B\n".to_vec(),
            "INVALID_CSV",
        ),
        (too_many.into_bytes(), "TOO_MANY_ROWS"),
    ] {
        let response = upload(bytes).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{body}");
    }
    let response = reqwest::Client::new()
        .post(format!("{}/v2/etims/items/bulk-import", app.url))
        .bearer_auth(&key)
        .header("content-type", "text/csv")
        .body("sku\nA\n")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("INVALID_MULTIPART")),
        "{body}"
    );
    // Nothing of the too-long file was queued.
    assert!(
        sandbox_state(&app).await["items"]
            .get(format!("{}/S0", TINS[0]))
            .is_none()
    );
    finish(app).await;
}

async fn an_operation_waits_out_an_outage(store: Store) {
    let app = start(store, Duration::from_millis(300)).await;
    let key = app.keys[0].clone();
    let addr = app.sandbox.addr.to_string();
    let App {
        url,
        store,
        keys,
        sandbox,
        pipeline,
        state_dir,
        vault,
        sealed_keys,
    } = app;
    sandbox.stop().await;
    let app = App {
        url,
        store,
        keys,
        sandbox: Sandbox::new(
            ControlUnit::new(Config::default(), None).unwrap(),
            GatewayAccess::default(),
        )
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap(),
        pipeline,
        state_dir,
        vault,
        sealed_keys,
    };
    let adjustment = json!({"lines": [stock_line("SKU1", "M", "1")]});
    let (status, body) = post_json(
        &app,
        &key,
        "/v2/etims/stock/adjustment",
        Some("out-1"),
        &adjustment,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str(), &body["sarNo"]),
        (202, Some("OUTCOME_UNKNOWN"), &json!(1)),
        "{body}"
    );
    // The control unit comes back on its address: the movement is sent, once.
    let unit = ControlUnit::new(
        Config::default(),
        Some(StateFile::open(&app.state_dir.join("cu.sqlite")).unwrap()),
    )
    .unwrap();
    let back = Sandbox::new(unit, GatewayAccess::default())
        .start(addr.parse().unwrap())
        .await
        .unwrap();
    let mut found = Value::Null;
    for _ in 0..300 {
        let (_, now) = get(&app, &key, "/v2/etims/stock/operations/out-1").await;
        if now["status"] == "SYNCED" {
            found = now;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(found["status"], "SYNCED", "the movement never synced");
    let state: Value = reqwest::get(format!("{}/_sandbox/state", back.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        state["stock_io"].get(format!("{}/00/1", TINS[0])).is_some(),
        "{}",
        state["stock_io"]
    );
    back.stop().await;
    finish(app).await;
}

/// The operator's routes: roles (403 both ways), tenants, keys issued, listed and
/// revoked, and the audit log naming the operator.
async fn operators_manage_keys_and_read_the_audit_log(store: Store) {
    let app = start(store, Duration::from_secs(5)).await;
    let (operator, operator_record) = app.store.create_operator_key("ops").await.unwrap();
    let branch_key = app.keys[0].clone();
    let client = reqwest::Client::new();
    let call =
        async |method: reqwest::Method, path: &str, key: Option<&str>, body: Option<Value>| {
            let mut request = client.request(method, format!("{}{path}", app.url));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        };
    use reqwest::Method;
    // Roles: a branch key on an admin route, an operator key on a branch route.
    let (status, body) = call(Method::GET, "/v2/admin/tenants", Some(&branch_key), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    let (status, body) = call(Method::GET, "/v2/etims/device", Some(&operator), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    let (status, _) = call(Method::GET, "/v2/admin/tenants", None, None).await;
    assert_eq!(status, 401);
    // Both kinds of header.
    let response = client
        .get(format!("{}/v2/admin/tenants", app.url))
        .header("X-API-Key", &operator)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    let (status, tenants) = call(Method::GET, "/v2/admin/tenants", Some(&operator), None).await;
    assert_eq!(status, 200);
    let tenants = tenants.as_array().unwrap().clone();
    assert_eq!(tenants.len(), TINS.len());
    let first = tenants.iter().find(|t| t["tin"] == TINS[0]).unwrap();
    let branch = &first["branches"][0];
    assert_eq!(
        (branch["bhfId"].as_str(), branch["status"].as_str()),
        (Some("00"), Some("READY"))
    );
    let device_id = branch["deviceId"].as_i64().unwrap();

    // Issue: shown once, works at once for that branch only.
    let path = format!("/v2/admin/tenants/{device_id}/api-keys");
    let (status, issued) = call(
        Method::POST,
        &path,
        Some(&operator),
        Some(json!({"clientName": "till 7", "role": "ROLE_SDK_CLIENT"})),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let new_key = issued["apiKey"].as_str().unwrap().to_owned();
    assert_eq!(
        (issued["tin"].as_str(), issued["bhfId"].as_str()),
        (Some(TINS[0]), Some("00"))
    );
    let (status, device) = call(Method::GET, "/v2/etims/device", Some(&new_key), None).await;
    assert_eq!((status, device["tin"].as_str()), (200, Some(TINS[0])));
    // Listed without the key.
    let (status, listed) = call(Method::GET, &path, Some(&operator), None).await;
    assert_eq!(status, 200);
    assert!(!listed.to_string().contains(&new_key));
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys[0]["keyId"], issued["keyId"]);
    assert_eq!(keys[0]["prefix"].as_str(), Some(&new_key[..12]));
    // Refusals.
    for (body, status, code) in [
        (
            json!({"clientName": "x", "role": "ROLE_ADMIN"}),
            422,
            "ROLE_NOT_ISSUABLE",
        ),
        (
            json!({"clientName": "x", "role": "ROLE_ROOT"}),
            422,
            "ROLE_NOT_ISSUABLE",
        ),
        (json!({"clientName": "  "}), 422, "INVALID_CLIENT_NAME"),
        (json!({"name": "no clientName"}), 400, "INVALID_BODY"),
    ] {
        let (got, answer) = call(Method::POST, &path, Some(&operator), Some(body.clone())).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    for unknown in [
        "/v2/admin/tenants/999999/api-keys",
        "/v2/admin/tenants/x/api-keys",
    ] {
        let (status, _) = call(Method::GET, unknown, Some(&operator), None).await;
        assert_eq!(status, 404, "{unknown}");
    }
    // Revoke: the key stops at once, also right after a request that found it live (this
    // server's key cache forgets it); a second revoke finds nothing.
    let (status, _) = call(Method::GET, "/v2/etims/device", Some(&new_key), None).await;
    assert_eq!(status, 200);
    let revoke = format!("/v2/admin/api-keys/{}", issued["keyId"]);
    let (status, revoked) = call(Method::DELETE, &revoke, Some(&operator), None).await;
    assert_eq!(status, 200);
    assert!(revoked["revokedAt"].is_string());
    let (status, _) = call(Method::GET, "/v2/etims/device", Some(&new_key), None).await;
    assert_eq!(status, 401);
    let (status, _) = call(Method::DELETE, &revoke, Some(&operator), None).await;
    assert_eq!(status, 404);

    // The audit log names the operator and holds no key.
    let (status, page) = call(
        Method::GET,
        "/v2/admin/audit?limit=1000",
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(!page.to_string().contains(&new_key) && !page.to_string().contains(&operator));
    let events = page["events"].as_array().unwrap();
    let actor = format!("operator:{}", operator_record.id);
    let actions: Vec<&str> = events
        .iter()
        .filter(|e| e["actor"] == actor.as_str())
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["api_key.issued", "api_key.revoked"]);
    assert_eq!(page["next"], events.last().unwrap()["id"]);
    let (status, rest) = call(
        Method::GET,
        &format!("/v2/admin/audit?after={}", page["next"]),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(
        (status, rest["events"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    for bad in [
        "/v2/admin/audit?limit=0",
        "/v2/admin/audit?limit=abc",
        "/v2/admin/audit?after=-1",
    ] {
        let (status, body) = call(Method::GET, bad, Some(&operator), None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("INVALID_QUERY")),
            "{bad}"
        );
    }
    finish(app).await;
}

/// OAuth client credentials: a token from `POST /oauth/token` acts for the client's
/// branch until it expires or the client is revoked; every failure answers RFC 6749's
/// error and counts toward the throttle.
async fn oauth_tokens_act_for_their_branch_until_they_die(store: Store) {
    let app = start(store, Duration::from_secs(5)).await;
    let (operator, _) = app.store.create_operator_key("ops").await.unwrap();
    let client = reqwest::Client::new();
    let (status, tenants) = {
        let response = client
            .get(format!("{}/v2/admin/tenants", app.url))
            .bearer_auth(&operator)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200);
    let device_id = tenants
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tin"] == TINS[1])
        .unwrap()["branches"][0]["deviceId"]
        .clone();
    let response = client
        .post(format!(
            "{}/v2/admin/tenants/{device_id}/oauth-clients",
            app.url
        ))
        .bearer_auth(&operator)
        .json(&json!({"clientName": "ERP"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let issued: Value = response.json().await.unwrap();
    let (client_id, secret) = (
        issued["clientId"].as_str().unwrap().to_owned(),
        issued["clientSecret"].as_str().unwrap().to_owned(),
    );
    let token_request = |id: &str, secret: &str, form: &str| {
        client
            .post(format!("{}/oauth/token", app.url))
            .basic_auth(id, Some(secret))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
    };
    // Refusals, RFC 6749 style.
    for (request, status, error) in [
        (
            token_request(&client_id, "ushs_wrong", "grant_type=client_credentials"),
            401,
            "invalid_client",
        ),
        (
            token_request("ushc_nobody", &secret, "grant_type=client_credentials"),
            401,
            "invalid_client",
        ),
        (
            client
                .post(format!("{}/oauth/token", app.url))
                .body("grant_type=client_credentials"),
            401,
            "invalid_client",
        ),
        (
            token_request(&client_id, &secret, "grant_type=password"),
            400,
            "unsupported_grant_type",
        ),
        (
            token_request(&client_id, &secret, ""),
            400,
            "invalid_request",
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        if status == 401 {
            assert!(response.headers().contains_key("www-authenticate"));
        }
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"].as_str(), Some(error), "{body}");
        assert!(body["error_description"].is_string());
    }
    // A token: for the client's branch only.
    let response = token_request(&client_id, &secret, "grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let token: Value = response.json().await.unwrap();
    assert_eq!(
        (token["token_type"].as_str(), token["expires_in"].as_u64()),
        (Some("Bearer"), Some(OAUTH_TOKEN_TTL.as_secs()))
    );
    let access = token["access_token"].as_str().unwrap().to_owned();
    let device = |token: String| {
        let client = client.clone();
        let url = format!("{}/v2/etims/device", app.url);
        async move {
            let response = client.get(url).bearer_auth(token).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, view) = device(access.clone()).await;
    assert_eq!((status, view["tin"].as_str()), (200, Some(TINS[1])));
    let (status, _) = device(access.clone()).await;
    assert_eq!(status, 200);
    let signed = client
        .post(format!("{}/v2/etims/sale", app.url))
        .bearer_auth(&access)
        .json(&json!({"supplierPin": TINS[1], "clientReference": "OAUTH-1", "amount": "116.00",
                      "invoiceDate": "2026-09-25", "itemDescription": "Consulting", "taxAmount": "16.00",
                      "pmtTyCd": "01", "taxBand": "B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status().as_u16(), 200);
    // Expired: dead.
    tokio::time::sleep(OAUTH_TOKEN_TTL + Duration::from_millis(200)).await;
    let (status, _) = device(access).await;
    assert_eq!(status, 401);
    // Revoked client: its fresh token dies with it, and it gets no more.
    let fresh: Value = token_request(&client_id, &secret, "grant_type=client_credentials")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fresh = fresh["access_token"].as_str().unwrap().to_owned();
    assert_eq!(device(fresh.clone()).await.0, 200);
    let response = client
        .delete(format!(
            "{}/v2/admin/oauth-clients/{}",
            app.url, issued["id"]
        ))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(device(fresh).await.0, 401);
    let response = token_request(&client_id, &secret, "grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    finish(app).await;
}

/// Hot rotation: a branch's data key (three times) and the master key (once) rotate
/// through the admin API while sales are being signed; every sale signs, the stored key
/// and the relays' copy move to the new versions, and each rotation is audited.
async fn keys_rotate_while_sales_are_signed(store: Store) {
    let app = start(store, Duration::from_secs(5)).await;
    let (operator, _) = app.store.create_operator_key("ops").await.unwrap();
    let client = reqwest::Client::new();
    let scope = app
        .store
        .authenticate(&app.keys[0], chrono::Utc::now())
        .await
        .unwrap()
        .unwrap()
        .scope;
    let other = app
        .store
        .authenticate(&app.keys[1], chrono::Utc::now())
        .await
        .unwrap()
        .unwrap()
        .scope;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seller = {
        let (url, key, stop) = (app.url.clone(), app.keys[0].clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 10 {
                n += 1;
                let reference = format!("ROT-{n}");
                let response = client
                    .post(format!("{url}/v2/etims/sale"))
                    .bearer_auth(&key)
                    .header("Idempotency-Key", &reference)
                    .json(&flat(&reference, "116.00", "16.00"))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                statuses.push((status, body["status"].as_str().unwrap_or("").to_owned()));
            }
            statuses
        })
    };
    let rotate = |path: String| {
        let (client, url, operator) = (client.clone(), app.url.clone(), operator.clone());
        async move {
            let response = client
                .post(format!("{url}{path}"))
                .bearer_auth(operator)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let data_key = format!("/v2/admin/tenants/{}/data-key/rotate", scope.branch.0);
    for expected in [(1, 2), (2, 3)] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (status, body) = rotate(data_key.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["fromVersion"].as_u64(), body["toVersion"].as_u64()),
            (Some(expected.0), Some(expected.1))
        );
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (status, master) = rotate("/v2/admin/master-key/rotate".into()).await;
    assert_eq!(status, 200, "{master}");
    assert_eq!(master["toVersion"], 2);
    assert_eq!(master["newVersion"], true);
    assert_eq!(master["fromVersions"], json!([1]));
    assert_eq!(master["rewrapped"], 2, "both branches");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (status, body) = rotate(data_key.clone()).await;
    assert_eq!(
        (status, body["masterKeyVersion"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = seller.await.unwrap();
    assert!(statuses.len() >= 10);
    assert!(
        statuses
            .iter()
            .all(|(status, sale)| *status == 200 && sale == "SIGNED"),
        "{statuses:?}"
    );

    // Stored and in the relays' hands: the new versions, opening to the same cmcKey.
    let device = app.store.device(scope).await.unwrap().unwrap();
    assert_eq!(
        (
            device.cmc_key.data_key.version,
            device.cmc_key.data_key.master_version
        ),
        (4, 2)
    );
    assert_eq!(
        app.sealed_keys.get(scope.branch),
        Some(device.cmc_key.clone())
    );
    let untouched = app.store.device(other).await.unwrap().unwrap();
    assert_eq!(
        (
            untouched.cmc_key.data_key.version,
            untouched.cmc_key.data_key.master_version
        ),
        (1, 2)
    );
    let binding = ushuru_vault::Binding {
        tenant: scope.tenant.0,
        branch: scope.branch.0,
    };
    assert_eq!(
        app.vault
            .open_cmc_key(binding, &device.cmc_key)
            .unwrap()
            .len(),
        32
    );
    // A sale after it all signs with the rotated key.
    let (status, body, _) = post(
        &app,
        Some(&app.keys[0]),
        Some("ROT-AFTER"),
        &flat("ROT-AFTER", "116.00", "16.00"),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("SIGNED")));

    // Audited, with versions only.
    let events = app.store.audit_events(0, 1000).await.unwrap();
    let rotations: Vec<(&str, &Value)> = events
        .iter()
        .filter(|e| e.action.ends_with(".rotated"))
        .map(|e| (e.action.as_str(), &e.detail))
        .collect();
    assert_eq!(rotations.len(), 4);
    assert_eq!(rotations[2].0, "master_key.rotated");
    assert_eq!(rotations[3].1["toVersion"], 4);
    // A branch without a device has no key to rotate.
    let bare = app.store.create_branch(scope.tenant, "07").await.unwrap();
    let (status, body) = rotate(format!("/v2/admin/tenants/{}/data-key/rotate", bare.id.0)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("DEVICE_NOT_INITIALISED"))
    );
    finish(app).await;
}

/// Tenant isolation through the API (issue 5): everything tenant A made, tried by a
/// branch client of tenant B with A's ids and keys, answers 404 (or nothing), and the
/// same Idempotency-Key in B is B's own.
async fn a_branch_client_cannot_reach_another_tenant(store: Store) {
    let app = start(store, Duration::from_secs(5)).await;
    let (a, b) = (app.keys[0].as_str(), app.keys[1].as_str());
    let (status, sale, _) = post(
        &app,
        Some(a),
        Some("ISO-1"),
        &flat("ISO-REF", "116.00", "16.00"),
    )
    .await;
    assert_eq!(status, 200, "{sale}");
    let id = sale["purchaseId"].as_i64().unwrap();
    let stock = json!({"lines": [stock_line("SKU1", "A", "1")], "orgSarNo": 0});
    let (status, _) = post_json(
        &app,
        a,
        "/v2/etims/stock/adjustment",
        Some("ISO-STK"),
        &stock,
    )
    .await;
    assert_eq!(status, 200);
    let residual = json!({"originalIoKey": "ISO-STK", "itemCd": "SKU1", "rsdQty": "1"});
    let (status, body) = post_json(
        &app,
        a,
        "/v2/etims/stock/master",
        Some("ISO-RSD"),
        &residual,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Every route that names a sale or an operation, with A's id, as B.
    for path in [
        format!("/v2/etims/sales/{id}/status"),
        format!("/v2/etims/sales/{id}/original"),
        "/v2/etims/stock/operations/ISO-STK".to_owned(),
        "/v2/etims/stock/master/operations/ISO-RSD".to_owned(),
        "/v2/etims/sales/search?clientReference=ISO-REF".to_owned(),
    ] {
        let (status, body) = get(&app, b, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.to_string().contains("ISO-REF"), "{path}: {body}");
        // A sees its own.
        assert_eq!(get(&app, a, &path).await.0, 200, "{path}");
    }
    let (status, body) = post_json(
        &app,
        b,
        &format!("/v2/etims/sale/{id}/credit-note"),
        Some("ISO-CN"),
        &json!({}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    // Nor can B build on A's stock movement.
    let (status, body) = post_json(
        &app,
        b,
        "/v2/etims/stock/master",
        Some("ISO-RSD-B"),
        &residual,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("UNKNOWN_OPERATION")),
        "{body}"
    );
    // The same Idempotency-Key and body in tenant B: B's own sale, not A's replayed.
    let mut b_sale = flat("ISO-REF", "116.00", "16.00");
    b_sale["supplierPin"] = json!(TINS[1]);
    let (status, own, _) = post(&app, Some(b), Some("ISO-1"), &b_sale).await;
    assert_eq!(status, 200, "{own}");
    assert_ne!(own["purchaseId"], sale["purchaseId"]);
    assert_ne!(own["sdcId"], sale["sdcId"]);
    // B's views hold none of A's.
    for path in ["/v2/etims/device", "/v2/etims/device/monitoring"] {
        let (status, body) = get(&app, b, path).await;
        assert_eq!(status, 200);
        assert!(
            !body.to_string().contains(sale["sdcId"].as_str().unwrap()),
            "{path}: {body}"
        );
    }
    finish(app).await;
}

/// A key of a branch this server does not sign for (added after it started, its device not
/// initialised): the branch routes answer 503 BRANCH_NOT_SERVED, not a 500.
async fn a_branch_without_a_device_is_not_served(store: Store) {
    let app = start(store, Duration::from_secs(5)).await;
    let tenant = app
        .store
        .tenant_by_tin(TINS[0])
        .await
        .unwrap()
        .expect("the first tenant");
    let added = app.store.create_branch(tenant.id, "07").await.unwrap();
    let (key, _) = app
        .store
        .create_api_key(added.scope(), "till of a new branch")
        .await
        .unwrap();
    let (status, body) = get(&app, &key, "/v2/etims/device").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("BRANCH_NOT_SERVED")),
        "{body}"
    );
    let (status, body, _) = post(
        &app,
        Some(&key),
        Some("NO-DEVICE"),
        &flat("NO-DEVICE", "116.00", "16.00"),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("BRANCH_NOT_SERVED")),
        "{body}"
    );
    finish(app).await;
}

/// A GET from a chosen loopback address (all of 127.0.0.0/8 reaches the server).
async fn get_from(app: &App, from: [u8; 4], key: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap()
        .get(format!("{}/v2/etims/device", app.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// Repeated authentication failures are throttled per client address and per key
/// prefix: 429 with `Retry-After`, even for a valid key, until the window frees.
async fn repeated_authentication_failures_are_throttled(store: Store) {
    let app = start(store, Duration::from_secs(2)).await;
    let valid = app.keys[0].clone();
    // Many good requests at once from one address (a busy POS server, every client behind
    // a proxy) are never mistaken for failures.
    let burst: Vec<_> = (0..5 * AUTH_FAILURE_LIMIT)
        .map(|_| {
            let (url, key) = (format!("{}/v2/etims/device", app.url), valid.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .local_address(std::net::IpAddr::from([127, 0, 0, 5]))
                    .build()
                    .unwrap();
                client
                    .get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    // One address guessing many keys.
    for n in 0..AUTH_FAILURE_LIMIT {
        let response = get_from(&app, [127, 0, 0, 2], &format!("ush_{n:04}guess_xyz")).await;
        assert_eq!(response.status().as_u16(), 401, "failure {n}");
    }
    let refused = get_from(&app, [127, 0, 0, 2], &valid).await;
    assert_eq!(
        refused.status().as_u16(),
        429,
        "even a valid key, from there"
    );
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "AUTH_THROTTLED", "{body}");
    assert_eq!(body["retryAfterSeconds"], json!(retry_after));
    // Other addresses are not affected, and a success is not counted.
    for _ in 0..(AUTH_FAILURE_LIMIT + 2) {
        assert_eq!(
            get_from(&app, [127, 0, 0, 3], &valid)
                .await
                .status()
                .as_u16(),
            200
        );
    }
    // Many addresses guessing at one key prefix: the prefix is throttled for everyone.
    let prefix = "ush_0badc0de";
    for n in 0..AUTH_FAILURE_LIMIT {
        let from = [127, 0, 1, u8::try_from(n).unwrap() + 1];
        let response = get_from(&app, from, &format!("{prefix}{n:08}")).await;
        assert_eq!(response.status().as_u16(), 401);
    }
    let response = get_from(&app, [127, 0, 2, 1], &format!("{prefix}ffffffff")).await;
    assert_eq!(
        response.status().as_u16(),
        429,
        "a fresh address, the same prefix"
    );
    // That address with another key is served.
    assert_eq!(
        get_from(&app, [127, 0, 2, 1], &valid)
            .await
            .status()
            .as_u16(),
        200
    );
    finish(app).await;
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::sqlite().await).await; })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::postgres().await).await; })*
        }
    };
}

on_both!(
    a_flat_sale_is_signed_and_replayed,
    an_itemised_mixed_sale_is_signed,
    bad_requests_are_refused_and_use_no_number,
    an_outage_answers_202_then_the_sale_signs,
    a_second_request_while_the_first_runs_gets_425,
    the_journal_device_and_monitoring_views,
    sales_are_found_by_client_reference,
    credit_notes_full_partial_and_refused,
    stock_moves_are_numbered_priced_and_sent_in_order,
    items_customers_and_init,
    an_operation_waits_out_an_outage,
    refusals_by_the_control_unit_and_malformed_uploads,
    a_refused_sale_gives_its_number_to_the_sales_behind_it,
    repeated_authentication_failures_are_throttled,
    operators_manage_keys_and_read_the_audit_log,
    oauth_tokens_act_for_their_branch_until_they_die,
    keys_rotate_while_sales_are_signed,
    a_branch_client_cannot_reach_another_tenant,
    a_branch_without_a_device_is_not_served,
);
