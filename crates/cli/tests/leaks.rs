//! Secrets never leak (issue 5): `ushuru serve` signs sales with every log at TRACE level,
//! and the cmcKey, the API and operator keys and the master key, raw, in hex and in base64, appear
//! nowhere in its logs, in any HTTP answer (bodies and headers), or in a dump of its
//! database (`pg_dump`; the SQLite file and its WAL, byte for byte). Once with the
//! built-in sandbox on SQLite, once with a control unit over HTTP (a separate `ushuru
//! sandbox`, so the cmcKey crosses a socket in a header) on PostgreSQL.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::free_port;

const TIN: &str = "P000000000A";
const API_KEY: &str = "ush_leak_test_key_0123456789abcdefXYZ";
const OPERATOR_KEY: &str = "ushop_leak_test_operator_key_9876543210fedcba";

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ushuru-leaks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn wait_until_up(url: &str) {
    for _ in 0..400 {
        if reqwest::Client::new().get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} did not come up");
}

/// Every form a secret could leak in: as given, and its bytes in hex (both cases) and
/// base64 (standard and URL-safe).
fn forms(secret: &[u8]) -> Vec<String> {
    let mut forms = vec![
        data_encoding::HEXLOWER.encode(secret),
        data_encoding::HEXUPPER.encode(secret),
        data_encoding::BASE64.encode(secret),
        data_encoding::BASE64URL_NOPAD.encode(secret),
    ];
    if let Ok(text) = std::str::from_utf8(secret) {
        forms.push(text.to_owned());
    }
    forms
}

fn assert_absent(place: &str, haystack: &str, secrets: &[(&str, Vec<String>)]) {
    for (name, forms) in secrets {
        for form in forms {
            assert!(
                !haystack.contains(form.as_str()),
                "the {name} ({form}) appears in {place}"
            );
        }
    }
}

/// What the API answered, headers and bodies, as one text; and the OAuth secret and
/// token it issued (shown once, in answers not kept in that text).
struct Answers(String, Vec<String>);

impl Answers {
    async fn call(&mut self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        for (name, value) in response.headers() {
            self.0
                .push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("")));
        }
        let text = response.text().await.unwrap();
        self.0.push_str(&text);
        self.0.push('\n');
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn sale(reference: &str) -> Value {
    json!({"supplierPin": TIN, "clientReference": reference, "amount": "116.00", "invoiceDate": "2026-11-21",
           "itemDescription": "Soda", "taxAmount": "16.00", "pmtTyCd": "01", "taxBand": "B"})
}

