//! Items: `POST /v2/etims/items` registers one item with the branch's control unit
//! (`saveItem`), `POST /v2/etims/items/bulk-import` a CSV of them. Both queue `saveItem`
//! operations for the branch's relay. The KRA item code is derived from the SKU exactly as
//! a sale derives it, so an item registered here is the item a sale of that SKU names.

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use ushuru_kra::types::SaveItemRequest;
use ushuru_kra::wire::Amount;
use ushuru_store::{Enqueued, NewOperation, OperationKind, OperationRecord, OperationState, Scope};
use ushuru_tax::{Money, Rounding};
use utoipa::ToSchema;

use crate::operations::{enqueue_and_wait, sha256_hex, status_word};
use crate::sale::{decimal_text, item_code, respond};
use crate::schema::{BulkImportResult, ErrorBody, ItemResult};
use crate::{ApiError, AppState, Caller, request_id};

/// The most rows one bulk import takes: beyond it, split the file.
pub(crate) const MAX_IMPORT_ROWS: usize = 5_000;

/// `POST /v2/etims/items`: the SDK's `save_item`, `register_item` and item-detail forms.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = ItemRequest)]
pub(crate) struct ItemBody {
    /// The caller's SKU (1 to 255 characters); the KRA item code is derived from it.
    sku: String,
    item_nm: String,
    /// KRA item class, 8 to 10 digits.
    #[schema(example = "10101601")]
    item_cls_cd: String,
    /// `A` to `E`.
    tax_ty_cd: String,
    /// The default unit price, VAT-inclusive, a decimal string with at most 2 decimals.
    #[schema(value_type = String, example = "150.00")]
    unit_price: Value,
    /// Sent by the SDK (always `"1"`); accepted and not used.
    #[schema(value_type = Option<String>)]
    #[allow(dead_code)]
    qty: Option<Value>,
    pkg_unit_cd: Option<String>,
    qty_unit_cd: Option<String>,
    /// Barcode.
    bcd: Option<String>,
    /// Sent by the item-detail form; accepted and not used for registration.
    #[schema(value_type = Option<String>)]
    #[allow(dead_code)]
    discount: Option<Value>,
    #[schema(value_type = Option<String>)]
    #[allow(dead_code)]
    discount_rate: Option<Value>,
}

/// An item ready to register.
pub(crate) struct ItemSpec {
    pub item_cd: String,
    pub item_nm: String,
    pub item_cls_cd: String,
    pub tax_ty_cd: String,
    pub unit_price: Amount,
    pub pkg_unit_cd: String,
    pub qty_unit_cd: String,
    pub bcd: Option<String>,
}

/// Checks an item's fields; the error says which field (and, in a CSV, which row).
fn item_spec(
    sku: &str,
    item_nm: &str,
    item_cls_cd: &str,
    tax_ty_cd: &str,
    unit_price: &str,
    units: (Option<&str>, Option<&str>),
    bcd: Option<&str>,
) -> Result<(ItemSpec, String), ApiError> {
    let sku = sku.trim();
    if sku.is_empty() || sku.chars().count() > 255 {
        return Err(ApiError::invalid(
            "INVALID_SKU",
            "sku must be 1 to 255 characters",
        ));
    }
    let item_nm = item_nm.trim();
    if item_nm.is_empty() || item_nm.chars().count() > 200 {
        return Err(ApiError::invalid(
            "INVALID_ITEM_NAME",
            "itemNm must be 1 to 200 characters",
        ));
    }
    let item_cls_cd = item_cls_cd.trim();
    if !(8..=10).contains(&item_cls_cd.len()) || !item_cls_cd.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(
            "INVALID_ITEM_CLASS",
            format!("itemClsCd {item_cls_cd:?} is not 8 to 10 digits"),
        ));
    }
    let tax_ty_cd = tax_ty_cd.trim();
    if !["A", "B", "C", "D", "E"].contains(&tax_ty_cd) {
        return Err(ApiError::invalid(
            "INVALID_TAX_BAND",
            format!("taxTyCd {tax_ty_cd:?} is not A, B, C, D or E"),
        ));
    }
    let price = Money::parse(unit_price.trim(), Rounding::Exact)
        .ok()
        .filter(|m| !m.is_negative())
        .ok_or_else(|| {
            ApiError::invalid(
                "INVALID_AMOUNT",
                format!("unitPrice {unit_price:?} is not an amount ≥ 0 with at most 2 decimals"),
            )
        })?;
    let unit = |code: Option<&str>, default: &str| {
        code.map(str::trim)
            .filter(|c| !c.is_empty())
            .unwrap_or(default)
            .to_owned()
    };
    let item_cd = item_code(sku);
    Ok((
        ItemSpec {
            item_cd: item_cd.clone(),
            item_nm: item_nm.to_owned(),
            item_cls_cd: item_cls_cd.to_owned(),
            tax_ty_cd: tax_ty_cd.to_owned(),
            unit_price: Amount(price),
            pkg_unit_cd: unit(units.0, "NT"),
            qty_unit_cd: unit(units.1, "U"),
            bcd: bcd
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(str::to_owned),
        },
        item_cd,
    ))
}

