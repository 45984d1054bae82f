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
