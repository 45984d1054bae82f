//! `POST /v2/etims/sale` and `GET /v2/etims/sales/{id}/status` (taxid-api.md §2.1, §3).

use std::borrow::Cow;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ushuru_kra::{DraftLine, SaleDraft};
use ushuru_store::{
    IdempotencyStart, IdempotentAccept, IdempotentRequest, NewSale, OutboxPayload, PayloadBuilder,
    SaleId, SaleLine, SaleRecord, SaleStatus, Scope,
};
use ushuru_tax::{
    InvoiceTotals, LineInput, LineText, Money, PricedLine, Pricing, Rounding, TaxBand,
    calculate_line,
};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::operations::is_pin;
use crate::schema::{ErrorBody, SaleResult};
use crate::{AppState, BranchContext, Caller, branch_context, request_id};

/// KRA's item class for an item the caller did not classify (the flat body never does).
pub(crate) const UNCLASSIFIED: &str = "99999999";

/// The body of `POST /v2/etims/sale`: the flat form, or the itemised form with `items`.
/// Decimals come as JSON strings (the SDK's form) or numbers.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SaleRequest)]
struct SaleBody {
    /// The seller's KRA PIN: must be the PIN of the API key's branch.
    #[schema(example = "A000123456B")]
    supplier_pin: String,
    /// The POS's invoice reference; what `GET /v2/etims/sales/search` finds.
    #[schema(example = "INV-0001")]
    client_reference: String,
    /// The total, VAT-inclusive, a decimal string (a JSON number is accepted); must equal
    /// the lines' total to the cent.
    #[schema(value_type = String, example = "5800.00")]
    amount: Value,
    /// `YYYY-MM-DD`.
    #[schema(example = "2026-09-25")]
    invoice_date: String,
    /// Flat form: the single line's name ("General supply" when empty).
    item_description: Option<String>,
    /// The VAT in `amount`, a decimal string; must be within 0.02 of Ushuru's.
    #[schema(value_type = String, example = "800.00")]
    tax_amount: Value,
    /// KRA payment type code; `01` (cash) when absent.
    pmt_ty_cd: Option<String>,
    /// Flat form: the tax band `A` to `E` of the single line; `B` when absent.
    tax_band: Option<String>,
    /// Itemised form: the lines. When present, `taxBand` is not used.
    items: Option<Vec<ItemBody>>,
    /// The buyer's KRA PIN, for a B2B sale.
    buyer_pin: Option<String>,
    buyer_name: Option<String>,
}

/// One line of an itemised sale.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SaleItem)]
struct ItemBody {
    /// The caller's SKU; kept as the KRA item code when it fits 20 characters.
    sku: String,
    item_nm: String,
    /// KRA item class, 8 to 10 digits.
    #[schema(example = "10101601")]
    item_cls_cd: String,
    /// Tax band `A` to `E`.
    tax_ty_cd: String,
    /// A decimal string, e.g. `"2.0000"`.
    #[schema(value_type = String)]
    qty: Value,
    /// VAT-inclusive, a decimal string.
    #[schema(value_type = String)]
    unit_price: Value,
    /// `NT` when absent.
    pkg_unit_cd: Option<String>,
    /// `U` when absent.
    qty_unit_cd: Option<String>,
    /// A discount amount in KES, a decimal string.
    #[schema(value_type = Option<String>)]
    discount: Option<Value>,
    /// A discount rate in percent, a decimal string; used when `discount` is absent or zero.
    #[schema(value_type = Option<String>)]
    discount_rate: Option<Value>,
}

/// A decimal field's text, exactly as sent.
pub(crate) fn decimal_text<'a>(field: &str, value: &'a Value) -> Result<Cow<'a, str>, ApiError> {
    match value {
        Value::String(text) => Ok(Cow::Borrowed(text)),
        Value::Number(number) => Ok(Cow::Owned(number.to_string())),
        _ => Err(ApiError::bad_request(
            "INVALID_BODY",
            format!("{field} must be a decimal string such as \"5800.00\""),
        )),
    }
}

