//! Drives a running `ushuru serve` with sales over its REST API (`POST /v2/etims/sale`), as
//! many POS terminals of many branches would: N keep-alive clients spread round-robin over
//! the branches whose API keys are given, each sale with its own `Idempotency-Key` and
//! `clientReference`.
//!
//! Every answer must be `200` with `"status": "SIGNED"` and a receipt signature; anything
//! else (a 202 PENDING_SYNC, a 4xx/5xx, a transport error, a timeout) is counted as an error
//! by kind and reported, never retried.
//!
//! `--mode throughput`: closed loop, each client sends its next sale as soon as the last is
//! answered. Signed sales are counted as they complete inside the measured window (after the
//! warm-up), so the rate is the sustained one.
//! `--mode rate --rate R`: open loop at R sales/s in all, each client on a fixed schedule;
//! latency is measured from each sale's scheduled send time, so queueing behind a slow
//! answer counts (no coordinated omission).
//!
//! With `--pid`, the server's resident memory (`VmRSS` in `/proc/<pid>/status`) is sampled
//! every 100 ms and its peak reported, with the kernel's own high-water mark (`VmHWM`).
//! Over the measured window the CPU time of the server, of this tool, of the PostgreSQL
//! backends (processes named `postgres`) and of the whole machine is read from `/proc`, so
//! that a run can say who used the cores.

// Rates, percentiles and milliseconds of a benchmark: floating point, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Throughput,
    Rate,
}

#[derive(Parser)]
#[command(about = "Load a running `ushuru serve` with sales over its REST API")]
struct Args {
    /// The server, e.g. http://127.0.0.1:8080
    #[arg(long)]
    url: String,
    /// A file of `BRANCH KEY` lines, one per branch: the API keys to sell with
    #[arg(long)]
    keys: PathBuf,
    /// The taxpayer PIN the branches belong to (the sale's supplierPin)
    #[arg(long, default_value = "P000000000A")]
    tin: String,
    #[arg(long, value_enum, default_value = "throughput")]
    mode: Mode,
    /// Concurrent keep-alive clients, spread round-robin over the branches
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Warm-up before the measured window, in seconds (load runs, nothing is measured)
    #[arg(long, default_value_t = 5)]
    warm_up: u64,
    /// The measured window, in seconds
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Total sales per second in `rate` mode
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// A tag that makes this run's idempotency keys and client references unique
    #[arg(long, default_value = "run")]
    tag: String,
    /// The server's process id, to sample its resident memory
    #[arg(long)]
    pid: Option<u32>,
    /// Give up on an answer after this many seconds (counted as an error)
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    async fn open(host: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(host)
            .await
            .with_context(|| format!("cannot connect to {host}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection {
            sender,
            host: host.to_owned(),
        })
    }

    /// Posts a sale; the answer's HTTP status and body (`Null` if it is not JSON).
    async fn sell(
        &mut self,
        key: &str,
        reference: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Value)> {
        let request = hyper::Request::post("/v2/etims/sale")
            .header("host", &self.host)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .header("idempotency-key", reference)
            .body(Full::new(body))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

/// What one answer was: signed, or an error of the kind named.
fn classify(status: u16, body: &Value) -> Result<(), String> {
    let sale_status = body["status"].as_str();
    let signature = body["receiptSignature"].as_str().filter(|s| !s.is_empty());
    match (status, sale_status, signature) {
        (200, Some("SIGNED"), Some(_)) => Ok(()),
        (200, Some("SIGNED"), None) => Err("200 SIGNED without a receipt signature".into()),
        _ => {
            let what = sale_status
                .or_else(|| body["code"].as_str())
                .unwrap_or("(no status or code)");
            Err(format!("{status} {what}"))
        }
    }
}

/// A branch's key.
#[derive(Clone)]
struct Branch {
    bhf_id: String,
    key: String,
}

fn read_keys(path: &PathBuf) -> anyhow::Result<Vec<Branch>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut branches = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((bhf_id, key)) = line.split_once(char::is_whitespace) else {
            bail!("{}:{}: expected `BRANCH KEY`", path.display(), number + 1);
        };
        branches.push(Branch {
            bhf_id: bhf_id.to_owned(),
            key: key.trim().to_owned(),
        });
    }
    if branches.is_empty() {
        bail!("{} names no branch", path.display());
    }
    Ok(branches)
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// Latencies of the signed sales of the measured window.
    latencies: Vec<Duration>,
    /// Signed sales counted towards the rate (see the module documentation).
    signed_in_window: u64,
    signed_total: u64,
    sent_total: u64,
    errors: BTreeMap<String, u64>,
}

struct Plan {
    mode: Mode,
    host: String,
    tin: String,
    tag: String,
    date: String,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    interval: Duration,
    timeout: Duration,
}

