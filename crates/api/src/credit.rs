//! `POST /v2/etims/sale/{id}/credit-note`: full and partial credit notes.
//!
//! A credit note is a receipt of type `R` against a sale of the same branch, numbered from
//! the branch's `invcNo` sequence and signed through the same outbox, in order. What it
//! may reverse is decided inside the store's accepting transaction (which holds the
//! branch's numbering lock), so two notes against one sale never reverse the same
//! quantity twice. Amounts: a line returned in full (or the rest of it) reverses exactly
//! what remains of its amounts, so a sale's notes always add up to the sale to the cent;
//! a part of a line is priced afresh with the sale's rules and the discount pro rata.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ushuru_kra::{DraftLine, SaleDraft};
use ushuru_store::{
    CreditContext, CreditOutcome, NewCreditNote, NewSale, OutboxPayload, SaleId, SaleLine,
    SaleRecord, SaleStatus, Scope,
};
use ushuru_tax::{
    Discount, LineInput, Money, Percent, PricedLine, Pricing, Quantity, Rounding, TaxBand,
    TaxRates, calculate_line,
};
use utoipa::ToSchema;

use crate::sale::{cu_invoice_number, item_code, render, respond, with_idempotency};
use crate::schema::{CreditNoteResult, ErrorBody, LegacyReturnItem};
use crate::{ApiError, AppState, BranchContext, Caller, branch_context, request_id};

