//! Schemas, for the OpenAPI document, of the answers the handlers build with `json!` (and of
//! the error body). These types are never built: they only describe. tests/openapi.rs
//! compares real answers with them, so a field added to a handler without being added here
//! fails a test instead of going undocumented.
//!
//! Field names are the wire names of the taxid-etims contract (taxid-api.md §3), reached by
//! `rename_all`. A field that is always sent but may be null is `Option` + `required`; one
//! that is sometimes left out is `#[serde(default)]`.

// Never constructed and never read: they exist for their derived schemas.
#![allow(dead_code)]

use serde_json::Value;
use utoipa::ToSchema;

/// Every error answer: a stable machine `code`, a human `message`, and for some codes
/// further fields that the SDK reads.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorBody {
    /// Stable and machine-readable, e.g. `UNAUTHENTICATED`, `NOT_FOUND`, `INVALID_BODY`,
    /// `AMOUNT_MISMATCH`, `IDEMPOTENCY_KEY_REUSED`, `CREDIT_NOTE_EXISTS`.
    code: String,
    /// For people; may change between versions.
    message: String,
    /// `CREDIT_NOTE_EXISTS` only: the latest credit note against the sale.
    #[serde(default)]
    existing_credit_note_id: i64,
    /// `CREDIT_NOTE_EXISTS` only: that note's CU invoice number (null if not yet signed).
    #[serde(default)]
    existing_cu_invoice_no: Option<String>,
    /// `CREDIT_NOTE_EXCEEDS_ORIGINAL` only: the original line asked for too much.
    #[serde(default)]
    original_item_seq: u32,
    /// `CREDIT_NOTE_EXCEEDS_ORIGINAL` only: the quantity still reversible, a decimal string.
    #[serde(default)]
    remaining: String,
    /// `CREDIT_NOTE_EXCEEDS_ORIGINAL` only: the quantity earlier notes reversed.
    #[serde(default)]
    already_reversed: String,
    /// `CONTROL_UNIT_REJECTED` only: KRA's result code.
    #[serde(default)]
    result_cd: Option<String>,
    /// `CONTROL_UNIT_REJECTED` of an item only: the item code it was registered under.
    #[serde(default)]
    item_cd: String,
}

/// Where a sale or credit note is: `PENDING_SYNC` (queued, not yet signed), `SIGNED`,
/// `FAILED` (refused by the control unit for good), `OUTCOME_UNKNOWN` (sent, answer lost;
/// being found out), `RECONCILIATION_REQUIRED` (the control unit and Ushuru disagree: a
/// person must look).
#[derive(ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum SaleState {
    PendingSync,
    Signed,
    Failed,
    OutcomeUnknown,
    ReconciliationRequired,
}

#[derive(ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ReceiptKind {
    Sale,
    CreditNote,
}

/// A sale (or credit note) as the SDK's `SaleResult` reads it: `purchaseId` an integer,
/// every receipt field a string, or null until signed.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SaleResult {
    /// Ushuru's id of the sale: the `{id}` of the status, original and credit-note paths.
    purchase_id: i64,
    status: SaleState,
    #[serde(rename = "type")]
    kind: ReceiptKind,
    /// `<sdcId>/<receipt number> NS` (`NR` for a credit note).
    #[schema(required = true)]
    cu_invoice_number: Option<String>,
    /// The control unit's id.
    #[schema(required = true)]
    sdc_id: Option<String>,
    /// The control unit's receipt signature.
    #[schema(required = true)]
    receipt_signature: Option<String>,
    /// The control unit's internal data.
    #[schema(required = true)]
    internal_data: Option<String>,
    /// What the receipt's QR code carries:
    /// `DDMMYYYY#HHMMSS#<sdcId>#<cuInvoiceNumber>#<internalData>#<receiptSignature>`.
    #[schema(required = true)]
    kra_qr_payload: Option<String>,
    /// KRA's page that verifies the receipt.
    #[schema(required = true)]
    kra_qr_url: Option<String>,
    /// The control unit's signing time, `yyyyMMddHHmmss`.
    #[schema(required = true)]
    vscu_timestamp: Option<String>,
    /// The branch's invoice number sent to KRA, as a string.
    invc_no: String,
    /// The caller's reference (`clientReference` of the request).
    #[schema(required = true)]
    client_reference: Option<String>,
    /// This request's id, also sent as the `X-Request-Id` header.
    request_id: String,
}

