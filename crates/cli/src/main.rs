//! `ushuru`: the command-line entry point.

mod admin;
mod calc;
mod sandbox;
mod serve;

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ushuru_tax::{TaxBand, TaxRate, TaxRates};

/// mimalloc instead of glibc's malloc: a sale allocates many small, short-lived buffers
/// (JSON, SQL parameters, HTTP), and under load glibc's allocator took about a quarter of
/// the server's CPU (`perf`: `_int_malloc`, `_int_free`, `malloc_consolidate`,
/// `unlink_chunk`). Measured in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ushuru",
    version,
    about = "Ushuru: self-hosted KRA eTIMS middleware"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Price invoices: lines in, KRA's line and invoice amounts out (JSON or JSON Lines)
    #[command(long_about = CALC_HELP, after_long_help = CALC_EXAMPLE)]
    Calc(CalcArgs),
    /// Run the service: the taxid-compatible REST API, signing through a control unit
    Serve(serve::ServeArgs),
    /// Run a control-unit sandbox (KRA OSCU / VSCU emulator with fault injection)
    #[command(long_about = sandbox::SANDBOX_HELP, after_long_help = sandbox::SANDBOX_EXAMPLE)]
    Sandbox(sandbox::SandboxArgs),
    /// Bring the database's schema up to date (serve also does it at start)
    Migrate(admin::MigrateArgs),
    /// Operator commands on the database: operator keys, branch keys, tenants, audit log
    Admin(admin::AdminArgs),
}

