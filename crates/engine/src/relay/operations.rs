//! The relay's second queue: stock moves, stock master, items and customers. Each is sent
//! like a sale (claimed under a lease, its payload checked against its SHA-256, no
//! transaction open during the call) and ends SYNCED or REJECTED:
//! - `Ok`, or a duplicate answer (the control unit has it already): SYNCED. These calls
//!   are idempotent at KRA (`saveItem`, `saveBhfCustomer` and `saveStockMaster` update by
//!   key; `insertStockIO` is keyed by its `sarNo`), so resending after an unknown outcome
//!   is safe, and no lookup is needed first.
//! - `Rejected` for the request itself (the Request class): REJECTED with KRA's code.
//! - anything else (not sent, no answer, a refusal for now): tried again with backoff.

use sha2::{Digest, Sha256};
use ushuru_kra::endpoints::{Endpoint, SaveCustomer, SaveItemEndpoint, StockInOut, StockMaster};
use ushuru_kra::types::SaveItemRequest;
use ushuru_kra::wire::from_slice_lenient;
use ushuru_kra::{Call, Outcome, ResultClass};
use ushuru_store::{OperationClaim, OperationKind, OperationState};

use super::{Relay, RelayError, Step, exchange_record};

impl Relay {
    /// Claims the branch's next operation and sends it; None when there is none ready.
    pub(super) async fn step_operation(&self) -> Result<Option<Step>, RelayError> {
        let Some(claim) = self
            .store
            .claim_next_operation(self.scope, &self.owner, self.lease, self.clock.now())
            .await?
        else {
            return Ok(None);
        };
        let actual = data_encoding::HEXLOWER.encode(&Sha256::digest(claim.payload.body.as_bytes()));
        if actual != claim.payload.sha256 {
            tracing::error!(
                operation = claim.id.0,
                "stored operation payload does not match its SHA-256: refused, not sent"
            );
            let message = format!(
                "the stored payload's SHA-256 is {actual}, not {}: not sent",
                claim.payload.sha256
            );
            return self
                .settle(&claim, Some(("PAYLOAD_MISMATCH", &message)))
                .await
                .map(Some);
        }
        let outcome = match claim.kind {
            OperationKind::StockAdjustment => self.send::<StockInOut>(&claim).await?,
            OperationKind::StockMaster => self.send::<StockMaster>(&claim).await?,
            OperationKind::Item => self.send::<SaveItemEndpoint>(&claim).await?,
            OperationKind::Customer => self.send::<SaveCustomer>(&claim).await?,
        };
        let step = match outcome {
            Sent::Accepted => {
                if claim.kind == OperationKind::Item
                    && let Ok(item) =
                        from_slice_lenient::<SaveItemRequest>(claim.payload.body.as_bytes())
                {
                    self.store
                        .mark_item_registered(self.scope, &item.item_cd, self.clock.now())
                        .await?;
                    self.remember_item(&item.item_cd);
                }
                self.settle(&claim, None).await?
            }
            Sent::Refused { code, message } => self.settle(&claim, Some((&code, &message))).await?,
            Sent::Again(outcome) => {
                let at = self.clock.now()
                    + chrono::Duration::from_std(self.backoff.delay(claim.attempts))
                        .unwrap_or(chrono::Duration::zero());
                self.store.release_operation(&claim, at).await?;
                Step::OperationRetrying {
                    operation: claim.id,
                    at,
                    outcome,
                }
            }
        };
        Ok(Some(step))
    }

    async fn send<E: Endpoint>(&self, claim: &OperationClaim) -> Result<Sent, RelayError> {
        let request = match from_slice_lenient::<E::Request>(claim.payload.body.as_bytes()) {
            Ok(request) => request,
            // Our own payload, checked against its hash: it cannot be sent as it is.
            Err(e) => {
                return Ok(Sent::Refused {
                    code: "PAYLOAD_INVALID".into(),
                    message: format!(
                        "the stored payload is not a {} request: {e}",
                        E::NAME.oscu_name()
                    ),
                });
            }
        };
        let call = self.client.call::<E>(&request).await;
        self.journal_operation(claim, &call).await;
        Ok(match call.outcome {
            Outcome::Ok { .. } => Sent::Accepted,
            Outcome::Rejected { code, .. } if code.is_duplicate() => Sent::Accepted,
            Outcome::Rejected { code, message } if code.class() == ResultClass::Request => {
                Sent::Refused {
                    code: code.code().to_owned(),
                    message,
                }
            }
            Outcome::Rejected { code, message } => {
                tracing::warn!(operation = claim.id.0, %code, %message, "control unit refused for now; retrying");
                Sent::Again("rejected")
            }
            Outcome::NotSent { .. } => Sent::Again("not_sent"),
            Outcome::Ambiguous { .. } => Sent::Again("ambiguous"),
        })
    }

    async fn settle(
        &self,
        claim: &OperationClaim,
        rejected: Option<(&str, &str)>,
    ) -> Result<Step, RelayError> {
        self.store
            .settle_operation(claim, rejected, self.clock.now())
            .await?;
        Ok(Step::Operation {
            operation: claim.id,
            state: if rejected.is_some() {
                OperationState::Rejected
            } else {
                OperationState::Synced
            },
        })
    }

    /// Keeps the call in the journal; a journal that cannot be written is logged only.
    async fn journal_operation<T>(&self, claim: &OperationClaim, call: &Call<T>) {
        let record = exchange_record(call, claim.attempts, None);
        if let Err(e) = self
            .store
            .record_operation_exchange(self.scope, claim.id, &record, self.clock.now())
            .await
        {
            tracing::error!(error = %e, operation = claim.id.0, "the exchange journal could not be written");
        }
    }
}

enum Sent {
    Accepted,
    Refused { code: String, message: String },
    Again(&'static str),
}