/// The body of a credit note; every field optional. No body at all (the SDK's form when only
/// an Idempotency-Key is given) reverses what remains of the sale.
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = CreditNoteRequest)]
pub(crate) struct CreditNoteBody {
    /// The POS's reference for the note; `CN-<original reference>` when absent.
    client_reference: Option<String>,
    /// Free text, kept with the note.
    reason: Option<String>,
    /// KRA refund reason code `01` to `06` (code class 32); `06` (refund) when absent.
    reason_code: Option<String>,
    /// The lines to reverse, by the original's `itemSeq`. Not with `items`.
    return_lines: Option<Vec<ReturnLine>>,
    /// The SDK's legacy selection: `{sku, qty?}`; prices and taxes in it are ignored.
    #[schema(value_type = Option<Vec<LegacyReturnItem>>)]
    items: Option<Vec<Value>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReturnLine {
    /// The original line's `itemSeq`, from 1.
    #[schema(minimum = 1)]
    original_item_seq: u32,
    /// The quantity to reverse: a decimal string > 0 with at most 2 places.
    #[schema(value_type = String, example = "1.5")]
    qty: Value,
}

/// Why a credit note is not accepted; decided inside the store's transaction.
enum Refusal {
    /// Nothing remains to reverse: the latest note against the sale.
    NothingRemains {
        existing: Box<SaleRecord>,
    },
    Exceeds {
        item_seq: u32,
        remaining: Quantity,
        already: Quantity,
    },
    Invalid(&'static str, String),
    Conflict(&'static str, String),
}

impl Refusal {
    fn into_error(self) -> ApiError {
        match self {
            Refusal::NothingRemains { existing } => ApiError::new(
                StatusCode::CONFLICT,
                "CREDIT_NOTE_EXISTS",
                "this sale is already fully reversed by its credit notes",
            )
            .with("existingCreditNoteId", json!(existing.id.0))
            .with("existingCuInvoiceNo", json!(cu_invoice_number(&existing))),
            Refusal::Exceeds {
                item_seq,
                remaining,
                already,
            } => ApiError::invalid(
                "CREDIT_NOTE_EXCEEDS_ORIGINAL",
                format!(
                    "line {item_seq} has {remaining} left to reverse ({already} already reversed)"
                ),
            )
            .with("originalItemSeq", json!(item_seq))
            .with("remaining", json!(remaining.to_string()))
            .with("alreadyReversed", json!(already.to_string())),
            Refusal::Invalid(code, message) => ApiError::invalid(code, message),
            Refusal::Conflict(code, message) => ApiError::new(StatusCode::CONFLICT, code, message),
        }
    }
}

/// What the caller asked to reverse: per original `itemSeq`, a quantity or "what remains".
enum Selection {
    Everything,
    Lines(BTreeMap<u32, Option<Quantity>>),
}

/// `POST /v2/etims/sale/{id}/credit-note`: accepts a credit note against a sale of the
/// branch, then waits for its receipt like a sale.
#[utoipa::path(
    post,
    path = "/v2/etims/sale/{id}/credit-note",
    tag = "credit notes",
    summary = "Issue a credit note",
    description = "Reverses all of a sale (no body, or a body without `returnLines` or \
        `items`) or part of it: lines by `originalItemSeq`, or by SKU with the legacy `items`. \
        A line's rest reverses exactly what remains of its amounts, so a sale's notes add up \
        to the sale to the cent; a part of a line is priced afresh with the sale's rules. The \
        note is numbered from the branch's sequence and signed through the same queue; it is \
        answered like a sale (200 signed, 202 not yet).\n\n\
        Idempotency-Key works as for sales; the key covers the path too.",
    params(
        ("id" = i64, Path, description = "The `purchaseId` of the sale to reverse."),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe."),
    ),
    // A reference rather than `Option<CreditNoteBody>`, which would document a JSON `null`
    // body (refused) instead of a missing one (a full reversal); lib.rs lists the schema.
    request_body(content = ref("#/components/schemas/CreditNoteRequest"), content_type = "application/json",
        description = "No body at all reverses what remains of the sale."),
    responses(
        (status = 200, description = "Signed, or refused for good (`status` says which).",
            body = CreditNoteResult, headers(("X-Request-Id" = String, description = "This request's id."))),
        (status = 202, description = "Accepted, not signed yet.",
            body = CreditNoteResult, headers(("X-Request-Id" = String, description = "This request's id."))),
        (status = 400, description = "The body does not read, or gives both `returnLines` and `items` \
            (`INVALID_BODY`).", body = ErrorBody),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 503, description = "This server does not sign for the key's branch yet: its device is not initialised (`BRANCH_NOT_SERVED`).", body = ErrorBody),
        (status = 404, description = "No such sale for this branch (`NOT_FOUND`).", body = ErrorBody),
        (status = 409, description = "`CREDIT_NOTE_EXISTS`: nothing remains to reverse (with \
            `existingCreditNoteId`, `existingCuInvoiceNo`); `ORIGINAL_NOT_SIGNED`: the sale failed \
            or needs reconciliation.", body = ErrorBody),
        (status = 422, description = "`CREDIT_NOTE_EXCEEDS_ORIGINAL` (with `originalItemSeq`, \
            `remaining`, `alreadyReversed`), `INVALID_RETURN_LINE`, `UNKNOWN_ORIGINAL_LINE`, \
            `INVALID_REASON_CODE`, ...; or `IDEMPOTENCY_KEY_REUSED`.", body = ErrorBody),
        (status = 425, description = "The first request with this Idempotency-Key is still running \
            (`IDEMPOTENT_REQUEST_IN_FLIGHT`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`); retry with the same Idempotency-Key.", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn issue(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = request_id();
    let scope = caller.key.scope;
    let branch = match branch_context(&state, scope).await {
        Ok(branch) => branch,
        Err(error) => return error.into_response(),
    };
    let Ok(original) = id.parse::<i64>() else {
        return ApiError::not_found("sale").into_response();
    };
    // The path is part of what a key stands for: the same key and an empty body against
    // another sale is another request.
    let mut hasher = Sha256::new();
    hasher.update(format!("credit-note {original}\n"));
    hasher.update(&body);
    let request_sha256 = data_encoding::HEXLOWER.encode(&hasher.finalize());
    with_idempotency(
        &state,
        scope,
        &branch,
        &headers,
        request_sha256,
        &request_id,
        |key| {
            accept(
                &state,
                scope,
                &branch,
                SaleId(original),
                &body,
                key,
                &request_id,
            )
        },
    )
    .await
}

fn parse_body(body: &[u8]) -> Result<(CreditNoteBody, Selection), ApiError> {
    // The SDK sends no body at all when only an Idempotency-Key is given: a full reversal.
    let parsed: CreditNoteBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreditNoteBody::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "INVALID_BODY",
                format!("the credit-note body does not read: {e}"),
            )
        })?
    };
    if let Some(code) = &parsed.reason_code {
        let known = code.len() == 2 && ("01"..="06").contains(&code.as_str());
        if !known {
            return Err(ApiError::invalid(
                "INVALID_REASON_CODE",
                format!(
                    "reasonCode {code:?} is not one of KRA's refund reasons 01-06 (code class 32)"
                ),
            ));
        }
    }
    let selection = match (&parsed.return_lines, &parsed.items) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "INVALID_BODY",
                "give returnLines or items, not both",
            ));
        }
        (Some(lines), None) => {
            let mut chosen = BTreeMap::new();
            for line in lines {
                if line.original_item_seq == 0 {
                    return Err(ApiError::invalid(
                        "INVALID_RETURN_LINE",
                        "originalItemSeq starts at 1",
                    ));
                }
                let qty = return_quantity(&line.qty)?;
                add_to(&mut chosen, line.original_item_seq, Some(qty))?;
            }
            if chosen.is_empty() {
                return Err(ApiError::invalid(
                    "INVALID_RETURN_LINE",
                    "returnLines is empty",
                ));
            }
            Selection::Lines(chosen)
        }
        // Items are matched to the original's lines by SKU once the original is read.
        (None, Some(_)) | (None, None) => Selection::Everything,
    };
    Ok((parsed, selection))
}

