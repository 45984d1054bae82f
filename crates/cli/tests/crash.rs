//! Crash and failure tests of `ushuru serve` as a process, against the control-unit sandbox
//! running as its own process (so that killing Ushuru does not kill the control unit):
//!
//! * a stream of sales while Ushuru is killed with SIGKILL at random moments and restarted:
//!   every sale that got a 2xx ends SIGNED, the control unit signed every invcNo once, its
//!   receipt numbers have no gap or duplicate, and signing order is invcNo order;
//! * a lost answer (the control unit commits and the reply never arrives): the sale ends
//!   SIGNED with the original receipt, signed once.
//!
//! On SQLite and PostgreSQL.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const KEY: &str = "ush_crash_test_key_fixed_by_the_operator";
const TIN: &str = "P000000000A";
const SALES: usize = 2_000;
const CLIENTS: usize = 6;
const KILLS: usize = 12;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn sigkill(mut self) {
        let _ = self.0.kill(); // SIGKILL on Unix: no shutdown code runs
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("ushuru-{name}-{}-{nanos}", std::process::id()));
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

async fn start_sandbox(dir: &Path) -> (Process, String) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ushuru"))
        .args([
            "sandbox",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state",
            dir.join("control-unit.sqlite").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_until_up(&format!("{url}/_sandbox")).await;
    (Process(child), url)
}

async fn start_serve(
    dir: &Path,
    port: u16,
    control_unit: &str,
    database_url: Option<&str>,
) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ushuru"));
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            dir.join("data").to_str().unwrap(),
            "--control-unit",
            control_unit,
            "--control-unit-profile",
            "oscu",
            "--sale-deadline-ms",
            "2000",
        ])
        .env("USHURU_BOOTSTRAP_API_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let process = Process(command.spawn().unwrap());
    wait_until_up(&format!("http://127.0.0.1:{port}/openapi-probe")).await;
    process
}

fn sale_body(reference: &str) -> Value {
    json!({"supplierPin": TIN, "clientReference": reference, "amount": "116.00", "invoiceDate": "2026-11-21",
           "itemDescription": "Soda", "taxAmount": "16.00", "pmtTyCd": "01", "taxBand": "B"})
}

/// Posts a sale as a POS would: on no answer, 425 or a server error, the same request with
/// the same key again, until it gets a 2xx.
async fn sell_until_answered(client: &reqwest::Client, url: &str, reference: &str) -> Value {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "sale {reference} got no 2xx in 2 minutes"
        );
        let sent = client
            .post(format!("{url}/v2/etims/sale"))
            .bearer_auth(KEY)
            .header("Idempotency-Key", reference)
            .json(&sale_body(reference))
            .send()
            .await;
        let Ok(response) = sent else {
            tokio::time::sleep(Duration::from_millis(30)).await;
            continue;
        };
        let status = response.status().as_u16();
        let Ok(body) = response.json::<Value>().await else {
            tokio::time::sleep(Duration::from_millis(30)).await;
            continue;
        };
        match status {
            200 | 202 => return body,
            425 | 500..=599 => tokio::time::sleep(Duration::from_millis(30)).await,
            other => panic!("sale {reference}: unexpected {other}: {body}"),
        }
    }
}

