//! The REST API, wire-compatible with the `taxid-etims` 0.8.1 SDK (taxid-api.md). Today:
//! `POST /v2/etims/sale` (flat and itemised bodies, Idempotency-Key, waiting for the
//! receipt up to a deadline), `GET /v2/etims/sales/{id}/status` and `/original` (the
//! exchange journal), `GET /v2/etims/device` and `/device/monitoring`, behind API keys.

mod credit;
mod error;
mod sale;
mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::{get, post};
use chrono::FixedOffset;
use ushuru_engine::{Clock, DeviceIdentity, Pipeline};
use ushuru_store::{ApiKey, BranchId, Store};
use ushuru_tax::TaxRates;

pub use error::ApiError;

/// East Africa Time, the fiscal time of a sale's confirmation.
pub(crate) const EAT: FixedOffset = match FixedOffset::east_opt(3 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+3 is a valid offset"),
};

/// What the API knows of a branch beyond the store: its identity at KRA and its device.
#[derive(Clone, Debug)]
pub struct BranchContext {
    pub tin: String,
    pub bhf_id: String,
    pub device: DeviceIdentity,
}

/// The API's shared state: small, cloned per request.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub pipeline: Arc<Pipeline>,
    pub branches: Arc<HashMap<BranchId, BranchContext>>,
    pub rates: TaxRates,
    pub clock: Arc<dyn Clock>,
    /// How long `POST /v2/etims/sale` waits for the receipt before answering 202.
    pub sale_deadline: Duration,
    /// How long idempotent answers are kept.
    pub idempotency_keep: Duration,
    /// How long a first request with a key counts as still running (425 for repeats).
    pub in_flight_for: Duration,
    /// The host of KRA's receipt-verification page (`etims.kra.go.ke`, or the sandbox's).
    pub receipt_host: String,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2/etims/sale", post(sale::submit))
        .route("/v2/etims/sales/{id}/status", get(sale::status))
        .route("/v2/etims/sale/{id}/credit-note", post(credit::issue))
        .route("/v2/etims/sales/search", get(views::search))
        .route("/v2/etims/sales/{id}/original", get(views::original))
        .route("/v2/etims/device", get(views::device))
        .route("/v2/etims/device/monitoring", get(views::monitoring))
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such endpoint",
            )
        })
        .with_state(state)
}

/// The authenticated caller: a live API key, from `Authorization: Bearer` or `X-API-Key`.
pub struct Caller {
    pub key: ApiKey,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let presented = header("authorization")
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .or_else(|| header("x-api-key"))
            .filter(|k| !k.is_empty())
            .ok_or_else(ApiError::unauthenticated)?;
        let key = state
            .store
            .authenticate(presented.trim(), state.clock.now())
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        Ok(Caller { key })
    }
}

/// The device context of the caller's branch. Every branch with a key has one; a missing
/// one is our fault (a branch provisioned without its relay), not the caller's.
pub(crate) fn branch_context(
    state: &AppState,
    scope: ushuru_store::Scope,
) -> Result<BranchContext, ApiError> {
    state.branches.get(&scope.branch).cloned().ok_or_else(|| {
        ApiError::internal(format!("branch {} has no device context", scope.branch.0))
    })
}

/// A request id: 16 random bytes in hex (sent back as `X-Request-Id` and `requestId`).
pub(crate) fn request_id() -> String {
    let mut random = [0u8; 16];
    if getrandom::fill(&mut random).is_err() {
        random = chrono::Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .to_le_bytes()
            .repeat(2)
            .try_into()
            .unwrap_or([0; 16]);
    }
    data_encoding::HEXLOWER.encode(&random)
}
