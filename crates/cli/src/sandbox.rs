//! `ushuru sandbox`: the control-unit emulator as a standalone server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::server::GatewayAccess;
use ushuru_sandbox::{Config, ControlUnit, Mode, Sandbox};

pub const SANDBOX_HELP: &str = r#"Run a control-unit sandbox: an emulator of KRA's OSCU server and of the VSCU JAR that signs
receipts without KRA credentials, validates sales as strictly as KRA, and fails on demand.

It serves every endpoint on three path sets:
  OSCU         /<name> and /etims-api/<name>      e.g. /saveTrnsSalesOsdc  (headers tin, bhfId, cmcKey)
  VSCU JAR     RRA-style paths                    e.g. /trnsSales/saveSales (identity in the body too)
  GavaConnect  /etims-oscu/api/v1/<gateway name>  e.g. .../sendSalesTransaction (bearer token from
               GET /v1/token/generate?grant_type=client_credentials, Basic ushuru-sandbox:ushuru-sandbox)
and a control API under /_sandbox/ (GET /_sandbox lists it): fault injection (result codes, HTTP
statuses, delays, dropped connections, lost answers), the VSCU's upstream link, the clock, reset,
a state dump and receipt verification.

With --mode vscu the sandbox is a VSCU JAR: while its link to KRA is cut it keeps signing for
24 hours after its last contact, then refuses (894) until the link returns. Days are closed with
saveReportZ (irreversible) and read with checkReportZ."#;

pub const SANDBOX_EXAMPLE: &str = r#"EXAMPLE: sign a first sale
  $ ushuru sandbox --listen 127.0.0.1:8088 &

  # 1. initialise the device: the answer's data.info.cmcKey signs every later call
  $ curl -s -X POST http://127.0.0.1:8088/selectInitOsdcInfo -H 'Content-Type: application/json' -d '{"tin":"P051234567A","bhfId":"00","dvcSrlNo":"POS-001"}'
  $ KEY=<data.info.cmcKey from the answer>
  $ H=(-H 'Content-Type: application/json' -H 'tin: P051234567A' -H 'bhfId: 00' -H "cmcKey: $KEY")

  # 2. register the item (a sale may only name registered items)
  $ curl -s -X POST http://127.0.0.1:8088/saveItem "${H[@]}" -d '{"itemCd":"KE3NTU0000001","itemClsCd":"80101505","itemTyCd":"3","itemNm":"Consulting","orgnNatCd":"KE","pkgUnitCd":"NT","qtyUnitCd":"U","taxTyCd":"B","dftPrc":5800,"isrcAplcbYn":"N","useYn":"Y","regrId":"admin","regrNm":"Admin","modrId":"admin","modrNm":"Admin"}'

  # 3. sign invoice 1: 5800.00 with 16 % VAT inside (5000.00 + 800.00)
  $ curl -s -X POST http://127.0.0.1:8088/saveTrnsSalesOsdc "${H[@]}" -d '{"trdInvcNo":"INV-1","invcNo":1,"orgInvcNo":0,"salesTyCd":"N","rcptTyCd":"S","pmtTyCd":"01","salesSttsCd":"02","cfmDt":"20260707114122","salesDt":"20260707","totItemCnt":1,"taxblAmtA":0,"taxblAmtB":5000,"taxblAmtC":0,"taxblAmtD":0,"taxblAmtE":0,"taxRtA":0,"taxRtB":16,"taxRtC":0,"taxRtD":0,"taxRtE":8,"taxAmtA":0,"taxAmtB":800,"taxAmtC":0,"taxAmtD":0,"taxAmtE":0,"totTaxblAmt":5000,"totTaxAmt":800,"totAmt":5800,"prchrAcptcYn":"N","regrId":"admin","regrNm":"Admin","modrId":"admin","modrNm":"Admin","receipt":{"rcptPbctDt":"20260707114122","prchrAcptcYn":"N"},"itemList":[{"itemSeq":1,"itemClsCd":"80101505","itemCd":"KE3NTU0000001","itemNm":"Consulting","pkgUnitCd":"NT","pkg":1,"qtyUnitCd":"U","qty":1,"prc":5800,"splyAmt":5800,"dcRt":0,"dcAmt":0,"taxTyCd":"B","taxblAmt":5000,"taxAmt":800,"totAmt":5800}]}'
  {"resultCd":"000","resultMsg":"It is succeeded","resultDt":"…","data":{"curRcptNo":1,"totRcptNo":1,"intrlData":"…","rcptSign":"…","sdcDateTime":"…"}}

  # 4. make the next sale's answer get lost after it is signed, and watch a client recover
  $ curl -s -X POST http://127.0.0.1:8088/_sandbox/faults -d '{"endpoint":"saveTrnsSalesOsdc","fault":{"kind":"lost_answer"}}'"#;

#[derive(clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on (loopback by default)
    #[arg(long, default_value = "127.0.0.1:8088", env = "USHURU_SANDBOX_LISTEN")]
    listen: SocketAddr,
    /// Keep the state in this SQLite file, so that a restart carries on (default: in memory)
    #[arg(long, value_name = "FILE", env = "USHURU_SANDBOX_STATE")]
    state: Option<PathBuf>,
    /// Behave as KRA's online OSCU or as a local VSCU JAR
    #[arg(long, default_value = "oscu", value_parser = parse_mode)]
    mode: Mode,
    /// Relax invoice numbering (any unused number) and the registered-item check
    #[arg(long)]
    lenient: bool,
    /// Device serials KRA has approved (repeatable); by default every serial is approved
    #[arg(long = "approved-serial", value_name = "SERIAL")]
    approved_serials: Vec<String>,
    /// GavaConnect consumer key accepted by the token endpoint
    #[arg(long, default_value = "ushuru-sandbox")]
    gateway_key: String,
    /// GavaConnect consumer secret accepted by the token endpoint
    #[arg(long, default_value = "ushuru-sandbox")]
    gateway_secret: String,
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
}

pub fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let config = Config {
        mode: args.mode,
        lenient: args.lenient,
        approved_serials: (!args.approved_serials.is_empty())
            .then(|| args.approved_serials.iter().cloned().collect()),
        ..Config::default()
    };
    let file = match &args.state {
        Some(path) => Some(
            StateFile::open(path)
                .with_context(|| format!("cannot open --state {}", path.display()))?,
        ),
        None => None,
    };
    let unit = ControlUnit::new(config, file).context("cannot load the sandbox state")?;
    let gateway = GatewayAccess {
        consumer_key: args.gateway_key,
        consumer_secret: args.gateway_secret,
    };
    let sandbox = Sandbox::new(unit, gateway);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(sandbox, args.listen, args.state, args.mode))
}

async fn serve(
    sandbox: Arc<Sandbox>,
    listen: SocketAddr,
    state: Option<PathBuf>,
    mode: Mode,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let storage = state.map_or_else(|| "in memory".to_owned(), |p| format!("in {}", p.display()));
    tracing::info!(
        "ushuru sandbox ({mode:?}) listening on http://{addr}, state {storage}; control API: http://{addr}/_sandbox"
    );
    sandbox.serve(listener, shutdown_signal()).await?;
    tracing::info!("ushuru sandbox stopped");
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
