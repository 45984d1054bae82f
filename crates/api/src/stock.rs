//! Stock: `POST /v2/etims/stock/adjustment` (an `insertStockIO`, numbered from the branch's
//! gap-free `sarNo`), `POST /v2/etims/stock/master` (`saveStockMaster`: an item's remaining
//! quantity after an adjustment) and their lookups by operation key (the Idempotency-Key
//! they were sent with). Both are queued for the branch's relay like a sale.
//!
//! The server prices the lines (the client sends no totals, taxid-api.md §2.3). One
//! adjustment moves stock one way: `ioType` M is stock in (class 12 code 06, adjustment
//! in), A is an adjustment out (16), I an issue out (14, processing); a request mixing them
//! is refused, since KRA takes one `sarTyCd` per document.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use ushuru_kra::types::{StockIoRequest, StockMasterRequest, TradeItem};
use ushuru_kra::wire::{Amount, Date8, Int, Qty};
use ushuru_store::{ExchangeRecord, NewOperation, OperationKind, OperationRecord, Scope};
use ushuru_tax::{InvoiceTotals, LineInput, LineText, Pricing, Quantity, Rounding, calculate_line};
use utoipa::ToSchema;

use crate::operations::{
    enqueue_and_wait, is_pin, required_key, sha256_hex, status_code, status_word, with_result,
};
use crate::sale::{decimal_text, respond};
use crate::schema::{ErrorBody, StockMasterResult, StockOperationResult};
use crate::{ApiError, AppState, Caller, EAT, request_id};

/// `POST /v2/etims/stock/adjustment`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = StockAdjustmentRequest)]
pub(crate) struct AdjustmentBody {
    /// At least one line; all with the same `ioType`.
    lines: Vec<AdjustmentLine>,
    /// The counterpart's KRA PIN, if any.
    cust_tin: Option<String>,
    cust_nm: Option<String>,
    remark: Option<String>,
    /// The `sarNo` this adjustment corrects; 0 for a new one.
    #[serde(default)]
    org_sar_no: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = StockAdjustmentLine)]
pub(crate) struct AdjustmentLine {
    /// The KRA item code (registered with the control unit first if it is not yet).
    item_cd: String,
    item_nm: String,
    /// `M` stock in, `A` adjustment out, `I` issue out.
    #[schema(example = "M")]
    io_type: String,
    pkg_unit_cd: Option<String>,
    #[schema(value_type = Option<String>)]
    pkg_qty: Option<Value>,
    qty_unit_cd: Option<String>,
    /// Above zero, a decimal string.
    #[schema(value_type = String, example = "10")]
    qty: Value,
    /// The unit price, VAT-inclusive, a decimal string.
    #[schema(value_type = String, example = "5000")]
    prc: Value,
    /// The line's discount, a decimal string.
    #[schema(value_type = Option<String>)]
    tot_dc_amt: Option<Value>,
    /// `A` to `E`.
    tax_ty_cd: String,
    barcode: Option<String>,
}

/// `POST /v2/etims/stock/master`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = StockMasterRequest)]
pub(crate) struct MasterBody {
    /// The operation key of the adjustment this remaining quantity follows.
    original_io_key: String,
    item_cd: String,
    /// The item's remaining quantity (absolute), ≥ 0, at most 2 decimals.
    #[schema(value_type = String, example = "12.50")]
    rsd_qty: Value,
}

fn sar_ty_cd(io_type: &str) -> Option<&'static str> {
    match io_type {
        "M" => Some("06"),
        "A" => Some("16"),
        "I" => Some("14"),
        _ => None,
    }
}

fn check_item_cd(item_cd: &str, line: usize) -> Result<(), ApiError> {
    if item_cd.trim().is_empty() || item_cd.len() > 20 {
        return Err(ApiError::invalid(
            "INVALID_ITEM_CODE",
            format!("line {line}: itemCd must be 1 to 20 characters"),
        ));
    }
    Ok(())
}

