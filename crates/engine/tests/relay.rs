//! The relay against the real sandbox, on both stores: signing, a lost answer, a dropped
//! call, an outage, a refusal, a duplicate without a receipt, a tampered payload.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use sha2::Digest;
use ushuru_engine::{Backoff, DeviceIdentity, Pipeline, Relay, Step, SystemClock};
use ushuru_kra::endpoints::{InitDevice, SaveItemEndpoint};
use ushuru_kra::types::{InitRequest, SaveItemRequest};
use ushuru_kra::wire::Amount;
use ushuru_kra::{
    ClientConfig, DraftLine, KraClient, Outcome, Profile, SaleDraft, Secret, Timeouts,
};
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::server::GatewayAccess;
use ushuru_sandbox::{Config, ControlUnit, Sandbox, SandboxHandle};
use ushuru_store::{NewSale, OutboxPayload, SaleStatus, Scope, Store};
use ushuru_tax::{LineInput, LineText, Pricing, TaxRates, calculate_line};

const TIN: &str = "P051234567A";
static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    format!(
        "ushuru_relay_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn sqlite() -> Store {
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

async fn postgres() -> Store {
    let admin_url = std::env::var("USHURU_TEST_POSTGRES_URL")
        .expect("USHURU_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts PostgreSQL and sets it");
    let (admin, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let name = unique().replace("relay", "conformance_relay");
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

async fn sandbox_at(addr: &str, file: Option<StateFile>) -> SandboxHandle {
    let unit = ControlUnit::new(Config::default(), file).unwrap();
    Sandbox::new(unit, GatewayAccess::default())
        .start(addr.parse().unwrap())
        .await
        .unwrap()
}

fn client(url: &str, key: Option<String>) -> KraClient {
    KraClient::new(ClientConfig {
        base_url: url.to_owned(),
        profile: Profile::Oscu,
        tin: TIN.into(),
        bhf_id: "00".into(),
        cmc_key: key.map(Secret::new),
        timeouts: Timeouts {
            connect: Duration::from_millis(500),
            sale: Duration::from_secs(3),
            lookup: Duration::from_secs(3),
            ..Timeouts::default()
        },
        gateway: None,
    })
    .unwrap()
}

/// A branch set up end to end: the device initialised on the sandbox, the item registered,
/// the tenant and branch in the store.
struct Branch {
    store: Store,
    scope: Scope,
    client: KraClient,
    device: DeviceIdentity,
}

async fn branch(store: Store, sandbox: &SandboxHandle) -> Branch {
    let bare = client(&sandbox.url(), None);
    let init = bare
        .call::<InitDevice>(&InitRequest {
            tin: TIN.into(),
            bhf_id: "00".into(),
            dvc_srl_no: "POS-1".into(),
        })
        .await;
    let info = match init.outcome {
        Outcome::Ok {
            data: Some(response),
            ..
        } => response.info,
        other => panic!("{other:?}"),
    };
    let client = bare.with_cmc_key(Secret::new(info.cmc_key.clone()));
    let item = SaveItemRequest {
        item_cd: "SODA".into(),
        item_cls_cd: "50202306".into(),
        item_ty_cd: "2".into(),
        item_nm: "Soda".into(),
        item_std_nm: None,
        orgn_nat_cd: "KE".into(),
        pkg_unit_cd: "NT".into(),
        qty_unit_cd: "U".into(),
        tax_ty_cd: "B".into(),
        btch_no: None,
        bcd: None,
        dft_prc: Amount::parse("116").unwrap(),
        grp_prc_l1: None,
        grp_prc_l2: None,
        grp_prc_l3: None,
        grp_prc_l4: None,
        grp_prc_l5: None,
        add_info: None,
        sfty_qty: None,
        isrc_aplcb_yn: "N".into(),
        use_yn: "Y".into(),
        regr_id: "a".into(),
        regr_nm: "a".into(),
        modr_id: "a".into(),
        modr_nm: "a".into(),
    };
    assert!(matches!(
        client.call::<SaveItemEndpoint>(&item).await.outcome,
        Outcome::Ok { .. }
    ));
    let tenant = store.create_tenant(TIN, "Test Traders").await.unwrap();
    let scope = store.create_branch(tenant.id, "00").await.unwrap().scope();
    store
        .mark_item_registered(scope, "SODA", chrono::Utc::now())
        .await
        .unwrap();
    Branch {
        store,
        scope,
        client,
        device: DeviceIdentity {
            sdc_id: info.sdc_id,
            mrc_no: Some(info.mrc_no),
        },
    }
}

impl Branch {
    fn relay(&self) -> Relay {
        Relay::new(
            self.store.clone(),
            self.client.clone(),
            self.scope,
            self.device.clone(),
            "relay-1",
            Arc::new(SystemClock),
        )
        .with_backoff(Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        })
    }

    /// Phase 1 for a one-line sale of `item` at `price`: the payload built with the number.
    async fn accept(&self, item: &'static str, price: &'static str) -> ushuru_store::AcceptedSale {
        let text = LineText {
            price,
            band: "B",
            qty: "1",
            pricing: Pricing::VatInclusive,
            discount: None,
            discount_rate: None,
        };
        let priced = calculate_line(&LineInput::parse(&text).unwrap(), &TaxRates::kenya()).unwrap();
        let build = Box::new(move |invc_no: u64| {
            let request = SaleDraft {
                tin: TIN.into(),
                bhf_id: "00".into(),
                invc_no,
                org_invc_no: 0,
                trd_invc_no: format!("INV-{invc_no}"),
                rcpt_ty_cd: "S".into(),
                sales_ty_cd: "N".into(),
                pmt_ty_cd: Some("01".into()),
                cust_tin: None,
                cust_nm: None,
                rfd_rsn_cd: None,
                confirmed: chrono::Utc::now().naive_utc(),
                operator: "pos".into(),
                lines: vec![DraftLine {
                    item_cd: item.into(),
                    item_nm: item.into(),
                    item_cls_cd: Some("50202306".into()),
                    pkg_unit_cd: "NT".into(),
                    qty_unit_cd: "U".into(),
                    priced,
                }],
            }
            .into_request(&TaxRates::kenya())
            .map_err(|e| e.to_string())?;
            let body = serde_json::to_string(&request).map_err(|e| e.to_string())?;
            let sha256 = data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(body.as_bytes()));
            Ok(OutboxPayload { body, sha256 })
        });
        self.store
            .accept_sale(
                self.scope,
                NewSale {
                    client_reference: None,
                    tot_amt: priced.tot_amt,
                    lines: Vec::new(),
                    idempotency_key: None,
                },
                build,
            )
            .await
            .unwrap()
    }
}

async fn fault(sandbox: &SandboxHandle, endpoint: &str, fault: serde_json::Value) {
    let response = reqwest_like_post(
        &format!("{}/_sandbox/faults", sandbox.url()),
        json!({"endpoint": endpoint, "fault": fault}),
    )
    .await;
    assert_eq!(response["queued"], 1, "{response}");
}

/// The control API over a plain HTTP/1.1 request (the engine does not depend on reqwest).
async fn reqwest_like_post(url: &str, body: serde_json::Value) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

fn signed_in_sandbox(sandbox: &SandboxHandle) -> usize {
    sandbox.sandbox().unit().dump()["sales"]
        .as_object()
        .map_or(0, |s| s.len())
}

// ---- the cases ---------------------------------------------------------------------------

async fn signs_and_journals(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = branch(store, &sandbox).await;
    let accepted = branch.accept("SODA", "116").await;
    assert_eq!(
        branch.relay().drain().await.unwrap(),
        vec![Step::Signed {
            sale: accepted.sale,
            invc_no: 1
        }]
    );
    let sale = branch
        .store
        .sale(branch.scope, accepted.sale)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sale.status, SaleStatus::Signed);
    let receipt = sale.receipt.unwrap();
    assert_eq!(
        (receipt.sdc_id.as_str(), receipt.cur_rcpt_no),
        (branch.device.sdc_id.as_str(), 1)
    );
    assert_eq!(
        sandbox
            .sandbox()
            .unit()
            .verify(TIN, "00", 1, &receipt.intrl_data, &receipt.rcpt_sign),
        Some(true)
    );
    let journal = branch
        .store
        .exchanges(branch.scope, accepted.sale)
        .await
        .unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(
        (
            journal[0].endpoint.as_str(),
            journal[0].outcome.as_str(),
            journal[0].http_status
        ),
        ("saveTrnsSalesOsdc", "ok", Some(200))
    );
    assert!(journal[0].request_body.contains("\"invcNo\":1"));
    assert!(
        !journal[0].request_body.contains(
            &branch
                .client
                .config()
                .cmc_key
                .clone()
                .unwrap()
                .expose()
                .to_owned()
        )
    );
    sandbox.stop().await;
}