fn money(field: &str, value: &Value) -> Result<Money, ApiError> {
    let text = decimal_text(field, value)?;
    Money::parse(&text, Rounding::HalfUp)
        .map_err(|e| ApiError::invalid("INVALID_AMOUNT", format!("{field} {text:?} {e}")))
}

/// A KRA item code for a caller's SKU: the SKU itself when it fits KRA's 20 characters,
/// else one derived from it (origin KE, type 2, packaging NT, unit U, 7 digits: §3).
pub(crate) fn item_code(sku: &str) -> String {
    if !sku.is_empty() && sku.len() <= 20 {
        return sku.to_owned();
    }
    let digest = Sha256::digest(sku.as_bytes());
    let number = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    format!("KE2NTU{:07}", number % 10_000_000)
}

/// The priced sale, ready for phase 1.
struct PricedSale {
    lines: Vec<DraftLine>,
    totals: InvoiceTotals,
    client_reference: String,
    pmt_ty_cd: String,
    buyer: Option<(String, Option<String>)>,
}

fn price(
    body: &SaleBody,
    branch: &BranchContext,
    state: &AppState,
) -> Result<PricedSale, ApiError> {
    if body.supplier_pin.trim() != branch.tin {
        return Err(ApiError::invalid(
            "SUPPLIER_MISMATCH",
            format!(
                "supplierPin {} is not the PIN of this API key's branch",
                body.supplier_pin
            ),
        ));
    }
    if chrono::NaiveDate::parse_from_str(&body.invoice_date, "%Y-%m-%d").is_err() {
        return Err(ApiError::invalid(
            "INVALID_DATE",
            format!("invoiceDate {:?} is not YYYY-MM-DD", body.invoice_date),
        ));
    }
    if body.client_reference.trim().is_empty() {
        return Err(ApiError::invalid(
            "MISSING_REFERENCE",
            "clientReference is empty",
        ));
    }
    let buyer = match &body.buyer_pin {
        Some(pin) if !is_pin(pin) => {
            return Err(ApiError::invalid(
                "INVALID_PIN",
                format!("buyerPin {pin:?} is not a KRA PIN (A123456789B)"),
            ));
        }
        Some(pin) => Some((pin.clone(), body.buyer_name.clone())),
        None => None,
    };
    let line_error = |index: usize, e: ushuru_tax::LineError| {
        ApiError::invalid(e.code(), format!("line {}: {e}", index + 1))
    };
    let mut lines = Vec::new();
    match &body.items {
        None => {
            let band = body.tax_band.as_deref().unwrap_or("B");
            let amount = decimal_text("amount", &body.amount)?;
            let text = LineText {
                price: &amount,
                band,
                qty: "1",
                pricing: Pricing::VatInclusive,
                discount: None,
                discount_rate: None,
            };
            let priced = LineInput::parse(&text)
                .and_then(|input| calculate_line(&input, &state.rates))
                .map_err(|e| line_error(0, e))?;
            let name = body
                .item_description
                .clone()
                .filter(|d| !d.trim().is_empty())
                .unwrap_or_else(|| "General supply".into());
            lines.push(draft_line(
                item_code(&name),
                name.chars().take(200).collect(),
                UNCLASSIFIED.into(),
                None,
                None,
                priced,
            ));
        }
        Some(items) if items.is_empty() => {
            return Err(ApiError::invalid("NO_ITEMS", "items is empty"));
        }
        Some(items) => {
            for (index, item) in items.iter().enumerate() {
                let (qty, price) = (
                    decimal_text("qty", &item.qty)?,
                    decimal_text("unitPrice", &item.unit_price)?,
                );
                let discount = item
                    .discount
                    .as_ref()
                    .map(|d| decimal_text("discount", d))
                    .transpose()?;
                let discount_rate = item
                    .discount_rate
                    .as_ref()
                    .map(|d| decimal_text("discountRate", d))
                    .transpose()?;
                let text = LineText {
                    price: &price,
                    band: &item.tax_ty_cd,
                    qty: &qty,
                    pricing: Pricing::VatInclusive,
                    discount: discount
                        .as_deref()
                        .filter(|d| Money::parse(d, Rounding::HalfUp).is_ok_and(|m| !m.is_zero())),
                    discount_rate: discount_rate.as_deref(),
                };
                let priced = LineInput::parse(&text)
                    .and_then(|input| calculate_line(&input, &state.rates))
                    .map_err(|e| line_error(index, e))?;
                let class = &item.item_cls_cd;
                if !(8..=10).contains(&class.len()) || !class.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ApiError::invalid(
                        "INVALID_ITEM_CLASS",
                        format!("line {}: itemClsCd must be 8 to 10 digits", index + 1),
                    ));
                }
                lines.push(draft_line(
                    item_code(&item.sku),
                    item.item_nm.clone(),
                    class.clone(),
                    item.pkg_unit_cd.clone(),
                    item.qty_unit_cd.clone(),
                    priced,
                ));
            }
        }
    }
    let priced: Vec<PricedLine> = lines.iter().map(|l| l.priced).collect();
    let totals = InvoiceTotals::from_lines(&priced, &state.rates)
        .map_err(|e| ApiError::invalid("OUT_OF_RANGE", e.to_string()))?;
    // The caller's totals must be ours: the total to the cent, the tax within KRA's 0.02.
    let amount = money("amount", &body.amount)?;
    let tax_amount = money("taxAmount", &body.tax_amount)?;
    let cents = |a: Money, b: Money| (a.minor() - b.minor()).unsigned_abs();
    if cents(amount, totals.tot_amt) > 1 {
        return Err(ApiError::invalid(
            "AMOUNT_MISMATCH",
            format!("amount {amount} is not the lines' total {}", totals.tot_amt),
        ));
    }
    if cents(tax_amount, totals.tot_tax_amt) > 2 {
        return Err(ApiError::invalid(
            "TAX_MISMATCH",
            format!(
                "taxAmount {tax_amount} is not the VAT of the lines, {}",
                totals.tot_tax_amt
            ),
        ));
    }
    if body
        .tax_band
        .as_deref()
        .is_some_and(|b| b.parse::<TaxBand>().is_err())
    {
        return Err(ApiError::invalid(
            "UNKNOWN_TAX_BAND",
            "taxBand must be A, B, C, D or E",
        ));
    }
    Ok(PricedSale {
        lines,
        totals,
        client_reference: body.client_reference.clone(),
        pmt_ty_cd: body.pmt_ty_cd.clone().unwrap_or_else(|| "01".into()),
        buyer,
    })
}