async fn client(plan: Arc<Plan>, index: usize, branch: Branch) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut connection = Some(Connection::open(&plan.host).await?);
    // Spread the clients' schedules over one interval.
    let mut scheduled = plan.start + plan.interval.mul_f64((index % 97) as f64 / 97.0);
    tokio::time::sleep_until(plan.start.into()).await;
    let mut sequence = 0u64;
    loop {
        let sent = match plan.mode {
            Mode::Throughput => Instant::now(),
            Mode::Rate => {
                tokio::time::sleep_until(scheduled.into()).await;
                scheduled
            }
        };
        if sent >= plan.end {
            break;
        }
        scheduled += plan.interval;
        sequence += 1;
        let reference = format!("{}-{}-{index}-{sequence}", plan.tag, branch.bhf_id);
        let body = json!({
            "supplierPin": plan.tin,
            "clientReference": reference,
            "amount": "116.00",
            "invoiceDate": plan.date,
            "itemDescription": "Soda",
            "taxAmount": "16.00",
            "pmtTyCd": "01",
            "taxBand": "B",
        });
        let body = Bytes::from(body.to_string());
        let open = match connection.take() {
            Some(open) => Ok(open),
            None => Connection::open(&plan.host).await,
        };
        tally.sent_total += 1;
        let answer = match open {
            Err(e) => Err(format!("connect: {e}")),
            Ok(mut open) => {
                match tokio::time::timeout(plan.timeout, open.sell(&branch.key, &reference, body))
                    .await
                {
                    Err(_) => Err("timeout".to_owned()),
                    Ok(Err(e)) => Err(format!("transport: {e}")),
                    Ok(Ok((status, body))) => {
                        // Keep the connection only after a complete exchange.
                        connection = Some(open);
                        classify(status, &body)
                    }
                }
            }
        };
        let done = Instant::now();
        match answer {
            Ok(()) => {
                tally.signed_total += 1;
                let counted = match plan.mode {
                    Mode::Throughput => done >= plan.measure_from && done < plan.end,
                    Mode::Rate => sent >= plan.measure_from,
                };
                if counted {
                    tally.signed_in_window += 1;
                }
                if sent >= plan.measure_from {
                    tally.latencies.push(done.saturating_duration_since(sent));
                }
            }
            Err(kind) => *tally.errors.entry(kind).or_default() += 1,
        }
    }
    Ok(tally)
}

/// A `kB` field of `/proc/<pid>/status`, if the process and the field exist.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// Linux reports the CPU times of `/proc` in USER_HZ, 100 per second on every architecture
/// Ushuru runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU ticks of a process (`/proc/<pid>/stat` fields 14 and 15).
fn process_ticks(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy and total CPU ticks of the whole machine (the `cpu` line of `/proc/stat`), and its
/// number of CPUs.
fn machine_ticks() -> Option<(u64, u64, usize)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    let cpus = text
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    Some((total.saturating_sub(idle), total, cpus))
}

/// User + system CPU ticks of every process named `postgres` (the cluster's backends),
/// by process id, so that only the processes alive at both ends of a window are compared.
fn postgres_ticks() -> Option<BTreeMap<String, u64>> {
    let mut ticks = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let is_postgres = std::fs::read_to_string(entry.path().join("comm"))
            .is_ok_and(|comm| comm.trim_end() == "postgres");
        if let Some(t) = is_postgres.then(|| process_ticks(&pid)).flatten() {
            ticks.insert(pid, t);
        }
    }
    Some(ticks)
}

/// CPU readings at one instant.
#[derive(Clone)]
struct CpuReading {
    server: Option<u64>,
    tool: Option<u64>,
    postgres: Option<BTreeMap<String, u64>>,
    machine: Option<(u64, u64, usize)>,
}

fn read_cpu(pid: Option<u32>) -> CpuReading {
    CpuReading {
        server: pid.and_then(|p| process_ticks(&p.to_string())),
        tool: process_ticks("self"),
        postgres: postgres_ticks(),
        machine: machine_ticks(),
    }
}

