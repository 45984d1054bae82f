//! Crash and failure tests of `ushuru serve` as a process, against the control-unit sandbox
//! running as its own process (so that killing Ushuru does not kill the control unit):
//!
//! * a stream of 2,000 sales across 5 branches while Ushuru is killed with SIGKILL at random
//!   moments (at least 10 times) and restarted: every sale that got a 2xx ends SIGNED, and
//!   per branch the control unit signed every invcNo once, its receipt numbers have no gap
//!   or duplicate, and signing order is invcNo order;
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

mod common;
use common::free_port;

const KEY: &str = "ush_crash_test_key_fixed_by_the_operator";
const TIN: &str = "P000000000A";
const SALES: usize = 2_000;
/// The branches of the stream; sale `i` goes to `BRANCHES[i % 5]`.
const BRANCHES: [&str; 5] = ["00", "01", "02", "03", "04"];
const CLIENTS: usize = 10;
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
    start_serving(dir, port, control_unit, database_url, &["00"])
        .await
        .0
}

/// Starts `serve` for `branches` and returns the API keys it printed for the branches it
/// provisioned (all but the first, which takes the operator's `KEY`), by branch id.
async fn start_serving(
    dir: &Path,
    port: u16,
    control_unit: &str,
    database_url: Option<&str>,
    branches: &[&str],
) -> (Process, BTreeMap<String, String>) {
    use std::io::BufRead;
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
            "--branch",
            &branches.join(","),
        ])
        .env("USHURU_BOOTSTRAP_API_KEY", KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let mut child = command.spawn().unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let process = Process(child);
    // Read on a thread that keeps draining: a closed pipe would fail the server's next
    // write to stderr.
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut keys = BTreeMap::new();
    loop {
        match printed.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("Sign a sale:") => break,
            Ok(line) => {
                if let Some((bhf_id, key)) = line
                    .strip_prefix("API key for branch ")
                    .and_then(|rest| rest.split_once(": "))
                {
                    keys.insert(bhf_id.to_owned(), key.to_owned());
                }
            }
            Err(_) => panic!("ushuru serve stopped (or stalled) before it was ready"),
        }
    }
    wait_until_up(&format!("http://127.0.0.1:{port}/openapi-probe")).await;
    (process, keys)
}

fn sale_body(reference: &str) -> Value {
    json!({"supplierPin": TIN, "clientReference": reference, "amount": "116.00", "invoiceDate": "2026-11-21",
           "itemDescription": "Soda", "taxAmount": "16.00", "pmtTyCd": "01", "taxBand": "B"})
}

/// Posts a sale as a POS would: on no answer, 425 or a server error, the same request with
/// the same key again, until it gets a 2xx.
async fn sell_until_answered(client: &reqwest::Client, url: &str, reference: &str) -> Value {
    sell_as_until_answered(client, url, KEY, reference).await
}

async fn sell_as_until_answered(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    reference: &str,
) -> Value {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "sale {reference} got no 2xx in 2 minutes"
        );
        let sent = client
            .post(format!("{url}/v2/etims/sale"))
            .bearer_auth(key)
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
    get_json_as(url, KEY).await
}

async fn get_json_as(url: &str, key: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The sandbox's signed sales of branch 00, by invcNo.
async fn signed_by_control_unit(sandbox: &str) -> BTreeMap<u64, Value> {
    signed_by_branch(&get_json(&format!("{sandbox}/_sandbox/state")).await, "00")
}

/// A branch's signed sales in a sandbox state dump (keyed `TIN/BHF/<invcNo:020>`), by invcNo.
fn signed_by_branch(state: &Value, bhf_id: &str) -> BTreeMap<u64, Value> {
    state["sales"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{TIN}/{bhf_id}/")))
        .map(|(key, sale)| {
            let invc_no = sale["request"]["invcNo"].as_u64().unwrap();
            assert_eq!(key, &format!("{TIN}/{bhf_id}/{invc_no:020}"));
            (invc_no, sale.clone())
        })
        .collect()
}

/// The longest pause, in seconds, between two consecutive receipts of a branch, by the
/// control unit's clock (whole seconds): how long a restart held the branch up.
fn longest_pause(signed: &BTreeMap<u64, Value>) -> i64 {
    let signed_at: Vec<chrono::NaiveDateTime> = signed
        .values()
        .filter_map(|sale| sale["receipt"]["sdcDateTime"].as_str())
        .filter_map(|at| chrono::NaiveDateTime::parse_from_str(at, "%Y%m%d%H%M%S").ok())
        .collect();
    signed_at
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).num_seconds())
        .max()
        .unwrap_or(0)
}

