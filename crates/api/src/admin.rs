//! The operator's routes (taxid-api.md §2.10): tenants and their branches, branch API keys
//! (issued, listed, revoked), and the security audit log. Each needs an operator key
//! (ROLE_ADMIN); a branch key gets 403. Every change is written to the audit log, naming
//! the operator key that made it; no answer or audit row ever holds a key, only its prefix
//! (an issued key is shown once, in the answer that issues it).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use ushuru_store::{ApiKeyListing, AuditEvent, BranchId, NewAuditEvent, Scope, TenantOverview};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::sale::respond;
use crate::schema::ErrorBody;
use crate::{AppState, Operator, request_id};

/// The role of a branch client's key, as the SDK names it.
const ROLE_SDK_CLIENT: &str = "ROLE_SDK_CLIENT";
const ROLE_ADMIN: &str = "ROLE_ADMIN";

// Schemas of the answers below, for the OpenAPI document only.
#[allow(dead_code)]
mod described {
    use utoipa::ToSchema;

    /// A tenant (taxpayer) and its branches.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct AdminTenant {
        tenant_id: i64,
        tin: String,
        name: String,
        branches: Vec<AdminBranch>,
    }

    /// A branch: `deviceId` names it in the other admin routes.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct AdminBranch {
        device_id: i64,
        bhf_id: String,
        /// `READY` once the device is initialised and its cmcKey sealed, else `KEY_REQUIRED`.
        status: String,
        sdc_id: Option<String>,
        mrc_no: Option<String>,
    }

    /// A newly issued key: the only time it is shown.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct IssuedKey {
        api_key: String,
        key_id: i64,
        prefix: String,
        client_name: String,
        role: String,
        device_id: i64,
        tin: String,
        bhf_id: String,
    }

    /// A key as listed: never the key itself.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct KeyListing {
        key_id: i64,
        prefix: String,
        client_name: String,
        role: String,
        device_id: i64,
        created_at: String,
        last_used_at: Option<String>,
        revoked_at: Option<String>,
    }

    #[derive(ToSchema)]
    pub(crate) struct KeyList {
        keys: Vec<KeyListing>,
    }

    /// One security event.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct AuditEntry {
        id: i64,
        at: String,
        /// `operator:<key id>`, `cli`, `serve`, or `api` (the throttle).
        actor: String,
        /// e.g. `tenant.created`, `device.initialised`, `api_key.issued`, `api_key.revoked`,
        /// `operator_key.issued`, `cmc_keys.sealed`, `auth.throttled`.
        action: String,
        tenant_id: Option<i64>,
        device_id: Option<i64>,
        detail: serde_json::Value,
    }

    #[derive(ToSchema)]
    pub(crate) struct AuditPage {
        events: Vec<AuditEntry>,
        /// Give as `after` for the next page; equal to `after` when nothing followed.
        next: i64,
    }
}

/// A branch key request.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IssueKeyRequest {
    /// Who the key is for (shown in listings).
    client_name: String,
    /// `ROLE_SDK_CLIENT` (the default). Operator keys are not issued here.
    #[serde(default)]
    role: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    /// Events after this id (0, the default, for the first).
    #[serde(default)]
    after: i64,
    /// At most this many (default 100, at most 1,000).
    #[serde(default)]
    limit: Option<u32>,
}

fn listing_view(key: &ApiKeyListing) -> Value {
    json!({
        "keyId": key.id,
        "prefix": key.prefix,
        "clientName": key.name,
        "role": ROLE_SDK_CLIENT,
        "deviceId": key.scope.branch.0,
        "createdAt": key.created_at.to_rfc3339(),
        "lastUsedAt": key.last_used_at.map(|t| t.to_rfc3339()),
        "revokedAt": key.revoked_at.map(|t| t.to_rfc3339()),
    })
}

fn event_view(event: &AuditEvent) -> Value {
    json!({
        "id": event.id,
        "at": event.at.to_rfc3339(),
        "actor": event.actor,
        "action": event.action,
        "tenantId": event.tenant.map(|t| t.0),
        "deviceId": event.branch.map(|b| b.0),
        "detail": event.detail,
    })
}

/// A JSON body of type `T`, or 400 `INVALID_BODY`.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("INVALID_BODY", format!("the body does not read: {e}")))
}