/// A credit note: the sale fields (with `type` `CREDIT_NOTE`) and its original.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreditNoteResult {
    #[serde(flatten)]
    note: SaleResult,
    /// The credit note's own id (also its `purchaseId`).
    credit_note_id: i64,
    /// The sale it reverses.
    #[schema(required = true)]
    original_purchase_id: Option<i64>,
    /// The original sale's CU invoice number.
    #[schema(required = true)]
    original_rcpt_no: Option<String>,
}

/// A sale with what was sent to the control unit and every exchange about it.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SaleOriginal {
    #[serde(flatten)]
    sale: SaleResult,
    /// The priced lines, as Ushuru stored them.
    lines: Vec<SaleLineView>,
    /// The sale request exactly as the control unit received it (null before the first
    /// attempt).
    #[schema(required = true, value_type = Option<Object>)]
    kra_request: Option<Value>,
    /// Every exchange with the control unit about this sale, in order. The cmcKey travels in
    /// headers, which are never kept.
    transport: Vec<ExchangeView>,
}

/// One priced line; every amount a decimal string.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SaleLineView {
    item_seq: u32,
    item_cd: String,
    item_nm: String,
    tax_ty_cd: String,
    qty: String,
    /// Unit price, VAT-inclusive.
    uprc: String,
    dc_amt: String,
    taxbl_amt: String,
    tax_amt: String,
    tot_amt: String,
}

/// One request to the control unit and its answer.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExchangeView {
    /// The control unit endpoint, e.g. `saveTrnsSalesOsdc`.
    endpoint: String,
    attempt: u32,
    /// `ok`, `rejected`, `not_sent` or `ambiguous`.
    outcome: String,
    #[schema(required = true)]
    http_status: Option<u16>,
    elapsed_ms: u64,
    /// The body sent: JSON when it was JSON, else its text.
    #[schema(value_type = Value)]
    request: Value,
    /// The body received, as `request`; null when none came.
    #[schema(required = true, value_type = Option<Value>)]
    response: Option<Value>,
}

/// `READY`: initialised, the control unit fields are set. `KEY_REQUIRED`: not yet
/// initialised; only `tin` and `bhfId` are sent.
#[derive(ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum DeviceState {
    Ready,
    KeyRequired,
}

/// The branch's control unit as onboarding left it. Never the cmcKey itself.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceView {
    status: DeviceState,
    tin: String,
    bhf_id: String,
    /// `READY` only.
    #[serde(default)]
    sdc_id: String,
    /// `READY` only.
    #[serde(default)]
    mrc_no: String,
    /// `READY` only: `oscu`, `vscu` or `gavaconnect`.
    #[serde(default)]
    control_unit_profile: String,
    /// `READY` only.
    #[serde(default)]
    control_unit_url: String,
    /// `READY` only: whether the cmcKey is kept.
    #[serde(default)]
    cmc_key_stored: bool,
}

/// The sequence auditor's findings for the branch's control unit.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Monitoring {
    /// True when no gap or duplicate was ever seen.
    sequence_healthy: bool,
    finding_count: u64,
    /// Oldest first.
    findings: Vec<Finding>,
}

#[derive(ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum FindingKind {
    Gap,
    Duplicate,
}

/// A receipt-number gap or duplicate.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Finding {
    sdc_id: String,
    kind: FindingKind,
    /// The number that should have come (null when unknown).
    #[schema(required = true)]
    expected_rcpt_no: Option<u64>,
    found_rcpt_no: u64,
    /// The sale that got `foundRcptNo`, when it is ours.
    #[schema(required = true)]
    purchase_id: Option<i64>,
}

/// The SDK's legacy credit-note selection: a line of the original named by its SKU.
#[derive(ToSchema)]
pub(crate) struct LegacyReturnItem {
    /// The SKU sent with the sale (`itemCd` is read too).
    sku: String,
    /// A decimal string > 0 with at most 2 places; what remains of the line when absent.
    qty: Option<String>,
}

