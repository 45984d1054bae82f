//! `ushuru serve`: the service. With no configuration it keeps its data in `./ushuru-data/`
//! (SQLite), signs through the built-in sandbox, provisions a demo taxpayer with branch 00
//! and an initialised device, and prints an API key with a ready-to-paste curl.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use ushuru_api::keys::{SealedKeys, binding};
use ushuru_api::provision::{
    BUILT_IN_SANDBOX, ControlUnits, InitError, Provisioning, serve_branch,
};
use ushuru_api::{AppState, Branches};
use ushuru_engine::{Pipeline, SystemClock};
use ushuru_kra::{ClientConfig, InProcessUnit, KraClient, Profile, Timeouts};
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::server::GatewayAccess;
use ushuru_sandbox::{ControlUnit, Sandbox};
use ushuru_store::{DeviceRecord, NewAuditEvent, Scope, Store};
use ushuru_tax::TaxRates;
use ushuru_vault::{Keyring, Vault};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, env = "USHURU_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the SQLite database and the built-in sandbox's state are kept
    #[arg(long, env = "USHURU_DATA_DIR", default_value = "ushuru-data")]
    data_dir: PathBuf,
    /// A PostgreSQL URL (postgres://…) instead of the SQLite file in the data directory
    #[arg(long, env = "USHURU_DATABASE_URL")]
    database_url: Option<String>,
    /// The bootstrap taxpayer's PIN
    #[arg(long, env = "USHURU_TIN", default_value = "P000000000A")]
    tin: String,
    /// The bootstrap branches, comma-separated (e.g. `00,01,02`): each is created with its
    /// device initialised on first start. Branches created earlier keep being served.
    #[arg(long, env = "USHURU_BRANCH", default_value = "00", value_delimiter = ',', value_parser = parse_bhf_id)]
    branch: Vec<String>,
    /// The serial of the first bootstrap branch's device; the others get `<serial>-<branch>`
    #[arg(long, env = "USHURU_DEVICE_SERIAL", default_value = "USHURU-DEMO-001")]
    device_serial: String,
    /// A control unit to sign with instead of the built-in sandbox (an OSCU server, a VSCU
    /// JAR, or anything compatible)
    #[arg(long, env = "USHURU_CONTROL_UNIT", value_name = "URL")]
    control_unit: Option<String>,
    /// How to talk to --control-unit: oscu, vscu or gavaconnect
    #[arg(long, env = "USHURU_CONTROL_UNIT_PROFILE", default_value = "oscu", value_parser = parse_profile)]
    control_unit_profile: Profile,
    /// How long a sale request waits for its receipt before answering 202 PENDING_SYNC
    #[arg(long, env = "USHURU_SALE_DEADLINE_MS", default_value_t = 10_000)]
    sale_deadline_ms: u64,
    /// How long Idempotency-Key answers are kept
    #[arg(long, env = "USHURU_IDEMPOTENCY_HOURS", default_value_t = 24)]
    idempotency_hours: u64,
    /// Failed authentications from one address, or with one key prefix, within
    /// --auth-failure-window-secs, after which further attempts get 429 with Retry-After
    #[arg(long, env = "USHURU_AUTH_FAILURE_LIMIT", default_value_t = 10)]
    auth_failure_limit: u32,
    /// The window of --auth-failure-limit, in seconds
    #[arg(long, env = "USHURU_AUTH_FAILURE_WINDOW_SECS", default_value_t = 60)]
    auth_failure_window_secs: u64,
    /// How long an OAuth access token from POST /oauth/token lives, in seconds
    #[arg(long, env = "USHURU_OAUTH_TOKEN_TTL_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(60..=86_400))]
    oauth_token_ttl_secs: u64,
    /// The master key of the cmcKey vault, in a file (32 bytes as base64 or hex). The key
    /// itself may instead be given in `USHURU_MASTER_KEY` (never as a flag: a command line
    /// is visible to every user of the machine). With neither, a development key is
    /// generated in the data directory, with a warning.
    #[arg(long, env = "USHURU_MASTER_KEY_FILE", value_name = "FILE")]
    master_key_file: Option<PathBuf>,
    /// An optional TOML file with any of the options above (as `snake_case` keys, e.g.
    /// `listen = "127.0.0.1:9000"`); options given on the command line or as USHURU_*
    /// variables take precedence over it
    #[arg(long, env = "USHURU_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The TOML configuration file: the options of `serve`, every one optional. Unknown keys