/// Prices the adjustment and builds its `insertStockIO` body, less the `sarNo`.
fn price_adjustment(
    body: &AdjustmentBody,
    state: &AppState,
) -> Result<(StockIoRequest, InvoiceTotals), ApiError> {
    let Some(first) = body.lines.first() else {
        return Err(ApiError::invalid("NO_LINES", "lines is empty"));
    };
    let sar_ty_cd = sar_ty_cd(&first.io_type).ok_or_else(|| {
        ApiError::invalid(
            "INVALID_IO_TYPE",
            format!("line 1: ioType {:?} is not M, A or I", first.io_type),
        )
    })?;
    if let Some(tin) = &body.cust_tin
        && !is_pin(tin)
    {
        return Err(ApiError::invalid(
            "INVALID_PIN",
            format!("custTin {tin:?} is not a KRA PIN (A123456789B)"),
        ));
    }
    let mut items = Vec::new();
    let mut priced_lines = Vec::new();
    for (index, line) in body.lines.iter().enumerate() {
        let number = index + 1;
        if line.io_type != first.io_type {
            return Err(ApiError::invalid(
                "MIXED_IO_TYPES",
                format!(
                    "line {number}: ioType {:?} differs from line 1's {:?}; send stock in and out as separate adjustments",
                    line.io_type, first.io_type
                ),
            ));
        }
        check_item_cd(&line.item_cd, number)?;
        if line.item_nm.trim().is_empty() || line.item_nm.chars().count() > 200 {
            return Err(ApiError::invalid(
                "INVALID_ITEM_NAME",
                format!("line {number}: itemNm must be 1 to 200 characters"),
            ));
        }
        let qty = decimal_text("qty", &line.qty)?;
        let price = decimal_text("prc", &line.prc)?;
        let discount = line
            .tot_dc_amt
            .as_ref()
            .map(|d| decimal_text("totDcAmt", d))
            .transpose()?;
        let text = LineText {
            price: &price,
            band: &line.tax_ty_cd,
            qty: &qty,
            pricing: Pricing::VatInclusive,
            discount: discount.as_deref(),
            discount_rate: None,
        };
        let priced = LineInput::parse(&text)
            .and_then(|input| calculate_line(&input, &state.rates))
            .map_err(|e| ApiError::invalid(e.code(), format!("line {number}: {e}")))?;
        let pkg = match &line.pkg_qty {
            None => Quantity::from_whole(1).unwrap_or_default(),
            Some(value) => {
                let text = decimal_text("pkgQty", value)?;
                Quantity::parse(&text, Rounding::Exact)
                    .ok()
                    .filter(|q| q.minor() > 0)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "INVALID_QUANTITY",
                            format!("line {number}: pkgQty {text:?} is not a quantity above zero"),
                        )
                    })?
            }
        };
        items.push(TradeItem {
            item_seq: Int(u64::try_from(number).unwrap_or(u64::MAX)),
            item_cls_cd: None,
            item_cd: Some(line.item_cd.trim().to_owned()),
            item_nm: line.item_nm.trim().to_owned(),
            bcd: line.barcode.clone(),
            pkg_unit_cd: line.pkg_unit_cd.clone().unwrap_or_else(|| "NT".into()),
            pkg: Qty(pkg),
            qty_unit_cd: line.qty_unit_cd.clone().unwrap_or_else(|| "U".into()),
            qty: Qty(priced.qty),
            prc: Amount(priced.uprc),
            sply_amt: Amount(priced.sply_amt),
            dc_rt: None,
            dc_amt: None,
            tot_dc_amt: Some(Amount(priced.dc_amt)),
            tax_ty_cd: priced.tax_ty_cd.code().to_owned(),
            taxbl_amt: Amount(priced.taxbl_amt),
            tax_amt: Amount(priced.tax_amt),
            tot_amt: Amount(priced.tot_amt),
            item_expr_dt: None,
        });
        priced_lines.push(priced);
    }
    let totals = InvoiceTotals::from_lines(&priced_lines, &state.rates)
        .map_err(|e| ApiError::invalid("AMOUNT_OUT_OF_RANGE", e.to_string()))?;
    let request = StockIoRequest {
        sar_no: Int(0),
        org_sar_no: Int(body.org_sar_no),
        reg_ty_cd: "M".into(),
        cust_tin: body.cust_tin.clone(),
        cust_nm: body.cust_nm.clone(),
        cust_bhf_id: None,
        sar_ty_cd: sar_ty_cd.into(),
        ocrn_dt: Date8(state.clock.now().with_timezone(&EAT).date_naive()),
        tot_item_cnt: Int(u64::try_from(items.len()).unwrap_or(u64::MAX)),
        tot_taxbl_amt: Amount(totals.tot_taxbl_amt),
        tot_tax_amt: Amount(totals.tot_tax_amt),
        tot_amt: Amount(totals.tot_amt),
        remark: body.remark.clone(),
        regr_id: "ushuru".into(),
        regr_nm: "Ushuru".into(),
        modr_id: "ushuru".into(),
        modr_nm: "Ushuru".into(),
        item_list: items,
    };
    Ok((request, totals))
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "INVALID_BODY",
            format!("the {what} body does not read: {e}"),
        )
    })
}

