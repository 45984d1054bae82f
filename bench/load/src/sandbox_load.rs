//! Drives a running control-unit sandbox with sales over loopback HTTP, as many POS
//! terminals would: N clients, each with its own branch (device) and keep-alive connection,
//! signing consecutive invoices.
//!
//! `--mode throughput`: closed loop, each client sends its next sale as soon as the last is
//! answered; reports signed sales per second and latency percentiles.
//! `--mode rate --rate R`: open loop at R sales/s in all; latency is measured from each
//! sale's scheduled send time, so queueing behind a slow answer counts (no coordinated
//! omission).

// Rates, percentiles and milliseconds of a benchmark: floating point, never money.
#![allow(clippy::float_arithmetic)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use ushuru_kra::{DraftLine, SaleDraft};
use ushuru_tax::{LineInput, LineText, Pricing, TaxRates, calculate_line};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Throughput,
    Rate,
}

#[derive(Parser)]
#[command(about = "Load a running `ushuru sandbox` with signed sales")]
struct Args {
    /// The sandbox, e.g. http://127.0.0.1:8088
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value = "throughput")]
    mode: Mode,
    /// Concurrent clients, each a branch with its own device and keep-alive connection
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long to run, in seconds (after a one-second warm-up)
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Total sales per second in `rate` mode
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// The taxpayer PIN the devices belong to (use a new one per run on a kept state file)
    #[arg(long, default_value = "P051234567A")]
    tin: String,
}

const ITEMS: [(&str, &str, &str); 3] = [
    ("LOAD-SODA", "B", "70"),
    ("LOAD-FLOUR", "A", "200"),
    ("LOAD-FUEL", "E", "179.30"),
];

struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    async fn open(url: &str) -> anyhow::Result<Self> {
        let host = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let stream = tokio::net::TcpStream::connect(&host)
            .await
            .with_context(|| format!("cannot connect to {host}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection { sender, host })
    }

    async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Value> {
        let mut request = hyper::Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(request.body(Full::new(body))?)
            .await?;
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// One branch: its device key, its connection and its pre-built sales.
struct Terminal {
    connection: Connection,
    tin: String,
    bhf_id: String,
    cmc_key: String,
    next: usize,
    sales: Vec<Bytes>,
}

impl Terminal {
    async fn set_up(url: &str, tin: &str, index: usize, count: usize) -> anyhow::Result<Self> {
        let bhf_id = format!("{index:02}");
        let mut connection = Connection::open(url).await?;
        let init = json!({"tin": tin, "bhfId": bhf_id, "dvcSrlNo": format!("LOAD-{bhf_id}")});
        let answer = connection
            .post("/selectInitOsdcInfo", &[], Bytes::from(init.to_string()))
            .await?;
        let Some(cmc_key) = answer["data"]["info"]["cmcKey"].as_str().map(str::to_owned) else {
            bail!(
                "initialising branch {bhf_id} failed: {answer} (use a fresh --tin on a kept state file)"
            );
        };
        let mut terminal = Terminal {
            connection,
            tin: tin.to_owned(),
            bhf_id,
            cmc_key,
            next: 0,
            sales: Vec::new(),
        };
        for (code, band, _) in ITEMS {
            let item = json!({"itemCd": code, "itemClsCd": "50202306", "itemTyCd": "2", "itemNm": code, "orgnNatCd": "KE", "pkgUnitCd": "NT", "qtyUnitCd": "U", "taxTyCd": band, "dftPrc": 1, "isrcAplcbYn": "N", "useYn": "Y", "regrId": "load", "regrNm": "load", "modrId": "load", "modrNm": "load"});
            let answer = terminal
                .call("/saveItem", Bytes::from(item.to_string()))
                .await?;
            if answer["resultCd"] != "000" {
                bail!("saveItem failed: {answer}");
            }
        }
        terminal.sales = (1..=count as u64)
            .map(|invc_no| terminal.sale(invc_no))
            .collect::<anyhow::Result<_>>()?;
        Ok(terminal)
    }

    fn sale(&self, invc_no: u64) -> anyhow::Result<Bytes> {
        let confirmed = chrono::Utc::now().naive_utc();
        let lines = ITEMS
            .iter()
            .enumerate()
            .map(|(i, (code, band, price))| {
                let qty = ((invc_no as usize + i) % 5 + 1).to_string();
                let text = LineText {
                    price,
                    band,
                    qty: &qty,
                    pricing: Pricing::VatInclusive,
                    discount: None,
                    discount_rate: None,
                };
                let priced = calculate_line(&LineInput::parse(&text)?, &TaxRates::kenya())?;
                Ok(DraftLine {
                    item_cd: (*code).into(),
                    item_nm: (*code).into(),
                    item_cls_cd: Some("50202306".into()),
                    pkg_unit_cd: "NT".into(),
                    qty_unit_cd: "U".into(),
                    priced,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let request = SaleDraft {
            tin: self.tin.clone(),
            bhf_id: self.bhf_id.clone(),
            invc_no,
            org_invc_no: 0,
            trd_invc_no: format!("LOAD-{}-{invc_no}", self.bhf_id),
            rcpt_ty_cd: "S".into(),
            sales_ty_cd: "N".into(),
            pmt_ty_cd: Some("01".into()),
            cust_tin: None,
            cust_nm: None,
            rfd_rsn_cd: None,
            confirmed,
            operator: "load".into(),
            lines,
        }
        .into_request(&TaxRates::kenya())?;
        Ok(Bytes::from(serde_json::to_vec(&request)?))
    }

    async fn call(&mut self, path: &str, body: Bytes) -> anyhow::Result<Value> {
        let headers = [
            ("tin", self.tin.as_str()),
            ("bhfId", self.bhf_id.as_str()),
            ("cmcKey", self.cmc_key.as_str()),
        ];
        self.connection.post(path, &headers, body).await
    }

    /// Signs the next sale; an answer other than 000 is an error of the benchmark.
    async fn sign_next(&mut self) -> anyhow::Result<()> {
        let Some(body) = self.sales.get(self.next).cloned() else {
            bail!("ran out of pre-built sales")
        };
        self.next += 1;
        let answer = self.call("/saveTrnsSalesOsdc", body).await?;
        if answer["resultCd"] != "000" {
            bail!("sale refused: {answer}");
        }
        Ok(())
    }
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
    let per_client_rate = args.rate as f64 / args.clients as f64;
    // Enough pre-built sales for the run: generous for throughput, exact for rate.
    let per_client = match args.mode {
        Mode::Throughput => 60_000usize.max(30_000 * args.seconds as usize / args.clients + 1_000),
        Mode::Rate => (per_client_rate * (args.seconds + 2) as f64) as usize + 100,
    };
    eprintln!(
        "setting up {} branches with {per_client} sales each…",
        args.clients
    );
    let mut terminals = Vec::new();
    for index in 0..args.clients {
        terminals.push(Terminal::set_up(&args.url, &args.tin, index, per_client).await?);
    }

    let warm_up = Duration::from_secs(1);
    let run = Duration::from_secs(args.seconds);
    let start = Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = terminals
        .into_iter()
        .enumerate()
        .map(|(index, mut terminal)| {
            let mode = args.mode;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let interval = Duration::from_secs_f64(1.0 / per_client_rate);
                // Spread the clients' schedules over one interval.
                let mut scheduled = start + interval.mul_f64(index as f64 / 16.0);
                tokio::time::sleep_until(start.into()).await;
                loop {
                    let sent = match mode {
                        Mode::Throughput => Instant::now(),
                        Mode::Rate => {
                            tokio::time::sleep_until(scheduled.into()).await;
                            scheduled
                        }
                    };
                    if sent >= start + warm_up + run {
                        break;
                    }
                    terminal.sign_next().await?;
                    if sent >= start + warm_up {
                        latencies.push(sent.elapsed());
                    }
                    scheduled += interval;
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort_unstable();
    let signed = latencies.len();
    let rate = signed as f64 / run.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let result = json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "clients": args.clients,
        "seconds": args.seconds,
        "target_rate": (args.mode == Mode::Rate).then_some(args.rate),
        "signed": signed,
        "sales_per_second": rate.round(),
        "latency_ms": {
            "p50": ms(percentile(&latencies, 50.0)),
            "p90": ms(percentile(&latencies, 90.0)),
            "p99": ms(percentile(&latencies, 99.0)),
            "max": ms(latencies.last().copied().unwrap_or_default()),
        }
    });
    println!("{result}");
    Ok(())
}