fn save_item_request(item: ItemSpec) -> SaveItemRequest {
    SaveItemRequest {
        pkg_unit_cd: item.pkg_unit_cd,
        qty_unit_cd: item.qty_unit_cd,
        bcd: item.bcd,
        ..SaveItemRequest::finished_product(
            item.item_cd,
            item.item_nm,
            item.item_cls_cd,
            item.tax_ty_cd,
            item.unit_price,
        )
    }
}

/// The operation that registers the item. Its key is the item code with the payload's
/// hash: the same registration again is the same operation, a changed one a new one.
fn item_operation(item: ItemSpec) -> Result<NewOperation, ApiError> {
    let request = save_item_request(item);
    let payload = serde_json::to_string(&request).map_err(ApiError::internal)?;
    let sha = sha256_hex(payload.as_bytes());
    let summary = json!({"itemCd": request.item_cd});
    Ok(NewOperation {
        kind: OperationKind::Item,
        key: format!("{}:{sha}", request.item_cd),
        request_sha256: sha,
        endpoint: "saveItem".into(),
        summary: summary.to_string(),
        build: Box::new(move |_| Ok(payload)),
    })
}

/// Queues the item's registration without waiting for it.
pub(crate) async fn queue_item(
    state: &AppState,
    scope: Scope,
    item: ItemSpec,
) -> Result<OperationRecord, ApiError> {
    match state
        .store
        .enqueue_operation(scope, item_operation(item)?)
        .await?
    {
        Enqueued::Created(record) | Enqueued::Existing(record) | Enqueued::KeyReused(record) => {
            Ok(record)
        }
    }
}

fn item_view(record: &OperationRecord, sku: &str, request_id: &str) -> Value {
    let summary: Value = serde_json::from_str(&record.summary).unwrap_or(Value::Null);
    json!({
        "itemCd": summary["itemCd"],
        "sku": sku,
        "status": status_word(record.state),
        "vscuRegistered": record.state == OperationState::Synced,
        "requestId": request_id,
    })
}