async fn a_lost_answer_ends_signed_with_the_original_receipt(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = branch(store, &sandbox).await;
    let accepted = branch.accept("SODA", "116").await;
    fault(
        &sandbox,
        "saveTrnsSalesOsdc",
        json!({"kind": "lost_answer"}),
    )
    .await;
    let relay = branch.relay();
    assert!(matches!(
        relay.step().await.unwrap(),
        Step::Retrying {
            outcome: "ambiguous",
            ..
        }
    ));
    assert_eq!(
        branch
            .store
            .sale(branch.scope, accepted.sale)
            .await
            .unwrap()
            .unwrap()
            .status,
        SaleStatus::OutcomeUnknown
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        relay.drain().await.unwrap(),
        vec![Step::Signed {
            sale: accepted.sale,
            invc_no: 1
        }]
    );
    let receipt = branch
        .store
        .sale(branch.scope, accepted.sale)
        .await
        .unwrap()
        .unwrap()
        .receipt
        .unwrap();
    assert_eq!(
        sandbox
            .sandbox()
            .unit()
            .verify(TIN, "00", 1, &receipt.intrl_data, &receipt.rcpt_sign),
        Some(true)
    );
    assert_eq!(signed_in_sandbox(&sandbox), 1, "one signature for the sale");
    let journal: Vec<_> = branch
        .store
        .exchanges(branch.scope, accepted.sale)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.endpoint, e.outcome))
        .collect();
    assert_eq!(
        journal,
        [
            ("saveTrnsSalesOsdc".into(), "ambiguous".into()),
            ("selectInvoiceDetails".into(), "ok".into())
        ]
    );
    sandbox.stop().await;
}

