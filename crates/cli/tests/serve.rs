//! `ushuru serve` as a process: the taxid-etims SDK against it, a restart that carries on,
//! SIGTERM, on SQLite and PostgreSQL.

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
const TIN: &str = "P000000000A";

async fn start(data_dir: &Path, port: u16, database_url: Option<&str>) -> (Running, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ushuru"));
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ])
        .env("USHURU_BOOTSTRAP_API_KEY", KEY)
        .env("USHURU_OPERATOR_KEY", OPERATOR_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let running = Running(command.spawn().unwrap());
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..300 {
        if reqwest::Client::new()
            .get(format!("{url}/v2/etims/sales/0/status"))
            .bearer_auth(KEY)
            .send()
            .await
            .is_ok()
        {
            return (running, url);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ushuru serve did not start on port {port}");
}

async fn sell(url: &str, reference: &str) -> Value {
    sell_as(url, KEY, reference).await
}

async fn sell_as(url: &str, key: &str, reference: &str) -> Value {
    let body = json!({"supplierPin": TIN, "clientReference": reference, "amount": "116.00", "invoiceDate": "2026-11-21",
                      "itemDescription": "Soda", "taxAmount": "16.00", "pmtTyCd": "01", "taxBand": "B"});
    let response = reqwest::Client::new()
        .post(format!("{url}/v2/etims/sale"))
        .bearer_auth(key)
        .header("Idempotency-Key", reference)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn sdk_python() -> PathBuf {
    let python = std::env::var("USHURU_TEST_PYTHON")
        .expect("USHURU_TEST_PYTHON is not set: run ./scripts/test, which creates the venv with taxid-etims");
    PathBuf::from(python)
}

async fn serves_the_sdk_and_carries_on_after_a_restart(database_url: Option<String>) {
    let data_dir = std::env::temp_dir().join(format!(
        "ushuru-serve-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&data_dir);
    let port = free_port();
    let (running, url) = start(&data_dir, port, database_url.as_deref()).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/sale_flow.py");
    let sdk = Command::new(sdk_python())
        .arg(&script)
        .env("TAXID_API_URL", &url)
        .env("TAXID_API_KEY", KEY)
        .env("USHURU_TIN", TIN)
        .env("USHURU_SDK_WORK_DIR", &data_dir)
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
    assert!(stdout.contains("22 checks passed"), "{stdout}");

    // The SDK's OAuth mode, with a client the operator issues through the admin API.
    let client = reqwest::Client::new();
    let tenants: Value = client
        .get(format!("{url}/v2/admin/tenants"))
        .bearer_auth(OPERATOR_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_id = &tenants[0]["branches"][0]["deviceId"];
    let issued: Value = client
        .post(format!("{url}/v2/admin/tenants/{device_id}/oauth-clients"))
        .bearer_auth(OPERATOR_KEY)
        .json(&json!({"clientName": "sdk"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/oauth_flow.py");
    let sdk = Command::new(sdk_python())
        .arg(&script)
        .env("TAXID_API_URL", &url)
        .env("USHURU_TIN", TIN)
        .env(
            "USHURU_OAUTH_CLIENT_ID",
            issued["clientId"].as_str().unwrap(),
        )
        .env(
            "USHURU_OAUTH_CLIENT_SECRET",
            issued["clientSecret"].as_str().unwrap(),
        )
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&sdk.stdout),
        String::from_utf8_lossy(&sdk.stderr),
    );
    assert!(
        sdk.status.success(),
        "the SDK's OAuth run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("4 OAuth checks passed"), "{stdout}");

    let third = sell(&url, "R-3").await;
    assert_eq!(
        (third["status"].as_str(), third["invcNo"].as_str()),
        // The SDK signed two sales and two credit notes (1-4), and one sale in OAuth mode.
        (Some("SIGNED"), Some("6"))
    );
    terminate(running);

    // The same data: the same device and key, numbering carries on.
    let (running, url) = start(&data_dir, port, database_url.as_deref()).await;
    let fourth = sell(&url, "R-4").await;
    assert_eq!(
        (fourth["status"].as_str(), fourth["invcNo"].as_str()),
        (Some("SIGNED"), Some("7"))
    );
    assert_eq!(
        fourth["sdcId"], third["sdcId"],
        "the device was kept, not initialised again"
    );
    let status: Value = reqwest::Client::new()
        .get(format!(
            "{url}/v2/etims/sales/{}/status",
            third["purchaseId"]
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["receiptSignature"], third["receiptSignature"]);
    terminate(running);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    serves_the_sdk_and_carries_on_after_a_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let url = common::fresh_postgres_database("ushuru_conformance_serve").await;
    serves_the_sdk_and_carries_on_after_a_restart(Some(url)).await;
}

/// The production set-up of docs/architecture.md ("Running it with a separate owner"): the
/// owner migrates, and serve logs in as a role that is only a member of `ushuru_app`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_service_login_serves_once_the_owner_has_migrated() {
    let owner_url = common::fresh_postgres_database("ushuru_conformance_service_login").await;
    let service_base = std::env::var("USHURU_TEST_POSTGRES_SERVICE_URL").expect(
        "USHURU_TEST_POSTGRES_SERVICE_URL is not set: run ./scripts/test, which creates the login",
    );
    let database = owner_url.rsplit_once('/').unwrap().1;
    let service_url = format!("{}/{database}", service_base.rsplit_once('/').unwrap().0);
    let migrate = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_ushuru"))
            .args(["migrate", "--database-url", url])
            .env_remove("USHURU_DATABASE_URL")
            .output()
            .unwrap()
    };
    // The service's login may not migrate, and says who may.
    let refused = migrate(&service_url);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("need the owner"), "{said}");
    assert!(said.contains("ushuru migrate --database-url"), "{said}");
    assert!(
        !said.contains("ushuru_test_service:"),
        "no password in the message: {said}"
    );
    assert!(migrate(&owner_url).status.success());

    let data_dir =
        std::env::temp_dir().join(format!("ushuru-service-login-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let (running, url) = start(&data_dir, free_port(), Some(&service_url)).await;
    let sale = sell(&url, "service-login-1").await;
    assert_eq!(sale["status"], "SIGNED", "{sale}");

    // Written as the service, under the policies: the owner finds the sale signed only with
    // the flag a backup uses.
    let (owner, connection) = tokio_postgres::connect(&owner_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let signed = "SELECT count(*) FROM sales WHERE status = 'SIGNED'";
    assert_eq!(
        owner.query_one(signed, &[]).await.unwrap().get::<_, i64>(0),
        0
    );
    owner
        .batch_execute("SET ushuru.system = 'on'")
        .await
        .unwrap();
    assert_eq!(
        owner.query_one(signed, &[]).await.unwrap().get::<_, i64>(0),
        1
    );

    // A table that grows past 1,000 rows before anything analysed it gets its planner
    // statistics from the service, as the service's login (migration 0015), within a few
    // seconds rather than at autovacuum's first pass a minute on.
    owner
        .batch_execute(
            "INSERT INTO sales (tenant_id, branch_id, invc_no, status, tot_amt)
                 SELECT tenant_id, branch_id, invc_no + n, 'SIGNED', 1
                 FROM sales, generate_series(1, 1000) AS n;
             SELECT pg_stat_force_next_flush();",
        )
        .await
        .unwrap();
    let analysed =
        "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'sales'";
    let mut waited = Duration::ZERO;
    while !owner
        .query_one(analysed, &[])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            waited < Duration::from_secs(20),
            "sales had no statistics 20 s after passing 1,000 rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    terminate(running);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toml_file_configures_what_flags_and_variables_leave_unset() {
    let dir = std::env::temp_dir().join(format!("ushuru-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let config = dir.join("ushuru.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ntin = \"P111111111B\"\nbranch = \"00\"\nsale_deadline_ms = 5000\n"
        ),
    )
    .unwrap();
    // The file gives the address and the PIN; the command line's --branch wins over it.
    let running = Running(
        Command::new(env!("CARGO_BIN_EXE_ushuru"))
            .args([
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--branch",
                "01",
            ])
            .args(["--data-dir", dir.join("data").to_str().unwrap()])
            .env("USHURU_BOOTSTRAP_API_KEY", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut device = Value::Null;
    for _ in 0..300 {
        if let Ok(response) = reqwest::Client::new()
            .get(format!("{url}/v2/etims/device"))
            .bearer_auth(KEY)
            .send()
            .await
        {
            device = response.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (device["tin"].as_str(), device["bhfId"].as_str()),
        (Some("P111111111B"), Some("01")),
        "{device}"
    );
    drop(running);

    // A misspelt key or a missing file stops the start with a clear message and status 2.
    std::fs::write(&config, "listen = \"127.0.0.1:1\"\nsale_deadline = 5\n").unwrap();
    for path in [config.clone(), dir.join("missing.toml")] {
        let output = Command::new(env!("CARGO_BIN_EXE_ushuru"))
            .args(["serve", "--config", path.to_str().unwrap()])
            .args(["--data-dir", dir.join("data").to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("sale_deadline"),
        "the unknown key is named"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `serve` with several bootstrap branches and reads the keys it prints for them.
fn start_branches(data_dir: &Path, port: u16, branches: &str) -> (Running, Vec<(String, String)>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--branch",
            branches,
        ])
        .env("USHURU_BOOTSTRAP_API_KEY", KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let running = Running(child);
    // Read on a thread that keeps draining after start: a closed pipe would fail the
    // server's next write to stderr.
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut keys = Vec::new();
    while let Ok(line) = printed.recv_timeout(Duration::from_secs(30)) {
        if let Some(rest) = line.strip_prefix("API key for branch ") {
            let (bhf_id, key) = rest.split_once(": ").unwrap();
            keys.push((bhf_id.to_owned(), key.to_owned()));
        }
        if line.starts_with("Sign a sale:") {
            return (running, keys);
        }
    }
    panic!("ushuru serve stopped (or stalled) before it was ready");
}

async fn get_as(url: &str, key: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_branches_are_served_each_with_its_own_device_numbers_and_key() {
    let dir = std::env::temp_dir().join(format!("ushuru-branches-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let (running, keys) = start_branches(&dir, port, "00,01,02");
    // The first branch takes the operator's key; each other one gets its own, shown once.
    let branch_keys: Vec<&str> = keys.iter().map(|(_, key)| key.as_str()).collect();
    assert_eq!(
        keys.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(),
        ["01", "02"]
    );
    let all = [KEY, branch_keys[0], branch_keys[1]];
    let mut devices = std::collections::BTreeSet::new();
    let mut first_sales = Vec::new();
    for (key, bhf_id) in all.iter().zip(["00", "01", "02"]) {
        let sale = sell_as(&url, key, &format!("B{bhf_id}-1")).await;
        // Numbering is per branch: each branch's first sale is its invoice 1.
        assert_eq!(
            (sale["status"].as_str(), sale["invcNo"].as_str()),
            (Some("SIGNED"), Some("1")),
            "{sale}"
        );
        let (status, device) = get_as(&url, key, "/v2/etims/device").await;
        assert_eq!(
            (status, device["bhfId"].as_str()),
            (200, Some(bhf_id)),
            "{device}"
        );
        devices.insert(sale["sdcId"].as_str().unwrap().to_owned());
        first_sales.push(sale["purchaseId"].as_i64().unwrap());
    }
    assert_eq!(devices.len(), 3, "one device per branch: {devices:?}");
    // A branch's key does not reach another branch's sale.
    let (status, body) = get_as(
        &url,
        branch_keys[1],
        &format!("/v2/etims/sales/{}/status", first_sales[0]),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    terminate(running);

    // Restarted with only the default branch named, every provisioned branch is served,
    // with the same keys and numbering that carries on; no new keys are printed.
    let (running, keys) = start_branches(&dir, port, "00");
    assert!(keys.is_empty(), "{keys:?}");
    let second = sell_as(&url, branch_keys[1], "B02-2").await;
    assert_eq!(
        (second["status"].as_str(), second["invcNo"].as_str()),
        (Some("SIGNED"), Some("2")),
        "{second}"
    );
    terminate(running);

    // A branch id that is not two digits is refused before anything starts.
    let output = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args([
            "serve",
            "--data-dir",
            dir.to_str().unwrap(),
            "--branch",
            "00,1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"1\" is not a branch id"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One process per SQLite database: a second `serve` on a data directory already served
/// refuses to start and says which process has it, and the first carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_sqlite_data_dir_is_refused() {
    let dir = std::env::temp_dir().join(format!("ushuru-twice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (first, url) = start(&dir, free_port(), None).await;
    let second = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--data-dir", dir.to_str().unwrap()])
        .env("USHURU_BOOTSTRAP_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(!second.status.success(), "a second serve started");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("process {} already serves", first.0.id())),
        "{stderr}"
    );
    let sale = sell(&url, "after-the-refusal").await;
    assert_eq!(sale["status"], "SIGNED", "{sale}");
    terminate(first);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cmcKey vault end to end: with `USHURU_MASTER_KEY` the device's cmcKey is stored only
/// sealed (in no form in the database file), a restart with the same master key signs on,
/// and a start with another master key is refused before serving, naming the reason.
/// Without a master key a development key file is generated, readable by its owner only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cmc_key_is_stored_sealed_and_opens_only_with_its_master_key() {
    let dir = std::env::temp_dir().join(format!("ushuru-vault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let master = data_encoding::BASE64.encode(&[5u8; 32]);
    let serve_with = |master: Option<&str>, port: u16| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ushuru"));
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--data-dir", dir.to_str().unwrap()])
            .env("USHURU_BOOTSTRAP_API_KEY", KEY)
            .env_remove("USHURU_MASTER_KEY")
            .env_remove("USHURU_OPERATOR_KEY");
        if let Some(master) = master {
            command.env("USHURU_MASTER_KEY", master);
        }
        command
    };
    let wait_until_up = async |port: u16| {
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..300 {
            let up = reqwest::Client::new()
                .get(format!("{url}/v2/etims/device"))
                .bearer_auth(KEY)
                .send()
                .await
                .is_ok();
            if up {
                return url;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ushuru serve did not start");
    };
    let port = free_port();
    let mut first = serve_with(Some(&master), port);
    first.stdout(Stdio::null()).stderr(Stdio::null());
    let running = Running(first.spawn().unwrap());
    let url = wait_until_up(port).await;
    assert_eq!(sell(&url, "vault-1").await["status"], "SIGNED");
    terminate(running);
    assert!(
        !dir.join("master.key").exists(),
        "no key file when the key is given"
    );

    // The cmcKey the control unit issued, from the sandbox's own state.
    let sandbox = rusqlite::Connection::open(dir.join("sandbox.sqlite")).unwrap();
    let device: String = sandbox
        .query_row("SELECT value FROM records WHERE kind = 'device'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let cmc_key = serde_json::from_str::<Value>(&device).unwrap()["cmc_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(cmc_key.len(), 32);
    // In no form in the database, its WAL included.
    let forms = [
        cmc_key.clone(),
        data_encoding::HEXLOWER.encode(cmc_key.as_bytes()),
        data_encoding::BASE64.encode(cmc_key.as_bytes()),
    ];
    for file in ["ushuru.sqlite", "ushuru.sqlite-wal"] {
        let Ok(bytes) = std::fs::read(dir.join(file)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for form in &forms {
            assert!(!text.contains(form.as_str()), "{file} holds the cmcKey");
        }
    }
    let database = rusqlite::Connection::open(dir.join("ushuru.sqlite")).unwrap();
    let (plain, sealed): (Option<String>, Vec<u8>) = database
        .query_row(
            "SELECT cmc_key, cmc_key_sealed FROM branches WHERE cmc_key_sealed IS NOT NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(plain, None);
    assert_eq!(sealed.len(), 32 + 16, "the key and GCM's tag");

    // Another master key: refused at start, before serving.
    let other = data_encoding::BASE64.encode(&[6u8; 32]);
    let refused = serve_with(Some(&other), free_port()).output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("master key"), "{stderr}");
    assert!(
        !stderr.contains(&other) && !stderr.contains(&cmc_key),
        "{stderr}"
    );
    // A key that is not a key: refused, without echoing it.
    let malformed = serve_with(Some("not-a-key-at-all"), free_port())
        .output()
        .unwrap();
    assert!(!malformed.status.success());
    let stderr = String::from_utf8_lossy(&malformed.stderr);
    assert!(
        stderr.contains("USHURU_MASTER_KEY") && stderr.contains("32 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-a-key-at-all"), "{stderr}");

    // Rotations by `ushuru admin` between starts: the data key rotates; the master key from
    // the environment cannot make a version of its own and says how to rotate it.
    let admin = |master: Option<&str>, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ushuru"));
        command
            .args(["admin", "--data-dir", dir.to_str().unwrap()])
            .args(args)
            .env_remove("USHURU_MASTER_KEY")
            .env_remove("USHURU_MASTER_KEY_FILE");
        if let Some(master) = master {
            command.env("USHURU_MASTER_KEY", master);
        }
        command.output().unwrap()
    };
    let device_id = rusqlite::Connection::open(dir.join("ushuru.sqlite"))
        .unwrap()
        .query_row(
            "SELECT id FROM branches WHERE cmc_key_sealed IS NOT NULL",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        .to_string();
    let rotated = admin(
        Some(&master),
        &["rotate", "data-key", "--device-id", &device_id],
    );
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let rotated: Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(
        (
            rotated["fromVersion"].as_u64(),
            rotated["toVersion"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let refused = admin(Some(&master), &["rotate", "master-key"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("1:<old>,2:<new>"));
    // Given as a keyring with a second version, it re-wraps every data key under it.
    let keyring = format!("1:{master},2:{}", data_encoding::BASE64.encode(&[7u8; 32]));
    let rewrapped = admin(Some(&keyring), &["rotate", "master-key"]);
    assert!(
        rewrapped.status.success(),
        "{}",
        String::from_utf8_lossy(&rewrapped.stderr)
    );
    let rewrapped: Value = serde_json::from_slice(&rewrapped.stdout).unwrap();
    assert_eq!(
        (
            rewrapped["toVersion"].as_u64(),
            rewrapped["rewrapped"].as_u64()
        ),
        (Some(2), Some(1))
    );
    // Now the old key alone no longer opens it: a start with it is refused.
    let refused = serve_with(Some(&master), free_port()).output().unwrap();
    assert!(!refused.status.success());

    // The keyring: the relay opens the rotated key and signs on.
    let master = keyring;
    let port = free_port();
    let mut again = serve_with(Some(&master), port);
    again.stdout(Stdio::null()).stderr(Stdio::null());
    let running = Running(again.spawn().unwrap());
    let url = wait_until_up(port).await;
    assert_eq!(sell(&url, "vault-2").await["status"], "SIGNED");
    terminate(running);
    let _ = std::fs::remove_dir_all(&dir);

    // No master key at all: a development key file, private, with a warning.
    let port = free_port();
    let mut development = serve_with(None, port);
    development.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut running = Running(development.spawn().unwrap());
    let url = wait_until_up(port).await;
    assert_eq!(sell(&url, "vault-3").await["status"], "SIGNED");
    let key_file = dir.join("master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let stderr = running.0.stderr.take().unwrap();
    terminate(running);
    let mut warning = String::new();
    std::io::Read::read_to_string(&mut { stderr }, &mut warning).unwrap();
    assert!(
        warning.contains("WARNING") && warning.contains("master key"),
        "{warning}"
    );
    // The operator key of a first start is written to a private file, not printed.
    let operator_file = dir.join("operator.key");
    let operator_key = std::fs::read_to_string(&operator_file).unwrap();
    assert!(operator_key.trim().starts_with("ushop_"));
    assert!(!warning.contains(operator_key.trim()), "{warning}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&operator_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // That key file is a keyring: `ushuru admin` adds a version and re-wraps, and the next
    // start opens the key with it.
    let rotated = admin(None, &["rotate", "master-key"]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let rotated: Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(
        (
            rotated["newVersion"].as_bool(),
            rotated["toVersion"].as_u64()
        ),
        (Some(true), Some(2))
    );
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap().lines().count(),
        2
    );
    let port = free_port();
    let mut after = serve_with(None, port);
    after.stdout(Stdio::null()).stderr(Stdio::null());
    let running = Running(after.spawn().unwrap());
    let url = wait_until_up(port).await;
    assert_eq!(sell(&url, "vault-4").await["status"], "SIGNED");
    terminate(running);
    let _ = std::fs::remove_dir_all(&dir);
}