/// are refused, so that a misspelt option is never silently ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    tin: Option<String>,
    branch: Option<String>,
    device_serial: Option<String>,
    control_unit: Option<String>,
    control_unit_profile: Option<String>,
    sale_deadline_ms: Option<u64>,
    idempotency_hours: Option<u64>,
    master_key_file: Option<PathBuf>,
    auth_failure_limit: Option<u32>,
    auth_failure_window_secs: Option<u64>,
    oauth_token_ttl_secs: Option<u64>,
}

impl ServeArgs {
    /// Fills every option that neither the command line nor a USHURU_* variable set from
    /// `--config`, if given.
    pub fn apply_config_file(&mut self, matches: &clap::ArgMatches) -> anyhow::Result<()> {
        let Some(path) = &self.config else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let file: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid Ushuru configuration", path.display()))?;
        let unset = |id: &str| {
            matches!(
                matches.value_source(id),
                None | Some(clap::parser::ValueSource::DefaultValue)
            )
        };
        macro_rules! from_file {
            ($($field:ident => $convert:expr),* $(,)?) => {
                $(if let Some(value) = file.$field
                    && unset(stringify!($field))
                {
                    self.$field = $convert(value)?;
                })*
            };
        }
        from_file!(
            listen => anyhow::Ok,
            data_dir => anyhow::Ok,
            database_url => |v| anyhow::Ok(Some(v)),
            tin => anyhow::Ok,
                        branch => |v: String| v
                .split(',')
                .map(parse_bhf_id)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("{}: branch: {e}", path.display())),
            device_serial => anyhow::Ok,
            control_unit => |v| anyhow::Ok(Some(v)),
            control_unit_profile => |v: String| parse_profile(&v)
                .map_err(|e| anyhow::anyhow!("{}: control_unit_profile: {e}", path.display())),
                        sale_deadline_ms => anyhow::Ok,
            idempotency_hours => anyhow::Ok,
            master_key_file => |v| anyhow::Ok(Some(v)),
            auth_failure_limit => anyhow::Ok,
            auth_failure_window_secs => anyhow::Ok,
            oauth_token_ttl_secs => anyhow::Ok,
        );
        Ok(())
    }
}

pub(crate) fn parse_profile(text: &str) -> Result<Profile, String> {
    text.parse()
}