async fn a_dropped_call_is_resent_identically(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = branch(store, &sandbox).await;
    let accepted = branch.accept("SODA", "116").await;
    fault(&sandbox, "saveTrnsSalesOsdc", json!({"kind": "drop"})).await;
    let relay = branch.relay();
    assert!(matches!(
        relay.step().await.unwrap(),
        Step::Retrying {
            outcome: "ambiguous",
            ..
        }
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        relay.drain().await.unwrap(),
        vec![Step::Signed {
            sale: accepted.sale,
            invc_no: 1
        }]
    );
    let journal = branch
        .store
        .exchanges(branch.scope, accepted.sale)
        .await
        .unwrap();
    let steps: Vec<_> = journal
        .iter()
        .map(|e| (e.endpoint.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("saveTrnsSalesOsdc", "ambiguous"),
            ("selectInvoiceDetails", "ok"),
            ("saveTrnsSalesOsdc", "ok")
        ]
    );
    assert_eq!(
        journal[0].request_body, journal[2].request_body,
        "the identical payload, never renumbered"
    );
    assert_eq!(signed_in_sandbox(&sandbox), 1);
    sandbox.stop().await;
}

async fn an_outage_keeps_sales_pending_then_signs_them_in_order(store: Store) {
    let dir = std::env::temp_dir().join(unique());
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("cu.sqlite");
    let sandbox = sandbox_at("127.0.0.1:0", Some(StateFile::open(&state).unwrap())).await;
    let addr = sandbox.addr.to_string();
    let branch = branch(store, &sandbox).await;
    sandbox.stop().await; // the control unit goes away
    let sales = [
        branch.accept("SODA", "116").await,
        branch.accept("SODA", "232").await,
        branch.accept("SODA", "348").await,
    ];
    let relay = branch.relay();
    let step = relay.step().await.unwrap();
    assert!(
        matches!(
            step,
            Step::Retrying {
                outcome: "not_sent",
                ..
            }
        ),
        "{step:?}"
    );
    for sale in &sales {
        assert_eq!(
            branch
                .store
                .sale(branch.scope, sale.sale)
                .await
                .unwrap()
                .unwrap()
                .status,
            SaleStatus::PendingSync
        );
    }
    // It returns (same address, same state): everything signs, in invoice order.
    let sandbox = sandbox_at(&addr, Some(StateFile::open(&state).unwrap())).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let steps = relay.drain().await.unwrap();
    let signed: Vec<u64> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Signed { invc_no, .. } => Some(*invc_no),
            _ => None,
        })
        .collect();
    assert_eq!(signed, [1, 2, 3]);
    for sale in &sales {
        assert_eq!(
            branch
                .store
                .sale(branch.scope, sale.sale)
                .await
                .unwrap()
                .unwrap()
                .status,
            SaleStatus::Signed
        );
    }
    sandbox.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn a_refusal_fails_the_sale_with_kras_code(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = branch(store, &sandbox).await;
    let accepted = branch.accept("SODA", "116").await;
    fault(
        &sandbox,
        "saveTrnsSalesOsdc",
        json!({"kind": "result_code", "code": "910", "message": "Request parameter error: itemCd"}),
    )
    .await;
    let steps = branch.relay().drain().await.unwrap();
    assert_eq!(
        steps,
        vec![Step::Failed {
            sale: accepted.sale,
            code: "910".into()
        }]
    );
    assert_eq!(
        branch
            .store
            .sale(branch.scope, accepted.sale)
            .await
            .unwrap()
            .unwrap()
            .status,
        SaleStatus::Failed
    );
    sandbox.stop().await;
}

