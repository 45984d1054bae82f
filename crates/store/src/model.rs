//! What the store keeps, as the rest of Ushuru sees it.

use chrono::{DateTime, Utc};
use ushuru_tax::Money;
use ushuru_vault::{Sealed, SealedCmcKey, WrappedDataKey};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub i64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BranchId(pub i64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaleId(pub i64);

/// The tenant and branch a query runs for: every tenant-owned row is read and written
/// through one, so that a branch can only ever see its own rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub tenant: TenantId,
    pub branch: BranchId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub tin: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Branch {
    pub id: BranchId,
    pub tenant: TenantId,
    pub bhf_id: String,
    /// The last invoice number handed out (0 before the first sale).
    pub last_invc_no: u64,
}

impl Branch {
    pub fn scope(&self) -> Scope {
        Scope {
            tenant: self.tenant,
            branch: self.id,
        }
    }
}

/// A sale to accept (phase 1).
#[derive(Clone, Debug)]
pub struct NewSale {
    pub client_reference: Option<String>,
    pub tot_amt: Money,
    /// Its priced lines, stored with it in phase 1.
    pub lines: Vec<SaleLine>,
    /// The Idempotency-Key of the request (begun with `begin_idempotent`): the key's
    /// record is pointed at this sale in the same transaction.
    pub idempotency_key: Option<String>,
}

/// One priced line of a sale, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleLine {
    /// 1-based, the `itemSeq` of the KRA payload.
    pub item_seq: u32,
    pub item_cd: String,
    pub item_nm: String,
    /// The tax band, `A`–`E`.
    pub tax_ty_cd: String,
    pub qty: ushuru_tax::Quantity,
    /// Unit price, VAT-inclusive.
    pub uprc: Money,
    pub dc_amt: Money,
    pub taxbl_amt: Money,
    pub tax_amt: Money,
    pub tot_amt: Money,
    /// On a credit note: the original's line it reverses.
    pub original_item_seq: Option<u32>,
}

/// What a credit-note planner sees, read inside the accepting transaction.
#[derive(Clone, Debug)]
pub struct CreditContext {
    pub original: SaleRecord,
    /// The original's exact KRA payload (its buyer, item classes and units).
    pub original_payload: String,
    pub original_lines: Vec<SaleLine>,
    /// The credit notes already issued against it and not FAILED, oldest first.
    pub credit_notes: Vec<SaleRecord>,
    /// Their lines; each names the original line in `original_item_seq`.
    pub reversed_lines: Vec<SaleLine>,
}

/// A credit note ready to store: the sale row, its lines and its payload.
#[derive(Clone, Debug)]
pub struct NewCreditNote {
    pub sale: NewSale,
    pub rfd_rsn_cd: String,
    pub reason: Option<String>,
    pub payload: OutboxPayload,
}

/// Decides a credit note from its context and the number it would take, or refuses.
pub type CreditPlanner<R> =
    Box<dyn FnOnce(&CreditContext, u64) -> std::result::Result<NewCreditNote, R> + Send>;

#[derive(Debug)]
pub enum CreditOutcome<R> {
    Accepted(AcceptedSale),
    /// No such sale in this scope, or it is itself a credit note.
    NoSuchSale,
    Refused(R),
}

/// A sale stored with its invoice number and its outbox row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptedSale {
    pub sale: SaleId,
    pub invc_no: u64,
}

/// The payload of an outbox row: built once the invoice number is known, because KRA's
/// payload carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxPayload {
    pub body: String,
    pub sha256: String,
}

/// An outbox row claimed for sending (phase 2), under a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub outbox_id: i64,
    pub scope: Scope,
    pub sale: SaleId,
    pub invc_no: u64,
    pub payload: OutboxPayload,
    /// How many times the row has been claimed, this claim included.
    pub attempts: u32,
    /// Whether an earlier claim may have put this payload on the wire (a call that ended
    /// ambiguous, or a relay that died mid-call): if so, look it up before sending again.
    pub maybe_sent: bool,
    pub owner: String,
    pub lease_expires_at: DateTime<Utc>,
}

/// What recording a receipt gave: the sale as it now is (SIGNED), and the branch's next
/// sale when the caller asked to claim it in the same transaction.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub sale: SaleRecord,
    pub next: Option<Claim>,
}

/// What the control unit signed (phase 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub sdc_id: String,
    pub mrc_no: Option<String>,
    pub cur_rcpt_no: u64,
    pub tot_rcpt_no: u64,
    pub intrl_data: String,
    pub rcpt_sign: String,
    /// `yyyyMMddHHmmss`, the control unit's time.
    pub sdc_date_time: String,
}