fn draft_line(
    item_cd: String,
    item_nm: String,
    item_cls_cd: String,
    pkg_unit_cd: Option<String>,
    qty_unit_cd: Option<String>,
    priced: PricedLine,
) -> DraftLine {
    DraftLine {
        item_cd,
        item_nm,
        item_cls_cd: Some(item_cls_cd),
        pkg_unit_cd: pkg_unit_cd.unwrap_or_else(|| "NT".into()),
        qty_unit_cd: qty_unit_cd.unwrap_or_else(|| "U".into()),
        priced,
    }
}

/// The body of a sale as the SDK reads it (`SaleResult`): every optional field a string or
/// null, `purchaseId` an integer.
/// `<sdcId>/<curRcptNo> <label>`, the label being transaction type N(ormal) + receipt
/// type S(ale) or R (credit note); `None` until the sale is signed.
pub(crate) fn cu_invoice_number(sale: &SaleRecord) -> Option<String> {
    let label = if sale.rcpt_ty_cd == "R" { "NR" } else { "NS" };
    sale.receipt
        .as_ref()
        .map(|r| format!("{}/{} {label}", r.sdc_id, r.cur_rcpt_no))
}

pub(crate) fn render(
    sale: &SaleRecord,
    branch: &BranchContext,
    state: &AppState,
    request_id: &str,
) -> (StatusCode, Value) {
    let receipt = sale.receipt.as_ref();
    let cu_invoice = cu_invoice_number(sale);
    let qr_payload = receipt.and_then(|r| {
        let at = chrono::NaiveDateTime::parse_from_str(&r.sdc_date_time, "%Y%m%d%H%M%S").ok()?;
        let cu = cu_invoice.clone()?;
        Some(format!(
            "{}#{}#{}#{cu}#{}#{}",
            at.format("%d%m%Y"),
            at.format("%H%M%S"),
            r.sdc_id,
            r.intrl_data,
            r.rcpt_sign
        ))
    });
    let qr_url = receipt.map(|r| {
        format!(
            "https://{}/common/link/etims/receipt/indexEtimsReceiptData?Data={}{}{}",
            state.receipt_host, branch.tin, branch.bhf_id, r.rcpt_sign
        )
    });
    let status = match sale.status {
        SaleStatus::Signed | SaleStatus::Failed | SaleStatus::ReconciliationRequired => {
            StatusCode::OK
        }
        SaleStatus::PendingSync | SaleStatus::OutcomeUnknown => StatusCode::ACCEPTED,
    };
    let body = json!({
        "purchaseId": sale.id.0,
        "status": sale.status.as_str(),
        "type": if sale.rcpt_ty_cd == "R" { "CREDIT_NOTE" } else { "SALE" },
        "cuInvoiceNumber": cu_invoice,
        "sdcId": receipt.map(|r| r.sdc_id.clone()),
        "receiptSignature": receipt.map(|r| r.rcpt_sign.clone()),
        "internalData": receipt.map(|r| r.intrl_data.clone()),
        "kraQrPayload": qr_payload,
        "kraQrUrl": qr_url,
        "vscuTimestamp": receipt.map(|r| r.sdc_date_time.clone()),
        "invcNo": sale.invc_no.to_string(),
        "clientReference": sale.client_reference,
        "requestId": request_id,
    });
    (status, body)
}

