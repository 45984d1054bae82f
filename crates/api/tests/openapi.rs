//! The OpenAPI document and the /docs page over real HTTP: the document lists exactly the
//! routes served, every API operation needs a key, a real validator accepts the document,
//! and real answers of the handlers match the schemas it gives them.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

mod common;

use common::*;

/// Every route the router serves, as `METHOD path`. Written out so that an endpoint dropped
/// from the router (and so from the document) fails here; a new one is added here too.
const EXPECTED: [&str; 31] = [
    "POST /v2/etims/sale",
    "GET /v2/etims/sales/{id}/status",
    "POST /v2/etims/sale/{id}/credit-note",
    "GET /v2/etims/sales/search",
    "GET /v2/etims/sales/{id}/original",
    "GET /v2/etims/device",
    "GET /v2/etims/device/monitoring",
    "POST /v2/etims/stock/adjustment",
    "GET /v2/etims/stock/operations/{key}",
    "POST /v2/etims/stock/master",
    "GET /v2/etims/stock/master/operations/{key}",
    "POST /v2/etims/items",
    "POST /v2/etims/items/bulk-import",
    "POST /v2/etims/customers",
    "POST /v2/etims/init",
    "GET /v2/etims/init-handshake",
    "GET /v2/admin/tenants",
    "POST /v2/admin/tenants",
    "POST /v2/admin/tenants/{deviceId}/api-keys",
    "GET /v2/admin/tenants/{deviceId}/api-keys",
    "DELETE /v2/admin/api-keys/{keyId}",
    "GET /v2/admin/audit",
    "POST /v2/admin/tenants/{deviceId}/oauth-clients",
    "DELETE /v2/admin/oauth-clients/{id}",
    "POST /oauth/token",
    "POST /v2/admin/tenants/{deviceId}/data-key/rotate",
    "POST /v2/admin/master-key/rotate",
    "GET /v2/admin/operator-keys",
    "DELETE /v2/admin/operator-keys/{keyId}",
    "GET /openapi.json",
    "GET /docs",
];

/// The routes open to callers without a key.
const OPEN: [&str; 3] = ["GET /openapi.json", "GET /docs", "POST /oauth/token"];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every operation of a document: `METHOD path` and the operation.
fn operations(document: &Value) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((
                    format!("{} {path}", method.to_uppercase()),
                    operation.clone(),
                ));
            }
        }
    }
    found
}

async fn fetch_document(app: &App) -> Value {
    let response = reqwest::get(format!("{}/openapi.json", app.url))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    response.json().await.unwrap()
}

/// The Python with openapi-spec-validator: scripts/test provides it.
fn python() -> String {
    std::env::var("USHURU_TEST_PYTHON").unwrap_or_else(|_| "/work/main/.venv/bin/python".into())
}