/// A returned quantity: a decimal > 0 with at most 2 places (the contract's rule).
fn return_quantity(value: &Value) -> Result<Quantity, ApiError> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        _ => {
            return Err(ApiError::invalid(
                "INVALID_RETURN_LINE",
                "qty must be a decimal string such as \"1.5\"",
            ));
        }
    };
    let places = text.split_once('.').map_or(0, |(_, f)| f.len());
    let qty = Quantity::parse(&text, Rounding::Exact)
        .ok()
        .filter(|q| q.is_positive());
    match qty {
        Some(qty) if places <= 2 => Ok(qty),
        _ => Err(ApiError::invalid(
            "INVALID_RETURN_LINE",
            format!("qty {text:?} must be greater than 0 with at most 2 decimal places"),
        )),
    }
}

fn add_to(
    chosen: &mut BTreeMap<u32, Option<Quantity>>,
    seq: u32,
    qty: Option<Quantity>,
) -> Result<(), ApiError> {
    let entry = chosen.entry(seq).or_insert(Some(Quantity::ZERO));
    *entry = match (*entry, qty) {
        (Some(sum), Some(qty)) => Some(sum.checked_add(qty).ok_or_else(|| {
            ApiError::invalid("INVALID_RETURN_LINE", "the quantities are too large")
        })?),
        // "All that remains" of a line absorbs any quantity named for it.
        _ => None,
    };
    Ok(())
}

/// The SDK's `items` selection against the original's lines: each `{sku, qty?}` names a
/// line by its SKU (the item code Ushuru derived from it, or the code itself).
fn select_items(items: &[Value], lines: &[SaleLine]) -> Result<Selection, Refusal> {
    let mut chosen = BTreeMap::new();
    for item in items {
        let sku = item
            .get("sku")
            .or_else(|| item.get("itemCd"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Refusal::Invalid("INVALID_RETURN_LINE", "each item names its sku".to_owned())
            })?;
        let line = lines
            .iter()
            .find(|l| l.item_cd == item_code(sku) || l.item_cd == sku)
            .ok_or_else(|| {
                Refusal::Invalid(
                    "UNKNOWN_ORIGINAL_LINE",
                    format!("sku {sku:?} is not on the original sale"),
                )
            })?;
        let qty = match item.get("qty").filter(|q| !q.is_null()) {
            Some(qty) => Some(
                return_quantity(qty)
                    .map_err(|e| Refusal::Invalid("INVALID_RETURN_LINE", e.message))?,
            ),
            None => None,
        };
        add_to(&mut chosen, line.item_seq, qty)
            .map_err(|e| Refusal::Invalid("INVALID_RETURN_LINE", e.message))?;
    }
    if chosen.is_empty() {
        return Err(Refusal::Invalid(
            "INVALID_RETURN_LINE",
            "items is empty".to_owned(),
        ));
    }
    Ok(Selection::Lines(chosen))
}

/// What earlier notes reversed of one original line: quantity and amounts.
#[derive(Default, Clone, Copy)]
struct Reversed {
    qty: i128,
    dc: i128,
    taxbl: i128,
    tax: i128,
    tot: i128,
}