/// Drives every kind of call through the API, failures included; returns the answers.
async fn exercise(url: &str) -> Answers {
    let client = reqwest::Client::new();
    let mut answers = Answers(String::new(), Vec::new());
    let mut signed = Vec::new();
    for n in 0..5 {
        let reference = format!("LEAK-{n}");
        let (status, body) = answers
            .call(
                client
                    .post(format!("{url}/v2/etims/sale"))
                    .bearer_auth(API_KEY)
                    .header("Idempotency-Key", &reference)
                    .json(&sale(&reference)),
            )
            .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("SIGNED")),
            "{body}"
        );
        signed.push(body["purchaseId"].as_i64().unwrap());
    }
    // The same key again, and reused for another body; X-API-Key as well as Bearer.
    let (status, _) = answers
        .call(
            client
                .post(format!("{url}/v2/etims/sale"))
                .header("X-API-Key", API_KEY)
                .header("Idempotency-Key", "LEAK-0")
                .json(&sale("LEAK-0")),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = answers
        .call(
            client
                .post(format!("{url}/v2/etims/sale"))
                .bearer_auth(API_KEY)
                .header("Idempotency-Key", "LEAK-0")
                .json(&sale("OTHER")),
        )
        .await;
    assert_eq!(status, 422);
    let id = signed[0];
    for path in [
        format!("/v2/etims/sales/{id}/status"),
        format!("/v2/etims/sales/{id}/original"),
        "/v2/etims/sales/search?clientReference=LEAK-1".to_owned(),
        "/v2/etims/device".to_owned(),
        "/v2/etims/device/monitoring".to_owned(),
        "/v2/etims/sales/999999/status".to_owned(),
    ] {
        let (status, body) = answers
            .call(client.get(format!("{url}{path}")).bearer_auth(API_KEY))
            .await;
        assert!(status == 200 || status == 404, "{path}: {status} {body}");
    }
    let (status, body) = answers
        .call(
            client
                .post(format!("{url}/v2/etims/sale/{}/credit-note", signed[1]))
                .bearer_auth(API_KEY),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The operator's routes: tenants, the branch's keys, the audit log; and a branch key
    // refused there.
    let (status, tenants) = answers
        .call(
            client
                .get(format!("{url}/v2/admin/tenants"))
                .bearer_auth(OPERATOR_KEY),
        )
        .await;
    assert_eq!(status, 200, "{tenants}");
    let device_id = tenants[0]["branches"][0]["deviceId"].as_i64().unwrap();
    for path in [
        format!("/v2/admin/tenants/{device_id}/api-keys"),
        "/v2/admin/audit".to_owned(),
    ] {
        let (status, body) = answers
            .call(client.get(format!("{url}{path}")).bearer_auth(OPERATOR_KEY))
            .await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = answers
        .call(
            client
                .get(format!("{url}/v2/admin/audit"))
                .bearer_auth(API_KEY),
        )
        .await;
    assert_eq!(status, 403);
    // OAuth: a client (its secret is shown once, in an answer not kept here), a token (the
    // same), and the token at work; then a data key rotation, and a sale after it.
    let issued: Value = client
        .post(format!("{url}/v2/admin/tenants/{device_id}/oauth-clients"))
        .bearer_auth(OPERATOR_KEY)
        .json(&json!({"clientName": "leak test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_secret = issued["clientSecret"].as_str().unwrap().to_owned();
    let token: Value = client
        .post(format!("{url}/oauth/token"))
        .basic_auth(issued["clientId"].as_str().unwrap(), Some(&client_secret))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access_token = token["access_token"].as_str().unwrap().to_owned();
    let (status, _) = answers
        .call(
            client
                .get(format!("{url}/v2/etims/device"))
                .bearer_auth(&access_token),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = answers
        .call(
            client
                .post(format!(
                    "{url}/v2/admin/tenants/{device_id}/data-key/rotate"
                ))
                .bearer_auth(OPERATOR_KEY),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = answers
        .call(
            client
                .post(format!("{url}/v2/etims/sale"))
                .bearer_auth(&access_token)
                .header("Idempotency-Key", "LEAK-AFTER-ROTATION")
                .json(&sale("LEAK-AFTER-ROTATION")),
        )
        .await;
    assert_eq!(status, 200);
    answers.1 = vec![client_secret, access_token];
    // Refusals: a wrong key, no key, a body that is not JSON.
    let (status, _) = answers
        .call(
            client
                .get(format!("{url}/v2/etims/device"))
                .bearer_auth("ush_not_a_key_of_ours"),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = answers
        .call(client.get(format!("{url}/v2/etims/device")))
        .await;
    assert_eq!(status, 401);
    let (status, _) = answers
        .call(
            client
                .post(format!("{url}/v2/etims/sale"))
                .bearer_auth(API_KEY)
                .header("Content-Type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(status, 400);
    answers
}

fn terminate(mut process: Process) {
    let pid = process.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = process.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// The cmcKey the control unit issued, from its own state file.
fn issued_cmc_key(state: &Path) -> String {
    let connection = rusqlite::Connection::open(state).unwrap();
    let device: String = connection
        .query_row("SELECT value FROM records WHERE kind = 'device'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let key = serde_json::from_str::<Value>(&device).unwrap()["cmc_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(key.len(), 32);
    key
}

async fn signs_at_trace_without_leaking(database_url: Option<&str>, external_unit: bool) {
    let dir = fresh_dir(if database_url.is_some() {
        "pg"
    } else {
        "sqlite"
    });
    let master = [0xA5u8, 0x5A, 0x3C, 0xC3].repeat(8);
    let master_text = data_encoding::BASE64.encode(&master);
    let mut unit = None;
    let mut command = Command::new(env!("CARGO_BIN_EXE_ushuru"));
    let port = free_port();
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", dir.to_str().unwrap()])
        .env("USHURU_BOOTSTRAP_API_KEY", API_KEY)
        .env("USHURU_MASTER_KEY", &master_text)
        .env("USHURU_OPERATOR_KEY", OPERATOR_KEY)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).unwrap());
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let unit_state = if external_unit {
        let unit_port = free_port();
        let state = dir.join("control-unit.sqlite");
        let child = Command::new(env!("CARGO_BIN_EXE_ushuru"))
            .args(["sandbox", "--listen", &format!("127.0.0.1:{unit_port}")])
            .args(["--state", state.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        unit = Some(Process(child));
        let unit_url = format!("http://127.0.0.1:{unit_port}");
        wait_until_up(&format!("{unit_url}/_sandbox")).await;
        command.args(["--control-unit", &unit_url]);
        state
    } else {
        dir.join("sandbox.sqlite")
    };
    let serve = Process(command.spawn().unwrap());
    let url = format!("http://127.0.0.1:{port}");
    wait_until_up(&format!("{url}/openapi.json")).await;
    let answers = exercise(&url).await;
    terminate(serve);
    drop(unit);

    let cmc_key = issued_cmc_key(&unit_state);
    let secrets = [
        ("cmcKey", forms(cmc_key.as_bytes())),
        ("API key", forms(API_KEY.as_bytes())),
        ("operator key", forms(OPERATOR_KEY.as_bytes())),
        ("OAuth client secret", forms(answers.1[0].as_bytes())),
        ("OAuth access token", forms(answers.1[1].as_bytes())),
        ("master key", {
            let mut all = forms(&master);
            all.push(master_text.clone());
            all
        }),
    ];
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    // The test means something only if TRACE was on and the calls were logged.
    assert!(log.contains("TRACE"), "no TRACE lines: {log:.2000}");
    assert!(
        log.lines().count() > 40,
        "few log lines: {}",
        log.lines().count()
    );
    assert_absent("the logs", &log, &secrets);
    assert_absent("the HTTP answers", &answers.0, &secrets);
    match database_url {
        Some(url) => {
            // As a backup does it under row-level security: the owner, with the flag that
            // shows it every tenant (docs/architecture.md, "Row-level security").
            let dump = Command::new("pg_dump")
                .args(["--dbname", url, "--no-owner", "--enable-row-security"])
                .env("PGOPTIONS", "-c ushuru.system=on")
                .output()
                .unwrap();
            assert!(
                dump.status.success(),
                "{}",
                String::from_utf8_lossy(&dump.stderr)
            );
            let dump = String::from_utf8_lossy(&dump.stdout);
            let sales = dump
                .split_once("COPY public.sales ")
                .and_then(|(_, rest)| rest.split_once("\n\\.\n"))
                .map(|(block, _)| block.lines().count() - 1)
                .unwrap_or_default();
            assert!(sales > 0, "a dump without the sales");
            assert_absent("pg_dump", &dump, &secrets);
        }
        None => {
            let mut bytes = std::fs::read(dir.join("ushuru.sqlite")).unwrap();
            if let Ok(wal) = std::fs::read(dir.join("ushuru.sqlite-wal")) {
                bytes.extend(wal);
            }
            assert!(bytes.len() > 4096);
            assert_absent(
                "the SQLite database",
                &String::from_utf8_lossy(&bytes),
                &secrets,
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_with_the_built_in_sandbox() {
    signs_at_trace_without_leaking(None, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_with_a_control_unit_over_http() {
    let url = common::fresh_postgres_database("ushuru_leaks").await;
    signs_at_trace_without_leaking(Some(&url), true).await;
}