/// A KRA branch id: two digits (`00` is the head office).
pub(crate) fn parse_bhf_id(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a branch id (two digits, e.g. 00)"))
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let database = match &args.database_url {
        Some(url) => url.clone(),
        None => args
            .data_dir
            .join("ushuru.sqlite")
            .to_string_lossy()
            .into_owned(),
    };
    let store = Store::connect(&database)
        .await
        .context("cannot open the database")?;
    // Before anything is written: on SQLite a second process on the same data directory is
    // refused here (its relays could otherwise take over this one's leases); on PostgreSQL
    // the connection that will hold the branch locks opens now or the start fails.
    store
        .lock_for_serving()
        .await
        .context("cannot serve this database")?;
    let applied = store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "database migrated");
    }
    let vault = open_vault(
        &args.data_dir,
        args.master_key_file.as_deref(),
        DevelopmentKey::MakeIfMissing,
    )?;
    seal_plaintext_cmc_keys(&store, &vault).await?;

    // The built-in sandbox runs in this process, started when a branch first needs it:
    // with no --control-unit, for a branch provisioned on it earlier, or for a SANDBOX
    // branch provisioned while serving.
    let control_units = Arc::new(ServeControlUnits {
        data_dir: args.data_dir.clone(),
        configured: args
            .control_unit
            .clone()
            .map(|url| (url, args.control_unit_profile)),
        sandbox: Mutex::new(None),
    });
    let (bootstrap_unit, bootstrap_profile, receipt_host) = match &args.control_unit {
        Some(url) => (url.clone(), args.control_unit_profile, "etims.kra.go.ke"),
        None => (
            BUILT_IN_SANDBOX.to_owned(),
            Profile::Oscu,
            "etims-sbx.kra.go.ke",
        ),
    };

    // The bootstrap taxpayer and its branches, each with its device initialised.
    let audit = |action: &str| NewAuditEvent::new(chrono::Utc::now(), "serve", action);
    let tenant = match store.tenant_by_tin(&args.tin).await? {
        Some(tenant) => tenant,
        None => {
            let tenant = store.create_tenant(&args.tin, "Demo taxpayer").await?;
            store
                .audit(
                    audit("tenant.created")
                        .tenant(tenant.id)
                        .detail(json!({"tin": tenant.tin})),
                )
                .await?;
            tenant
        }
    };
    let mut first_scope = None;
    let mut new_branch_keys = Vec::new();
    for (position, bhf_id) in args.branch.iter().enumerate() {
        let branch = match store.branch_by_id(tenant.id, bhf_id).await? {
            Some(branch) => branch,
            None => {
                let branch = store.create_branch(tenant.id, bhf_id).await?;
                store
                    .audit(
                        audit("branch.created")
                            .scope(branch.scope())
                            .detail(json!({"bhfId": bhf_id})),
                    )
                    .await?;
                branch
            }
        };
        let scope = branch.scope();
        first_scope.get_or_insert(scope);
        if store.device(scope).await?.is_some() {
            continue;
        }
        let serial = if position == 0 {
            args.device_serial.clone()
        } else {
            format!("{}-{bhf_id}", args.device_serial)
        };
        let client = control_units
            .client(client_config(
                &bootstrap_unit,
                bootstrap_profile,
                &args.tin,
                bhf_id,
            ))
            .map_err(anyhow::Error::msg)?;
        let device = initialise_device(&client, (&vault, scope), &serial).await?;
        store.save_device(scope, &device).await?;
        store
            .audit(audit("device.initialised").scope(scope).detail(json!({
                "sdcId": device.sdc_id,
                "controlUnit": device.control_unit_url,
                "dataKeyVersion": device.cmc_key.data_key.version,
                "masterKeyVersion": device.cmc_key.data_key.master_version,
            })))
            .await?;
        tracing::info!(sdc_id = %device.sdc_id, branch = %bhf_id, "device initialised");
        // The first branch's key is handled below; the others get theirs once, now.
        if position > 0 {
            let (key, record) = store.create_api_key(scope, "bootstrap").await?;
            store
                .audit(
                    audit("api_key.issued")
                        .scope(scope)
                        .detail(json!({"keyId": record.id, "prefix": record.prefix})),
                )
                .await?;
            new_branch_keys.push((bhf_id.clone(), key));
        }
    }
    let first_scope = first_scope.context("no bootstrap branch given")?;

    // The key: the operator's, or a new one shown once.
    // An operator's own key is not printed back: it is known where it came from, and
    // output ends up in logs.
    let shown_key = match std::env::var("USHURU_BOOTSTRAP_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
    {
        Some(key) => {
            store
                .ensure_api_key(first_scope, key.trim(), "bootstrap")
                .await?;
            "$USHURU_BOOTSTRAP_API_KEY".to_owned()
        }
        None => {
            let (key, record) = store.create_api_key(first_scope, "bootstrap").await?;
            store
                .audit(
                    audit("api_key.issued")
                        .scope(first_scope)
                        .detail(json!({"keyId": record.id, "prefix": record.prefix})),
                )
                .await?;
            key
        }
    };
    let operator_key_file = bootstrap_operator_key(&store, &args.data_dir).await?;

    let pipeline = Arc::new(Pipeline::start(
        store.clone(),
        Vec::new(),
        Duration::from_secs(1),
    ));
    let provisioning = Arc::new(Provisioning::new(control_units, relay_owner()));
    let purger = tokio::spawn(purge_idempotency_records(store.clone()));
    // SQLite plans without statistics (`Store::analyze_new_tables`): nothing to gather.
    let statistician = matches!(store, Store::Postgres(_))
        .then(|| tokio::spawn(gather_statistics_early(store.clone())));
    let state = AppState {
        store: store.clone(),
        pipeline: Arc::clone(&pipeline),
        branches: Arc::new(Branches::default()),
        rates: TaxRates::kenya(),
        clock: Arc::new(SystemClock),
        sale_deadline: Duration::from_millis(args.sale_deadline_ms),
        idempotency_keep: Duration::from_secs(args.idempotency_hours * 3600),
        // A request cannot outlive its deadline by much (phase 1, then the wait); past
        // this, a repeat of its key finds its sale instead of waiting for a dead process.
        in_flight_for: Duration::from_millis(args.sale_deadline_ms) + Duration::from_secs(5),
        receipt_host: receipt_host.into(),
        auth_throttle: Arc::new(ushuru_api::throttle::AuthThrottle::new(
            args.auth_failure_limit,
            Duration::from_secs(args.auth_failure_window_secs),
        )),
        oauth_token_ttl: Duration::from_secs(args.oauth_token_ttl_secs.max(1)),
        vault: vault.clone(),
        sealed_keys: Arc::new(SealedKeys::default()),
        provisioning: Some(Arc::clone(&provisioning)),
        key_cache: Arc::default(),
    };
    // A relay for every initialised branch in the database, bootstrap or not; branches
    // provisioned while serving (POST /v2/admin/tenants) get theirs the same way.
    for served in store.initialised_branches().await? {
        serve_branch(&state, &provisioning, served)?;
    }
    let branch_count = state.branches.len();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let signer = match &args.control_unit {
        Some(url) => url.clone(),
        None => "the built-in sandbox".to_owned(),
    };
    eprintln!(
        "Ushuru listening on http://{addr}, signing for {branch_count} branch(es); bootstrap: {} branch(es) {} through {signer}",
        args.tin,
        args.branch.join(", ")
    );
    eprintln!("API key: {shown_key}");
    if let Some(file) = &operator_key_file {
        eprintln!(
            "Operator key (admin routes): written once to {}, readable by you only; move it \
             somewhere safe",
            file.display()
        );
    }
    // Shown once: the key of each branch provisioned by this start (not the first).
    for (bhf_id, branch_key) in &new_branch_keys {
        eprintln!("API key for branch {bhf_id}: {branch_key}");
    }
    eprintln!("Sign a sale:");
    eprintln!(
        "  curl -s http://{addr}/v2/etims/sale -H \"Authorization: Bearer {shown_key}\" -H 'Content-Type: application/json' \
         -H 'Idempotency-Key: demo-1' -d '{{\"supplierPin\":\"{}\",\"clientReference\":\"demo-1\",\"amount\":\"5800.00\",\
         \"invoiceDate\":\"{}\",\"itemDescription\":\"Consulting\",\"taxAmount\":\"800.00\",\"pmtTyCd\":\"01\",\"taxBand\":\"B\"}}'",
        args.tin,
        chrono::Utc::now().format("%Y-%m-%d")
    );
    // With each connection's address, which the authentication throttle counts by.
    let app = ushuru_api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    purger.abort();
    if let Some(statistician) = statistician {
        statistician.abort();
    }
    // In-flight requests have been answered; let the relays finish the call each is in.
    pipeline.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The control units `serve` reaches: the built-in sandbox (named [`BUILT_IN_SANDBOX`]),
/// called in process with the same bytes as over HTTP but no socket, HTTP encoding or
/// second task per call, and started the first time a branch needs it; anything else
/// over HTTP.
struct ServeControlUnits {
    data_dir: PathBuf,
    configured: Option<(String, Profile)>,
    sandbox: Mutex<Option<Arc<Sandbox>>>,
}

impl ServeControlUnits {
    fn sandbox(&self) -> anyhow::Result<Arc<Sandbox>> {
        let mut running = self.sandbox.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sandbox) = running.as_ref() {
            return Ok(Arc::clone(sandbox));
        }
        let file = StateFile::open(&self.data_dir.join("sandbox.sqlite"))
            .context("cannot open the built-in sandbox's state")?;
        let unit = ControlUnit::new(ushuru_sandbox::Config::default(), Some(file))
            .context("cannot load the built-in sandbox")?;
        let sandbox = Sandbox::new(unit, GatewayAccess::default());
        *running = Some(Arc::clone(&sandbox));
        Ok(sandbox)
    }
}

