//! What the API's test crates share: a running Ushuru in-process (two taxpayers with a
//! branch, a device on the real sandbox and a key each) on a fresh SQLite or PostgreSQL
//! store.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use ushuru_api::keys::{SealedKeyOpener, SealedKeys};
use ushuru_api::{AppState, BranchContext};
use ushuru_engine::{Backoff, DeviceIdentity, Pipeline, Relay, SystemClock};
use ushuru_kra::endpoints::InitDevice;
use ushuru_kra::types::InitRequest;
use ushuru_kra::{ClientConfig, KraClient, Outcome, Profile, Timeouts};
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::server::GatewayAccess;
use ushuru_sandbox::{Config, ControlUnit, Sandbox, SandboxHandle};
use ushuru_store::{DeviceRecord, Store};
use ushuru_tax::TaxRates;
use ushuru_vault::{Binding, Keyring, LocalMasterKey, Vault};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn unique() -> String {
    format!(
        "ushuru_conformance_api_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn sqlite() -> Store {
    let store = Store::connect(
        std::env::temp_dir()
            .join(format!("{}.sqlite", unique()))
            .to_str()
            .unwrap(),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

pub async fn postgres() -> Store {
    let admin_url = std::env::var("USHURU_TEST_POSTGRES_URL")
        .expect("USHURU_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts PostgreSQL and sets it");
    let (admin, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let name = unique();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let store = Store::connect(&format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// A running Ushuru: two taxpayers with a branch and a key each, on one sandbox.
pub struct App {
    pub url: String,
    pub store: Store,
    pub keys: Vec<String>,
    pub sandbox: SandboxHandle,
    pub pipeline: Arc<Pipeline>,
    pub state_dir: std::path::PathBuf,
    /// The vault the devices' cmcKeys are sealed in (a keyring file of the test's own).
    pub vault: Vault,
    /// The sealed cmcKeys the relays open (what rotations update).
    pub sealed_keys: Arc<SealedKeys>,
}

/// A test master key: the vault is real, the key is not secret.
pub fn test_vault() -> Vault {
    let text = data_encoding::BASE64.encode(&[42u8; 32]);
    Vault::new(Arc::new(LocalMasterKey::from_text(&text, 1).unwrap()))
}

/// Failed authentications per address or key prefix per minute before 429.
pub const AUTH_FAILURE_LIMIT: u32 = 8;

/// How long access tokens live in the tests: short enough to see one expire.
pub const OAUTH_TOKEN_TTL: Duration = Duration::from_secs(2);

pub const TINS: [&str; 2] = ["P051234567A", "P000000001Z"];

pub async fn start(store: Store, deadline: Duration) -> App {
    let state_dir = std::env::temp_dir().join(unique());
    std::fs::create_dir_all(&state_dir).unwrap();
    let unit = ControlUnit::new(
        Config::default(),
        Some(StateFile::open(&state_dir.join("cu.sqlite")).unwrap()),
    )
    .unwrap();
    let sandbox = Sandbox::new(unit, GatewayAccess::default())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // A keyring file of its own: master key rotation can add versions to it.
    let vault = Vault::new(Arc::new(
        Keyring::load_or_generate(&state_dir.join("master.key"))
            .unwrap()
            .0,
    ));
    let sealed_keys = Arc::new(SealedKeys::default());
    let mut branches = HashMap::new();
    let mut relays = Vec::new();
    let mut keys = Vec::new();
    for tin in TINS {
        let client = KraClient::new(ClientConfig {
            base_url: sandbox.url(),
            profile: Profile::Oscu,
            tin: tin.into(),
            bhf_id: "00".into(),
            cmc_key: None,
            timeouts: Timeouts {
                connect: Duration::from_millis(300),
                sale: Duration::from_secs(3),
                lookup: Duration::from_secs(3),
                ..Timeouts::default()
            },
            gateway: None,
        })
        .unwrap();
        let info = match client
            .call::<InitDevice>(&InitRequest {
                tin: tin.into(),
                bhf_id: "00".into(),
                dvc_srl_no: "POS".into(),
            })
            .await
            .outcome
        {
            Outcome::Ok {
                data: Some(response),
                ..
            } => response.info,
            other => panic!("{other:?}"),
        };
        let tenant = store.create_tenant(tin, "Traders").await.unwrap();
        let scope = store.create_branch(tenant.id, "00").await.unwrap().scope();
        let sealed = vault
            .seal_cmc_key(
                Binding {
                    tenant: scope.tenant.0,
                    branch: scope.branch.0,
                },
                &info.cmc_key,
            )
            .unwrap();
        store
            .save_device(
                scope,
                &DeviceRecord {
                    control_unit_url: sandbox.url(),
                    profile: "oscu".into(),
                    sdc_id: info.sdc_id.clone(),
                    mrc_no: info.mrc_no.clone(),
                    cmc_key: sealed.clone(),
                },
            )
            .await
            .unwrap();
        // As serve does: the relay opens the latest sealed form for each call.
        sealed_keys.set(scope.branch, sealed);
        let client = client.with_cmc_key_opener(Arc::new(SealedKeyOpener {
            vault: vault.clone(),
            scope,
            keys: Arc::clone(&sealed_keys),
        }));
        let device = DeviceIdentity {
            sdc_id: info.sdc_id,
            mrc_no: Some(info.mrc_no),
        };
        branches.insert(
            scope.branch,
            BranchContext {
                tin: tin.into(),
                bhf_id: "00".into(),
                device: device.clone(),
            },
        );
        relays.push(
            Relay::new(
                store.clone(),
                client,
                scope,
                device,
                "api-test",
                Arc::new(SystemClock),
            )
            .with_backoff(Backoff {
                base: Duration::from_millis(1),
                cap: Duration::from_millis(5),
            }),
        );
        keys.push(store.create_api_key(scope, "till").await.unwrap().0);
    }
    let pipeline = Arc::new(Pipeline::start(
        store.clone(),
        relays,
        Duration::from_millis(20),
    ));
    let state = AppState {
        store: store.clone(),
        pipeline: Arc::clone(&pipeline),
        branches: Arc::new(ushuru_api::Branches::from(branches)),
        rates: TaxRates::kenya(),
        clock: Arc::new(SystemClock),
        sale_deadline: deadline,
        idempotency_keep: Duration::from_secs(24 * 3600),
        in_flight_for: Duration::from_secs(60),
        receipt_host: "etims-sbx.kra.go.ke".into(),
        auth_throttle: Arc::new(ushuru_api::throttle::AuthThrottle::new(
            AUTH_FAILURE_LIMIT,
            Duration::from_secs(60),
        )),
        oauth_token_ttl: OAUTH_TOKEN_TTL,
        vault: vault.clone(),
        sealed_keys: Arc::clone(&sealed_keys),
        provisioning: None,
        key_cache: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let app =
            ushuru_api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app).await
    });
    App {
        url,
        store,
        keys,
        sandbox,
        pipeline,
        state_dir,
        vault,
        sealed_keys,
    }
}

pub fn flat(reference: &str, amount: &str, tax: &str) -> Value {
    json!({"supplierPin": TINS[0], "clientReference": reference, "amount": amount, "invoiceDate": "2026-09-25",
           "itemDescription": "Consulting", "taxAmount": tax, "pmtTyCd": "01", "taxBand": "B"})
}

pub async fn finish(app: App) {
    app.sandbox.stop().await;
    let _ = std::fs::remove_dir_all(&app.state_dir);
    drop(app.pipeline);
}