fn reversed_of(context: &CreditContext) -> BTreeMap<u32, Reversed> {
    let mut sums: BTreeMap<u32, Reversed> = BTreeMap::new();
    for line in &context.reversed_lines {
        let Some(seq) = line.original_item_seq else {
            continue;
        };
        let sum = sums.entry(seq).or_default();
        sum.qty += line.qty.minor();
        sum.dc += line.dc_amt.minor();
        sum.taxbl += line.taxbl_amt.minor();
        sum.tax += line.tax_amt.minor();
        sum.tot += line.tot_amt.minor();
    }
    sums
}

fn money_of(minor: i128) -> Result<Money, Refusal> {
    Money::from_minor(minor).map_err(|e| Refusal::Invalid("INVALID_AMOUNT", e.to_string()))
}

/// Prices `qty` of an original line, of which `done` was reversed before.
fn price_return(
    line: &SaleLine,
    original_item: &Value,
    qty: Quantity,
    done: Reversed,
    rates: &TaxRates,
) -> Result<PricedLine, Refusal> {
    let band: TaxBand = line.tax_ty_cd.parse().map_err(|_| {
        Refusal::Invalid(
            "INVALID_ORIGINAL",
            format!("line {} has tax band {:?}", line.item_seq, line.tax_ty_cd),
        )
    })?;
    let dc_rt = original_item
        .get("dcRt")
        .map(|v| match v {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .and_then(|text| Percent::parse(&text, Rounding::HalfUp).ok())
        .unwrap_or(Percent::ZERO);
    let remaining_qty = line.qty.minor() - done.qty;
    let rest = PricedLine {
        qty,
        uprc: line.uprc,
        sply_amt: money_of(line.tot_amt.minor() - done.tot + line.dc_amt.minor() - done.dc)?,
        dc_rt,
        dc_amt: money_of(line.dc_amt.minor() - done.dc)?,
        taxbl_amt: money_of(line.taxbl_amt.minor() - done.taxbl)?,
        tax_amt: money_of(line.tax_amt.minor() - done.tax)?,
        tot_amt: money_of(line.tot_amt.minor() - done.tot)?,
        tax_ty_cd: band,
    };
    if qty.minor() == remaining_qty {
        // The rest of the line: exactly what remains, so the notes add up to the sale.
        return Ok(rest);
    }
    // Part of the line: the discount pro rata (HALF_UP), then the sale's own rules.
    let share = line.dc_amt.minor() * qty.minor();
    let dc = (2 * share + line.qty.minor()) / (2 * line.qty.minor());
    let input = LineInput::new(
        line.uprc,
        band,
        qty,
        Pricing::VatInclusive,
        (dc > 0).then_some(Discount::Amount(money_of(dc)?)),
    )
    .map_err(|e| Refusal::Invalid("INVALID_RETURN_LINE", e.to_string()))?;
    let priced = calculate_line(&input, rates)
        .map_err(|e| Refusal::Invalid("INVALID_RETURN_LINE", e.to_string()))?;
    // Rounding may not take a part past what remains; at the edge, reverse the rest.
    if priced.tot_amt.minor() > rest.tot_amt.minor()
        || priced.tax_amt.minor() > rest.tax_amt.minor()
    {
        return Ok(rest);
    }
    Ok(PricedLine { dc_rt, ..priced })
}

/// Decides the note inside the store's transaction.
fn plan(
    context: &CreditContext,
    invc_no: u64,
    body: &CreditNoteBody,
    selection: Selection,
    branch: &BranchContext,
    confirmed: chrono::NaiveDateTime,
    rates: &TaxRates,
) -> Result<NewCreditNote, Refusal> {
    match context.original.status {
        SaleStatus::Failed | SaleStatus::ReconciliationRequired => {
            return Err(Refusal::Conflict(
                "ORIGINAL_NOT_SIGNED",
                format!(
                    "sale {} is {} and cannot be credited",
                    context.original.id.0,
                    context.original.status.as_str()
                ),
            ));
        }
        SaleStatus::Signed | SaleStatus::PendingSync | SaleStatus::OutcomeUnknown => {}
    }
    let payload: Value = serde_json::from_str(&context.original_payload)
        .map_err(|e| Refusal::Invalid("INVALID_ORIGINAL", format!("the original payload: {e}")))?;
    let items = payload
        .get("itemList")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let selection = match (selection, &body.items) {
        (Selection::Everything, Some(items)) => select_items(items, &context.original_lines)?,
        (selection, _) => selection,
    };
    let reversed = reversed_of(context);
    let mut wanted: Vec<(&SaleLine, Quantity, Reversed)> = Vec::new();
    match selection {
        Selection::Everything => {
            for line in &context.original_lines {
                let done = reversed.get(&line.item_seq).copied().unwrap_or_default();
                let left = line.qty.minor() - done.qty;
                if left > 0 {
                    let qty = Quantity::from_minor(left)
                        .map_err(|e| Refusal::Invalid("INVALID_AMOUNT", e.to_string()))?;
                    wanted.push((line, qty, done));
                }
            }
            if wanted.is_empty() {
                return Err(match context.credit_notes.last() {
                    Some(existing) => Refusal::NothingRemains {
                        existing: Box::new(existing.clone()),
                    },
                    None => Refusal::Invalid(
                        "NOTHING_TO_REVERSE",
                        "the original sale has no lines".to_owned(),
                    ),
                });
            }
        }
        Selection::Lines(chosen) => {
            for (seq, qty) in chosen {
                let line = context
                    .original_lines
                    .iter()
                    .find(|l| l.item_seq == seq)
                    .ok_or_else(|| {
                        Refusal::Invalid(
                            "UNKNOWN_ORIGINAL_LINE",
                            format!("the original sale has no line {seq}"),
                        )
                    })?;
                let done = reversed.get(&seq).copied().unwrap_or_default();
                let left = Quantity::from_minor(line.qty.minor() - done.qty)
                    .map_err(|e| Refusal::Invalid("INVALID_AMOUNT", e.to_string()))?;
                let already = Quantity::from_minor(done.qty)
                    .map_err(|e| Refusal::Invalid("INVALID_AMOUNT", e.to_string()))?;
                let qty = qty.unwrap_or(left);
                if qty.minor() > left.minor() || !qty.is_positive() {
                    return Err(Refusal::Exceeds {
                        item_seq: seq,
                        remaining: left,
                        already,
                    });
                }
                wanted.push((line, qty, done));
            }
        }
    }
    let mut drafts = Vec::new();
    let mut stored = Vec::new();
    for ((line, qty, done), item_seq) in wanted.into_iter().zip(1u32..) {
        let original_item = items
            .iter()
            .find(|item| {
                item.get("itemSeq").and_then(Value::as_u64) == Some(u64::from(line.item_seq))
            })
            .cloned()
            .unwrap_or(Value::Null);
        let priced = price_return(line, &original_item, qty, done, rates)?;
        let text = |field: &str| {
            original_item
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        drafts.push(DraftLine {
            item_cd: line.item_cd.clone(),
            item_nm: line.item_nm.clone(),
            item_cls_cd: text("itemClsCd"),
            pkg_unit_cd: text("pkgUnitCd").unwrap_or_else(|| "NT".into()),
            qty_unit_cd: text("qtyUnitCd").unwrap_or_else(|| "U".into()),
            priced,
        });
        stored.push(SaleLine {
            item_seq,
            item_cd: line.item_cd.clone(),
            item_nm: line.item_nm.clone(),
            tax_ty_cd: line.tax_ty_cd.clone(),
            qty,
            uprc: priced.uprc,
            dc_amt: priced.dc_amt,
            taxbl_amt: priced.taxbl_amt,
            tax_amt: priced.tax_amt,
            tot_amt: priced.tot_amt,
            original_item_seq: Some(line.item_seq),
        });
    }
    let text = |field: &str| {
        payload
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let client_reference = body.client_reference.clone().unwrap_or_else(|| {
        format!(
            "CN-{}",
            context
                .original
                .client_reference
                .clone()
                .unwrap_or_else(|| context.original.invc_no.to_string())
        )
    });
    let rfd_rsn_cd = body.reason_code.clone().unwrap_or_else(|| "06".into());
    let request = SaleDraft {
        tin: branch.tin.clone(),
        bhf_id: branch.bhf_id.clone(),
        invc_no,
        org_invc_no: context.original.invc_no,
        trd_invc_no: client_reference.chars().take(50).collect(),
        rcpt_ty_cd: "R".into(),
        sales_ty_cd: text("salesTyCd").unwrap_or_else(|| "N".into()),
        pmt_ty_cd: text("pmtTyCd"),
        cust_tin: text("custTin"),
        cust_nm: text("custNm"),
        rfd_rsn_cd: Some(rfd_rsn_cd.clone()),
        confirmed,
        operator: "ushuru".into(),
        lines: drafts,
    }
    .into_request(rates)
    .map_err(|e| Refusal::Invalid("INVALID_AMOUNT", e.to_string()))?;
    let body_text = serde_json::to_string(&request)
        .map_err(|e| Refusal::Invalid("INVALID_BODY", e.to_string()))?;
    let tot_amt = stored.iter().try_fold(Money::ZERO, |sum, line| {
        sum.checked_add(line.tot_amt)
            .ok_or_else(|| Refusal::Invalid("INVALID_AMOUNT", "total out of range".into()))
    })?;
    Ok(NewCreditNote {
        sale: NewSale {
            client_reference: Some(client_reference),
            tot_amt,
            lines: stored,
            idempotency_key: None,
        },
        rfd_rsn_cd,
        reason: body.reason.clone(),
        payload: OutboxPayload {
            sha256: data_encoding::HEXLOWER.encode(&Sha256::digest(body_text.as_bytes())),
            body: body_text,
        },
    })
}

async fn accept(
    state: &AppState,
    scope: Scope,
    branch: &BranchContext,
    original: SaleId,
    body: &[u8],
    idempotency_key: Option<String>,
    request_id: &str,
) -> Result<(StatusCode, Value), ApiError> {
    let (parsed, selection) = parse_body(body)?;
    let confirmed = state.clock.now().with_timezone(&crate::EAT).naive_local();
    let (planning_branch, rates) = (branch.clone(), state.rates);
    let outcome = state
        .store
        .accept_credit_note(
            scope,
            original,
            Box::new(move |context: &CreditContext, invc_no| {
                plan(
                    context,
                    invc_no,
                    &parsed,
                    selection,
                    &planning_branch,
                    confirmed,
                    &rates,
                )
                .map(|mut note| {
                    note.sale.idempotency_key = idempotency_key;
                    note
                })
            }),
        )
        .await?;
    let accepted = match outcome {
        CreditOutcome::Accepted(accepted) => accepted,
        CreditOutcome::NoSuchSale => return Err(ApiError::not_found("sale")),
        CreditOutcome::Refused(refusal) => {
            return Err(refusal.into_error());
        }
    };
    state.pipeline.wake(scope.branch);
    let note = state
        .pipeline
        .wait_for(scope, accepted.sale, state.sale_deadline)
        .await?;
    render_note(state, scope, branch, &note, request_id).await
}

/// A credit note's answer: the sale-shaped body plus `creditNoteId`, `originalPurchaseId`
/// and the original's CU invoice number.
async fn render_note(
    state: &AppState,
    scope: Scope,
    branch: &BranchContext,
    note: &SaleRecord,
    request_id: &str,
) -> Result<(StatusCode, Value), ApiError> {
    let original = state.store.credit_note_original(scope, note.id).await?;
    let original = match original {
        Some(id) => state.store.sale(scope, id).await?,
        None => None,
    };
    let (status, mut body) = render(note, branch, state, request_id);
    if let Value::Object(fields) = &mut body {
        fields.insert("creditNoteId".into(), json!(note.id.0));
        fields.insert(
            "originalPurchaseId".into(),
            json!(original.as_ref().map(|o| o.id.0)),
        );
        fields.insert(
            "originalRcptNo".into(),
            json!(original.as_ref().and_then(cu_invoice_number)),
        );
    }
    Ok((status, body))
}

/// The same credit-note request again (Idempotency-Key): the note as it is now.
pub(crate) async fn answer_again(
    state: &AppState,
    scope: Scope,
    branch: &BranchContext,
    note: SaleId,
    request_id: &str,
) -> Response {
    let found = match state.store.sale(scope, note).await {
        Ok(Some(note)) => note,
        Ok(None) => return ApiError::not_found("credit note").into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    match render_note(state, scope, branch, &found, request_id).await {
        Ok((status, body)) => respond(status, body, request_id),
        Err(error) => error.into_response(),
    }
}