/// `POST /v2/etims/stock/adjustment`: queues an `insertStockIO` and waits for it.
#[utoipa::path(
    post,
    path = "/v2/etims/stock/adjustment",
    tag = "stock",
    summary = "Record a stock movement",
    description = "Prices the lines (the server computes every total), numbers the movement \
        from the branch's gap-free `sarNo` sequence and queues it for the control unit \
        (`insertStockIO`) in one transaction, registering any item the control unit does not \
        know first; then waits for the answer up to the sale deadline. `ioType` M is stock in, \
        A an adjustment out, I an issue out; one request moves stock one way.\n\n\
        The `Idempotency-Key` is required and becomes the `operationKey`: the same key and \
        body answer the same movement again; with another body, 422.",
    params(("Idempotency-Key" = String, Header, description = "Required; the operation key.")),
    request_body(content = AdjustmentBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The control unit answered: `SYNCED` or `REJECTED` (with `resultCd`).", body = StockOperationResult),
        (status = 202, description = "Queued, not answered yet (`OUTCOME_UNKNOWN`): look it up later.", body = StockOperationResult),
        (status = 400, description = "No Idempotency-Key (`IDEMPOTENCY_KEY_REQUIRED`) or not JSON of this shape (`INVALID_BODY`).", body = ErrorBody),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 422, description = "A line or field is invalid (`NO_LINES`, `INVALID_IO_TYPE`, `MIXED_IO_TYPES`, `INVALID_PIN`, `INVALID_ITEM_CODE`, a tax code such as `INVALID_QUANTITY`), or the key was used for another request (`IDEMPOTENCY_KEY_REUSED`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn adjust(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = request_id();
    let scope = caller.key.scope;
    let result = async {
        let key = required_key(&headers)?;
        let parsed: AdjustmentBody = parse_json(&body, "stock adjustment")?;
        let (request, totals) = price_adjustment(&parsed, &state)?;
        register_unknown_items(&state, scope, &request).await?;
        let summary = json!({
            "totAmt": totals.tot_amt.to_string(),
            "totTaxAmt": totals.tot_tax_amt.to_string(),
        });
        let operation = NewOperation {
            kind: OperationKind::StockAdjustment,
            key,
            request_sha256: sha256_hex(&body),
            endpoint: "insertStockIO".into(),
            summary: summary.to_string(),
            build: Box::new(move |sar_no| {
                let mut request = request;
                request.sar_no = Int(sar_no.ok_or("a stock movement needs its sarNo")?);
                serde_json::to_string(&request).map_err(|e| e.to_string())
            }),
        };
        enqueue_and_wait(&state, scope, operation).await
    }
    .await;
    match result {
        Ok(record) => respond(
            status_code(&record),
            adjustment_view(&record, &request_id),
            &request_id,
        ),
        Err(error) => error.into_response(),
    }
}

/// Queues a `saveItem` for each line's item the control unit does not know yet, ahead of
/// the movement (operations go in order). Registering an item twice only updates it.
async fn register_unknown_items(
    state: &AppState,
    scope: Scope,
    request: &StockIoRequest,
) -> Result<(), ApiError> {
    for line in &request.item_list {
        let Some(item_cd) = &line.item_cd else {
            continue;
        };
        if state.store.item_registered(scope, item_cd).await? {
            continue;
        }
        let item = crate::items::ItemSpec {
            item_cd: item_cd.clone(),
            item_nm: line.item_nm.clone(),
            item_cls_cd: crate::sale::UNCLASSIFIED.into(),
            tax_ty_cd: line.tax_ty_cd.clone(),
            unit_price: line.prc,
            pkg_unit_cd: line.pkg_unit_cd.clone(),
            qty_unit_cd: line.qty_unit_cd.clone(),
            bcd: line.bcd.clone(),
        };
        crate::items::queue_item(state, scope, item).await?;
    }
    Ok(())
}