pub(crate) fn respond(status: StatusCode, body: Value, request_id: &str) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = request_id.parse() {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// `POST /v2/etims/sale`: accepts the sale (numbered and queued in one transaction), then
/// waits for its receipt up to the sale deadline.
#[utoipa::path(
    post,
    path = "/v2/etims/sale",
    tag = "sales",
    summary = "Sign a sale",
    description = "Prices the sale with KRA's rules, checks the caller's totals against the \
        lines (the amount to the cent, the VAT within 0.02), numbers it and queues it for the \
        branch's control unit in one transaction, then waits for the signed receipt up to the \
        sale deadline. A sale signed in time is answered 200; one still queued, or whose \
        outcome is being found out, 202: follow it with the status endpoint. The branch is the \
        API key's; `supplierPin` must be its PIN.\n\n\
        With an `Idempotency-Key`, the same key and the same body bytes answer the same sale \
        again (as it is now); the same key with another body is refused.",
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "Makes retries safe: the SDK sends `<tin>:<invcNo>`. Kept 24 hours by default."),
    ),
    request_body(content = SaleBody, content_type = "application/json",
        description = "The flat form (`taxBand`, one line) or the itemised form (`items`)."),
    responses(
        (status = 200, description = "Signed, or refused for good (`status` says which).",
            body = SaleResult, headers(("X-Request-Id" = String, description = "This request's id."))),
        (status = 202, description = "Accepted, not signed yet (`PENDING_SYNC` or `OUTCOME_UNKNOWN`).",
            body = SaleResult, headers(("X-Request-Id" = String, description = "This request's id."))),
        (status = 400, description = "The body is not JSON of this shape (`INVALID_BODY`).", body = ErrorBody),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 503, description = "This server does not sign for the key's branch yet: its device is not initialised (`BRANCH_NOT_SERVED`).", body = ErrorBody),
        (status = 422, description = "The sale is refused before it is numbered: `SUPPLIER_MISMATCH`, `INVALID_DATE`, \
            `AMOUNT_MISMATCH`, `TAX_MISMATCH`, `INVALID_PIN`, `INVALID_ITEM_CLASS`, `UNKNOWN_TAX_BAND`, ...; \
            or `IDEMPOTENCY_KEY_REUSED`.", body = ErrorBody),
        (status = 425, description = "The first request with this Idempotency-Key is still running \
            (`IDEMPOTENT_REQUEST_IN_FLIGHT`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`); retry with the same Idempotency-Key.", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = request_id();
    let scope = caller.key.scope;
    let branch = match branch_context(&state, scope).await {
        Ok(branch) => branch,
        Err(error) => return error.into_response(),
    };
    let request_sha256 = data_encoding::HEXLOWER.encode(&Sha256::digest(&body));
    match idempotency_key(&headers) {
        Some(key) => {
            accept_once(
                &state,
                scope,
                &branch,
                &body,
                key,
                request_sha256,
                &request_id,
            )
            .await
        }
        None => match accept(&state, scope, &branch, &body, &request_id).await {
            Ok((status, answer)) => respond(status, answer, &request_id),
            Err(error) => error.into_response(),
        },
    }
}