async fn get_json(url: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The sandbox's signed sales of the test branch, by invcNo.
async fn signed_by_control_unit(sandbox: &str) -> BTreeMap<u64, Value> {
    let state = get_json(&format!("{sandbox}/_sandbox/state")).await;
    state["sales"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{TIN}/00/")))
        .map(|(_, sale)| (sale["request"]["invcNo"].as_u64().unwrap(), sale.clone()))
        .collect()
}

/// A small xorshift: random kill moments, reproducible from the printed seed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn sales_survive_sigkill(database_url: Option<String>) {
    let dir = temp_dir("crash");
    let (_sandbox, control_unit) = start_sandbox(&dir).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let serve = start_serve(&dir, port, &control_unit, database_url.as_deref()).await;

    let next_sale = Arc::new(AtomicUsize::new(0));
    let answered: Arc<Mutex<Vec<(String, Value)>>> = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next_sale, answered, url) = (next_sale.clone(), answered.clone(), url.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                loop {
                    let i = next_sale.fetch_add(1, Ordering::SeqCst);
                    if i >= SALES {
                        return;
                    }
                    let reference = format!("crash-{i:05}");
                    let body = sell_until_answered(&client, &url, &reference).await;
                    answered.lock().unwrap().push((reference, body));
                }
            })
        })
        .collect();

    // The killer: SIGKILL at random moments while the sales flow, then start again.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test seed {seed}");
    let mut serve = Some(serve);
    let mut kills_during_traffic = 0;
    for _ in 0..KILLS {
        let pause = 150 + next_random(&mut seed) % 600;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if next_sale.load(Ordering::SeqCst) < SALES {
            kills_during_traffic += 1;
        }
        if let Some(running) = serve.take() {
            running.sigkill();
        }
        serve = Some(start_serve(&dir, port, &control_unit, database_url.as_deref()).await);
    }
    for client in clients {
        client.await.unwrap();
    }
    assert!(
        kills_during_traffic >= 10,
        "only {kills_during_traffic} kills landed while sales were being sent"
    );

    // Every sale that got a 2xx ends SIGNED, with the receipt the control unit issued.
    let answered = answered.lock().unwrap().clone();
    assert_eq!(answered.len(), SALES);
    let mut purchase_ids = std::collections::BTreeSet::new();
    let mut signed = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (reference, first_answer) in &answered {
        let id = first_answer["purchaseId"].as_i64().unwrap();
        assert!(
            purchase_ids.insert(id),
            "{reference}: purchaseId {id} twice"
        );
        loop {
            let status = get_json(&format!("{url}/v2/etims/sales/{id}/status")).await;
            if status["status"] == "SIGNED" {
                signed.insert(
                    status["invcNo"].as_str().unwrap().parse::<u64>().unwrap(),
                    status,
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{reference} is {} long after the run",
                status["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // One sale per key: invcNo 1..=SALES, each signed once by the control unit.
    let expected: Vec<u64> = (1..=SALES as u64).collect();
    assert_eq!(signed.keys().copied().collect::<Vec<_>>(), expected);
    let by_control_unit = signed_by_control_unit(&control_unit).await;
    assert_eq!(
        by_control_unit.keys().copied().collect::<Vec<_>>(),
        expected,
        "the control unit signed exactly the accepted sales"
    );
    // Receipt numbers: no gap, no duplicate, and they rise with invcNo (signing order).
    let receipts: Vec<u64> = by_control_unit
        .values()
        .map(|sale| sale["receipt"]["curRcptNo"].as_u64().unwrap())
        .collect();
    assert_eq!(
        receipts, expected,
        "receipt numbers follow invcNo without gap"
    );
    for (invc_no, status) in &signed {
        assert_eq!(
            status["receiptSignature"], by_control_unit[invc_no]["receipt"]["rcptSign"],
            "invcNo {invc_no}: Ushuru holds the control unit's receipt"
        );
    }
    let monitoring = get_json(&format!("{url}/v2/etims/device/monitoring")).await;
    assert_eq!(monitoring["sequenceHealthy"], true, "{monitoring}");
    // For the record (not asserted): the longest pause in signing, by the control unit's
    // clock, which shows how long a restart held a branch up.
    let signed_at: Vec<chrono::NaiveDateTime> = by_control_unit
        .values()
        .filter_map(|sale| sale["receipt"]["sdcDateTime"].as_str())
        .filter_map(|at| chrono::NaiveDateTime::parse_from_str(at, "%Y%m%d%H%M%S").ok())
        .collect();
    let longest = signed_at
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).num_seconds())
        .max()
        .unwrap_or(0);
    println!("longest pause between two receipts: {longest} s");
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn a_lost_answer_ends_signed_once(database_url: Option<String>) {
    let dir = temp_dir("lost-answer");
    let (_sandbox, control_unit) = start_sandbox(&dir).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _serve = start_serve(&dir, port, &control_unit, database_url.as_deref()).await;
    let client = reqwest::Client::new();
    let before = sell_until_answered(&client, &url, "before").await;
    assert_eq!(before["status"], "SIGNED");
    // The next signing call is processed and committed, and its reply is dropped.
    let queued = client
        .post(format!("{control_unit}/_sandbox/faults"))
        .json(
            &json!({"endpoint": "saveTrnsSalesOsdc", "count": 1, "fault": {"kind": "lost_answer"}}),
        )
        .send()
        .await
        .unwrap();
    assert!(queued.status().is_success());
    let lost = sell_until_answered(&client, &url, "lost").await;
    let id = lost["purchaseId"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = get_json(&format!("{url}/v2/etims/sales/{id}/status")).await;
        if status["status"] == "SIGNED" {
            break status;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let by_control_unit = signed_by_control_unit(&control_unit).await;
    assert_eq!(by_control_unit.len(), 2, "one signature per sale");
    assert_eq!(
        status["receiptSignature"], by_control_unit[&2]["receipt"]["rcptSign"],
        "the original receipt, recovered"
    );
    let original = get_json(&format!("{url}/v2/etims/sales/{id}/original")).await;
    let outcomes: Vec<&str> = original["transport"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert!(outcomes.contains(&"ambiguous"), "{outcomes:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn postgres_database() -> String {
    let admin = std::env::var("USHURU_TEST_POSTGRES_URL")
        .expect("USHURU_TEST_POSTGRES_URL is not set: run ./scripts/test");
    let name = format!(
        "ushuru_crash_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("USHURU_TEST_POSTGRES_URL has no database part"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_sales_survive_sigkill() {
    sales_survive_sigkill(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_sales_survive_sigkill() {
    sales_survive_sigkill(Some(postgres_database().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_lost_answer_ends_signed_once() {
    a_lost_answer_ends_signed_once(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_lost_answer_ends_signed_once() {
    a_lost_answer_ends_signed_once(Some(postgres_database().await)).await;
}