/// `POST /v2/etims/items`.
#[utoipa::path(
    post,
        path = "/v2/etims/items",
    operation_id = "register_item",
    tag = "items",
    summary = "Register an item",
    description = "Registers an item with the branch's control unit (`saveItem`) under a code \
        derived from the SKU (the SKU itself when it fits 20 characters), the code a sale of \
        that SKU uses; waits for the answer up to the sale deadline. Registering the same item \
        again is the same operation; a changed one updates it.",
    request_body(content = ItemBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Registered (`vscuRegistered` true).", body = ItemResult),
        (status = 202, description = "Queued, not answered yet.", body = ItemResult),
        (status = 400, description = "Not JSON of this shape (`INVALID_BODY`).", body = ErrorBody),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 422, description = "A field is invalid (`INVALID_SKU`, `INVALID_ITEM_NAME`, `INVALID_ITEM_CLASS`, `INVALID_TAX_BAND`, `INVALID_AMOUNT`), or the control unit refused it (`CONTROL_UNIT_REJECTED`, with `resultCd`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Response {
    let request_id = request_id();
    let scope = caller.key.scope;
    let result = async {
        let parsed: ItemBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("INVALID_BODY", format!("the item body does not read: {e}"))
        })?;
        let price = decimal_text("unitPrice", &parsed.unit_price)?;
        let (item, _) = item_spec(
            &parsed.sku,
            &parsed.item_nm,
            &parsed.item_cls_cd,
            &parsed.tax_ty_cd,
            &price,
            (parsed.pkg_unit_cd.as_deref(), parsed.qty_unit_cd.as_deref()),
            parsed.bcd.as_deref(),
        )?;
        let record = enqueue_and_wait(&state, scope, item_operation(item)?).await?;
        Ok::<_, ApiError>((record, parsed.sku))
    }
    .await;
    match result {
        Ok((record, sku)) => match record.state {
            OperationState::Rejected => ApiError::invalid(
                "CONTROL_UNIT_REJECTED",
                format!(
                    "the control unit refused the item: {}",
                    record.result_message.as_deref().unwrap_or("no message")
                ),
            )
            .with("resultCd", json!(record.result_code))
            .with(
                "itemCd",
                item_view(&record, &sku, &request_id)["itemCd"].clone(),
            )
            .into_response(),
            OperationState::Synced => respond(
                StatusCode::OK,
                item_view(&record, &sku, &request_id),
                &request_id,
            ),
            OperationState::Pending => respond(
                StatusCode::ACCEPTED,
                item_view(&record, &sku, &request_id),
                &request_id,
            ),
        },
        Err(error) => error.into_response(),
    }
}