/// Runs a mutating request under its `Idempotency-Key`, if it has one: the first request
/// runs and its answer is kept (server errors are not, so they may be retried); the same
/// key with the same request answers again; with another request, 422; while the first
/// still runs, 425.
pub(crate) async fn with_idempotency<F, Fut>(
    state: &AppState,
    scope: Scope,
    branch: &BranchContext,
    headers: &HeaderMap,
    request_sha256: String,
    request_id: &str,
    run: F,
) -> Response
where
    F: FnOnce(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    let Some(key) = idempotency_key(headers) else {
        return match run(None).await {
            Ok((status, body)) => respond(status, body, request_id),
            Err(error) => error.into_response(),
        };
    };
    let now = state.clock.now();
    let started = state
        .store
        .begin_idempotent(
            scope.tenant,
            &key,
            &request_sha256,
            now,
            state.in_flight_for,
            state.idempotency_keep,
        )
        .await;
    match started {
        Err(e) => ApiError::from(e).into_response(),
        Ok(IdempotencyStart::Started) => {
            let outcome = run(Some(key.clone())).await;
            let (status, answer) = match &outcome {
                Ok((status, body)) => (*status, body.clone()),
                Err(error) => (error.status, error.body()),
            };
            let kept = if status.is_server_error() {
                state.store.abandon_idempotent(scope.tenant, &key).await
            } else {
                state
                    .store
                    .finish_idempotent(scope.tenant, &key, status.as_u16(), &answer.to_string())
                    .await
            };
            if let Err(e) = kept {
                tracing::error!(error = %e, "idempotency record not kept");
            }
            respond(status, answer, request_id)
        }
        Ok(start) => answer_decided(state, scope, branch, start, request_id).await,
    }
}

/// The `Idempotency-Key` header, if the request has one.
fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The answer when a key's earlier use decides: replay, mismatch or in flight.
async fn answer_decided(
    state: &AppState,
    scope: Scope,
    branch: &BranchContext,
    start: IdempotencyStart,
    request_id: &str,
) -> Response {
    match start {
        IdempotencyStart::Mismatch => ApiError::invalid(
            "IDEMPOTENCY_KEY_REUSED",
            "this Idempotency-Key was used with a different request",
        )
        .into_response(),
        IdempotencyStart::InFlight => ApiError::new(
            StatusCode::TOO_EARLY,
            "IDEMPOTENT_REQUEST_IN_FLIGHT",
            "the first request with this Idempotency-Key is still running; ask again shortly",
        )
        .into_response(),
        IdempotencyStart::Replay { status, body } => {
            replay(state, scope, branch, status, &body, request_id).await
        }
        IdempotencyStart::Started => {
            ApiError::internal("a started request has no decided answer").into_response()
        }
    }
}