fn adjustment_view(record: &OperationRecord, request_id: &str) -> Value {
    let summary: Value = serde_json::from_str(&record.summary).unwrap_or(Value::Null);
    with_result(
        json!({
        "operationKey": record.key,
        "movementId": record.id.0,
        "sarNo": record.sar_no,
        "status": status_word(record.state),
        "payloadSha256": record.payload_sha256,
        "totAmt": summary["totAmt"],
        "totTaxAmt": summary["totTaxAmt"],
        "kraAcknowledged": record.state == ushuru_store::OperationState::Synced,
        "requestId": request_id,
        }),
        record,
    )
}

/// `GET /v2/etims/stock/operations/{key}`.
#[utoipa::path(
    get,
    path = "/v2/etims/stock/operations/{key}",
    tag = "stock",
    summary = "Look up a stock movement",
    description = "The movement queued with this operation key (its Idempotency-Key), as it is now.",
    params(("key" = String, Path, description = "The operation key, percent-encoded.")),
    responses(
        (status = 200, description = "The movement.", body = StockOperationResult),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 404, description = "No movement with this key for this branch (`NOT_FOUND`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn adjustment(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Response {
    let request_id = request_id();
    match state
        .store
        .operation(caller.key.scope, OperationKind::StockAdjustment, &key)
        .await
    {
        Ok(Some(record)) => respond(
            axum::http::StatusCode::OK,
            adjustment_view(&record, &request_id),
            &request_id,
        ),
        Ok(None) => ApiError::not_found("stock movement").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `POST /v2/etims/stock/master`: queues a `saveStockMaster` and waits for it.
#[utoipa::path(
    post,
    path = "/v2/etims/stock/master",
    tag = "stock",
    summary = "Record an item's remaining quantity",
    description = "After a stock movement, tells the control unit how much of one of its items \
        remains (`saveStockMaster`, an absolute quantity). Sent after the movement it names. \
        The `Idempotency-Key` is required and becomes the `operationKey`.",
    params(("Idempotency-Key" = String, Header, description = "Required; the operation key.")),
    request_body(content = MasterBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The control unit answered: `SYNCED` or `REJECTED`.", body = StockMasterResult),
        (status = 202, description = "Queued, not answered yet (`OUTCOME_UNKNOWN`).", body = StockMasterResult),
        (status = 400, description = "No Idempotency-Key (`IDEMPOTENCY_KEY_REQUIRED`) or not JSON of this shape (`INVALID_BODY`).", body = ErrorBody),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 422, description = "No movement with `originalIoKey` (`UNKNOWN_OPERATION`), the item is not in it (`ITEM_NOT_IN_OPERATION`), a bad quantity (`INVALID_QUANTITY`), or the key was used for another request (`IDEMPOTENCY_KEY_REUSED`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn master(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = request_id();
    let scope = caller.key.scope;
    let result = async {
        let key = required_key(&headers)?;
        let parsed: MasterBody = parse_json(&body, "stock master")?;
        let original = state
            .store
            .operation(scope, OperationKind::StockAdjustment, parsed.original_io_key.trim())
            .await?
            .ok_or_else(|| {
                ApiError::invalid(
                    "UNKNOWN_OPERATION",
                    format!("no stock movement with operation key {:?} for this branch", parsed.original_io_key),
                )
            })?;
        let moved: StockIoRequest = serde_json::from_str(&original.payload).map_err(ApiError::internal)?;
        let item_cd = parsed.item_cd.trim().to_owned();
        if !moved.item_list.iter().any(|l| l.item_cd.as_deref() == Some(item_cd.as_str())) {
            return Err(ApiError::invalid(
                "ITEM_NOT_IN_OPERATION",
                format!("item {item_cd:?} is not in the movement {:?}", parsed.original_io_key),
            ));
        }
        let text = decimal_text("rsdQty", &parsed.rsd_qty)?;
        let rsd_qty = Quantity::parse(&text, Rounding::Exact)
            .ok()
            .filter(|q| q.minor() >= 0 && q.minor() % 100 == 0)
            .ok_or_else(|| {
                ApiError::invalid(
                    "INVALID_QUANTITY",
                    format!("rsdQty {text:?} must be a quantity ≥ 0 with at most 2 decimals"),
                )
            })?;
        let request = StockMasterRequest {
            item_cd: item_cd.clone(),
            rsd_qty: Qty(rsd_qty),
            regr_id: "ushuru".into(),
            regr_nm: "Ushuru".into(),
            modr_id: "ushuru".into(),
            modr_nm: "Ushuru".into(),
        };
        let summary = json!({"originalIoKey": original.key, "itemCd": item_cd, "rsdQty": rsd_qty.to_string()});
        let operation = NewOperation {
            kind: OperationKind::StockMaster,
            key,
            request_sha256: sha256_hex(&body),
            endpoint: "saveStockMaster".into(),
            summary: summary.to_string(),
            build: Box::new(move |_| serde_json::to_string(&request).map_err(|e| e.to_string())),
        };
        enqueue_and_wait(&state, scope, operation).await
    }
    .await;
    match result {
        Ok(record) => {
            let view = master_view(&state, scope, &record, &request_id).await;
            match view {
                Ok(view) => respond(status_code(&record), view, &request_id),
                Err(error) => error.into_response(),
            }
        }
        Err(error) => error.into_response(),
    }
}

async fn master_view(
    state: &AppState,
    scope: Scope,
    record: &OperationRecord,
    request_id: &str,
) -> Result<Value, ApiError> {
    let summary: Value = serde_json::from_str(&record.summary).unwrap_or(Value::Null);
    let exchanges = state.store.operation_exchanges(scope, record.id).await?;
    Ok(with_result(
        json!({
        "operationKey": record.key,
        "originalIoKey": summary["originalIoKey"],
        "itemCd": summary["itemCd"],
        "rsdQty": summary["rsdQty"],
        "status": status_word(record.state),
        "payloadSha256": record.payload_sha256,
        "transport": exchanges.iter().map(|e| transport(record, e)).collect::<Vec<_>>(),
        "kraAcknowledged": record.state == ushuru_store::OperationState::Synced,
        "semantics": "ABSOLUTE_RESIDUAL_QUANTITY",
        "requestId": request_id,
        }),
        record,
    ))
}

/// One call of the operation as the SDK's transport entries describe it: the business
/// payload's hash and the hash of the bytes that went on the wire.
fn transport(record: &OperationRecord, exchange: &ExchangeRecord) -> Value {
    json!({
        "identity": format!("{}#{}", exchange.endpoint, exchange.attempt),
        "business_sha256": record.payload_sha256,
        "wire_sha256": sha256_hex(exchange.request_body.as_bytes()),
                // Whether the control unit answered at all (ok or a refusal), as the SDK reads it.
        "transportReturned": matches!(exchange.outcome.as_str(), "ok" | "rejected"),
    })
}

/// `GET /v2/etims/stock/master/operations/{key}`.
#[utoipa::path(
    get,
    path = "/v2/etims/stock/master/operations/{key}",
    tag = "stock",
    summary = "Look up a remaining-quantity report",
    description = "The stock master operation queued with this key, as it is now, with its calls.",
    params(("key" = String, Path, description = "The operation key, percent-encoded.")),
    responses(
        (status = 200, description = "The operation.", body = StockMasterResult),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 404, description = "No such operation for this branch (`NOT_FOUND`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn master_operation(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Response {
    let request_id = request_id();
    let scope = caller.key.scope;
    let record = match state
        .store
        .operation(scope, OperationKind::StockMaster, &key)
        .await
    {
        Ok(Some(record)) => record,
        Ok(None) => return ApiError::not_found("stock master operation").into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    match master_view(&state, scope, &record, &request_id).await {
        Ok(view) => respond(axum::http::StatusCode::OK, view, &request_id),
        Err(error) => error.into_response(),
    }
}