impl ControlUnits for ServeControlUnits {
    fn client(&self, config: ClientConfig) -> Result<KraClient, String> {
        if config.base_url == BUILT_IN_SANDBOX {
            let unit: Arc<dyn InProcessUnit> = self.sandbox().map_err(|e| format!("{e:#}"))?;
            KraClient::in_process(config, unit).map_err(|e| e.to_string())
        } else {
            KraClient::new(config).map_err(|e| e.to_string())
        }
    }

    fn configured(&self) -> Option<(String, Profile)> {
        self.configured.clone()
    }
}

/// A client configuration for a branch's control unit, before its device is initialised.
pub(crate) fn client_config(url: &str, profile: Profile, tin: &str, bhf_id: &str) -> ClientConfig {
    ClientConfig {
        base_url: url.to_owned(),
        profile,
        tin: tin.to_owned(),
        bhf_id: bhf_id.to_owned(),
        cmc_key: None,
        timeouts: Timeouts::default(),
        gateway: None,
    }
}

/// Initialises the device of the branch `client` is for with `selectInitOsdcInfo` and
/// returns what to keep of it, the cmcKey sealed at once.
pub(crate) async fn initialise_device(
    client: &KraClient,
    (vault, scope): (&Vault, Scope),
    serial: &str,
) -> anyhow::Result<DeviceRecord> {
    let config = client.config();
    let (tin, bhf_id) = (&config.tin, &config.bhf_id);
    match ushuru_api::provision::initialise_device(client, vault, scope, serial).await {
        Ok(device) => Ok(device),
        Err(InitError::Installed) => bail!(
            "the control unit says branch {bhf_id} of {tin} is initialised already, but its cmcKey is not in this database: \
             use the database it was initialised with"
        ),
        Err(e) => bail!("initialising the device of branch {bhf_id} failed: {e}"),
    }
}

