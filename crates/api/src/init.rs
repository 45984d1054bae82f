//! `POST /v2/etims/init` and `GET /v2/etims/init-handshake`: the branch's device. In
//! Ushuru a branch's device is initialised when the branch is provisioned (`ushuru serve`
//! bootstraps its branches with `selectInitOsdcInfo`), so these report that checkpoint;
//! they never return the cmcKey. Asking to initialise a device again answers KRA's own
//! `902` (device installed), which the SDK raises as `KRADeviceInstalledError`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::sale::respond;
use crate::schema::{ErrorBody, InitResult};
use crate::{ApiError, AppState, Caller, branch_context, request_id};

/// The SDK's `initialize_device` body; `initialize_branch` sends none.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = DeviceInitRequest)]
pub(crate) struct InitBody {
    tin: String,
    bhf_id: String,
    dvc_srl_no: String,
}

async fn checkpoint(state: &AppState, caller: &Caller) -> Result<Value, ApiError> {
    let scope = caller.key.scope;
    let branch = branch_context(state, scope).await?;
    Ok(match state.store.device(scope).await? {
        Some(device) => json!({
            "status": "READY",
            "tin": branch.tin,
            "bhfId": branch.bhf_id,
            "sdcId": device.sdc_id,
            "mrcNo": device.mrc_no,
        }),
        None => json!({"status": "KEY_REQUIRED", "tin": branch.tin, "bhfId": branch.bhf_id}),
    })
}

/// `POST /v2/etims/init`.
#[utoipa::path(
    post,
    path = "/v2/etims/init",
    tag = "device",
    summary = "Initialise the branch's device",
    description = "Without a body (`initialize_branch`): the branch's onboarding checkpoint, \
        `READY` once its device is initialised. With `{tin, bhfId, dvcSrlNo}` \
        (`initialize_device`): the PIN and branch must be the API key's; a device already \
        initialised answers `resultCd` `902` (as KRA does), with the checkpoint. Never the cmcKey.",
    request_body(content = Option<InitBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "The checkpoint (with `resultCd` 902 when a device was asked for again).", body = InitResult),
        (status = 400, description = "A body that is not JSON of this shape (`INVALID_BODY`).", body = ErrorBody),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 503, description = "This server does not sign for the key's branch yet: its device is not initialised (`BRANCH_NOT_SERVED`).", body = ErrorBody),
        (status = 422, description = "`tin`/`bhfId` are not the API key's branch (`BRANCH_MISMATCH`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn init(State(state): State<AppState>, caller: Caller, body: Bytes) -> Response {
    let request_id = request_id();
    let result = async {
        let mut view = checkpoint(&state, &caller).await?;
        // No body, or JSON null: the SDK's initialize_branch.
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("INVALID_BODY", "the init body is not UTF-8 JSON"))?
            .trim();
        if text.is_empty() || text == "null" {
            return Ok(view);
        }
        let parsed: InitBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("INVALID_BODY", format!("the init body does not read: {e}"))
        })?;
        if Some(parsed.tin.trim()) != view["tin"].as_str()
            || Some(parsed.bhf_id.trim()) != view["bhfId"].as_str()
        {
            return Err(ApiError::invalid(
                "BRANCH_MISMATCH",
                format!(
                    "tin {} branch {} is not this API key's branch",
                    parsed.tin, parsed.bhf_id
                ),
            ));
        }
        if parsed.dvc_srl_no.trim().is_empty() {
            return Err(ApiError::invalid("INVALID_SERIAL", "dvcSrlNo is empty"));
        }
        if view["status"] == "READY" {
            view["resultCd"] = json!("902");
            view["resultMsg"] = json!("the branch's device is initialised already");
        }
        Ok(view)
    }
    .await;
    match result {
        Ok(view) => respond(StatusCode::OK, view, &request_id),
        Err(error) => error.into_response(),
    }
}

/// `GET /v2/etims/init-handshake`.
#[utoipa::path(
    get,
    path = "/v2/etims/init-handshake",
    tag = "device",
    summary = "The device handshake",
    description = "`READY` when the branch's device is initialised and its cmcKey stored, else \
        `KEY_REQUIRED`. Never the key itself.",
    responses(
        (status = 200, description = "The checkpoint.", body = InitResult),
        (status = 401, description = "No live API key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 503, description = "This server does not sign for the key's branch yet: its device is not initialised (`BRANCH_NOT_SERVED`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn handshake(State(state): State<AppState>, caller: Caller) -> Response {
    let request_id = request_id();
    match checkpoint(&state, &caller).await {
        Ok(view) => respond(StatusCode::OK, view, &request_id),
        Err(error) => error.into_response(),
    }
}
