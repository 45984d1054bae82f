//! The API's answers when something is wrong: an HTTP status, a stable machine `code` and a
//! human `message` (the flat error shape the taxid-etims SDK reads, taxid-api.md §4.1).
//! Internal causes are logged and shown as nothing more than "internal error".

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Further fields the contract defines for this error (e.g. `remaining`).
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The body field of a 429 that is also sent as the `Retry-After` header.
const RETRY_AFTER_FIELD: &str = "retryAfterSeconds";

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    /// 429: too many failed authentications from this address or with this key prefix.
    pub fn throttled(wait: std::time::Duration) -> Self {
        // Whole seconds, rounded up: a client that waits that long is let through.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "AUTH_THROTTLED",
            format!(
                "too many failed authentications from this address or with this key prefix; \
                 retry in {seconds} s"
            ),
        )
        .with(RETRY_AFTER_FIELD, json!(seconds))
    }

    /// Adds a field to the error body beside `code` and `message`.
    pub fn with(mut self, field: &str, value: serde_json::Value) -> Self {
        self.details.insert(field.to_owned(), value);
        self
    }

    pub fn unauthenticated() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "send a live API key as 'Authorization: Bearer <key>' or 'X-API-Key'",
        )
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such {what} for this branch"),
        )
    }

    /// A failure of ours: the cause goes to the log, not to the caller.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error; the request may be retried with the same Idempotency-Key",
        )
    }

    pub fn body(&self) -> serde_json::Value {
        let mut body = self.details.clone();
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        serde_json::Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = (self.status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| self.details.get(RETRY_AFTER_FIELD)?.as_u64())
            .flatten();
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<ushuru_store::StoreError> for ApiError {
    fn from(error: ushuru_store::StoreError) -> Self {
        ApiError::internal(error)
    }
}