/// A `clientName`, trimmed: 1 to 100 characters, else 422 `INVALID_CLIENT_NAME`.
fn client_name(raw: &str) -> Result<&str, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid(
            "INVALID_CLIENT_NAME",
            "clientName must be 1 to 100 characters",
        ));
    }
    Ok(name)
}

/// 404 for a revocation that finds nothing live with the id (`what`: "API key", …).
fn no_live(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("no live {what} with that id"),
    )
}

/// The numeric id of a path, or the 404 of [`no_live`].
fn live_id(text: &str, what: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| no_live(what))
}

/// The branch `deviceId` names, with its tenant.
async fn branch_named(
    state: &AppState,
    device_id: &str,
) -> Result<(TenantOverview, Scope, String), ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such device (deviceId is a branch's id from GET /v2/admin/tenants)",
        )
    };
    let id = device_id.parse::<i64>().map_err(|_| not_found())?;
    let overview = state.store.tenants_overview().await?;
    overview
        .into_iter()
        .find_map(|tenant| {
            let branch = tenant.branches.iter().find(|b| b.id == BranchId(id))?;
            let scope = Scope {
                tenant: tenant.tenant.id,
                branch: branch.id,
            };
            let bhf_id = branch.bhf_id.clone();
            Some((tenant, scope, bhf_id))
        })
        .ok_or_else(not_found)
}