async fn a_duplicate_without_a_receipt_needs_reconciliation(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = branch(store, &sandbox).await;
    let accepted = branch.accept("SODA", "116").await;
    // The control unit claims to have it already, but has no such invoice to show.
    fault(
        &sandbox,
        "saveTrnsSalesOsdc",
        json!({"kind": "result_code", "code": "994"}),
    )
    .await;
    let steps = branch.relay().drain().await.unwrap();
    assert_eq!(
        steps,
        vec![Step::Unresolved {
            sale: accepted.sale
        }]
    );
    assert_eq!(
        branch
            .store
            .sale(branch.scope, accepted.sale)
            .await
            .unwrap()
            .unwrap()
            .status,
        SaleStatus::ReconciliationRequired
    );
    assert_eq!(
        signed_in_sandbox(&sandbox),
        0,
        "never renumbered, never re-signed"
    );
    sandbox.stop().await;
}

async fn two_relays_on_one_branch_send_one_at_a_time_in_order(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = Arc::new(branch(store, &sandbox).await);
    let mut sales = Vec::new();
    for i in 0..12u32 {
        sales.push(
            branch
                .accept("SODA", ["116", "232", "348"][i as usize % 3])
                .await
                .sale,
        );
    }
    // Two relays, as two replicas would run them; the sandbox refuses any invoice that is
    // not exactly the next one, so a send out of order or in parallel would fail a sale.
    let sales = Arc::new(sales);
    let relays: Vec<_> = ["replica-a", "replica-b"]
        .into_iter()
        .map(|owner| {
            let branch = Arc::clone(&branch);
            let sales = Arc::clone(&sales);
            tokio::spawn(async move {
                let relay = Relay::new(
                    branch.store.clone(),
                    branch.client.clone(),
                    branch.scope,
                    branch.device.clone(),
                    owner,
                    Arc::new(SystemClock),
                )
                .with_backoff(Backoff {
                    base: Duration::from_millis(1),
                    cap: Duration::from_millis(5),
                });
                let mut signed = Vec::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while std::time::Instant::now() < deadline {
                    match relay.step().await.unwrap() {
                        Step::Signed { invc_no, .. } => signed.push(invc_no),
                        Step::Idle if all_signed(&branch, &sales).await => break,
                        Step::Idle => tokio::time::sleep(Duration::from_millis(2)).await,
                        other => panic!("{owner}: {other:?}"),
                    }
                }
                signed
            })
        })
        .collect();
    let mut all = Vec::new();
    for relay in relays {
        all.extend(relay.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=12).collect::<Vec<u64>>(),
        "every invoice signed exactly once"
    );
    assert_eq!(signed_in_sandbox(&sandbox), 12);
    assert!(all_signed(&branch, &sales).await);
    // Signed in invoice order: the control unit's receipt counter follows invcNo.
    for (index, sale) in sales.iter().enumerate() {
        let record = branch
            .store
            .sale(branch.scope, *sale)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (record.invc_no, record.receipt.unwrap().tot_rcpt_no),
            (index as u64 + 1, index as u64 + 1)
        );
    }
    sandbox.stop().await;
}

