//! Read-only views for operators, KRA support and auditors: a sale's exact exchanges
//! with the control unit, the branch's device, and the sequence auditor's findings.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use ushuru_store::{ExchangeRecord, SaleId};

use crate::sale::{render, respond};
use crate::schema::{DeviceView, ErrorBody, Monitoring, SaleOriginal, SaleResult};
use crate::{ApiError, AppState, Caller, branch_context, request_id};

/// A journal body as JSON when it is JSON (KRA's bodies are), else as the text it was.
fn body_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn exchange_view(exchange: &ExchangeRecord) -> Value {
    json!({
        "endpoint": exchange.endpoint,
        "attempt": exchange.attempt,
        "outcome": exchange.outcome,
        "httpStatus": exchange.http_status,
        "elapsedMs": exchange.elapsed_ms,
        "request": body_value(&exchange.request_body),
        "response": exchange.response_body.as_deref().map(body_value),
    })
}

/// `GET /v2/etims/sales/{id}/original`: the sale as the status endpoint shows it, the
/// exact payload sent to the control unit and every exchange about it, in order
/// (`transport`). The cmcKey travels in headers, which the journal never keeps.
#[utoipa::path(
    get,
    path = "/v2/etims/sales/{id}/original",
    tag = "sales",
    summary = "A sale with its exchanges with the control unit",
    description = "For operators, KRA support and auditors: the sale as the status endpoint \
        shows it, its priced lines, the exact request the control unit received and every \
        exchange about the sale, in order. Never the cmcKey.",
    params(("id" = i64, Path, description = "The `purchaseId` of the sale.")),
    responses(
        (status = 200, description = "The sale and its journal.", body = SaleOriginal, headers(("X-Request-Id" = String, description = "This request's id."))),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 503, description = "This server does not sign for the key's branch yet: its device is not initialised (`BRANCH_NOT_SERVED`).", body = ErrorBody),
        (status = 404, description = "No such sale for this branch (`NOT_FOUND`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn original(
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
    let sale = match state.store.sale(scope, SaleId(id)).await {
        Ok(Some(sale)) => sale,
        Ok(None) => return ApiError::not_found("sale").into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let exchanges = match state.store.exchanges(scope, sale.id).await {
        Ok(exchanges) => exchanges,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let lines = match state.store.sale_lines(scope, sale.id).await {
        Ok(lines) => lines,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (_, mut body) = render(&sale, &branch, &state, &request_id);
    // The sale request as the control unit received it: the first signing attempt's body
    // (every retry sends the identical bytes, checked against the stored SHA-256).
    let kra_request = exchanges
        .iter()
        .find(|e| e.endpoint == ushuru_kra::EndpointName::SaveTrnsSalesOsdc.oscu_name())
        .map(|e| body_value(&e.request_body));
    if let Value::Object(fields) = &mut body {
        fields.insert(
            "lines".into(),
            Value::Array(
                lines
                    .iter()
                    .map(|line| {
                        json!({
                            "itemSeq": line.item_seq,
                            "itemCd": line.item_cd,
                            "itemNm": line.item_nm,
                            "taxTyCd": line.tax_ty_cd,
                            "qty": line.qty.to_string(),
                            "uprc": line.uprc.to_string(),
                            "dcAmt": line.dc_amt.to_string(),
                            "taxblAmt": line.taxbl_amt.to_string(),
                            "taxAmt": line.tax_amt.to_string(),
                            "totAmt": line.tot_amt.to_string(),
                        })
                    })
                    .collect(),
            ),
        );
        fields.insert("kraRequest".into(), kra_request.unwrap_or(Value::Null));
        fields.insert(
            "transport".into(),
            Value::Array(exchanges.iter().map(exchange_view).collect()),
        );
    }
    respond(StatusCode::OK, body, &request_id)
}

/// `GET /v2/etims/device`: the branch's persisted onboarding checkpoint. Never the cmcKey.
#[utoipa::path(
    get,
    path = "/v2/etims/device",
    tag = "device",
    summary = "The branch's control unit",
    description = "The onboarding checkpoint of the API key's branch: `READY` with the control \
        unit's ids once it is initialised, else `KEY_REQUIRED`. Never the cmcKey.",
    responses(
        (status = 200, description = "The device.", body = DeviceView, headers(("X-Request-Id" = String, description = "This request's id."))),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 503, description = "This server does not sign for the key's branch yet: its device is not initialised (`BRANCH_NOT_SERVED`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn device(State(state): State<AppState>, caller: Caller) -> Response {
    let request_id = request_id();
    let scope = caller.key.scope;
    let branch = match branch_context(&state, scope).await {
        Ok(branch) => branch,
        Err(error) => return error.into_response(),
    };
    match state.store.device(scope).await {
        Ok(Some(device)) => respond(
            StatusCode::OK,
            json!({
                "status": "READY",
                "tin": branch.tin,
                "bhfId": branch.bhf_id,
                "sdcId": device.sdc_id,
                "mrcNo": device.mrc_no,
                "controlUnitProfile": device.profile,
                "controlUnitUrl": device.control_unit_url,
                // A device record exists only with its cmcKey sealed beside it.
                "cmcKeyStored": true,
            }),
            &request_id,
        ),
        Ok(None) => respond(
            StatusCode::OK,
            json!({
                "status": "KEY_REQUIRED",
                "tin": branch.tin,
                "bhfId": branch.bhf_id,
            }),
            &request_id,
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `GET /v2/etims/device/monitoring`: the sequence auditor's findings for this branch's
/// control unit: every receipt-number gap or duplicate seen, oldest first.
#[utoipa::path(
    get,
    path = "/v2/etims/device/monitoring",
    tag = "device",
    summary = "Receipt-number gaps and duplicates",
    description = "The sequence auditor's findings for the branch's control unit: every gap or \
        duplicate seen in its receipt numbers, oldest first.",
    responses(
        (status = 200, description = "The findings.", body = Monitoring, headers(("X-Request-Id" = String, description = "This request's id."))),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn monitoring(State(state): State<AppState>, caller: Caller) -> Response {
    let request_id = request_id();
    let scope = caller.key.scope;
    match state.store.findings(scope).await {
        Ok(findings) => {
            let views: Vec<Value> = findings
                .iter()
                .map(|f| {
                    json!({
                        "sdcId": f.sdc_id,
                        "kind": f.kind.as_str(),
                        "expectedRcptNo": f.expected,
                        "foundRcptNo": f.found,
                        "purchaseId": f.sale.map(|s| s.0),
                    })
                })
                .collect();
            respond(
                StatusCode::OK,
                json!({
                    "sequenceHealthy": views.is_empty(),
                    "findingCount": views.len(),
                    "findings": views,
                }),
                &request_id,
            )
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The search keys of the contract; exactly one is given.
const SEARCH_KEYS: [&str; 4] = [
    "clientReference",
    "operationKey",
    "requestId",
    "transactionId",
];

/// `GET /v2/etims/sales/search?clientReference=…`: the branch's latest sale with that
/// reference, shaped like the status answer.
#[utoipa::path(
    get,
    path = "/v2/etims/sales/search",
    tag = "sales",
    summary = "Find a sale by the POS's reference",
    description = "The branch's latest sale with that `clientReference`, shaped like the status \
        answer. Give exactly one search key. Ushuru records only `clientReference` with a \
        sale; the other keys of the contract are refused with `SEARCH_KEY_UNSUPPORTED` rather \
        than guessed.",
    params(
        ("clientReference" = Option<String>, Query, description = "The `clientReference` the sale was sent with."),
        ("operationKey" = Option<String>, Query, description = "Not recorded by Ushuru: refused."),
        ("requestId" = Option<String>, Query, description = "Not recorded by Ushuru: refused."),
        ("transactionId" = Option<String>, Query, description = "Not recorded by Ushuru: refused."),
    ),
    responses(
        (status = 200, description = "The sale.", body = SaleResult, headers(("X-Request-Id" = String, description = "This request's id."))),
        (status = 400, description = "Not exactly one non-empty key (`SEARCH_KEY_REQUIRED`), or a \
            key other than `clientReference` (`SEARCH_KEY_UNSUPPORTED`).", body = ErrorBody),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 503, description = "This server does not sign for the key's branch yet: its device is not initialised (`BRANCH_NOT_SERVED`).", body = ErrorBody),
        (status = 404, description = "No sale with that reference for this branch (`NOT_FOUND`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let request_id = request_id();
    let scope = caller.key.scope;
    let given: Vec<&(String, String)> = query
        .iter()
        .filter(|(name, _)| SEARCH_KEYS.contains(&name.as_str()))
        .collect();
    let [(name, value)] = given.as_slice() else {
        return ApiError::bad_request(
            "SEARCH_KEY_REQUIRED",
            "give exactly one of clientReference, operationKey, requestId, transactionId",
        )
        .into_response();
    };
    if value.trim().is_empty() {
        return ApiError::bad_request("SEARCH_KEY_REQUIRED", format!("{name} is empty"))
            .into_response();
    }
    if name != "clientReference" {
        // Ushuru keeps the POS's reference with each sale; request ids and operation keys
        // of other middlewares are not recorded, so an answer would be a guess.
        return ApiError::bad_request(
            "SEARCH_KEY_UNSUPPORTED",
            format!("sales are searched by clientReference; {name} is not recorded with sales"),
        )
        .into_response();
    }
    let branch = match branch_context(&state, scope).await {
        Ok(branch) => branch,
        Err(error) => return error.into_response(),
    };
    match state.store.sale_by_client_reference(scope, value).await {
        Ok(Some(sale)) => {
            let (_, body) = render(&sale, &branch, &state, &request_id);
            respond(StatusCode::OK, body, &request_id)
        }
        Ok(None) => ApiError::not_found("sale").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