/// The pipeline states of a sale (the taxid-etims status words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaleStatus {
    PendingSync,
    Signed,
    Failed,
    OutcomeUnknown,
    ReconciliationRequired,
}

impl SaleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SaleStatus::PendingSync => "PENDING_SYNC",
            SaleStatus::Signed => "SIGNED",
            SaleStatus::Failed => "FAILED",
            SaleStatus::OutcomeUnknown => "OUTCOME_UNKNOWN",
            SaleStatus::ReconciliationRequired => "RECONCILIATION_REQUIRED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::PendingSync,
            Self::Signed,
            Self::Failed,
            Self::OutcomeUnknown,
            Self::ReconciliationRequired,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A stored sale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleRecord {
    pub id: SaleId,
    pub scope: Scope,
    pub invc_no: u64,
    pub client_reference: Option<String>,
    pub status: SaleStatus,
    pub tot_amt: Money,
    pub receipt: Option<Receipt>,
    /// `S` a sale, `R` a credit note.
    pub rcpt_ty_cd: String,
}

/// How a claimed row ends when it does not end signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The control unit refused it: the sale is FAILED with KRA's code and message.
    Failed { code: String, message: String },
    /// It cannot be settled automatically (a duplicate whose receipt cannot be recovered):
    /// RECONCILIATION_REQUIRED, visible, never renumbered.
    Unresolved { message: String },
    /// Its stored payload no longer matches its SHA-256: never sent; the outbox row is
    /// QUARANTINED and the sale RECONCILIATION_REQUIRED.
    Quarantined { message: String },
}

/// A call to the control unit as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeRecord {
    pub sale: Option<SaleId>,
    pub endpoint: String,
    pub attempt: u32,
    pub request_body: String,
    pub response_body: Option<String>,
    pub http_status: Option<u16>,
    /// ok, rejected, not_sent or ambiguous.
    pub outcome: String,
    pub elapsed_ms: u64,
}

/// A gap or duplicate in a control unit's receipt numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceFinding {
    pub sdc_id: String,
    pub kind: FindingKind,
    pub expected: Option<u64>,
    pub found: u64,
    pub sale: Option<SaleId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingKind {
    Gap,
    Duplicate,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Gap => "GAP",
            FindingKind::Duplicate => "DUPLICATE",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "GAP" => Some(FindingKind::Gap),
            "DUPLICATE" => Some(FindingKind::Duplicate),
            _ => None,
        }
    }
}

/// An API key as stored: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: i64,
    pub scope: Scope,
    pub prefix: String,
    pub name: String,
}

/// What an Idempotency-Key says about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdempotencyStart {
    /// First use: run the request, then [`crate::Store::finish_idempotent`].
    Started,
    /// The same key and the same request, answered before: send this answer again.
    Replay { status: u16, body: String },
    /// The same key with a different request: refuse (IDEMPOTENCY_KEY_REUSED).
    Mismatch,
    /// The first request with this key has not answered yet: refuse (425).
    InFlight,
}

/// A branch's control unit and the device initialised on it. The cmcKey is kept only
/// sealed (ushuru-vault): opening it takes the master key, which the store never has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    pub control_unit_url: String,
    /// oscu, vscu or gavaconnect.
    pub profile: String,
    pub sdc_id: String,
    pub mrc_no: String,
    pub cmc_key: SealedCmcKey,
}

/// A cmcKey a database written before the vault still holds in plain text, to be sealed
/// (and cleared) by [`crate::Store::seal_plaintext_cmc_key`]. Zeroized when dropped.
pub struct PlaintextCmcKey {
    pub scope: Scope,
    pub cmc_key: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for PlaintextCmcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaintextCmcKey")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The stored columns of a sealed cmcKey, in the order the repositories read and write
/// them: the key's nonce and ciphertext, the data key's version, nonce and wrapped form,
/// and the master key's version.
pub(crate) struct SealedColumns {
    pub nonce: Vec<u8>,
    pub sealed: Vec<u8>,
    pub data_key_version: i64,
    pub data_key_nonce: Vec<u8>,
    pub data_key_wrapped: Vec<u8>,
    pub master_key_version: i64,
}

impl SealedColumns {
    pub fn of(key: &SealedCmcKey) -> Self {
        SealedColumns {
            nonce: key.sealed.nonce.clone(),
            sealed: key.sealed.ciphertext.clone(),
            data_key_version: i64::from(key.data_key.version),
            data_key_nonce: key.data_key.wrapped.nonce.clone(),
            data_key_wrapped: key.data_key.wrapped.ciphertext.clone(),
            master_key_version: i64::from(key.data_key.master_version),
        }
    }

