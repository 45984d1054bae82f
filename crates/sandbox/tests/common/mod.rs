//! Shared by the sandbox's integration tests: a sandbox on a free port, clients for each
//! path profile, and valid sales built with the real tax engine.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::NaiveDateTime;
use ushuru_kra::endpoints::*;
use ushuru_kra::types::*;
use ushuru_kra::wire::{Amount, DateTime14};
use ushuru_kra::{
    ClientConfig, DraftLine, GatewayCredentials, KraClient, Outcome, Profile, SaleDraft, Secret,
    Timeouts,
};
use ushuru_sandbox::persist::StateFile;
use ushuru_sandbox::server::{GATEWAY_PREFIX, GatewayAccess, TOKEN_PATH};
use ushuru_sandbox::{Config, ControlUnit, Sandbox, SandboxHandle};
use ushuru_tax::{LineInput, LineText, PricedLine, Pricing, TaxRates, calculate_line};

pub const TIN: &str = "P051234567A";

pub async fn start(config: Config) -> SandboxHandle {
    start_with(config, None).await
}

pub async fn start_with(config: Config, file: Option<StateFile>) -> SandboxHandle {
    let unit = ControlUnit::new(config, file).unwrap();
    Sandbox::new(unit, GatewayAccess::default())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A client of `tin`/`bhf_id` on the sandbox, through `profile`'s paths.
pub fn client(handle: &SandboxHandle, profile: Profile, tin: &str, bhf_id: &str) -> KraClient {
    let base = handle.url();
    let (base_url, gateway) = match profile {
        Profile::GavaConnect => (
            format!("{base}{GATEWAY_PREFIX}"),
            Some(GatewayCredentials {
                token_url: format!("{base}{TOKEN_PATH}"),
                consumer_key: "ushuru-sandbox".into(),
                consumer_secret: Secret::new("ushuru-sandbox"),
            }),
        ),
        _ => (base, None),
    };
    let timeouts = Timeouts {
        sale: std::time::Duration::from_secs(5),
        ..Timeouts::default()
    };
    KraClient::new(ClientConfig {
        base_url,
        profile,
        tin: tin.into(),
        bhf_id: bhf_id.into(),
        cmc_key: None,
        timeouts,
        gateway,
    })
    .unwrap()
}

pub fn ok<T: std::fmt::Debug>(outcome: Outcome<T>) -> Option<T> {
    match outcome {
        Outcome::Ok { data, .. } => data,
        other => panic!("expected success, got {other:?}"),
    }
}

pub fn rejected<T: std::fmt::Debug>(outcome: Outcome<T>) -> (String, String) {
    match outcome {
        Outcome::Rejected { code, message } => (code.code().to_owned(), message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Initialises the device and returns a client that carries its cmcKey.
pub async fn initialised(
    handle: &SandboxHandle,
    profile: Profile,
    tin: &str,
    bhf_id: &str,
) -> KraClient {
    let client = client(handle, profile, tin, bhf_id);
    let request = InitRequest {
        tin: tin.into(),
        bhf_id: bhf_id.into(),
        dvc_srl_no: format!("POS-{tin}-{bhf_id}"),
    };
    let info = ok(client.call::<InitDevice>(&request).await.outcome)
        .unwrap()
        .info;
    assert_eq!(info.cmc_key.len(), 32);
    client.with_cmc_key(Secret::new(info.cmc_key))
}

pub fn item_request(code: &str, band: &str) -> SaveItemRequest {
    SaveItemRequest {
        item_cd: code.into(),
        item_cls_cd: "50202306".into(),
        item_ty_cd: "2".into(),
        item_nm: format!("Item {code}"),
        item_std_nm: None,
        orgn_nat_cd: "KE".into(),
        pkg_unit_cd: "NT".into(),
        qty_unit_cd: "U".into(),
        tax_ty_cd: band.into(),
        btch_no: None,
        bcd: None,
        dft_prc: Amount::parse("100").unwrap(),
        grp_prc_l1: None,
        grp_prc_l2: None,
        grp_prc_l3: None,
        grp_prc_l4: None,
        grp_prc_l5: None,
        add_info: None,
        sfty_qty: None,
        isrc_aplcb_yn: "N".into(),
        use_yn: "Y".into(),
        regr_id: "admin".into(),
        regr_nm: "Admin".into(),
        modr_id: "admin".into(),
        modr_nm: "Admin".into(),
    }
}

pub async fn register(client: &KraClient, code: &str, band: &str) {
    ok(client
        .call::<SaveItemEndpoint>(&item_request(code, band))
        .await
        .outcome);
}

pub fn priced(price: &str, band: &str, qty: &str) -> PricedLine {
    let text = LineText {
        price,
        band,
        qty,
        pricing: Pricing::VatInclusive,
        discount: None,
        discount_rate: None,
    };
    calculate_line(&LineInput::parse(&text).unwrap(), &TaxRates::kenya()).unwrap()
}

pub fn line(code: &str, priced: PricedLine) -> DraftLine {
    DraftLine {
        item_cd: code.into(),
        item_nm: format!("Item {code}"),
        item_cls_cd: Some("50202306".into()),
        pkg_unit_cd: "NT".into(),
        qty_unit_cd: "U".into(),
        priced,
    }
}

pub fn now() -> NaiveDateTime {
    DateTime14::parse("20260707114122").unwrap().0
}

pub fn sale(tin: &str, bhf_id: &str, invc_no: u64, lines: Vec<DraftLine>) -> SaleRequest {
    SaleDraft {
        tin: tin.into(),
        bhf_id: bhf_id.into(),
        invc_no,
        org_invc_no: 0,
        trd_invc_no: format!("INV-{invc_no}"),
        rcpt_ty_cd: "S".into(),
        sales_ty_cd: "N".into(),
        pmt_ty_cd: Some("01".into()),
        cust_tin: None,
        cust_nm: None,
        rfd_rsn_cd: None,
        confirmed: now(),
        operator: "admin".into(),
        lines,
    }
    .into_request(&TaxRates::kenya())
    .unwrap()
}

pub fn credit_note(
    tin: &str,
    bhf_id: &str,
    invc_no: u64,
    original: u64,
    lines: Vec<DraftLine>,
) -> SaleRequest {
    let mut request = sale(tin, bhf_id, invc_no, lines);
    request.rcpt_ty_cd = "R".into();
    request.org_invc_no = ushuru_kra::wire::Int(original);
    request.rfd_rsn_cd = Some("06".into());
    request
}

/// Signs a one-line sale of item `code` and returns the receipt.
pub async fn sign(client: &KraClient, invc_no: u64, code: &str, price: &str) -> SaleResponse {
    let config = client.config();
    let request = sale(
        &config.tin,
        &config.bhf_id,
        invc_no,
        vec![line(code, priced(price, "B", "1"))],
    );
    ok(client.call::<SignSale>(&request).await.outcome).unwrap()
}

/// The control API, over plain HTTP.
pub async fn control(
    handle: &SandboxHandle,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let mut request = http.request(method, format!("{}{path}", handle.url()));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

pub fn sandbox(handle: &SandboxHandle) -> &Arc<Sandbox> {
    handle.sandbox()
}

/// Sets or advances the sandbox's clock through the control API.
pub async fn set_clock(handle: &SandboxHandle, body: serde_json::Value) {
    let (status, answer) =
        control(handle, reqwest::Method::POST, "/_sandbox/clock", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
}