/// `GET /v2/admin/tenants`: every tenant with its branches.
#[utoipa::path(
    get,
    path = "/v2/admin/tenants",
    tag = "admin",
    summary = "List tenants and their branches",
    description = "Every tenant (taxpayer) with its branches, as a JSON array (the SDK's \
        `list_tenants`). A branch's `deviceId` names it in the other admin routes.",
    responses(
        (status = 200, description = "The tenants.", body = Vec<described::AdminTenant>),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 403, description = "A branch key (`FORBIDDEN`): this needs an operator key.", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn tenants(State(state): State<AppState>, _operator: Operator) -> Response {
    let request_id = request_id();
    let overview = match state.store.tenants_overview().await {
        Ok(overview) => overview,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let body: Vec<Value> = overview
        .iter()
        .map(|t| {
            json!({
                "tenantId": t.tenant.id.0,
                "tin": t.tenant.tin,
                "name": t.tenant.name,
                "branches": t.branches.iter().map(|b| json!({
                    "deviceId": b.id.0,
                    "bhfId": b.bhf_id,
                    "status": if b.sdc_id.is_some() { "READY" } else { "KEY_REQUIRED" },
                    "sdcId": b.sdc_id,
                    "mrcNo": b.mrc_no,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    respond(StatusCode::OK, Value::Array(body), &request_id)
}

/// `POST /v2/admin/tenants/{deviceId}/api-keys`: a new key for a branch, shown once.
#[utoipa::path(
    post,
    path = "/v2/admin/tenants/{deviceId}/api-keys",
    tag = "admin",
    summary = "Issue a branch API key",
    description = "A new API key for the branch `deviceId` (role `ROLE_SDK_CLIENT`), shown in \
        this answer only: Ushuru keeps its SHA-256 and prefix. Written to the audit log.",
    params(("deviceId" = i64, Path, description = "The branch's id (GET /v2/admin/tenants).")),
    request_body(content = IssueKeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The key, shown once.", body = described::IssuedKey),
        (status = 400, description = "The body does not read (`INVALID_BODY`).", body = ErrorBody),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 403, description = "A branch key (`FORBIDDEN`).", body = ErrorBody),
        (status = 404, description = "No such device (`NOT_FOUND`).", body = ErrorBody),
        (status = 422, description = "`ROLE_NOT_ISSUABLE`: operator keys are issued with \
            `ushuru admin operator-key issue`; `INVALID_CLIENT_NAME`: empty or over 100 characters.", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn issue_key(
    State(state): State<AppState>,
    operator: Operator,
    Path(device_id): Path<String>,
    body: Bytes,
) -> Response {
    let request_id = request_id();
    let request: IssueKeyRequest = match json_body(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let role = request.role.as_deref().unwrap_or(ROLE_SDK_CLIENT);
    if role == ROLE_ADMIN {
        return ApiError::invalid(
            "ROLE_NOT_ISSUABLE",
            "operator keys act on no branch and are issued with `ushuru admin operator-key issue`",
        )
        .into_response();
    }
    if role != ROLE_SDK_CLIENT {
        return ApiError::invalid(
            "ROLE_NOT_ISSUABLE",
            format!("unknown role {role:?}: use {ROLE_SDK_CLIENT}"),
        )
        .into_response();
    }
    let name = match client_name(&request.client_name) {
        Ok(name) => name,
        Err(error) => return error.into_response(),
    };
    let (tenant, scope, bhf_id) = match branch_named(&state, &device_id).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let (key, record) = match state.store.create_api_key(scope, name).await {
        Ok(issued) => issued,
        Err(e) => return ApiError::from(e).into_response(),
    };
    state
        .store
        .audit_or_log(
            NewAuditEvent::new(state.clock.now(), operator.actor(), "api_key.issued")
                .scope(scope)
                .detail(json!({"keyId": record.id, "prefix": record.prefix, "clientName": name})),
        )
        .await;
    respond(
        StatusCode::CREATED,
        json!({
            "apiKey": key,
            "keyId": record.id,
            "prefix": record.prefix,
            "clientName": name,
            "role": ROLE_SDK_CLIENT,
            "deviceId": scope.branch.0,
            "tin": tenant.tenant.tin,
            "bhfId": bhf_id,
        }),
        &request_id,
    )
}

/// `GET /v2/admin/tenants/{deviceId}/api-keys`: a branch's keys, never the keys themselves.
#[utoipa::path(
    get,
    path = "/v2/admin/tenants/{deviceId}/api-keys",
    tag = "admin",
    summary = "List a branch's API keys",
    description = "Every key of the branch, newest first, revoked ones included: prefix, name, \
        when issued, last used and revoked. Never the key.",
    params(("deviceId" = i64, Path, description = "The branch's id (GET /v2/admin/tenants).")),
    responses(
        (status = 200, description = "The keys.", body = described::KeyList),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 403, description = "A branch key (`FORBIDDEN`).", body = ErrorBody),
        (status = 404, description = "No such device (`NOT_FOUND`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    _operator: Operator,
    Path(device_id): Path<String>,
) -> Response {
    let request_id = request_id();
    let (_, scope, _) = match branch_named(&state, &device_id).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    match state.store.api_keys(scope).await {
        Ok(keys) => respond(
            StatusCode::OK,
            json!({"keys": keys.iter().map(listing_view).collect::<Vec<_>>()}),
            &request_id,
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `DELETE /v2/admin/api-keys/{keyId}`: revokes a branch key at once.
#[utoipa::path(
    delete,
    path = "/v2/admin/api-keys/{keyId}",
    tag = "admin",
    summary = "Revoke a branch API key",
    description = "The key stops working at once on this server, and within a second on \
        other replicas (each keeps a key it found live for a second). Written to the audit log.",
    params(("keyId" = i64, Path, description = "The key's id (from its listing).")),
    responses(
        (status = 200, description = "The key as revoked.", body = described::KeyListing),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 403, description = "A branch key (`FORBIDDEN`).", body = ErrorBody),
        (status = 404, description = "No live key with that id (`NOT_FOUND`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    operator: Operator,
    Path(key_id): Path<String>,
) -> Response {
    let request_id = request_id();
    let id = match live_id(&key_id, "API key") {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    match state
        .store
        .revoke_api_key_by_id(id, state.clock.now())
        .await
    {
        Ok(Some(key)) => {
            state.key_cache.forget(key.id);
            state
                .store
                .audit_or_log(
                    NewAuditEvent::new(state.clock.now(), operator.actor(), "api_key.revoked")
                        .scope(key.scope)
                        .detail(json!({"keyId": key.id, "prefix": key.prefix})),
                )
                .await;
            respond(StatusCode::OK, listing_view(&key), &request_id)
        }
        Ok(None) => no_live("API key").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `GET /v2/admin/audit`: the security audit log, oldest first, in pages.
#[utoipa::path(
    get,
    path = "/v2/admin/audit",
    tag = "admin",
    summary = "Read the security audit log",
    description = "Provisioning, keys issued and revoked, sealed and rotated keys, throttled \
        authentication: oldest first, after the id `after`. The log is append-only in the \
        database itself. Never a secret: keys by prefix and id only.",
    params(
        ("after" = Option<i64>, Query, description = "Events after this id (0, the default, for the first)."),
        ("limit" = Option<u32>, Query, description = "At most this many (default 100, at most 1,000)."),
    ),
    responses(
        (status = 200, description = "A page of events.", body = described::AuditPage),
        (status = 400, description = "A query parameter does not read (`INVALID_QUERY`).", body = ErrorBody),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 403, description = "A branch key (`FORBIDDEN`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn audit(
    State(state): State<AppState>,
    _operator: Operator,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let request_id = request_id();
    let Ok(Query(query)) = query else {
        return ApiError::bad_request(
            "INVALID_QUERY",
            "after and limit must be whole numbers (limit 1 to 1,000)",
        )
        .into_response();
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || query.after < 0 {
        return ApiError::bad_request(
            "INVALID_QUERY",
            "after must be 0 or more and limit 1 to 1,000",
        )
        .into_response();
    }
    match state.store.audit_events(query.after, limit).await {
        Ok(events) => {
            let next = events.last().map_or(query.after, |e| e.id);
            respond(
                StatusCode::OK,
                json!({"events": events.iter().map(event_view).collect::<Vec<_>>(), "next": next}),
                &request_id,
            )
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// An OAuth client request.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OAuthClientRequest {
    /// Who the client is (shown in the audit log).
    client_name: String,
}

#[allow(dead_code)]
mod described_oauth {
    /// A new OAuth client: its secret is shown only here.
    #[derive(utoipa::ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct IssuedClient {
        /// The numeric id, for revoking.
        id: i64,
        /// The HTTP Basic user name at `POST /oauth/token`.
        client_id: String,
        client_secret: String,
        client_name: String,
        device_id: i64,
    }

    /// A revoked OAuth client.
    #[derive(utoipa::ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct RevokedClient {
        id: i64,
        client_id: String,
        client_name: String,
        device_id: i64,
    }
}

/// `POST /v2/admin/tenants/{deviceId}/oauth-clients`: OAuth client credentials for a branch.
#[utoipa::path(
    post,
    path = "/v2/admin/tenants/{deviceId}/oauth-clients",
    tag = "admin",
    summary = "Issue OAuth client credentials for a branch",
    description = "A client id and secret for `POST /oauth/token` (the SDK's OAuth mode); the \
        tokens act for the branch `deviceId`. The secret is shown in this answer only. \
        Written to the audit log.",
    params(("deviceId" = i64, Path, description = "The branch's id (GET /v2/admin/tenants).")),
    request_body(content = OAuthClientRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The client, its secret shown once.", body = described_oauth::IssuedClient),
        (status = 400, description = "The body does not read (`INVALID_BODY`).", body = ErrorBody),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 404, description = "No such device (`NOT_FOUND`).", body = ErrorBody),
        (status = 422, description = "`INVALID_CLIENT_NAME`: empty or over 100 characters.", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn issue_oauth_client(
    State(state): State<AppState>,
    operator: Operator,
    Path(device_id): Path<String>,
    body: Bytes,
) -> Response {
    let request_id = request_id();
    let request: OAuthClientRequest = match json_body(&body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let name = match client_name(&request.client_name) {
        Ok(name) => name,
        Err(error) => return error.into_response(),
    };
    let (_, scope, _) = match branch_named(&state, &device_id).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let (secret, client) = match state.store.create_oauth_client(scope, name).await {
        Ok(issued) => issued,
        Err(e) => return ApiError::from(e).into_response(),
    };
    state
        .store
        .audit_or_log(
            NewAuditEvent::new(state.clock.now(), operator.actor(), "oauth_client.issued")
                .scope(scope)
                .detail(json!({"id": client.id, "clientId": client.client_id, "clientName": name})),
        )
        .await;
    respond(
        StatusCode::CREATED,
        json!({
            "id": client.id,
            "clientId": client.client_id,
            "clientSecret": secret,
            "clientName": name,
            "deviceId": scope.branch.0,
        }),
        &request_id,
    )
}

/// `DELETE /v2/admin/oauth-clients/{id}`: revokes a client and every token it holds.
#[utoipa::path(
    delete,
    path = "/v2/admin/oauth-clients/{id}",
    tag = "admin",
    summary = "Revoke OAuth client credentials",
    description = "The client can get no more tokens and its tokens stop working at once. \
        Written to the audit log.",
    params(("id" = i64, Path, description = "The client's numeric id.")),
    responses(
        (status = 200, description = "The client as revoked.", body = described_oauth::RevokedClient),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 404, description = "No live client with that id (`NOT_FOUND`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn revoke_oauth_client(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
) -> Response {
    let request_id = request_id();
    let id = match live_id(&id, "OAuth client") {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    match state.store.revoke_oauth_client(id, state.clock.now()).await {
        Ok(Some(client)) => {
            state
                .store
                .audit_or_log(
                    NewAuditEvent::new(state.clock.now(), operator.actor(), "oauth_client.revoked")
                        .scope(client.scope)
                        .detail(json!({"id": client.id, "clientId": client.client_id})),
                )
                .await;
            respond(
                StatusCode::OK,
                json!({
                    "id": client.id,
                    "clientId": client.client_id,
                    "clientName": client.name,
                    "deviceId": client.scope.branch.0,
                }),
                &request_id,
            )
        }
        Ok(None) => no_live("OAuth client").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn rotation_error(error: crate::keys::RotationError) -> Response {
    use crate::keys::RotationError;
    match error {
        RotationError::NotInitialised => ApiError::new(
            StatusCode::CONFLICT,
            "DEVICE_NOT_INITIALISED",
            error.to_string(),
        )
        .into_response(),
        RotationError::Raced => {
            ApiError::new(StatusCode::CONFLICT, "ROTATION_RACED", error.to_string()).into_response()
        }
        RotationError::Vault(ushuru_vault::VaultError::NotRotatable(how)) => {
            ApiError::new(StatusCode::CONFLICT, "MASTER_KEY_NOT_ROTATABLE", how).into_response()
        }
        RotationError::Vault(e) => ApiError::internal(e).into_response(),
        RotationError::Store(e) => ApiError::from(e).into_response(),
    }
}

#[allow(dead_code)]
mod described_rotation {
    /// A branch's data key rotation.
    #[derive(utoipa::ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct DataKeyRotated {
        device_id: i64,
        from_version: u32,
        to_version: u32,
        master_key_version: u32,
    }

    /// A master key rotation.
    #[derive(utoipa::ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct MasterKeyRotated {
        /// The versions data keys were wrapped under before.
        from_versions: Vec<u32>,
        to_version: u32,
        /// Whether a new master key version was made (false: an operator-supplied one).
        new_version: bool,
        /// Data keys re-wrapped.
        rewrapped: usize,
    }
}

/// `POST /v2/admin/tenants/{deviceId}/data-key/rotate`: a new data key for the branch.
#[utoipa::path(
    post,
    path = "/v2/admin/tenants/{deviceId}/data-key/rotate",
    tag = "admin",
    summary = "Rotate a branch's data key",
    description = "Seals the branch's cmcKey under a new data key (its version one more), wrapped \
        by the current master key. No restart; sales go on signing (the relay opens the new form \
        from its next call). Written to the audit log with both versions, never a key.",
    params(("deviceId" = i64, Path, description = "The branch's id (GET /v2/admin/tenants).")),
    responses(
        (status = 200, description = "Rotated.", body = described_rotation::DataKeyRotated),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 404, description = "No such device (`NOT_FOUND`).", body = ErrorBody),
        (status = 409, description = "`DEVICE_NOT_INITIALISED`, or `ROTATION_RACED` (another \
            rotation of the branch won: try again).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn rotate_data_key(
    State(state): State<AppState>,
    operator: Operator,
    Path(device_id): Path<String>,
) -> Response {
    let request_id = request_id();
    let (_, scope, _) = match branch_named(&state, &device_id).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    match crate::keys::rotate_data_key(
        &state.store,
        &state.vault,
        Some(&state.sealed_keys),
        scope,
        &operator.actor(),
    )
    .await
    {
        Ok(rotation) => respond(
            StatusCode::OK,
            json!({
                "deviceId": scope.branch.0,
                "fromVersion": rotation.from,
                "toVersion": rotation.to,
                "masterKeyVersion": rotation.master_version,
            }),
            &request_id,
        ),
        Err(error) => rotation_error(error),
    }
}

/// `POST /v2/admin/master-key/rotate`: a new master key version, every data key re-wrapped.
#[utoipa::path(
    post,
    path = "/v2/admin/master-key/rotate",
    tag = "admin",
    summary = "Rotate the master key",
    description = "Makes a new master key version (a key file gets it appended; a key from \
        `USHURU_MASTER_KEY` cannot, so give it as `1:<old>,2:<new>` and restart first) and \
        re-wraps every branch's data key under the current version. No restart; sales go on \
        signing. Written to the audit log with the versions, never a key.",
    responses(
        (status = 200, description = "Rotated.", body = described_rotation::MasterKeyRotated),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 409, description = "`MASTER_KEY_NOT_ROTATABLE` (with how to rotate this \
            provider), or `ROTATION_RACED`.", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn rotate_master_key(
    State(state): State<AppState>,
    operator: Operator,
) -> Response {
    let request_id = request_id();
    match crate::keys::rotate_master_key(
        &state.store,
        &state.vault,
        Some(&state.sealed_keys),
        &operator.actor(),
    )
    .await
    {
        Ok(rotation) => respond(
            StatusCode::OK,
            json!({
                "fromVersions": rotation.from,
                "toVersion": rotation.to,
                "newVersion": rotation.new_version,
                "rewrapped": rotation.rewrapped,
            }),
            &request_id,
        ),
        Err(error) => rotation_error(error),
    }
}

#[allow(dead_code)]
mod described_operators {
    /// An operator key as listed: never the key.
    #[derive(utoipa::ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct OperatorKeyListing {
        key_id: i64,
        prefix: String,
        name: String,
        created_at: String,
        last_used_at: Option<String>,
        revoked_at: Option<String>,
    }

    #[derive(utoipa::ToSchema)]
    pub(crate) struct OperatorKeyList {
        keys: Vec<OperatorKeyListing>,
    }

    /// A revoked operator key.
    #[derive(utoipa::ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct RevokedOperatorKey {
        key_id: i64,
        prefix: String,
        name: String,
    }
}

/// `GET /v2/admin/operator-keys`: every operator key, never the keys themselves.
#[utoipa::path(
    get,
    path = "/v2/admin/operator-keys",
    tag = "admin",
    summary = "List operator keys",
    description = "Every operator key, newest first, revoked ones included: prefix, name, when \
        issued, last used and revoked. Never the key.",
    responses(
        (status = 200, description = "The keys.", body = described_operators::OperatorKeyList),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn operator_keys(State(state): State<AppState>, _operator: Operator) -> Response {
    let request_id = request_id();
    match state.store.operator_keys().await {
        Ok(keys) => respond(
            StatusCode::OK,
            json!({"keys": keys.iter().map(|k| json!({
                "keyId": k.key.id,
                "prefix": k.key.prefix,
                "name": k.key.name,
                "createdAt": k.created_at.to_rfc3339(),
                "lastUsedAt": k.last_used_at.map(|t| t.to_rfc3339()),
                "revokedAt": k.revoked_at.map(|t| t.to_rfc3339()),
            })).collect::<Vec<_>>()}),
            &request_id,
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `DELETE /v2/admin/operator-keys/{keyId}`: revokes an operator key at once.
#[utoipa::path(
    delete,
    path = "/v2/admin/operator-keys/{keyId}",
    tag = "admin",
    summary = "Revoke an operator key",
    description = "The key stops working with its next request (the caller's own included). \
        Written to the audit log.",
    params(("keyId" = i64, Path, description = "The key's id (from its listing).")),
    responses(
        (status = 200, description = "The key as revoked.", body = described_operators::RevokedOperatorKey),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 404, description = "No live operator key with that id (`NOT_FOUND`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn revoke_operator_key(
    State(state): State<AppState>,
    operator: Operator,
    Path(key_id): Path<String>,
) -> Response {
    let request_id = request_id();
    let id = match live_id(&key_id, "operator key") {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    match state.store.revoke_operator_key(id, state.clock.now()).await {
        Ok(Some(key)) => {
            state
                .store
                .audit_or_log(
                    NewAuditEvent::new(state.clock.now(), operator.actor(), "operator_key.revoked")
                        .detail(json!({"keyId": key.id, "prefix": key.prefix})),
                )
                .await;
            respond(
                StatusCode::OK,
                json!({"keyId": key.id, "prefix": key.prefix, "name": key.name}),
                &request_id,
            )
        }
        Ok(None) => no_live("operator key").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