const CALC_HELP: &str = r#"Price invoices with the exact VAT arithmetic of KRA eTIMS: the rules of the taxid-etims
0.8.1 reference (ROUND_HALF_UP, 2 decimals for money, 4 for quantities, VAT split from each
line's total).

INPUT (stdin, or --input FILE) is one JSON object, or JSON Lines with one invoice per line:

  {"lines":[{"name", "item_code", "price", "band", "qty", "price_is_inclusive",
             "discount"?, "discount_rate"?}]}

  name, item_code     the item, as KRA will know it (non-empty strings)
  price               unit price (rounded HALF_UP to 2 decimals)
  band                tax band: A exempt 0 %, B VAT 16 %, C zero-rated, D non-VAT, E 8 %
  qty                 quantity above zero (rounded HALF_UP to 4 decimals)
  price_is_inclusive  true if the price includes VAT, false to add VAT per unit
  discount            optional discount amount off qty × price
  discount_rate       optional discount in percent (at most 2 decimals); not with discount

Numbers may be JSON numbers or strings ("12.50"); they are read exactly, never as floats.
If the first line holds a whole JSON value the input is JSON Lines, else one document.

OUTPUT has one JSON line per invoice, in input order:
  lines   itemCd, itemNm, qty, uprc, splyAmt, dcRt, dcAmt, taxblAmt, taxAmt, totAmt, taxTyCd
  totals  totItemCnt, totTaxblAmt, totTaxAmt, totAmt and KRA's per-band fields
          taxblAmtA..E, taxRtA..E (percent), taxAmtA..E
Decimals are strings with a fixed scale (money and percentages 2, quantities 4).

An invalid invoice writes, on its line,
  {"error":{"invoice":N,"line":M,"field":"…","code":"…","message":"…"}}
and the rest of the stream is still priced. Invoices and lines are numbered from 1; line
and field are null when the whole invoice is at fault.

EXIT STATUS: 0 when every invoice was priced, 1 when at least one was invalid, 2 when the
input could not be read or an option is wrong."#;

const CALC_EXAMPLE: &str = "\
EXAMPLE:
  $ echo '{\"lines\":[{\"name\":\"Soda\",\"item_code\":\"SODA-500\",\"price\":\"70\",\"band\":\"B\",\"qty\":2,\"price_is_inclusive\":true}]}' | ushuru calc
  {\"lines\":[{\"itemCd\":\"SODA-500\",\"itemNm\":\"Soda\",\"qty\":\"2.0000\",\"uprc\":\"70.00\",\"splyAmt\":\"140.00\",\"dcRt\":\"0.00\",\"dcAmt\":\"0.00\",\"taxblAmt\":\"120.69\",\"taxAmt\":\"19.31\",\"totAmt\":\"140.00\",\"taxTyCd\":\"B\"}],\"totals\":{\"totItemCnt\":1,\"totTaxblAmt\":\"120.69\",\"totTaxAmt\":\"19.31\",\"totAmt\":\"140.00\",\"taxblAmtA\":\"0.00\",\"taxblAmtB\":\"120.69\",\"taxblAmtC\":\"0.00\",\"taxblAmtD\":\"0.00\",\"taxblAmtE\":\"0.00\",\"taxRtA\":\"0.00\",\"taxRtB\":\"16.00\",\"taxRtC\":\"0.00\",\"taxRtD\":\"0.00\",\"taxRtE\":\"8.00\",\"taxAmtA\":\"0.00\",\"taxAmtB\":\"19.31\",\"taxAmtC\":\"0.00\",\"taxAmtD\":\"0.00\",\"taxAmtE\":\"0.00\"}}

  $ ushuru calc --input examples/invoice.json
  $ ushuru calc --rate E=10 < invoices.jsonl > priced.jsonl";

#[derive(clap::Args)]
struct CalcArgs {
    /// Read invoices from FILE instead of standard input
    #[arg(long, short, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Override a band's rate in percent, e.g. --rate E=10 (KRA publishes rates in code class 04)
    #[arg(long = "rate", value_name = "BAND=PERCENT", value_parser = parse_rate_override)]
    rates: Vec<(TaxBand, TaxRate)>,
    /// Worker threads (default: one per CPU core)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
}

fn parse_rate_override(text: &str) -> Result<(TaxBand, TaxRate), String> {
    let (band, rate) = text
        .split_once('=')
        .ok_or("expected BAND=PERCENT, e.g. B=16")?;
    Ok((
        band.parse().map_err(|e| format!("{e}"))?,
        rate.parse().map_err(|e| format!("{e}"))?,
    ))
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // `serve --config FILE` fills what the command line and the environment left unset.
    if let (Command::Serve(args), Some(("serve", serve_matches))) =
        (&mut cli.command, matches.subcommand())
        && let Err(error) = args.apply_config_file(serve_matches)
    {
        eprintln!("error: {error:#}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Calc(args) => run_calc(args),
        Command::Serve(args) => {
            init_logging();
            serve::run(args).map(|()| ExitCode::SUCCESS)
        }
        Command::Sandbox(args) => {
            init_logging();
            sandbox::run(args).map(|()| ExitCode::SUCCESS)
        }
        Command::Migrate(args) => {
            init_logging();
            admin::migrate(args).map(|()| ExitCode::SUCCESS)
        }
        Command::Admin(args) => {
            init_logging();
            admin::run(args).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// Logs to standard error; `RUST_LOG` (e.g. `debug`) sets the level, `info` by default.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}

fn run_calc(args: CalcArgs) -> anyhow::Result<ExitCode> {
    let rates = args
        .rates
        .iter()
        .fold(TaxRates::kenya(), |rates, &(band, rate)| {
            rates.with_rate(band, rate)
        });
    let workers = match args.jobs {
        Some(jobs) => usize::from(jobs),
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let input: Box<dyn Read + Send> = match &args.input {
        Some(path) => Box::new(
            File::open(path).with_context(|| format!("cannot open --input {}", path.display()))?,
        ),
        None => Box::new(io::stdin()),
    };
    let mut stdout = io::stdout().lock();
    match calc::calculate_stream(input, &mut stdout, &rates, workers) {
        Ok(summary) if summary.invalid > 0 => Ok(ExitCode::from(1)),
        Ok(_) => Ok(ExitCode::SUCCESS),
        // A reader that went away (`ushuru calc | head`) is not an error of ours.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("reading invoices or writing results"),
    }
}