async fn all_signed(branch: &Branch, sales: &[ushuru_store::SaleId]) -> bool {
    for sale in sales {
        if branch
            .store
            .sale(branch.scope, *sale)
            .await
            .unwrap()
            .unwrap()
            .status
            != SaleStatus::Signed
        {
            return false;
        }
    }
    true
}

async fn a_refusal_for_now_is_retried_not_failed(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = branch(store, &sandbox).await;
    let first = branch.accept("SODA", "116").await;
    let second = branch.accept("SODA", "232").await;
    // A rate limit, then a server error: nothing wrong with the sale.
    fault(
        &sandbox,
        "saveTrnsSalesOsdc",
        json!({"kind": "result_code", "code": "990"}),
    )
    .await;
    fault(
        &sandbox,
        "saveTrnsSalesOsdc",
        json!({"kind": "result_code", "code": "999"}),
    )
    .await;
    let relay = branch.relay();
    for _ in 0..2 {
        let step = relay.step().await.unwrap();
        assert!(
            matches!(
                step,
                Step::Retrying {
                    outcome: "rejected",
                    ..
                }
            ),
            "{step:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        branch
            .store
            .sale(branch.scope, first.sale)
            .await
            .unwrap()
            .unwrap()
            .status,
        SaleStatus::OutcomeUnknown
    );
    let steps = relay.drain().await.unwrap();
    assert_eq!(
        steps,
        vec![
            Step::Signed {
                sale: first.sale,
                invc_no: 1
            },
            Step::Signed {
                sale: second.sale,
                invc_no: 2
            }
        ]
    );
    sandbox.stop().await;
}

async fn the_pipeline_signs_what_is_accepted_and_waits_for_it(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = branch(store, &sandbox).await;
    let pipeline = Pipeline::start(
        branch.store.clone(),
        vec![branch.relay()],
        Duration::from_millis(20),
    );
    for price in ["116", "232", "348"] {
        let accepted = branch.accept("SODA", price).await;
        pipeline.wake(branch.scope.branch);
        let record = pipeline
            .wait_for(branch.scope, accepted.sale, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(record.status, SaleStatus::Signed, "{record:?}");
        assert_eq!(record.receipt.unwrap().tot_rcpt_no, accepted.invc_no);
    }
    pipeline.shutdown().await;
    sandbox.stop().await;
}

async fn a_waiter_gets_pending_at_its_deadline_and_the_sale_signs_later(store: Store) {
    let dir = std::env::temp_dir().join(unique());
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("cu.sqlite");
    let sandbox = sandbox_at("127.0.0.1:0", Some(StateFile::open(&state).unwrap())).await;
    let addr = sandbox.addr.to_string();
    let branch = branch(store, &sandbox).await;
    sandbox.stop().await;
    let pipeline = Pipeline::start(
        branch.store.clone(),
        vec![branch.relay()],
        Duration::from_millis(20),
    );
    let accepted = branch.accept("SODA", "116").await;
    pipeline.wake(branch.scope.branch);
    let started = std::time::Instant::now();
    let record = pipeline
        .wait_for(branch.scope, accepted.sale, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        record.status,
        SaleStatus::PendingSync,
        "the control unit is down"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let sandbox = sandbox_at(&addr, Some(StateFile::open(&state).unwrap())).await;
    let record = pipeline
        .wait_for(branch.scope, accepted.sale, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        record.status,
        SaleStatus::Signed,
        "signed once the control unit is back, without a wake"
    );
    pipeline.shutdown().await;
    sandbox.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn pending_sales_replay_in_order_when_the_pipeline_starts(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = branch(store, &sandbox).await;
    // Accepted while no relay ran (a process that died after phase 1).
    let sales = [
        branch.accept("SODA", "116").await,
        branch.accept("SODA", "232").await,
        branch.accept("SODA", "348").await,
    ];
    let pipeline = Pipeline::start(
        branch.store.clone(),
        vec![branch.relay()],
        Duration::from_millis(20),
    );
    for sale in &sales {
        let record = pipeline
            .wait_for(branch.scope, sale.sale, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            (record.status, record.receipt.unwrap().tot_rcpt_no),
            (SaleStatus::Signed, sale.invc_no)
        );
    }
    // After a graceful shutdown nothing is sent any more.
    pipeline.shutdown().await;
    let later = branch.accept("SODA", "116").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        branch
            .store
            .sale(branch.scope, later.sale)
            .await
            .unwrap()
            .unwrap()
            .status,
        SaleStatus::PendingSync
    );
    sandbox.stop().await;
}

async fn items_are_registered_the_first_time_they_are_sold(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = branch(store, &sandbox).await;
    let first = branch.accept("TEA", "116").await; // never registered anywhere
    let second = branch.accept("TEA", "232").await;
    let steps = branch.relay().drain().await.unwrap();
    assert_eq!(
        steps,
        vec![
            Step::Signed {
                sale: first.sale,
                invc_no: 1
            },
            Step::Signed {
                sale: second.sale,
                invc_no: 2
            }
        ]
    );
    let calls = |sale| {
        let store = branch.store.clone();
        let scope = branch.scope;
        async move {
            store
                .exchanges(scope, sale)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.endpoint)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(calls(first.sale).await, ["saveItem", "saveTrnsSalesOsdc"]);
    assert_eq!(
        calls(second.sale).await,
        ["saveTrnsSalesOsdc"],
        "registered once"
    );
    assert!(
        branch
            .store
            .item_registered(branch.scope, "TEA")
            .await
            .unwrap()
    );
    sandbox.stop().await;
}

async fn a_waiter_sees_the_sale_as_it_is_at_the_deadline(store: Store) {
    let sandbox = sandbox_at("127.0.0.1:0", None).await;
    let branch = branch(store, &sandbox).await;
    // Every sale call and lookup is cut off: the sale stays OUTCOME_UNKNOWN.
    sandbox.sandbox().faults().push(
        ushuru_kra::EndpointName::SaveTrnsSalesOsdc,
        ushuru_sandbox::faults::Fault::Drop,
        1_000,
    );
    sandbox.sandbox().faults().push(
        ushuru_kra::EndpointName::SelectInvoiceDetails,
        ushuru_sandbox::faults::Fault::Drop,
        1_000_000,
    );
    let pipeline = Pipeline::start(
        branch.store.clone(),
        vec![branch.relay()],
        Duration::from_millis(20),
    );
    let accepted = branch.accept("SODA", "116").await;
    pipeline.wake(branch.scope.branch);
    let record = pipeline
        .wait_for(branch.scope, accepted.sale, Duration::from_millis(400))
        .await
        .unwrap();
    assert_eq!(
        record.status,
        SaleStatus::OutcomeUnknown,
        "not the PENDING_SYNC the wait began with"
    );
    pipeline.shutdown().await;
    sandbox.stop().await;
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::sqlite().await).await; })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::postgres().await).await; })*
        }
    };
}

on_both!(
    signs_and_journals,
    a_lost_answer_ends_signed_with_the_original_receipt,
    a_dropped_call_is_resent_identically,
    an_outage_keeps_sales_pending_then_signs_them_in_order,
    a_refusal_fails_the_sale_with_kras_code,
    a_duplicate_without_a_receipt_needs_reconciliation,
    two_relays_on_one_branch_send_one_at_a_time_in_order,
    a_refusal_for_now_is_retried_not_failed,
    the_pipeline_signs_what_is_accepted_and_waits_for_it,
    a_waiter_gets_pending_at_its_deadline_and_the_sale_signs_later,
    pending_sales_replay_in_order_when_the_pipeline_starts,
    items_are_registered_the_first_time_they_are_sold,
    a_waiter_sees_the_sale_as_it_is_at_the_deadline,
);