/// The operator's key: `USHURU_OPERATOR_KEY` (stored as a hash, never printed), else, when
/// no operator key was ever issued, a new one, written to `<data dir>/operator.key` (mode
/// 0600; never to the output, which ends up in logs). The file's path, if one was written.
async fn bootstrap_operator_key(
    store: &Store,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<PathBuf>> {
    let existed = store.operator_keys_exist().await?;
    let chosen = std::env::var("USHURU_OPERATOR_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty());
    let (shown, record) = match chosen {
        Some(key) => (
            None,
            store.ensure_operator_key(key.trim(), "bootstrap").await?,
        ),
        None if existed => return Ok(None),
        None => {
            let (key, record) = store.create_operator_key("bootstrap").await?;
            let path = data_dir.join("operator.key");
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            std::io::Write::write_all(&mut file, format!("{key}\n").as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            (Some(path), record)
        }
    };
    if !existed {
        store
            .audit(
                NewAuditEvent::new(chrono::Utc::now(), "serve", "operator_key.issued")
                    .detail(json!({"keyId": record.id, "prefix": record.prefix})),
            )
            .await?;
    }
    Ok(shown)
}

/// Whether a missing development key file may be made: `serve` makes one on first start;
/// `ushuru admin` never does (a new key would orphan every key sealed under the old one).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum DevelopmentKey {
    MakeIfMissing,
    MustExist,
}

/// The vault's master key: `USHURU_MASTER_KEY`, else `master_key_file`, else the
/// development key file in the data directory (with a warning). A key file is a keyring
/// that master key rotation adds versions to; a key from the environment is a keyring too
/// (`1:<old>,2:<new>`), fixed while the process runs.
pub(crate) fn open_vault(
    data_dir: &std::path::Path,
    master_key_file: Option<&std::path::Path>,
    development: DevelopmentKey,
) -> anyhow::Result<Vault> {
    let from_env = std::env::var("USHURU_MASTER_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
        .map(zeroize::Zeroizing::new);
    let master = match (from_env, master_key_file) {
        (Some(text), _) => Keyring::from_text(&text).context("USHURU_MASTER_KEY")?,
        (None, Some(path)) => Keyring::from_file(path)?,
        (None, None) => {
            let path = data_dir.join("master.key");
            if development == DevelopmentKey::MustExist && !path.exists() {
                bail!(
                    "no master key: give USHURU_MASTER_KEY or --master-key-file, or --data-dir of a serve that made {}",
                    path.display()
                );
            }
            let (key, created) = Keyring::load_or_generate(&path)?;
            let what = if created { "generated" } else { "read" };
            tracing::warn!(path = %path.display(), "development master key {what}");
            eprintln!(
                "WARNING: the cmcKey vault's master key was {what} at {}, beside the database. \
                 Fine for development; in production give USHURU_MASTER_KEY or --master-key-file \
                 (kept apart from the database and its backups).",
                path.display()
            );
            key
        }
    };
    Ok(Vault::new(Arc::new(master)))
}

/// Seals the cmcKeys a database written before the vault holds in plain text.
async fn seal_plaintext_cmc_keys(store: &Store, vault: &Vault) -> anyhow::Result<()> {
    let plaintext = store.plaintext_cmc_keys().await?;
    for key in &plaintext {
        let sealed = vault
            .seal_cmc_key(binding(key.scope), &key.cmc_key)
            .context("cannot seal a stored cmcKey")?;
        if store.seal_plaintext_cmc_key(key.scope, &sealed).await? {
            store
                .audit(
                    NewAuditEvent::new(chrono::Utc::now(), "serve", "cmc_key.sealed")
                        .scope(key.scope)
                        .detail(json!({
                            "dataKeyVersion": sealed.data_key.version,
                            "masterKeyVersion": sealed.data_key.master_version,
                        })),
                )
                .await?;
        }
    }
    if !plaintext.is_empty() {
        tracing::info!(
            branches = plaintext.len(),
            "cmcKeys stored in plain text by an earlier version are sealed now"
        );
    }
    Ok(())
}

/// Deletes idempotency records past their keeping time (each carries its own expiry, set
/// from `--idempotency-hours` when it was written): at start, then every 15 minutes.
async fn purge_idempotency_records(store: Store) {
    let mut every = tokio::time::interval(Duration::from_secs(15 * 60));
    loop {
        every.tick().await;
        match store.purge_idempotency(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency records deleted"),
            Err(e) => tracing::warn!(error = %e, "idempotency purge failed; retrying later"),
        }
        match store.purge_oauth_tokens(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired access tokens deleted"),
            Err(e) => tracing::warn!(error = %e, "access token purge failed; retrying later"),
        }
    }
}

/// Rows a never-analysed table must hold before its statistics are gathered: by then a
/// branch's range of an index spans pages, and a plan that reads it for one row costs.
const ANALYZE_FROM_ROWS: u64 = 1_000;
/// How often new tables are looked at: soon after they pass `ANALYZE_FROM_ROWS` rows,
/// long before autovacuum's first pass (a minute).
const ANALYZE_EVERY: Duration = Duration::from_secs(2);

/// Gathers planner statistics for tables that grew before anything analysed them (see
/// `Store::analyze_new_tables`), from start and for as long as the server runs: one cheap
/// look at the catalogue every `ANALYZE_EVERY`, and an `ANALYZE` per table once.
async fn gather_statistics_early(store: Store) {
    let mut every = tokio::time::interval(ANALYZE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match store.analyze_new_tables(ANALYZE_FROM_ROWS).await {
            Ok(tables) if tables.is_empty() => {}
            Ok(tables) => tracing::info!(
                tables = tables.join(", "),
                "planner statistics gathered for tables that had none"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "gathering planner statistics failed; retrying later")
            }
        }
    }
}

/// A relay owner name unique to this process.
fn relay_owner() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "ushuru".into())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