/// Where a queued control-unit operation is, in the taxid words: `OUTCOME_UNKNOWN` while it
/// is queued or its answer is not in, then `SYNCED` or `REJECTED` (with `resultCd`).
#[derive(ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum OperationStatus {
    Synced,
    Rejected,
    OutcomeUnknown,
}

/// A stock movement (`insertStockIO`) as the SDK's `StockOperationResult` reads it.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StockOperationResult {
    /// The Idempotency-Key it was sent with.
    operation_key: String,
    /// Ushuru's id of the movement.
    movement_id: i64,
    /// The branch's gap-free stock movement number sent to KRA.
    sar_no: i64,
    status: OperationStatus,
    /// SHA-256 of the exact payload queued for the control unit.
    payload_sha256: String,
    /// The movement's total, VAT-inclusive, a decimal string.
    tot_amt: String,
    tot_tax_amt: String,
    /// Whether the control unit accepted it.
    kra_acknowledged: bool,
    /// `REJECTED` only: KRA's code and message (absent otherwise: the SDK reads any
    /// `resultCd` as KRA's verdict).
    #[serde(default)]
    result_cd: String,
    #[serde(default)]
    result_msg: Option<String>,
    request_id: String,
}

/// One call made for a stock master operation.
#[derive(ToSchema)]
pub(crate) struct TransportEntry {
    /// `<endpoint>#<attempt>`.
    identity: String,
    /// SHA-256 of the queued payload.
    business_sha256: String,
    /// SHA-256 of the bytes sent.
    wire_sha256: String,
    /// Whether the control unit answered the call (accepted or refused it).
    #[serde(rename = "transportReturned")]
    transport_returned: bool,
}

/// An item's remaining quantity (`saveStockMaster`), as the SDK's `StockMasterResult`.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StockMasterResult {
    operation_key: String,
    /// The movement it follows.
    original_io_key: String,
    item_cd: String,
    /// The remaining quantity sent, a decimal string.
    rsd_qty: String,
    status: OperationStatus,
    payload_sha256: String,
    /// Every call made for it, in order.
    transport: Vec<TransportEntry>,
    kra_acknowledged: bool,
    /// Always `ABSOLUTE_RESIDUAL_QUANTITY`.
    semantics: String,
    /// `REJECTED` only: KRA's code and message (absent otherwise: the SDK reads any
    /// `resultCd` as KRA's verdict).
    #[serde(default)]
    result_cd: String,
    #[serde(default)]
    result_msg: Option<String>,
    request_id: String,
}

/// An item registration.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ItemResult {
    /// The KRA item code it is registered under (what a sale of the SKU names).
    item_cd: String,
    sku: String,
    status: OperationStatus,
    /// Whether the control unit has it.
    vscu_registered: bool,
    request_id: String,
}

/// One row of a bulk import.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BulkImportRow {
    /// 1 for the first row after the header.
    row: i64,
    #[schema(required = true)]
    sku: Option<String>,
    /// `INVALID` for a row that was not queued; else as an operation's status.
    #[schema(value_type = String, example = "SYNCED")]
    status: String,
    /// Valid rows only.
    #[serde(default)]
    item_cd: String,
    /// Valid rows, once answered or at the deadline.
    #[serde(default)]
    vscu_registered: bool,
    /// `INVALID` and `REJECTED` rows: why.
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: Option<String>,
    /// `REJECTED` rows: KRA's code.
    #[serde(default)]
    result_cd: Option<String>,
}

/// A bulk import's answer: one result per row.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BulkImportResult {
    total: i64,
    /// Rows invalid or refused by the control unit.
    failed: i64,
    results: Vec<BulkImportRow>,
    request_id: String,
}

/// A buyer registered with the branch.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CustomerResult {
    pin: String,
    name: String,
    /// The branch's customer number: the PIN's nine digits.
    cust_no: String,
    status: OperationStatus,
    registered: bool,
    request_id: String,
}

/// The device checkpoint answered by init and the handshake. Never the cmcKey.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InitResult {
    status: DeviceState,
    tin: String,
    bhf_id: String,
    /// `READY` only.
    #[serde(default)]
    sdc_id: String,
    #[serde(default)]
    mrc_no: String,
    /// `902` when a device was asked for on a branch that has one.
    #[serde(default)]
    result_cd: String,
    #[serde(default)]
    result_msg: String,
}