/// The same request again: a sale answer is given as the sale now is (the same
/// `purchaseId`, its receipt once signed); any other answer as it was.
async fn replay(
    state: &AppState,
    scope: Scope,
    branch: &BranchContext,
    status: u16,
    body: &str,
    request_id: &str,
) -> Response {
    let stored: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if let Some(id) = stored.get("creditNoteId").and_then(Value::as_i64) {
        return crate::credit::answer_again(state, scope, branch, SaleId(id), request_id).await;
    }
    if let Some(id) = stored.get("purchaseId").and_then(Value::as_i64) {
        return match state.store.sale(scope, SaleId(id)).await {
            Ok(Some(sale)) => {
                let (status, body) = render(&sale, branch, state, request_id);
                respond(status, body, request_id)
            }
            Ok(None) => ApiError::not_found("sale").into_response(),
            Err(e) => ApiError::from(e).into_response(),
        };
    }
    respond(
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        stored,
        request_id,
    )
}

/// Prices and accepts a sale (phase 1), then waits for its receipt up to the deadline.
/// Parses and prices a sale body: the sale to store and the builder of its KRA payload.
fn prepare_sale(
    state: &AppState,
    branch: &BranchContext,
    body: &[u8],
) -> Result<(NewSale, PayloadBuilder), ApiError> {
    let parsed: SaleBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("INVALID_BODY", format!("the sale body does not read: {e}"))
    })?;
    let priced = price(&parsed, branch, state)?;
    let confirmed = state.clock.now().with_timezone(&crate::EAT).naive_local();
    let (tin, bhf_id, rates) = (branch.tin.clone(), branch.bhf_id.clone(), state.rates);
    let PricedSale {
        lines,
        totals,
        client_reference,
        pmt_ty_cd,
        buyer,
    } = priced;
    let reference = client_reference.clone();
    let stored_lines: Vec<SaleLine> = lines
        .iter()
        .zip(1u32..)
        .map(|(line, item_seq)| SaleLine {
            item_seq,
            item_cd: line.item_cd.clone(),
            item_nm: line.item_nm.clone(),
            tax_ty_cd: line.priced.tax_ty_cd.to_string(),
            qty: line.priced.qty,
            uprc: line.priced.uprc,
            dc_amt: line.priced.dc_amt,
            taxbl_amt: line.priced.taxbl_amt,
            tax_amt: line.priced.tax_amt,
            tot_amt: line.priced.tot_amt,
            original_item_seq: None,
        })
        .collect();
    let build = Box::new(move |invc_no: u64| {
        let (cust_tin, cust_nm) = buyer.map_or((None, None), |(pin, name)| (Some(pin), name));
        let request = SaleDraft {
            tin,
            bhf_id,
            invc_no,
            org_invc_no: 0,
            trd_invc_no: reference.chars().take(50).collect(),
            rcpt_ty_cd: "S".into(),
            sales_ty_cd: "N".into(),
            pmt_ty_cd: Some(pmt_ty_cd),
            cust_tin,
            cust_nm,
            rfd_rsn_cd: None,
            confirmed,
            operator: "ushuru".into(),
            lines,
        }
        .into_request(&rates)
        .map_err(|e| e.to_string())?;
        let body = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        let sha256 = data_encoding::HEXLOWER.encode(&Sha256::digest(body.as_bytes()));
        Ok(OutboxPayload { body, sha256 })
    });
    let sale = NewSale {
        client_reference: Some(client_reference),
        tot_amt: totals.tot_amt,
        lines: stored_lines,
        idempotency_key: None,
    };
    Ok((sale, build))
}

/// Accepts a sale without an Idempotency-Key and waits for its receipt.
async fn accept(
    state: &AppState,
    scope: Scope,
    branch: &BranchContext,
    body: &[u8],
    request_id: &str,
) -> Result<(StatusCode, Value), ApiError> {
    let (sale, build) = prepare_sale(state, branch, body)?;
    let events = state.pipeline.settlements();
    let accepted = state.store.accept_sale(scope, sale, build).await?;
    settle_and_render(state, scope, branch, events, accepted.sale, request_id).await
}