/// `POST /v2/etims/items/bulk-import`: a CSV file as the multipart part `file`, with a
/// header row naming at least `sku,itemNm,itemClsCd,taxTyCd,unitPrice` (in any order;
/// `pkgUnitCd`, `qtyUnitCd` and `bcd` optional).
#[utoipa::path(
    post,
    path = "/v2/etims/items/bulk-import",
    tag = "items",
    summary = "Register items from a CSV file",
    description = "The multipart part `file` is a CSV whose header row names the columns \
        `sku`, `itemNm`, `itemClsCd`, `taxTyCd`, `unitPrice` (required, any order) and \
        `pkgUnitCd`, `qtyUnitCd`, `bcd` (optional); at most 5,000 rows. Every valid row is \
        queued for the control unit; the answer waits up to the sale deadline and gives one \
        result per row. 200 when every row is valid, 207 when some are not (their `code` and \
        `message` say why; the others are registered all the same).",
    request_body(content_type = "multipart/form-data", description = "One part named `file`: the CSV."),
    responses(
        (status = 200, description = "Every row valid.", body = BulkImportResult),
        (status = 207, description = "Some rows invalid: see `results`.", body = BulkImportResult),
                (status = 400, description = "Not multipart/form-data (`INVALID_MULTIPART`), no `file` part (`MISSING_FILE`), an empty file (`EMPTY_FILE`), a missing column (`MISSING_COLUMN`), a file that is not CSV text (`INVALID_CSV`), or too many rows (`TOO_MANY_ROWS`).", body = ErrorBody),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn bulk_import(
    State(state): State<AppState>,
    caller: Caller,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let request_id = request_id();
    let multipart = match multipart {
        Ok(multipart) => multipart,
        Err(rejection) => {
            return ApiError::bad_request(
                "INVALID_MULTIPART",
                format!(
                    "send the CSV as multipart/form-data with a part named 'file': {}",
                    rejection.body_text()
                ),
            )
            .into_response();
        }
    };
    match import(&state, caller.key.scope, multipart, &request_id).await {
        Ok((status, body)) => respond(status, body, &request_id),
        Err(error) => error.into_response(),
    }
}

const REQUIRED_COLUMNS: [&str; 5] = ["sku", "itemNm", "itemClsCd", "taxTyCd", "unitPrice"];

async fn import(
    state: &AppState,
    scope: Scope,
    mut multipart: Multipart,
    request_id: &str,
) -> Result<(StatusCode, Value), ApiError> {
    let mut file = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request("INVALID_MULTIPART", e.body_text()))?
    {
        if field.name() == Some("file") {
            file = Some(
                field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::bad_request("INVALID_MULTIPART", e.body_text()))?,
            );
        }
    }
    let file = file.ok_or_else(|| {
        ApiError::bad_request("MISSING_FILE", "send the CSV as the multipart part 'file'")
    })?;
    let rows = parse_csv(&file)?;
    let mut results = Vec::with_capacity(rows.len());
    let mut queued = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let number = index + 1;
        let get = |column: &str| row.get(column).map(String::as_str);
        let spec = item_spec(
            get("sku").unwrap_or_default(),
            get("itemNm").unwrap_or_default(),
            get("itemClsCd").unwrap_or_default(),
            get("taxTyCd").unwrap_or_default(),
            get("unitPrice").unwrap_or_default(),
            (get("pkgUnitCd"), get("qtyUnitCd")),
            get("bcd"),
        );
        match spec {
            Ok((item, item_cd)) => {
                let record = queue_item(state, scope, item).await?;
                queued.push((results.len(), record.id));
                results.push(json!({"row": number, "sku": get("sku"), "itemCd": item_cd, "status": "OUTCOME_UNKNOWN"}));
            }
            Err(error) => results.push(json!({
                "row": number, "sku": get("sku"), "status": "INVALID", "code": error.code, "message": error.message,
            })),
        }
    }
    state.pipeline.wake_operations(scope.branch);
    // Wait for the rows in queue order, all within one sale deadline.
    let give_up = tokio::time::Instant::now() + state.sale_deadline;
    for (slot, id) in queued {
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        let record = state.pipeline.wait_for_operation(scope, id, left).await?;
        let result = &mut results[slot];
        result["status"] = json!(status_word(record.state));
        result["vscuRegistered"] = json!(record.state == OperationState::Synced);
        if record.state == OperationState::Rejected {
            result["code"] = json!("CONTROL_UNIT_REJECTED");
            result["resultCd"] = json!(record.result_code);
            result["message"] = json!(record.result_message);
        }
    }
    let failed = results
        .iter()
        .filter(|r| matches!(r["status"].as_str(), Some("INVALID" | "REJECTED")))
        .count();
    let status = if failed == 0 {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((
        status,
        json!({"total": results.len(), "failed": failed, "results": results, "requestId": request_id}),
    ))
}

/// The CSV's rows as column → value, after checking its structure (400 for the file as a
/// whole; a bad value is the row's own result).
fn parse_csv(file: &Bytes) -> Result<Vec<std::collections::HashMap<String, String>>, ApiError> {
    let text = std::str::from_utf8(file)
        .map_err(|_| ApiError::bad_request("INVALID_CSV", "the file is not UTF-8 text"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| {
            ApiError::bad_request("INVALID_CSV", format!("the header row does not read: {e}"))
        })?
        .clone();
    if headers.iter().all(str::is_empty) {
        return Err(ApiError::bad_request(
            "EMPTY_FILE",
            "the file is empty: it needs a header row and at least one row",
        ));
    }
    for column in REQUIRED_COLUMNS {
        if !headers.iter().any(|h| h == column) {
            return Err(ApiError::bad_request(
                "MISSING_COLUMN",
                format!(
                    "the header row has no {column:?} column (required: {})",
                    REQUIRED_COLUMNS.join(", ")
                ),
            ));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| ApiError::bad_request("INVALID_CSV", e.to_string()))?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        if rows.len() == MAX_IMPORT_ROWS {
            return Err(ApiError::bad_request(
                "TOO_MANY_ROWS",
                format!("at most {MAX_IMPORT_ROWS} rows per import; split the file"),
            ));
        }
        rows.push(
            headers
                .iter()
                .zip(record.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect(),
        );
    }
    if rows.is_empty() {
        return Err(ApiError::bad_request(
            "EMPTY_FILE",
            "the file has a header row but no rows",
        ));
    }
    Ok(rows)
}
