//! The relay of one branch: phases 2 and 3 of the outbox. It claims the branch's next sale
//! under a lease, checks its payload against its SHA-256, sends it to the control unit
//! (no transaction is open during the call), and records what came back.
//!
//! What each outcome does (kra-protocol.md §6, ARCHITECTURE invariants 2–5, 8):
//! - `Ok`: the receipt goes into the sale (SIGNED) under `UNIQUE(sdc_id, rcpt_no)`.
//! - `Rejected` with a duplicate code (921/994/899): the invoice was signed before — its
//!   receipt is fetched with `selectInvoiceDetails` and adopted; if it cannot be found the
//!   sale is RECONCILIATION_REQUIRED, never renumbered.
//! - `Rejected` for the request itself (the Request class: 910–912, 834): FAILED with KRA's
//!   code and message.
//! - `Rejected` for any other reason (rate limit 990, server errors 99x, a VSCU offline 894,
//!   a device or gateway problem, an unknown code): nothing is wrong with the sale, so it is
//!   kept and tried again with backoff, looked up first in case it was processed.
//! - `NotSent`: given back with exponential backoff and full jitter; nothing reached the
//!   control unit.
//! - `Ambiguous`: OUTCOME_UNKNOWN. Before the next send the invoice is looked up: found, its
//!   receipt is adopted; not found, the identical payload is sent again.

mod operations;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use ushuru_kra::endpoints::SaveItemEndpoint;
use ushuru_kra::types::{
    InvoiceDetailsRequest, InvoiceDetailsResponse, SaleRequest, SaleResponse, SaveItemRequest,
};
use ushuru_kra::wire::{Int, from_slice_lenient};
use ushuru_kra::{Call, EndpointName, Exchange, KraClient, Outcome, ResultClass};
use ushuru_store::{
    Claim, ExchangeRecord, FindingKind, OperationId, OperationState, Receipt, SaleId, SaleRecord,
    SaleStatus, Scope, SequenceFinding, Settlement, Store, StoreError,
};

use crate::clock::Clock;

/// The item class given to an item whose sale line names none (KRA requires one; the
/// REST API sets it, so this is only a fallback).
const UNCLASSIFIED: &str = "99999999";

/// The control unit a branch's device was initialised on: OSCU answers carry neither id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub sdc_id: String,
    pub mrc_no: Option<String>,
}

/// Exponential backoff with full jitter: a random delay up to `base × 2^(attempt−1)`,
/// capped, so that relays retrying after an outage do not all come back at once.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let mut random = [0u8; 8];
        // Without randomness the full delay is still a valid (if synchronised) backoff.
        if getrandom::fill(&mut random).is_err() {
            return ceiling;
        }
        let ceiling_nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(u64::from_le_bytes(random) % ceiling_nanos.saturating_add(1))
    }
}

