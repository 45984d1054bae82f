//! `POST /v2/etims/customers`: registers a buyer with the branch's control unit
//! (`saveBhfCustomer`), queued for the branch's relay like every other call. The branch's
//! customer number (`custNo`, 9 characters) is the PIN's nine digits, so one buyer always
//! has one number and registering it again updates it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use ushuru_kra::types::SaveCustomerRequest;
use ushuru_store::{NewOperation, OperationKind, OperationRecord, OperationState};
use utoipa::ToSchema;

use crate::operations::{enqueue_and_wait, is_pin, sha256_hex, status_word};
use crate::sale::respond;
use crate::schema::{CustomerResult, ErrorBody};
use crate::{ApiError, AppState, Caller, request_id};

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = CustomerRequest)]
pub(crate) struct CustomerBody {
    /// The buyer's KRA PIN.
    #[schema(example = "P051234567A")]
    pin: String,
    /// 1 to 60 characters.
    name: String,
}

fn customer_view(record: &OperationRecord, request_id: &str) -> Value {
    let summary: Value = serde_json::from_str(&record.summary).unwrap_or(Value::Null);
    json!({
        "pin": summary["pin"],
        "name": summary["name"],
        "custNo": summary["custNo"],
        "status": status_word(record.state),
        "registered": record.state == OperationState::Synced,
        "requestId": request_id,
    })
}

/// `POST /v2/etims/customers`.
#[utoipa::path(
    post,
        path = "/v2/etims/customers",
    operation_id = "register_customer",
    tag = "customers",
    summary = "Register a buyer with the branch",
    description = "Sends the buyer to the branch's control unit (`saveBhfCustomer`) under the \
        customer number made of the PIN's nine digits, and waits for the answer up to the sale \
        deadline. The same buyer again is the same operation; a new name updates it.",
    request_body(content = CustomerBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Registered.", body = CustomerResult),
        (status = 202, description = "Queued, not answered yet.", body = CustomerResult),
        (status = 400, description = "Not JSON of this shape (`INVALID_BODY`).", body = ErrorBody),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 422, description = "A bad PIN (`INVALID_PIN`) or name (`INVALID_NAME`), or the control unit refused it (`CONTROL_UNIT_REJECTED`, with `resultCd`).", body = ErrorBody),
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
        let parsed: CustomerBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "INVALID_BODY",
                format!("the customer body does not read: {e}"),
            )
        })?;
        let pin = parsed.pin.trim().to_owned();
        if !is_pin(&pin) {
            return Err(ApiError::invalid(
                "INVALID_PIN",
                format!("pin {pin:?} is not a KRA PIN (A123456789B)"),
            ));
        }
        let name = parsed.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 60 {
            return Err(ApiError::invalid(
                "INVALID_NAME",
                "name must be 1 to 60 characters",
            ));
        }
        let cust_no = pin[1..10].to_owned();
        let request = SaveCustomerRequest {
            cust_no: cust_no.clone(),
            cust_tin: pin.clone(),
            cust_nm: name.clone(),
            adrs: None,
            tel_no: None,
            email: None,
            fax_no: None,
            use_yn: "Y".into(),
            remark: None,
            regr_id: "ushuru".into(),
            regr_nm: "Ushuru".into(),
            modr_id: "ushuru".into(),
            modr_nm: "Ushuru".into(),
        };
        let payload = serde_json::to_string(&request).map_err(ApiError::internal)?;
        let sha = sha256_hex(payload.as_bytes());
        let operation = NewOperation {
            kind: OperationKind::Customer,
            key: format!("{pin}:{sha}"),
            request_sha256: sha,
            endpoint: "saveBhfCustomer".into(),
            summary: json!({"pin": pin, "name": name, "custNo": cust_no}).to_string(),
            build: Box::new(move |_| Ok(payload)),
        };
        enqueue_and_wait(&state, scope, operation).await
    }
    .await;
    match result {
        Ok(record) if record.state == OperationState::Rejected => ApiError::invalid(
            "CONTROL_UNIT_REJECTED",
            format!(
                "the control unit refused the customer: {}",
                record.result_message.as_deref().unwrap_or("no message")
            ),
        )
        .with("resultCd", json!(record.result_code))
        .into_response(),
        Ok(record) => {
            let status = if record.state == OperationState::Synced {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            respond(status, customer_view(&record, &request_id), &request_id)
        }
        Err(error) => error.into_response(),
    }
}
