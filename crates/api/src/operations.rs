//! What the stock, item and customer endpoints share: an operation is validated, queued
//! (numbered and stored with its exact payload in one transaction, like a sale), then
//! waited for up to the sale deadline while the branch's relay sends it.

use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use ushuru_store::{Enqueued, NewOperation, OperationRecord, OperationState, Scope};

use crate::{ApiError, AppState};

/// The `Idempotency-Key` header, which the stock endpoints require (the SDK refuses to
/// send without one).
pub(crate) fn required_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "IDEMPOTENCY_KEY_REQUIRED",
                "this endpoint needs an Idempotency-Key header: it becomes the operation key",
            )
        })?;
    if key.len() > 200 {
        return Err(ApiError::bad_request(
            "INVALID_IDEMPOTENCY_KEY",
            "the Idempotency-Key is longer than 200 characters",
        ));
    }
    Ok(key.to_owned())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
}

/// Queues the operation (or finds the one its key queued before with the same request),
/// wakes the branch's relay and waits for the outcome up to the sale deadline.
pub(crate) async fn enqueue_and_wait(
    state: &AppState,
    scope: Scope,
    operation: NewOperation,
) -> Result<OperationRecord, ApiError> {
    let record = match state
        .store
        .enqueue_operation(scope, operation)
        .await
        .map_err(|e| match e {
            ushuru_store::StoreError::Payload(message) => {
                ApiError::invalid("INVALID_OPERATION", message)
            }
            other => ApiError::from(other),
        })? {
        Enqueued::Created(record) | Enqueued::Existing(record) => record,
        Enqueued::KeyReused(_) => {
            return Err(ApiError::invalid(
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used for another request",
            ));
        }
    };
    if record.state != OperationState::Pending {
        return Ok(record);
    }
    state.pipeline.wake_operations(scope.branch);
    Ok(state
        .pipeline
        .wait_for_operation(scope, record.id, state.sale_deadline)
        .await?)
}

/// 200 once the control unit answered (either way), 202 while it has not.
pub(crate) fn status_code(record: &OperationRecord) -> StatusCode {
    match record.state {
        OperationState::Pending => StatusCode::ACCEPTED,
        OperationState::Synced | OperationState::Rejected => StatusCode::OK,
    }
}

/// The taxid status words: a queued or unanswered operation is `OUTCOME_UNKNOWN`.
pub(crate) fn status_word(state: OperationState) -> &'static str {
    match state {
        OperationState::Pending => "OUTCOME_UNKNOWN",
        OperationState::Synced => "SYNCED",
        OperationState::Rejected => "REJECTED",
    }
}

/// A KRA PIN: a letter, nine digits, a letter.
pub(crate) fn is_pin(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 11
        && b[0].is_ascii_uppercase()
        && b[1..10].iter().all(u8::is_ascii_digit)
        && b[10].is_ascii_uppercase()
}

/// Adds KRA's `resultCd`/`resultMsg` of a refused operation to its view. Only then: the
/// SDK reads any `resultCd` in a 2xx body (even null) as KRA's verdict (taxid-api.md §4.3).
pub(crate) fn with_result(
    mut view: serde_json::Value,
    record: &OperationRecord,
) -> serde_json::Value {
    if let Some(code) = &record.result_code {
        view["resultCd"] = serde_json::json!(code);
        view["resultMsg"] = serde_json::json!(record.result_message);
    }
    view
}
