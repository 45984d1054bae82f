//! What the store keeps, as the rest of Ushuru sees it.

use chrono::{DateTime, Utc};
use ushuru_tax::Money;

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
    pub owner: String,
    pub lease_expires_at: DateTime<Utc>,
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
}