    /// None when a version is out of range (a row no seal of ours wrote).
    pub fn into_key(self) -> Option<SealedCmcKey> {
        Some(SealedCmcKey {
            data_key: WrappedDataKey {
                version: u32::try_from(self.data_key_version).ok()?,
                master_version: u32::try_from(self.master_key_version).ok()?,
                wrapped: Sealed {
                    nonce: self.data_key_nonce,
                    ciphertext: self.data_key_wrapped,
                },
            },
            sealed: Sealed {
                nonce: self.nonce,
                ciphertext: self.sealed,
            },
        })
    }
}

/// A branch whose device is initialised: what `serve` needs to start its relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialisedBranch {
    pub scope: Scope,
    pub tin: String,
    pub bhf_id: String,
    pub device: DeviceRecord,
}

/// A control-unit operation other than a sale: queued in phase 1 like a sale and sent by
/// the branch's relay, so that the branch still has one call in flight at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OperationId(pub i64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationKind {
    /// `insertStockIO`, numbered from the branch's gap-free `sarNo` sequence.
    StockAdjustment,
    /// `saveStockMaster`: an item's remaining quantity.
    StockMaster,
    /// `saveItem`.
    Item,
    /// `saveBhfCustomer`.
    Customer,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::StockAdjustment => "STOCK_ADJUSTMENT",
            OperationKind::StockMaster => "STOCK_MASTER",
            OperationKind::Item => "ITEM",
            OperationKind::Customer => "CUSTOMER",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            OperationKind::StockAdjustment,
            OperationKind::StockMaster,
            OperationKind::Item,
            OperationKind::Customer,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }

    /// Whether the operation takes the next number of the branch's `sarNo` sequence.
    pub fn numbered(self) -> bool {
        self == OperationKind::StockAdjustment
    }
}

/// Where an operation stands: waiting to be sent (or sent with no answer yet), accepted
/// by the control unit, or refused by it (with its code and message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationState {
    Pending,
    Synced,
    Rejected,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Pending => "PENDING",
            OperationState::Synced => "SYNCED",
            OperationState::Rejected => "REJECTED",
        }
    }

    pub(crate) fn parse(text: &str) -> crate::Result<Self> {
        match text {
            "PENDING" => Ok(OperationState::Pending),
            "SYNCED" => Ok(OperationState::Synced),
            "REJECTED" => Ok(OperationState::Rejected),
            other => Err(crate::StoreError::Corrupt(format!(
                "operation state {other:?}"
            ))),
        }
    }
}

/// Builds an operation's KRA payload once its `sarNo` (numbered kinds only) is known.
pub type OperationPayloadBuilder =
    Box<dyn FnOnce(Option<u64>) -> std::result::Result<String, String> + Send>;

/// An operation to queue (phase 1).
pub struct NewOperation {
    pub kind: OperationKind,
    /// The caller's key for it (its Idempotency-Key, or one derived from what it names).
    pub key: String,
    /// SHA-256 of the caller's request: the same key with another request is refused.
    pub request_sha256: String,
    /// The KRA endpoint's name (`insertStockIO`, …).
    pub endpoint: String,
    /// What the API reports about it besides its state (JSON).
    pub summary: String,
    pub build: OperationPayloadBuilder,
}

/// A queued operation as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationRecord {
    pub id: OperationId,
    pub kind: OperationKind,
    pub key: String,
    pub request_sha256: String,
    pub endpoint: String,
    pub payload: String,
    pub payload_sha256: String,
    pub sar_no: Option<u64>,
    pub summary: String,
    pub state: OperationState,
    pub result_code: Option<String>,
    pub result_message: Option<String>,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
}

/// What queueing an operation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued now.
    Created(OperationRecord),
    /// The same key with the same request was queued before: that one.
    Existing(OperationRecord),
    /// The key was used before for another request: nothing queued.
    KeyReused(OperationRecord),
}

/// An operation claimed by a relay (phase 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationClaim {
    pub scope: Scope,
    pub id: OperationId,
    pub kind: OperationKind,
    pub endpoint: String,
    pub payload: OutboxPayload,
    pub attempts: u32,
    pub owner: String,
}

/// An Idempotency-Key request, for [`crate::Store::accept_sale_once`].
#[derive(Clone, Debug)]
pub struct IdempotentRequest {
    pub key: String,
    pub request_sha256: String,
    pub now: DateTime<Utc>,
    /// How long a first request counts as still running (425 for repeats).
    pub in_flight_for: std::time::Duration,
    /// How long its answer is kept.
    pub keep: std::time::Duration,
}

/// What [`crate::Store::accept_sale_once`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdempotentAccept {
    /// First use of the key: the sale is accepted, its key's record points at it.
    Accepted(AcceptedSale),
    /// The key was used before: replay, mismatch or in flight; nothing accepted.
    Decided(IdempotencyStart),
}