/// What one step of the relay did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to send (or the branch's head row is leased elsewhere, or backing off).
    Idle,
    Signed {
        sale: SaleId,
        invc_no: u64,
    },
    Failed {
        sale: SaleId,
        code: String,
    },
    Unresolved {
        sale: SaleId,
    },
    /// Given back, to be tried again from `at`.
    Retrying {
        sale: SaleId,
        at: DateTime<Utc>,
        outcome: &'static str,
    },
    Quarantined {
        sale: SaleId,
    },
    /// An operation (stock, item, customer) ended SYNCED or REJECTED.
    Operation {
        operation: OperationId,
        state: OperationState,
    },
    /// An operation given back, to be tried again from `at`.
    OperationRetrying {
        operation: OperationId,
        at: DateTime<Utc>,
        outcome: &'static str,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// One branch's relay.
pub struct Relay {
    store: Store,
    client: KraClient,
    scope: Scope,
    device: DeviceIdentity,
    owner: String,
    lease: Duration,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
    /// Turns between the two queues, so that neither starves the other under load.
    operations_turn: AtomicBool,
    /// Set when operations may be waiting (at start, when one is queued, and on every
    /// poll); cleared when a look finds none. Saves a claim transaction per sale on a
    /// branch that has no operations.
    operations_due: Arc<AtomicBool>,
    /// Items known to be registered with the control unit: after the first sale of an
    /// item, its later sales skip the store lookup.
    registered: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The branch's next sale, claimed in the transaction that recorded the previous
    /// receipt: the next step sends it without a claim transaction of its own.
    carried: std::sync::Mutex<Option<Claim>>,
    /// The sale the last `Signed` step recorded, as the store returned it, for the pipeline
    /// to hand to the request waiting for it (see [`Relay::take_signed`]).
    signed: std::sync::Mutex<Option<SaleRecord>>,
}

fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Relay {
    pub fn new(
        store: Store,
        client: KraClient,
        scope: Scope,
        device: DeviceIdentity,
        owner: impl Into<String>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let lease = Self::lease_for(&client);
        Relay {
            store,
            client,
            scope,
            device,
            owner: owner.into(),
            lease,
            backoff: Backoff::default(),
            clock,
            operations_turn: AtomicBool::new(false),
            operations_due: Arc::new(AtomicBool::new(true)),
            registered: std::sync::Mutex::new(std::collections::HashSet::new()),
            carried: std::sync::Mutex::new(None),
            signed: std::sync::Mutex::new(None),
        }
    }

    /// Longer than the longest step can take (a lookup, then the sale, each with its
    /// connect time). Another process takes a row over when the branch lock says its
    /// holder is gone, not by this clock (see the store's `signer.rs`); the lease bounds a
    /// row abandoned within one hold.
    fn lease_for(client: &KraClient) -> Duration {
        let timeouts = client.config().timeouts;
        timeouts.lookup + timeouts.sale + timeouts.connect * 2 + Duration::from_secs(30)
    }

    fn known_item(&self, item_cd: &str) -> bool {
        locked(&self.registered).contains(item_cd)
    }

    fn remember_item(&self, item_cd: &str) {
        locked(&self.registered).insert(item_cd.to_owned());
    }

    /// Whether the last step claimed the branch's next sale for the step after it. After a
    /// `Signed` step without one, the branch had nothing ready when the receipt was
    /// recorded: anything accepted since wakes the relay, so it may wait for that.
    pub fn has_next(&self) -> bool {
        locked(&self.carried).is_some()
    }

    /// The sale the last `Signed` step recorded (once): what a request waiting for it is
    /// answered with, without reading it again.
    pub fn take_signed(&self) -> Option<SaleRecord> {
        locked(&self.signed).take()
    }

    /// The branch this relay sends for.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Takes the branch's next sale or operation as far as one call allows. The two queues
    /// take turns; either runs alone while the other has nothing ready.
    pub async fn step(&self) -> Result<Step, RelayError> {
        let operations_first = self.operations_turn.fetch_xor(true, Ordering::Relaxed);
        if operations_first && let Some(step) = self.operation_if_due().await? {
            return Ok(step);
        }
        let step = self.step_sale().await?;
        if step != Step::Idle || operations_first {
            return Ok(step);
        }
        Ok(self.operation_if_due().await?.unwrap_or(Step::Idle))
    }

    /// The flag that says operations may be waiting: whoever queues one sets it (the
    /// pipeline's `wake_operations`, and its poll).
    pub fn operations_signal(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.operations_due)
    }

    async fn operation_if_due(&self) -> Result<Option<Step>, RelayError> {
        // Cleared before looking: a signal raised during the look is kept for the next step.
        if !self.operations_due.swap(false, Ordering::AcqRel) {
            return Ok(None);
        }
        let step = self.step_operation().await;
        if !matches!(step, Ok(None)) {
            // Did something (or failed): there may be more.
            self.operations_due.store(true, Ordering::Release);
        }
        step
    }

    /// Claims the branch's next sale and takes it as far as one call allows.
    async fn step_sale(&self) -> Result<Step, RelayError> {
        let carried = locked(&self.carried).take();
        let claim = match carried {
            Some(claim) => claim,
            None => match self
                .store
                .claim_next(self.scope, &self.owner, self.lease, self.clock.now())
                .await?
            {
                Some(claim) => claim,
                None => return Ok(Step::Idle),
            },
        };
        let actual = data_encoding::HEXLOWER.encode(&Sha256::digest(claim.payload.body.as_bytes()));
        if actual != claim.payload.sha256 {
            tracing::error!(
                sale = claim.sale.0,
                invc_no = claim.invc_no,
                "stored payload does not match its SHA-256: quarantined, not sent"
            );
            let message = format!(
                "the stored payload's SHA-256 is {actual}, not {}",
                claim.payload.sha256
            );
            self.store
                .settle(&claim, &Settlement::Quarantined { message })
                .await?;
            return Ok(Step::Quarantined { sale: claim.sale });
        }
        // Items must be known to the control unit before a sale names them (§6).
        if let Some(step) = self.register_items(&claim).await? {
            return Ok(step);
        }
        // It may have reached the control unit before: look before sending it again.
        if claim.maybe_sent {
            match self.look_up(&claim).await? {
                Lookup::Found(receipt) => return self.record(&claim, receipt, None).await,
                Lookup::Absent => {}
                Lookup::Unknown(outcome) => return self.retry(&claim, true, outcome).await,
            }
        }
        let call = self
            .client
            .send_typed::<SaleResponse>(
                EndpointName::SaveTrnsSalesOsdc,
                claim.payload.body.clone().into_bytes(),
            )
            .await;
        // A signed answer is journalled with its receipt, in one transaction; any other
        // answer on its own, now.
        let signed = matches!(call.outcome, Outcome::Ok { data: Some(_), .. });
        let exchange = exchange_record(&call, claim.attempts, Some(claim.sale));
        if !signed {
            self.write_journal(&claim, &exchange).await;
        }
        match call.outcome {
            Outcome::Ok {
                data: Some(response),
                ..
            } => {
                let receipt = Receipt {
                    sdc_id: response
                        .sdc_id
                        .unwrap_or_else(|| self.device.sdc_id.clone()),
                    mrc_no: response.mrc_no.or_else(|| self.device.mrc_no.clone()),
                    cur_rcpt_no: response.cur_rcpt_no.0,
                    tot_rcpt_no: response.tot_rcpt_no.0,
                    intrl_data: response.intrl_data,
                    rcpt_sign: response.rcpt_sign,
                    sdc_date_time: response.sdc_date_time.digits(),
                };
                self.record(&claim, receipt, Some(&exchange)).await
            }
            // A success without a receipt is no receipt: treat it as unknown and look it up.
            Outcome::Ok { data: None, .. } => self.retry(&claim, true, "ambiguous").await,
            Outcome::Rejected { code, .. } if code.is_duplicate() => {
                match self.look_up(&claim).await? {
                    Lookup::Found(receipt) => self.record(&claim, receipt, None).await,
                    Lookup::Absent => {
                        let message = format!(
                            "the control unit answered {code} (already received) and has no receipt for invoice {}",
                            claim.invc_no
                        );
                        self.store
                            .settle(&claim, &Settlement::Unresolved { message })
                            .await?;
                        Ok(Step::Unresolved { sale: claim.sale })
                    }
                    Lookup::Unknown(outcome) => self.retry(&claim, true, outcome).await,
                }
            }
            Outcome::Rejected { code, message } if code.class() != ResultClass::Request => {
                tracing::warn!(sale = claim.sale.0, invc_no = claim.invc_no, %code, %message, "control unit refused for now; retrying");
                self.retry(&claim, true, "rejected").await
            }
            Outcome::Rejected { code, message } => {
                let code = code.code().to_owned();
                self.store
                    .settle(
                        &claim,
                        &Settlement::Failed {
                            code: code.clone(),
                            message,
                        },
                    )
                    .await?;
                Ok(Step::Failed {
                    sale: claim.sale,
                    code,
                })
            }
            // Nothing left the machine: whether it was sent before is as the claim found it.
            Outcome::NotSent { .. } => self.retry(&claim, claim.maybe_sent, "not_sent").await,
            Outcome::Ambiguous { .. } => self.retry(&claim, true, "ambiguous").await,
        }
    }

    /// Steps until the branch has nothing ready to send.
    pub async fn drain(&self) -> Result<Vec<Step>, RelayError> {
        let mut steps = Vec::new();
        loop {
            match self.step().await? {
                Step::Idle => return Ok(steps),
                step => steps.push(step),
            }
        }
    }

    /// Registers the sale's items the control unit does not know yet (`saveItem`, which
    /// updates an item saved before, so repeating it is harmless). Returns the step to end
    /// with when a registration did not succeed.
    async fn register_items(&self, claim: &Claim) -> Result<Option<Step>, RelayError> {
        let Ok(sale) = from_slice_lenient::<SaleRequest>(claim.payload.body.as_bytes()) else {
            // The payload is ours and checked against its hash; the control unit will say
            // what is wrong with it.
            return Ok(None);
        };
        for line in &sale.item_list {
            if self.known_item(&line.item_cd) {
                continue;
            }
            if self
                .store
                .item_registered(self.scope, &line.item_cd)
                .await?
            {
                self.remember_item(&line.item_cd);
                continue;
            }
            let item = SaveItemRequest {
                pkg_unit_cd: line.pkg_unit_cd.clone(),
                qty_unit_cd: line.qty_unit_cd.clone(),
                bcd: line.bcd.clone(),
                ..SaveItemRequest::finished_product(
                    line.item_cd.clone(),
                    line.item_nm.clone(),
                    line.item_cls_cd
                        .clone()
                        .unwrap_or_else(|| UNCLASSIFIED.to_owned()),
                    line.tax_ty_cd.clone(),
                    line.prc,
                )
            };
            let call = self.client.call::<SaveItemEndpoint>(&item).await;
            self.journal(claim, &call).await?;
            match call.outcome {
                Outcome::Ok { .. } => {
                    self.store
                        .mark_item_registered(self.scope, &line.item_cd, self.clock.now())
                        .await?;
                    self.remember_item(&line.item_cd);
                }
                Outcome::Rejected { code, message } if code.class() == ResultClass::Request => {
                    let message =
                        format!("item {} could not be registered: {message}", line.item_cd);
                    let code = code.code().to_owned();
                    self.store
                        .settle(
                            claim,
                            &Settlement::Failed {
                                code: code.clone(),
                                message,
                            },
                        )
                        .await?;
                    return Ok(Some(Step::Failed {
                        sale: claim.sale,
                        code,
                    }));
                }
                // The sale itself was not sent: it stays as its claim found it.
                _ => {
                    return self
                        .retry(claim, claim.maybe_sent, "not_sent")
                        .await
                        .map(Some);
                }
            }
        }
        Ok(None)
    }

    /// Records the receipt (phase 3), with the call that brought it when there is one.
    async fn record(
        &self,
        claim: &Claim,
        receipt: Receipt,
        exchange: Option<&ExchangeRecord>,
    ) -> Result<Step, RelayError> {
        let now = self.clock.now();
        let recorded = self
            .store
            .record_and_claim_next(
                claim,
                &receipt,
                exchange,
                now,
                Some((&self.owner, self.lease)),
            )
            .await;
        if recorded.is_err()
            && let Some(exchange) = exchange
        {
            // The receipt was not recorded, so neither was the call: keep the call.
            self.write_journal(claim, exchange).await;
        }
        match recorded {
            Ok(recorded) => {
                *locked(&self.carried) = recorded.next;
                *locked(&self.signed) = Some(recorded.sale);
                Ok(Step::Signed {
                    sale: claim.sale,
                    invc_no: claim.invc_no,
                })
            }
            Err(StoreError::DuplicateReceipt { sdc_id, rcpt_no }) => {
                // The control unit gave a number it gave another sale: keep it visible.
                tracing::error!(%sdc_id, rcpt_no, sale = claim.sale.0, "receipt number already recorded for another sale");
                let finding = SequenceFinding {
                    sdc_id: sdc_id.clone(),
                    kind: FindingKind::Duplicate,
                    expected: None,
                    found: rcpt_no,
                    sale: Some(claim.sale),
                };
                self.store
                    .record_finding(self.scope, &finding, self.clock.now())
                    .await?;
                let message = format!("control unit {sdc_id} issued receipt {rcpt_no} again");
                self.store
                    .settle(claim, &Settlement::Unresolved { message })
                    .await?;
                Ok(Step::Unresolved { sale: claim.sale })
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn retry(
        &self,
        claim: &Claim,
        maybe_sent: bool,
        outcome: &'static str,
    ) -> Result<Step, RelayError> {
        let now = self.clock.now();
        let delay = chrono::Duration::from_std(self.backoff.delay(claim.attempts))
            .unwrap_or(chrono::Duration::zero());
        let at = now + delay;
        let status = if maybe_sent {
            SaleStatus::OutcomeUnknown
        } else {
            SaleStatus::PendingSync
        };
        self.store.release(claim, at, maybe_sent, status).await?;
        Ok(Step::Retrying {
            sale: claim.sale,
            at,
            outcome,
        })
    }

    async fn look_up(&self, claim: &Claim) -> Result<Lookup, RelayError> {
        let request = InvoiceDetailsRequest {
            invc_no: Int(claim.invc_no),
        };
        let call = self
            .client
            .call::<ushuru_kra::endpoints::InvoiceDetails>(&request)
            .await;
        self.journal(claim, &call).await?;
        Ok(match call.outcome {
            Outcome::Ok {
                data: Some(InvoiceDetailsResponse { sales_list }),
                ..
            } => match sales_list.into_iter().next() {
                Some(sale) => Lookup::Found(Receipt {
                    sdc_id: self.device.sdc_id.clone(),
                    mrc_no: self.device.mrc_no.clone(),
                    cur_rcpt_no: sale.receipt.cur_rcpt_no.0,
                    tot_rcpt_no: sale.receipt.tot_rcpt_no.0,
                    intrl_data: sale.receipt.intrl_data,
                    rcpt_sign: sale.receipt.rcpt_sign,
                    sdc_date_time: sale.receipt.sdc_date_time.digits(),
                }),
                None => Lookup::Absent,
            },
            Outcome::Ok { data: None, .. } => Lookup::Absent,
            // A lookup that fails tells nothing: try again later.
            Outcome::Rejected { .. } => Lookup::Unknown("ambiguous"),
            Outcome::NotSent { .. } => Lookup::Unknown("not_sent"),
            Outcome::Ambiguous { .. } => Lookup::Unknown("ambiguous"),
        })
    }

    /// Keeps the call in the journal. A journal that cannot be written is logged, never a
    /// reason to drop a receipt already received.
    async fn journal<T>(&self, claim: &Claim, call: &Call<T>) -> Result<(), RelayError> {
        let record = exchange_record(call, claim.attempts, Some(claim.sale));
        self.write_journal(claim, &record).await;
        Ok(())
    }

    /// Writes one call to the journal; a journal that cannot be written is logged, never a
    /// reason to drop a receipt.
    async fn write_journal(&self, claim: &Claim, record: &ExchangeRecord) {
        if let Err(e) = self
            .store
            .record_exchange(self.scope, record, self.clock.now())
            .await
        {
            tracing::error!(error = %e, sale = claim.sale.0, "the exchange journal could not be written");
        }
    }
}

/// A call as the exchange journal keeps it: the bodies, never the headers (the cmcKey).
pub(crate) fn exchange_record<T>(
    call: &Call<T>,
    attempt: u32,
    sale: Option<SaleId>,
) -> ExchangeRecord {
    let Exchange {
        endpoint,
        request_body,
        response_body,
        http_status,
        elapsed,
        ..
    } = &call.exchange;
    ExchangeRecord {
        sale,
        endpoint: endpoint.oscu_name().to_owned(),
        attempt,
        request_body: request_body.clone(),
        response_body: response_body.clone(),
        http_status: *http_status,
        outcome: call.outcome.class_name().to_owned(),
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    }
}

enum Lookup {
    Found(Receipt),
    Absent,
    Unknown(&'static str),
}
