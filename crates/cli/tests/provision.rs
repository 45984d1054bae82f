//! `POST /v2/admin/tenants` against `ushuru serve` as a process, on SQLite and PostgreSQL:
//! a branch provisioned while serving (on the built-in sandbox, and on a VSCU over HTTP)
//! signs at once with a key issued for it, and again after a restart; every bad input has
//! its 4xx code; a branch key gets 403, a duplicate 409; a control unit that does not issue
//! a key leaves nothing behind; and the taxid-etims SDK's `provision_tenant` does the same.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::{Running, free_port, terminate};

const KEY: &str = "ush_test_key_fixed_by_the_operator_0001";
const OPERATOR_KEY: &str = "ushop_test_operator_key_fixed_0001";

async fn start(data_dir: &Path, port: u16, database_url: Option<&str>) -> (Running, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ushuru"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .env("USHURU_BOOTSTRAP_API_KEY", KEY)
        .env("USHURU_OPERATOR_KEY", OPERATOR_KEY)
        .env_remove("USHURU_CONTROL_UNIT")
        .env_remove("USHURU_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let running = Running(command.spawn().unwrap());
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..300 {
        if reqwest::get(format!("{url}/openapi.json")).await.is_ok() {
            return (running, url);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ushuru serve did not start on port {port}");
}

/// A `ushuru sandbox` over HTTP: a VSCU of its own for the branches that name it.
struct Unit {
    _running: Running,
    url: String,
}

async fn start_unit(dir: &Path) -> Unit {
    let port = free_port();
    let running = Running(
        Command::new(env!("CARGO_BIN_EXE_ushuru"))
            .args(["sandbox", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--state", dir.join("unit.sqlite").to_str().unwrap()])
            .args(["--mode", "vscu"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..300 {
        if reqwest::get(format!("{url}/_sandbox")).await.is_ok() {
            return Unit {
                _running: running,
                url,
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("ushuru sandbox did not start on port {port}");
}

/// Queues a fault for the unit's next initialisation.
async fn fault_next_init(unit: &Unit, fault: Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/_sandbox/faults", unit.url))
        .json(&json!({"endpoint": "selectInitOsdcInfo", "count": 1, "fault": fault}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

async fn call(
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn provision(url: &str, body: Value) -> (u16, Value) {
    call(
        reqwest::Method::POST,
        &format!("{url}/v2/admin/tenants"),
        Some(OPERATOR_KEY),
        Some(body),
    )
    .await
}

async fn issue_key(url: &str, device_id: &Value) -> String {
    let (status, issued) = call(
        reqwest::Method::POST,
        &format!("{url}/v2/admin/tenants/{device_id}/api-keys"),
        Some(OPERATOR_KEY),
        Some(json!({"clientName": "till"})),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    issued["apiKey"].as_str().unwrap().to_owned()
}

async fn sell(url: &str, key: &str, tin: &str, reference: &str) -> Value {
    let body = json!({"supplierPin": tin, "clientReference": reference, "amount": "116.00",
                      "invoiceDate": "2026-11-21", "itemDescription": "Soda", "taxAmount": "16.00",
                      "pmtTyCd": "01", "taxBand": "B"});
    let response = reqwest::Client::new()
        .post(format!("{url}/v2/etims/sale"))
        .bearer_auth(key)
        .header("Idempotency-Key", reference)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let sale: Value = response.json().await.unwrap();
    assert_eq!(
        (status, sale["status"].as_str()),
        (200, Some("SIGNED")),
        "{sale}"
    );
    sale
}

async fn tenants(url: &str) -> Vec<Value> {
    let (status, listed) = call(
        reqwest::Method::GET,
        &format!("{url}/v2/admin/tenants"),
        Some(OPERATOR_KEY),
        None,
    )
    .await;
    assert_eq!(status, 200);
    listed.as_array().unwrap().clone()
}

fn sdk_python() -> PathBuf {
    PathBuf::from(std::env::var("USHURU_TEST_PYTHON").expect(
        "USHURU_TEST_PYTHON is not set: run ./scripts/test, which creates the venv with taxid-etims",
    ))
}

async fn provisions_while_serving(database_url: Option<String>) {
    let dir = std::env::temp_dir().join(format!(
        "ushuru-provision-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let (running, url) = start(&dir, port, database_url.as_deref()).await;
    let unit = start_unit(&dir).await;
    // On PostgreSQL, a second replica on the same database, started before anything is
    // provisioned (its own data directory, the same master key).
    let replica = match database_url.as_deref() {
        Some(database) => {
            let replica_dir = dir.join("replica");
            std::fs::create_dir_all(&replica_dir).unwrap();
            std::fs::copy(dir.join("master.key"), replica_dir.join("master.key")).unwrap();
            Some(start(&replica_dir, free_port(), Some(database)).await)
        }
        None => None,
    };

    // Who may call it: an operator key only.
    let good = json!({"tin": "P051234567A", "bhfId": "00", "dvcSrlNo": "POS-A-00"});
    let endpoint = format!("{url}/v2/admin/tenants");
    let (status, body) = call(
        reqwest::Method::POST,
        &endpoint,
        Some(KEY),
        Some(good.clone()),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    let (status, body) = call(reqwest::Method::POST, &endpoint, None, Some(good.clone())).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("UNAUTHENTICATED")),
        "{body}"
    );

    // Every bad input, with its code; nothing is written.
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let mut oscu_with_url = with("controlUnitType", json!("OSCU"));
    oscu_with_url["vscuBaseUrl"] = json!(unit.url);
    let mut oscu_production = with("controlUnitType", json!("OSCU"));
    oscu_production["environment"] = json!("PRODUCTION");
    let bad = [
        (without("tin"), 422, "INVALID_TIN"),
        (with("tin", json!("P05123456")), 422, "INVALID_TIN"),
        (with("tin", json!("p051234567a")), 422, "INVALID_TIN"),
        (without("bhfId"), 422, "INVALID_BHF_ID"),
        (with("bhfId", json!("0A")), 422, "INVALID_BHF_ID"),
        (with("dvcSrlNo", json!("")), 422, "INVALID_DVC_SRL_NO"),
        (without("dvcSrlNo"), 422, "INVALID_DVC_SRL_NO"),
        (
            with("controlUnitType", json!("ESD")),
            422,
            "INVALID_CONTROL_UNIT_TYPE",
        ),
        (
            with("environment", json!("TEST")),
            422,
            "INVALID_ENVIRONMENT",
        ),
        (oscu_with_url, 422, "VSCU_URL_NOT_ALLOWED"),
        (
            with("environment", json!("PRODUCTION")),
            422,
            "CONTROL_UNIT_REQUIRED",
        ),
        (oscu_production, 422, "CONTROL_UNIT_REQUIRED"),
        (
            with("vscuBaseUrl", json!("localhost:8088")),
            422,
            "INVALID_VSCU_BASE_URL",
        ),
        (with("vscu_base_url", json!(unit.url)), 422, "UNKNOWN_FIELD"),
        (json!("P051234567A"), 400, "INVALID_BODY"),
    ];
    for (body, status, code) in bad {
        let (answered, error) = provision(&url, body.clone()).await;
        assert_eq!(
            (answered, error["code"].as_str()),
            (status, Some(code)),
            "{body}: {error}"
        );
        assert!(!error["message"].as_str().unwrap().is_empty(), "{error}");
    }
    assert_eq!(tenants(&url).await.len(), 1, "only the bootstrap tenant");

    // A new tenant on the built-in sandbox (VSCU, the SDK's default), signing at once.
    let (status, created) = provision(&url, good.clone()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (
            created["tin"].as_str(),
            created["bhfId"].as_str(),
            created["controlUnitType"].as_str(),
            created["environment"].as_str(),
            created["status"].as_str(),
            created["tenantCreated"].as_bool(),
        ),
        (
            Some("P051234567A"),
            Some("00"),
            Some("VSCU"),
            Some("SANDBOX"),
            Some("READY"),
            Some(true)
        ),
        "{created}"
    );
    assert!(
        created["sdcId"].as_str().unwrap().starts_with("KRACU"),
        "{created}"
    );
    assert!(
        !created.to_string().to_lowercase().contains("cmckey"),
        "{created}"
    );
    let key_a00 = issue_key(&url, &created["deviceId"]).await;
    let sale = sell(&url, &key_a00, "P051234567A", "A00-1").await;
    assert_eq!(sale["invcNo"].as_str(), Some("1"), "{sale}");
    assert_eq!(sale["sdcId"], created["sdcId"]);

    // A second branch of the same tenant, OSCU, also on the built-in sandbox.
    let (status, second) = provision(
        &url,
        json!({"tin": "P051234567A", "bhfId": "01", "dvcSrlNo": "POS-A-01",
               "controlUnitType": "OSCU", "environment": "SANDBOX"}),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["tenantCreated"].as_bool(), Some(false));
    assert_eq!(second["tenantId"], created["tenantId"]);
    let key_a01 = issue_key(&url, &second["deviceId"]).await;
    sell(&url, &key_a01, "P051234567A", "A01-1").await;

    // Duplicates: a branch provisioned here, and the bootstrap branch.
    for (tin, bhf_id) in [("P051234567A", "00"), ("P000000000A", "00")] {
        let (status, error) =
            provision(&url, json!({"tin": tin, "bhfId": bhf_id, "dvcSrlNo": "X"})).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (409, Some("TENANT_BRANCH_EXISTS")),
            "{error}"
        );
    }

    // A VSCU over HTTP that does not issue a key: nothing is kept, each time.
    let on_unit = json!({"tin": "P077777777B", "bhfId": "00", "dvcSrlNo": "POS-B-00",
                         "vscuBaseUrl": unit.url});
    let closed = format!("http://127.0.0.1:{}", free_port());
    let unreachable = {
        let mut body = on_unit.clone();
        body["vscuBaseUrl"] = json!(closed);
        body
    };
    let (status, error) = provision(&url, unreachable).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (502, Some("CONTROL_UNIT_UNREACHABLE")),
        "{error}"
    );
    for (fault, status, code) in [
        (
            json!({"kind": "result_code", "code": "901", "message": "device not valid"}),
            422,
            "CONTROL_UNIT_REFUSED",
        ),
        (
            json!({"kind": "result_code", "code": "902"}),
            409,
            "DEVICE_ALREADY_INSTALLED",
        ),
        (
            json!({"kind": "http_status", "status": 502}),
            502,
            "CONTROL_UNIT_NO_ANSWER",
        ),
    ] {
        fault_next_init(&unit, fault.clone()).await;
        let (answered, error) = provision(&url, on_unit.clone()).await;
        assert_eq!(
            (answered, error["code"].as_str()),
            (status, Some(code)),
            "{fault}: {error}"
        );
        if code == "CONTROL_UNIT_REFUSED" {
            assert_eq!(error["resultCd"].as_str(), Some("901"), "{error}");
        }
    }
    assert!(
        tenants(&url)
            .await
            .iter()
            .all(|t| t["tin"] != "P077777777B"),
        "a failed provisioning leaves no tenant or branch"
    );
    // Then the same request, with the unit answering: provisioned and signing over HTTP.
    let (status, on_http) = provision(&url, on_unit).await;
    assert_eq!(status, 201, "{on_http}");
    let key_b00 = issue_key(&url, &on_http["deviceId"]).await;
    sell(&url, &key_b00, "P077777777B", "B00-1").await;
    // The replica did not know the branch when it started: its first request for it starts
    // serving it there (the first replica still holds the branch and signs).
    if let Some((replica, replica_url)) = replica {
        let sale = sell(&replica_url, &key_b00, "P077777777B", "B00-1b").await;
        assert_eq!(sale["invcNo"].as_str(), Some("2"), "{sale}");
        terminate(replica);
    }

    // The SDK's provision_tenant, issue_tenant_key and a sale with the new key.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/provision_flow.py");
    let sdk = Command::new(sdk_python())
        .arg(&script)
        .env("TAXID_API_URL", &url)
        .env("USHURU_OPERATOR_KEY", OPERATOR_KEY)
        .env("USHURU_BRANCH_KEY", KEY)
        .env("USHURU_NEW_TIN", "P088888888C")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&sdk.stdout),
        String::from_utf8_lossy(&sdk.stderr),
    );
    assert!(
        sdk.status.success(),
        "the SDK run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("8 provisioning checks passed"), "{stdout}");

    // The audit log names the operator for each step.
    let (_, audit) = call(
        reqwest::Method::GET,
        &format!("{url}/v2/admin/audit?limit=1000"),
        Some(OPERATOR_KEY),
        None,
    )
    .await;
    let provisioned: Vec<String> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"].as_str().unwrap().starts_with("operator:"))
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .filter(|a| a != "api_key.issued")
        .collect();
    assert_eq!(
        provisioned,
        [
            "tenant.created",
            "branch.created",
            "device.initialised",
            "branch.created",
            "device.initialised",
            "tenant.created",
            "branch.created",
            "device.initialised",
            "tenant.created",
            "branch.created",
            "device.initialised",
        ]
    );
    terminate(running);

    // After a restart every provisioned branch signs again, its numbering carried on.
    let (running, url) = start(&dir, port, database_url.as_deref()).await;
    let b00_sold = if database_url.is_some() { 2 } else { 1 };
    for (key, tin, reference, sold) in [
        (&key_a00, "P051234567A", "A00-2", 1),
        (&key_a01, "P051234567A", "A01-2", 1),
        (&key_b00, "P077777777B", "B00-2", b00_sold),
    ] {
        let sale = sell(&url, key, tin, reference).await;
        let next = (sold + 1).to_string();
        assert_eq!(sale["invcNo"].as_str(), Some(next.as_str()), "{sale}");
    }
    let listed = tenants(&url).await;
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert!(
        listed
            .iter()
            .flat_map(|t| t["branches"].as_array().unwrap())
            .all(|b| b["status"] == "READY"),
        "{listed:?}"
    );
    terminate(running);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    provisions_while_serving(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let url = common::fresh_postgres_database("ushuru_provision").await;
    provisions_while_serving(Some(url)).await;
}