/// Per branch, the longest time its next sale waited to be signed: for consecutive sales
/// `k`, `k+1` (by invcNo), from when `k+1` was both stored and at the head of the branch
/// (`k` signed) to when it was signed, by the store's own microsecond timestamps. Unlike the
/// pause between receipts, this is not lengthened by clients that had nothing to send
/// (while their cut-off requests wait out the Idempotency-Key in-flight window): it is how
/// long a kill, the restart and the takeover of the branch held a ready sale up.
///
/// Also returns how many outbox rows were claimed more than once: rows a kill left leased
/// and the next process took over (the case the branch lock is for), or retried.
async fn longest_head_wait(dir: &Path, database_url: Option<&str>) -> (BTreeMap<String, i64>, i64) {
    type Times = (
        String,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    );
    const QUERY: &str = "SELECT b.bhf_id, s.created_at, s.signed_at FROM sales s
                         JOIN branches b ON b.id = s.branch_id
                         WHERE s.signed_at IS NOT NULL ORDER BY b.bhf_id, s.invc_no";
    const RECLAIMED: &str = "SELECT COUNT(*) FROM outbox WHERE attempts > 1";
    let (rows, reclaimed): (Vec<Times>, i64) = match database_url {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let rows = client
                .query(QUERY, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            let reclaimed = client.query_one(RECLAIMED, &[]).await.unwrap().get(0);
            (rows, reclaimed)
        }
        None => {
            let path = dir.join("data").join("ushuru.sqlite");
            let connection = rusqlite::Connection::open(path).unwrap();
            let mut statement = connection.prepare(QUERY).unwrap();
            let time = |text: String| {
                chrono::DateTime::parse_from_rfc3339(&text)
                    .unwrap()
                    .with_timezone(&chrono::Utc)
            };
            let rows = statement
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, time(r.get(1)?), time(r.get(2)?)))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let reclaimed = connection.query_row(RECLAIMED, [], |r| r.get(0)).unwrap();
            (rows, reclaimed)
        }
    };
    let mut longest = BTreeMap::new();
    for pair in rows.windows(2) {
        let ((branch, _, signed_before), (next_branch, created, signed)) = (&pair[0], &pair[1]);
        if branch != next_branch {
            continue;
        }
        let ready = (*signed_before).max(*created);
        let wait_ms = (*signed - ready).num_milliseconds();
        let entry = longest.entry(branch.clone()).or_insert(0);
        *entry = (*entry).max(wait_ms);
    }
    (longest, reclaimed)
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
    let (serve, printed) = start_serving(
        &dir,
        port,
        &control_unit,
        database_url.as_deref(),
        &BRANCHES,
    )
    .await;
    // The first branch takes the operator's key; the others' keys are shown once, now.
    let mut keys = BTreeMap::from([(BRANCHES[0].to_owned(), KEY.to_owned())]);
    keys.extend(printed);
    assert_eq!(
        keys.keys().map(String::as_str).collect::<Vec<_>>(),
        BRANCHES,
        "a key for every branch"
    );
    let keys = Arc::new(keys);

    let next_sale = Arc::new(AtomicUsize::new(0));
    // (branch, reference, first 2xx answer)
    let answered: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next_sale, answered, url, keys) = (
                next_sale.clone(),
                answered.clone(),
                url.clone(),
                keys.clone(),
            );
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
                    let bhf_id = BRANCHES[i % BRANCHES.len()];
                    let reference = format!("crash-{bhf_id}-{i:05}");
                    let body =
                        sell_as_until_answered(&client, &url, &keys[bhf_id], &reference).await;
                    answered
                        .lock()
                        .unwrap()
                        .push((bhf_id.to_owned(), reference, body));
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
        serve = Some(
            start_serving(
                &dir,
                port,
                &control_unit,
                database_url.as_deref(),
                &BRANCHES,
            )
            .await
            .0,
        );
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
    // branch -> invcNo -> status
    let mut signed: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (bhf_id, reference, first_answer) in &answered {
        let id = first_answer["purchaseId"].as_i64().unwrap();
        assert!(
            purchase_ids.insert((bhf_id.clone(), id)),
            "{reference}: purchaseId {id} twice"
        );
        loop {
            let status =
                get_json_as(&format!("{url}/v2/etims/sales/{id}/status"), &keys[bhf_id]).await;
            if status["status"] == "SIGNED" {
                let invc_no = status["invcNo"].as_str().unwrap().parse::<u64>().unwrap();
                assert!(
                    signed
                        .entry(bhf_id.clone())
                        .or_default()
                        .insert(invc_no, status)
                        .is_none(),
                    "branch {bhf_id}: invcNo {invc_no} answered for two sales"
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
    let state = get_json(&format!("{control_unit}/_sandbox/state")).await;
    let mut pauses = Vec::new();
    for bhf_id in BRANCHES {
        // One sale per key: invcNo 1..=n of the branch, each signed once by the control unit.
        let ours = signed.remove(bhf_id).unwrap_or_default();
        let per_branch = SALES / BRANCHES.len();
        let expected: Vec<u64> = (1..=per_branch as u64).collect();
        assert_eq!(
            ours.keys().copied().collect::<Vec<_>>(),
            expected,
            "branch {bhf_id}: the accepted sales, numbered without gap"
        );
        let by_control_unit = signed_by_branch(&state, bhf_id);
        assert_eq!(
            by_control_unit.keys().copied().collect::<Vec<_>>(),
            expected,
            "branch {bhf_id}: the control unit signed exactly the accepted sales"
        );
        // Receipt numbers: no gap, no duplicate, and they rise with invcNo (signing order);
        // the device issued no receipt beyond them (nothing was signed twice).
        let receipts: Vec<u64> = by_control_unit
            .values()
            .map(|sale| sale["receipt"]["curRcptNo"].as_u64().unwrap())
            .collect();
        assert_eq!(
            receipts, expected,
            "branch {bhf_id}: receipt numbers follow invcNo without gap"
        );
        let device = &state["devices"][format!("{TIN}/{bhf_id}")];
        assert_eq!(
            device["tot_rcpt_no"].as_u64(),
            Some(per_branch as u64),
            "branch {bhf_id}: receipts issued by the device: {device}"
        );
        for (invc_no, status) in &ours {
            assert_eq!(
                status["receiptSignature"], by_control_unit[invc_no]["receipt"]["rcptSign"],
                "branch {bhf_id}, invcNo {invc_no}: Ushuru holds the control unit's receipt"
            );
        }
        let monitoring =
            get_json_as(&format!("{url}/v2/etims/device/monitoring"), &keys[bhf_id]).await;
        assert_eq!(
            monitoring["sequenceHealthy"], true,
            "branch {bhf_id}: {monitoring}"
        );
        pauses.push(format!("{bhf_id}: {} s", longest_pause(&by_control_unit)));
    }
    // For the record (not asserted): the longest pause in signing per branch, by the
    // control unit's clock (it includes moments when no client had a sale to send), and the
    // longest time a ready sale waited, which is what a kill and restart cost a branch.
    println!(
        "longest pause between two receipts, per branch: {}",
        pauses.join(", ")
    );
    let (waits, reclaimed) = longest_head_wait(&dir, database_url.as_deref()).await;
    println!(
        "longest wait of a ready sale, per branch ({reclaimed} rows claimed again after a kill or a retry): {}",
        waits
            .iter()
            .map(|(bhf_id, ms)| format!("{bhf_id}: {}.{:03} s", ms / 1000, ms % 1000))
            .collect::<Vec<_>>()
            .join(", ")
    );
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