async fn settle_and_render(
    state: &AppState,
    scope: Scope,
    branch: &BranchContext,
    events: tokio::sync::broadcast::Receiver<ushuru_engine::Settled>,
    sale: SaleId,
    request_id: &str,
) -> Result<(StatusCode, Value), ApiError> {
    state.pipeline.wake(scope.branch);
    let record = state
        .pipeline
        .wait_for_accepted(events, scope, sale, state.sale_deadline)
        .await?;
    Ok(render(&record, branch, state, request_id))
}

/// A sale with an Idempotency-Key: priced first (a body that does not validate accepts
/// nothing and keeps nothing under its key, so it is refused the same way every time),
/// then the key's record and the sale are written in one transaction, and the answer is
/// kept under the key once it is known.
async fn accept_once(
    state: &AppState,
    scope: Scope,
    branch: &BranchContext,
    body: &[u8],
    key: String,
    request_sha256: String,
    request_id: &str,
) -> Response {
    let (sale, build) = match prepare_sale(state, branch, body) {
        Ok(prepared) => prepared,
        Err(error) => return error.into_response(),
    };
    let request = IdempotentRequest {
        key: key.clone(),
        request_sha256,
        now: state.clock.now(),
        in_flight_for: state.in_flight_for,
        keep: state.idempotency_keep,
    };
    let events = state.pipeline.settlements();
    let accepted = match state
        .store
        .accept_sale_once(scope, request, sale, build)
        .await
    {
        Ok(IdempotentAccept::Accepted(accepted)) => accepted,
        Ok(IdempotentAccept::Decided(start)) => {
            return answer_decided(state, scope, branch, start, request_id).await;
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    match settle_and_render(state, scope, branch, events, accepted.sale, request_id).await {
        Ok((status, answer)) => {
            // A settled sale (200) is its own answer: the key's record already points at
            // it. A 202 is kept, so that a retry is answered rather than told to wait.
            if status != StatusCode::OK
                && let Err(e) = state
                    .store
                    .finish_idempotent(scope.tenant, &key, status.as_u16(), &answer.to_string())
                    .await
            {
                tracing::error!(error = %e, "idempotency record not kept");
            }
            respond(status, answer, request_id)
        }
        // The sale is accepted and its key's record points at it: a retry finds it.
        Err(error) => error.into_response(),
    }
}

/// `GET /v2/etims/sales/{id}/status`: the sale as it is now.
#[utoipa::path(
    get,
    path = "/v2/etims/sales/{id}/status",
    tag = "sales",
    summary = "A sale's status",
    description = "The sale (or credit note) as it is now, in the shape of the sale answer. \
        Poll it after a 202 until `status` is `SIGNED` or `FAILED`.",
    params(("id" = i64, Path, description = "The `purchaseId` of the sale.")),
    responses(
        (status = 200, description = "The sale.", body = SaleResult,
            headers(("X-Request-Id" = String, description = "This request's id."))),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 503, description = "This server does not sign for the key's branch yet: its device is not initialised (`BRANCH_NOT_SERVED`).", body = ErrorBody),
        (status = 404, description = "No such sale for this branch (`NOT_FOUND`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let request_id = request_id();
    let scope = caller.key.scope;
    let Ok(id) = id.parse::<i64>() else {
        return ApiError::not_found("sale").into_response();
    };
    let branch = match branch_context(&state, scope).await {
        Ok(branch) => branch,
        Err(error) => return error.into_response(),
    };
    match state.store.sale(scope, SaleId(id)).await {
        Ok(Some(sale)) => {
            let (_, body) = render(&sale, &branch, &state, &request_id);
            respond(StatusCode::OK, body, &request_id)
        }
        Ok(None) => ApiError::not_found("sale").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