/// Runs a Python script with `input` as a file named by its first argument; its output on
/// failure is the test's report.
fn run_python(script: &str, input: &Value) {
    let file = std::env::temp_dir().join(format!("{}.json", unique()));
    std::fs::write(&file, input.to_string()).unwrap();
    let python = python();
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} ({e}): run ./scripts/test, or set USHURU_TEST_PYTHON to a Python with openapi-spec-validator")
        });
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_route_and_each_needs_a_key() {
    let app = start(sqlite().await, Duration::from_secs(10)).await;
    let document = fetch_document(&app).await;
    let version = document["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "openapi: {version}");

    // The served document is the one the code generates, and it lists exactly the routes.
    let served: BTreeSet<String> = operations(&document).into_iter().map(|(o, _)| o).collect();
    let generated = serde_json::to_value(ushuru_api::openapi()).unwrap();
    let generated: BTreeSet<String> = operations(&generated).into_iter().map(|(o, _)| o).collect();
    let expected: BTreeSet<String> = EXPECTED.iter().map(|s| s.to_string()).collect();
    assert_eq!(served, expected);
    assert_eq!(generated, expected);

    let mut probes: u8 = 0;
    for (route, operation) in operations(&document) {
        let open = OPEN.contains(&route.as_str());
        let security = operation["security"].as_array();
        if open {
            assert!(security.is_none(), "{route} needs no key: {operation}");
        } else {
            let schemes: BTreeSet<&str> = security
                .unwrap_or_else(|| panic!("{route} has no security requirement"))
                .iter()
                .flat_map(|requirement| requirement.as_object().unwrap().keys())
                .map(String::as_str)
                .collect();
            assert_eq!(schemes, BTreeSet::from(["bearer", "apiKey"]), "{route}");
        }
        assert!(
            operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{route}"
        );
        assert!(!operation["tags"].as_array().unwrap().is_empty(), "{route}");

        // The router serves the route: without a key a handler answers 401 (the fallback
        // would answer 404, a wrong method 405); the open routes answer 200.
        let (method, path) = route.split_once(' ').unwrap();
        let path = ["{id}", "{deviceId}", "{keyId}"]
            .iter()
            .fold(path.to_owned(), |path, name| path.replace(name, "1"));
        let url = format!("{}{}", app.url, path);
        // Each from an address of its own: one failure per address stays under the
        // authentication throttle, which this test is not about.
        probes += 1;
        let from = std::net::IpAddr::from([127, 0, 9, probes]);
        let response = reqwest::Client::builder()
            .local_address(from)
            .build()
            .unwrap()
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if route == "POST /oauth/token" {
            // Open, but it authenticates its client itself.
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                (status, body["error"].as_str()),
                (401, Some("invalid_client")),
                "{route}"
            );
        } else if open {
            assert_eq!(status, 200, "{route}");
        } else {
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                (status, body["code"].as_str()),
                (401, Some("UNAUTHENTICATED")),
                "{route}"
            );
            assert!(
                operation["responses"]["401"].is_object(),
                "{route} documents 401"
            );
            assert!(
                operation["responses"]["429"]["headers"]["Retry-After"].is_object(),
                "{route} documents 429 with Retry-After"
            );
        }
    }
    // And a route outside the document is not served.
    let response = reqwest::Client::new()
        .get(format!("{}/v2/etims/nothing", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(
        (
            schemes["bearer"]["type"].as_str(),
            schemes["bearer"]["scheme"].as_str()
        ),
        (Some("http"), Some("bearer"))
    );
    assert_eq!(
        (
            schemes["apiKey"]["in"].as_str(),
            schemes["apiKey"]["name"].as_str()
        ),
        (Some("header"), Some("X-API-Key"))
    );
    let error = &document["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], json!(["code", "message"]));
    finish(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_is_self_contained_html_naming_every_route() {
    let app = start(sqlite().await, Duration::from_secs(10)).await;
    let document = fetch_document(&app).await;
    let response = reqwest::get(format!("{}/docs", app.url)).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = response.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>"));
    for (route, operation) in operations(&document) {
        let (method, path) = route.split_once(' ').unwrap();
        assert!(page.contains(&format!("<code>{path}</code>")), "{route}");
        assert!(page.contains(&format!(">{method}</span>")), "{route}");
        let summary = operation["summary"]
            .as_str()
            .unwrap()
            .replace('\'', "&#39;");
        assert!(page.contains(&summary), "{route}: {summary}");
        for status in operation["responses"].as_object().unwrap().keys() {
            assert!(
                page.contains(&format!("<code>{status}</code>")),
                "{route} {status}"
            );
        }
    }
    for field in [
        "supplierPin",
        "items[].itemClsCd",
        "returnLines[].originalItemSeq",
        "Idempotency-Key",
        "X-API-Key",
    ] {
        assert!(page.contains(field), "{field}");
    }
    // Nothing to fetch from elsewhere: the page reads offline.
    for outside in ["<script", "<link", "src=", "@import", "http://", "https://"] {
        assert!(!page.contains(outside), "the page contains {outside}");
    }
    finish(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_passes_openapi_spec_validator() {
    let document = serde_json::to_value(ushuru_api::openapi()).unwrap();
    run_python(
        "import json, sys\n\
         from openapi_spec_validator import OpenAPIV31SpecValidator\n\
         document = json.load(open(sys.argv[1]))\n\
         errors = list(OpenAPIV31SpecValidator(document).iter_errors())\n\
         for error in errors: print(error)\n\
         sys.exit(1 if errors else 0)\n",
        &document,
    );
}

/// One real answer: the operation and status it came from, and its body.
struct Sample {
    route: &'static str,
    status: u16,
    body: Value,
}

async fn call(
    base: &str,
    sample: &mut Vec<Sample>,
    route: &'static str,
    url_path: &str,
    key: Option<&str>,
    idempotency: Option<&str>,
    body: Option<&Value>,
) -> Value {
    let (method, _) = route.split_once(' ').unwrap();
    let mut request =
        reqwest::Client::new().request(method.parse().unwrap(), format!("{base}{url_path}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(idempotency) = idempotency {
        request = request.header("Idempotency-Key", idempotency);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    sample.push(Sample {
        route,
        status,
        body: body.clone(),
    });
    body
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

/// Real answers of every operation, good and bad, checked against the document by the
/// OpenAPI 3.1 schema validator: the status must be documented for the operation, the body
/// must match its schema, and the body may carry no field the schema does not name (so a
/// field added to a handler but not to schema.rs fails here). The request bodies sent are
/// checked against the request schemas too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_match_the_documented_schemas() {
    let app = start(sqlite().await, Duration::from_secs(2)).await;
    let raw_key = app.keys[0].clone();
    let key = Some(raw_key.as_str());
    let mut samples = Vec::new();
    let s = &mut samples;
    const SALE: &str = "POST /v2/etims/sale";
    const STATUS: &str = "GET /v2/etims/sales/{id}/status";
    const CREDIT: &str = "POST /v2/etims/sale/{id}/credit-note";
    const SEARCH: &str = "GET /v2/etims/sales/search";
    const ORIGINAL: &str = "GET /v2/etims/sales/{id}/original";
    const DEVICE: &str = "GET /v2/etims/device";
    const MONITORING: &str = "GET /v2/etims/device/monitoring";

    let flat_sale = flat("INV-1", "5800.00", "800.00");
    let sale = call(
        &app.url,
        s,
        SALE,
        "/v2/etims/sale",
        key,
        Some("K-1"),
        Some(&flat_sale),
    )
    .await;
    assert_eq!(sale["status"], "SIGNED", "{sale}");
    let id = sale["purchaseId"].as_i64().unwrap();
    let mixed_sale = itemised("INV-2");
    let mixed = call(
        &app.url,
        s,
        SALE,
        "/v2/etims/sale",
        key,
        Some("K-2"),
        Some(&mixed_sale),
    )
    .await;
    let mixed_id = mixed["purchaseId"].as_i64().unwrap();
    call(
        &app.url,
        s,
        SALE,
        "/v2/etims/sale",
        key,
        Some("K-1"),
        Some(&flat("INV-1", "116.00", "16.00")),
    )
    .await;
    call(
        &app.url,
        s,
        SALE,
        "/v2/etims/sale",
        key,
        None,
        Some(&flat("INV-3", "5800.00", "1.00")),
    )
    .await;
    call(
        &app.url,
        s,
        SALE,
        "/v2/etims/sale",
        key,
        None,
        Some(&json!({"amount": "1"})),
    )
    .await;
    call(
        &app.url,
        s,
        SALE,
        "/v2/etims/sale",
        None,
        None,
        Some(&flat_sale),
    )
    .await;

    call(
        &app.url,
        s,
        STATUS,
        &format!("/v2/etims/sales/{id}/status"),
        key,
        None,
        None,
    )
    .await;
    call(
        &app.url,
        s,
        STATUS,
        "/v2/etims/sales/999999/status",
        key,
        None,
        None,
    )
    .await;
    call(
        &app.url,
        s,
        SEARCH,
        "/v2/etims/sales/search?clientReference=INV-2",
        key,
        None,
        None,
    )
    .await;
    call(
        &app.url,
        s,
        SEARCH,
        "/v2/etims/sales/search?clientReference=NONE",
        key,
        None,
        None,
    )
    .await;
    call(
        &app.url,
        s,
        SEARCH,
        "/v2/etims/sales/search?requestId=R",
        key,
        None,
        None,
    )
    .await;
    call(
        &app.url,
        s,
        SEARCH,
        "/v2/etims/sales/search",
        key,
        None,
        None,
    )
    .await;
    call(
        &app.url,
        s,
        ORIGINAL,
        &format!("/v2/etims/sales/{mixed_id}/original"),
        key,
        None,
        None,
    )
    .await;
    call(
        &app.url,
        s,
        ORIGINAL,
        "/v2/etims/sales/999999/original",
        key,
        None,
        None,
    )
    .await;
    call(&app.url, s, DEVICE, "/v2/etims/device", key, None, None).await;
    call(
        &app.url,
        s,
        MONITORING,
        "/v2/etims/device/monitoring",
        key,
        None,
        None,
    )
    .await;

    let path = format!("/v2/etims/sale/{mixed_id}/credit-note");
    let one_soda = json!({"returnLines": [{"originalItemSeq": 2, "qty": "1"}], "reasonCode": "06",
                          "clientReference": "RET-1", "reason": "returned"});
    let note = call(
        &app.url,
        s,
        CREDIT,
        &path,
        key,
        Some("C-1"),
        Some(&one_soda),
    )
    .await;
    assert_eq!(note["type"], "CREDIT_NOTE", "{note}");
    let too_many = json!({"returnLines": [{"originalItemSeq": 2, "qty": "5"}]});
    let exceeds = call(&app.url, s, CREDIT, &path, key, None, Some(&too_many)).await;
    assert_eq!(exceeds["code"], "CREDIT_NOTE_EXCEEDS_ORIGINAL");
    call(
        &app.url,
        s,
        CREDIT,
        &path,
        key,
        None,
        Some(&json!({"returnLines": [], "items": []})),
    )
    .await;
    let legacy = json!({"items": [{"sku": "FUEL"}], "clientReference": "RET-2"});
    call(&app.url, s, CREDIT, &path, key, None, Some(&legacy)).await;
    call(&app.url, s, CREDIT, &path, key, Some("C-3"), None).await;
    let exists = call(&app.url, s, CREDIT, &path, key, None, None).await;
    assert_eq!(exists["code"], "CREDIT_NOTE_EXISTS", "{exists}");
    call(
        &app.url,
        s,
        CREDIT,
        "/v2/etims/sale/999999/credit-note",
        key,
        None,
        None,
    )
    .await;

    // Stock, items, customers and init, good and bad.
    const ADJUST: &str = "POST /v2/etims/stock/adjustment";
    const MOVEMENT: &str = "GET /v2/etims/stock/operations/{key}";
    const MASTER: &str = "POST /v2/etims/stock/master";
    const MASTER_OP: &str = "GET /v2/etims/stock/master/operations/{key}";
    const ITEMS: &str = "POST /v2/etims/items";
    const BULK: &str = "POST /v2/etims/items/bulk-import";
    const CUSTOMERS: &str = "POST /v2/etims/customers";
    const INIT: &str = "POST /v2/etims/init";
    const HANDSHAKE: &str = "GET /v2/etims/init-handshake";
    let adjustment = json!({"lines": [{"itemCd": "SKU1", "itemNm": "Laptop", "ioType": "M", "pkgUnitCd": "NT", "pkgQty": "1",
        "qtyUnitCd": "U", "qty": "10", "prc": "5000", "totDcAmt": "0", "taxTyCd": "B"}], "remark": "Stock in", "orgSarNo": 0});
    let moved = call(
        &app.url,
        s,
        ADJUST,
        "/v2/etims/stock/adjustment",
        key,
        Some("stk-1"),
        Some(&adjustment),
    )
    .await;
    assert_eq!(moved["status"], "SYNCED", "{moved}");
    call(
        &app.url,
        s,
        ADJUST,
        "/v2/etims/stock/adjustment",
        key,
        None,
        Some(&adjustment),
    )
    .await;
    call(
        &app.url,
        s,
        ADJUST,
        "/v2/etims/stock/adjustment",
        key,
        Some("stk-2"),
        Some(&json!({"lines": []})),
    )
    .await;
    call(
        &app.url,
        s,
        MOVEMENT,
        "/v2/etims/stock/operations/stk-1",
        key,
        None,
        None,
    )
    .await;
    call(
        &app.url,
        s,
        MOVEMENT,
        "/v2/etims/stock/operations/none",
        key,
        None,
        None,
    )
    .await;
    let master = json!({"originalIoKey": "stk-1", "itemCd": "SKU1", "rsdQty": "10"});
    call(
        &app.url,
        s,
        MASTER,
        "/v2/etims/stock/master",
        key,
        Some("rsd-1"),
        Some(&master),
    )
    .await;
    call(
        &app.url,
        s,
        MASTER,
        "/v2/etims/stock/master",
        key,
        Some("rsd-2"),
        Some(&json!({"originalIoKey": "x", "itemCd": "SKU1", "rsdQty": "1"})),
    )
    .await;
    call(
        &app.url,
        s,
        MASTER_OP,
        "/v2/etims/stock/master/operations/rsd-1",
        key,
        None,
        None,
    )
    .await;
    call(
        &app.url,
        s,
        MASTER_OP,
        "/v2/etims/stock/master/operations/none",
        key,
        None,
        None,
    )
    .await;
    let item = json!({"sku": "WATER", "itemNm": "Water", "itemClsCd": "50202301", "taxTyCd": "B", "unitPrice": "50.00", "qty": "1", "bcd": null});
    call(
        &app.url,
        s,
        ITEMS,
        "/v2/etims/items",
        key,
        None,
        Some(&item),
    )
    .await;
    call(
        &app.url,
        s,
        ITEMS,
        "/v2/etims/items",
        key,
        None,
        Some(
            &json!({"sku": "W", "itemNm": "W", "itemClsCd": "1", "taxTyCd": "B", "unitPrice": "1"}),
        ),
    )
    .await;
    for (text, part) in [
        (
            "sku,itemNm,itemClsCd,taxTyCd,unitPrice\nA,A,50202301,B,1\nB,B,1,B,1\n",
            "file",
        ),
        (
            "sku,itemNm,itemClsCd,taxTyCd,unitPrice\nA,A,50202301,B,1\n",
            "file",
        ),
        ("sku\nA\n", "file"),
    ] {
        let form = reqwest::multipart::Form::new().part(
            part,
            reqwest::multipart::Part::bytes(text.as_bytes()).file_name("items.csv"),
        );
        let response = reqwest::Client::new()
            .post(format!("{}/v2/etims/items/bulk-import", app.url))
            .bearer_auth(&raw_key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        s.push(Sample {
            route: BULK,
            status,
            body: response.json().await.unwrap(),
        });
    }
    let customer = json!({"pin": "P000111222Q", "name": "Acme Ltd"});
    call(
        &app.url,
        s,
        CUSTOMERS,
        "/v2/etims/customers",
        key,
        None,
        Some(&customer),
    )
    .await;
    call(
        &app.url,
        s,
        CUSTOMERS,
        "/v2/etims/customers",
        key,
        None,
        Some(&json!({"pin": "x", "name": "y"})),
    )
    .await;
    call(&app.url, s, INIT, "/v2/etims/init", key, None, None).await;
    let device_init = json!({"tin": TINS[0], "bhfId": "00", "dvcSrlNo": "POS"});
    call(
        &app.url,
        s,
        INIT,
        "/v2/etims/init",
        key,
        None,
        Some(&device_init),
    )
    .await;
    call(
        &app.url,
        s,
        INIT,
        "/v2/etims/init",
        key,
        None,
        Some(&json!({"tin": "P000000009Z", "bhfId": "00", "dvcSrlNo": "POS"})),
    )
    .await;
    call(
        &app.url,
        s,
        HANDSHAKE,
        "/v2/etims/init-handshake",
        key,
        None,
        None,
    )
    .await;

    // The control unit goes away: a sale is answered 202 with its receipt fields null.
    let App {
        url,
        sandbox,
        pipeline,
        state_dir,
        ..
    } = app;
    sandbox.stop().await;
    let pending = call(
        &url,
        s,
        SALE,
        "/v2/etims/sale",
        key,
        None,
        Some(&flat("INV-4", "116.00", "16.00")),
    )
    .await;
    assert_eq!(pending["status"], "PENDING_SYNC", "{pending}");
    let waiting = call(
        &url,
        s,
        ADJUST,
        "/v2/etims/stock/adjustment",
        key,
        Some("stk-3"),
        Some(&adjustment),
    )
    .await;
    assert_eq!(waiting["status"], "OUTCOME_UNKNOWN", "{waiting}");

    let statuses: BTreeSet<(&str, u16)> = samples.iter().map(|s| (s.route, s.status)).collect();
    for wanted in [
        (SALE, 200),
        (SALE, 202),
        (SALE, 400),
        (SALE, 401),
        (SALE, 422),
        (CREDIT, 200),
        (CREDIT, 400),
        (CREDIT, 404),
        (CREDIT, 409),
        (CREDIT, 422),
        (SEARCH, 200),
        (SEARCH, 400),
        (SEARCH, 404),
        (STATUS, 404),
        (ORIGINAL, 200),
        (DEVICE, 200),
        (MONITORING, 200),
        (ADJUST, 200),
        (ADJUST, 202),
        (ADJUST, 400),
        (ADJUST, 422),
        (MOVEMENT, 200),
        (MOVEMENT, 404),
        (MASTER, 200),
        (MASTER, 422),
        (MASTER_OP, 200),
        (MASTER_OP, 404),
        (ITEMS, 200),
        (ITEMS, 422),
        (BULK, 200),
        (BULK, 207),
        (BULK, 400),
        (CUSTOMERS, 200),
        (CUSTOMERS, 422),
        (INIT, 200),
        (INIT, 422),
        (HANDSHAKE, 200),
    ] {
        assert!(
            statuses.contains(&wanted),
            "no sample of {wanted:?}: {statuses:?}"
        );
    }

    let document = serde_json::to_value(ushuru_api::openapi()).unwrap();
    let answers: Vec<Value> = samples
        .iter()
        .map(|s| json!({"route": s.route, "status": s.status.to_string(), "body": s.body}))
        .collect();
    let requests = json!([
        [SALE, flat_sale],
        [SALE, mixed_sale],
        [CREDIT, one_soda],
        [CREDIT, legacy],
        [ADJUST, adjustment],
        [MASTER, master],
        [ITEMS, item],
        [CUSTOMERS, customer],
        [INIT, device_init]
    ]);
    run_python(
        r#"
import json, sys
from openapi_schema_validator import OAS31Validator
given = json.load(open(sys.argv[1]))
document = given["document"]
failures = []

def check(what, schema, value):
    # The schema's $refs point into the document's components: give it them. Fields the
    # schema does not name are refused at the top level (unevaluatedProperties sees
    # through $ref and allOf).
    wrapper = {"allOf": [schema], "unevaluatedProperties": False,
               "components": document["components"]}
    for error in OAS31Validator(wrapper).iter_errors(value):
        failures.append(f"{what}: {error.message} at {list(error.absolute_path)}")

for answer in given["answers"]:
    method, path = answer["route"].split(" ", 1)
    operation = document["paths"][path][method.lower()]
    response = operation["responses"].get(answer["status"])
    if response is None:
        failures.append(f"{answer['route']}: status {answer['status']} is not documented")
        continue
    schema = response["content"]["application/json"]["schema"]
    check(f"{answer['route']} {answer['status']}", schema, answer["body"])

for route, body in given["requests"]:
    method, path = route.split(" ", 1)
    schema = document["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
    check(f"{route} request", schema, body)

print("\n".join(failures))
sys.exit(1 if failures else 0)
"#,
        &json!({"document": document, "answers": answers, "requests": requests}),
    );
    let _ = std::fs::remove_dir_all(&state_dir);
    drop(pipeline);
}