/// Cores used over the window between two readings, `seconds` long.
fn cpu_used(before: CpuReading, after: CpuReading, seconds: f64) -> Value {
    let cores = |a: Option<u64>, b: Option<u64>| {
        a.zip(b).map(|(a, b)| {
            (b.saturating_sub(a) as f64 / TICKS_PER_SECOND / seconds * 100.0).round() / 100.0
        })
    };
    let machine =
        before
            .machine
            .zip(after.machine)
            .map(|((busy_a, total_a, cpus), (busy_b, total_b, _))| {
                let share = busy_b.saturating_sub(busy_a) as f64
                    / total_b.saturating_sub(total_a).max(1) as f64;
                ((share * cpus as f64 * 100.0).round() / 100.0, cpus)
            });
    // Backends that lived through the window; one that ended inside it is not counted.
    let postgres = before.postgres.zip(after.postgres).map(|(a, b)| {
        let (start, end): (u64, u64) = a
            .iter()
            .filter_map(|(pid, t)| b.get(pid).map(|u| (*t, *u)))
            .fold((0, 0), |(s, e), (t, u)| (s + t, e + u));
        (start, end)
    });
    json!({
        "server_cores": cores(before.server, after.server),
        "postgres_cores": cores(postgres.map(|p| p.0), postgres.map(|p| p.1)),
        "load_tool_cores": cores(before.tool, after.tool),
        "machine_busy_cores": machine.map(|(busy, _)| busy),
        "machine_cores": machine.map(|(_, cpus)| cpus),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.seconds == 0 || (args.mode == Mode::Rate && args.rate == 0) {
        bail!("--clients, --seconds and (in rate mode) --rate must be positive");
    }
    let branches = read_keys(&args.keys)?;
    let host = args
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let per_client_rate = args.rate as f64 / args.clients as f64;
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + Duration::from_secs(args.warm_up);
    let plan = Arc::new(Plan {
        mode: args.mode,
        host,
        tin: args.tin.clone(),
        tag: args.tag.clone(),
        date: chrono::Local::now().format("%Y-%m-%d").to_string(),
        start,
        measure_from,
        end: measure_from + Duration::from_secs(args.seconds),
        interval: Duration::from_secs_f64(1.0 / per_client_rate),
        timeout: Duration::from_secs(args.timeout),
    });

    // The server's memory, sampled until the load stops.
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let peak_rss_kb = Arc::new(AtomicU64::new(0));
    let sampler = args.pid.map(|pid| {
        let (stop, peak) = (Arc::clone(&stop_sampling), Arc::clone(&peak_rss_kb));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kb) = proc_status_kb(pid, "VmRSS") {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });

    // CPU use over the measured window, read at its two ends.
    let pid = args.pid;
    let (window_start, window_end) = (plan.measure_from, plan.end);
    let cpu_window = tokio::spawn(async move {
        tokio::time::sleep_until(window_start.into()).await;
        let before = read_cpu(pid);
        tokio::time::sleep_until(window_end.into()).await;
        let after = read_cpu(pid);
        cpu_used(before, after, (window_end - window_start).as_secs_f64())
    });

    eprintln!(
        "{} clients over {} branches, {:?}, {} s warm-up + {} s measured",
        args.clients,
        branches.len(),
        args.mode,
        args.warm_up,
        args.seconds
    );
    let tasks: Vec<_> = (0..args.clients)
        .map(|index| {
            let branch = branches[index % branches.len()].clone();
            tokio::spawn(client(Arc::clone(&plan), index, branch))
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await??;
        total.latencies.extend(tally.latencies);
        total.signed_in_window += tally.signed_in_window;
        total.signed_total += tally.signed_total;
        total.sent_total += tally.sent_total;
        for (kind, count) in tally.errors {
            *total.errors.entry(kind).or_default() += count;
        }
    }
    stop_sampling.store(true, Ordering::Relaxed);
    if let Some(sampler) = sampler {
        sampler.await?;
    }
    let hwm_kb = args.pid.and_then(|pid| proc_status_kb(pid, "VmHWM"));
    let cpu = cpu_window.await?;

    total.latencies.sort_unstable();
    let latencies = &total.latencies;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let errors_total: u64 = total.errors.values().sum();
    let result = json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "clients": args.clients,
        "branches": branches.len(),
        "warm_up_seconds": args.warm_up,
        "seconds": args.seconds,
        "target_rate": (args.mode == Mode::Rate).then_some(args.rate),
        "signed_in_window": total.signed_in_window,
        "sales_per_second": (total.signed_in_window as f64 / args.seconds as f64).round(),
        "sent_total": total.sent_total,
        "signed_total": total.signed_total,
        "errors_total": errors_total,
        "errors": total.errors,
        "latency_ms": {
            "count": latencies.len(),
            "p50": ms(percentile(latencies, 50.0)),
            "p90": ms(percentile(latencies, 90.0)),
            "p99": ms(percentile(latencies, 99.0)),
            "p999": ms(percentile(latencies, 99.9)),
            "max": ms(latencies.last().copied().unwrap_or_default()),
        },
        "server_peak_rss_kb": args.pid.map(|_| peak_rss_kb.load(Ordering::Relaxed)),
        "server_vmhwm_kb": hwm_kb,
        "cpu_in_window": cpu,
    });
    println!("{result}");
    Ok(())
}
