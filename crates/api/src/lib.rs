//! The REST API, wire-compatible with the `taxid-etims` 0.8.1 SDK (taxid-api.md). Today:
//! `POST /v2/etims/sale` (flat and itemised bodies, Idempotency-Key, waiting for the
//! receipt up to a deadline), `POST /v2/etims/sale/{id}/credit-note`,
//! `GET /v2/etims/sales/{id}/status`, `/search` and `/original` (the exchange journal),
//! `GET /v2/etims/device` and `/device/monitoring`, behind API keys; and, open to all, the
//! OpenAPI 3.1 document at `GET /openapi.json` and a page rendered from it at `GET /docs`.
//!
//! The document is generated from the handlers' `#[utoipa::path]` attributes by the same
//! router that serves them (see [`routes`]), so an endpoint cannot be served undocumented.

mod admin;
mod credit;
mod customers;
mod docs;
mod error;
mod init;
mod items;
pub mod key_cache;
pub mod keys;
mod oauth;
mod operations;
pub mod provision;
mod sale;
mod schema;
mod stock;
pub mod throttle;
mod views;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::{Extension, Router};
use chrono::FixedOffset;
use ushuru_engine::{Clock, DeviceIdentity, Pipeline};
use ushuru_store::{ApiKey, BranchId, Store};
use ushuru_tax::TaxRates;
use utoipa::OpenApi;
use utoipa::openapi::security::SecurityScheme;
use utoipa::openapi::security::{ApiKey as ApiKeyScheme, ApiKeyValue, HttpAuthScheme, HttpBuilder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// The branches this process signs for, by id: read by every request of a branch route,
/// added to when a branch is provisioned while serving (`POST /v2/admin/tenants`). An
/// uncontended read lock is one atomic operation and is never held across an await.
#[derive(Debug, Default)]
pub struct Branches {
    by_id: RwLock<HashMap<BranchId, BranchContext>>,
}

impl Branches {
    pub fn get(&self, branch: BranchId) -> Option<BranchContext> {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&branch)
            .cloned()
    }

    /// Adds a branch; false (and nothing changed) if it is known already.
    pub fn insert(&self, branch: BranchId, context: BranchContext) -> bool {
        let mut by_id = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        if by_id.contains_key(&branch) {
            return false;
        }
        by_id.insert(branch, context);
        true
    }

    pub fn remove(&self, branch: BranchId) {
        self.by_id
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&branch);
    }

    pub fn len(&self) -> usize {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<HashMap<BranchId, BranchContext>> for Branches {
    fn from(by_id: HashMap<BranchId, BranchContext>) -> Self {
        Branches {
            by_id: RwLock::new(by_id),
        }
    }
}

/// The API's shared state: small, cloned per request.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub pipeline: Arc<Pipeline>,
    pub branches: Arc<Branches>,
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
    /// Repeated authentication failures, per client address and key prefix.
    pub auth_throttle: Arc<throttle::AuthThrottle>,
    /// How long an OAuth access token lives.
    pub oauth_token_ttl: Duration,
    /// The cmcKey vault (rotations through the admin routes).
    pub vault: ushuru_vault::Vault,
    /// The latest sealed cmcKey of each branch, which the relays open.
    pub sealed_keys: Arc<keys::SealedKeys>,
    /// How this process reaches control units and names its relays, for branches
    /// provisioned while it serves; `None`: `POST /v2/admin/tenants` answers 503.
    pub provisioning: Option<Arc<provision::Provisioning>>,
    /// Branch API keys found live in the last second ([`key_cache`]).
    pub key_cache: Arc<key_cache::KeyCache>,
}

/// The document's fixed parts; the paths and their schemas come from [`routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ushuru",
        description = "eTIMS middleware for the Kenya Revenue Authority, wire-compatible with \
            the `taxid-etims` 0.8.1 SDK. Every `/v2` endpoint acts for the branch of the API key \
            it is called with. Decimals are JSON strings."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "sales", description = "Signing sales and reading them back."),
        (name = "credit notes", description = "Reversing all or part of a signed sale."),
                (name = "device", description = "The branch's control unit."),
        (name = "stock", description = "Stock movements and remaining quantities."),
        (name = "items", description = "Registering items with the control unit."),
        (name = "customers", description = "Registering buyers with the branch."),
        (name = "reference", description = "This document, as JSON and as a page."),
    ),
    // ErrorBody is named by every operation; CreditNoteRequest by a reference (credit.rs).
    components(schemas(schema::ErrorBody, credit::CreditNoteBody)),
)]
struct ApiDoc;

/// The two ways `Caller` accepts an API key: an operation that needs a key lists both as
/// alternatives with `security(("bearer" = []), ("apiKey" = []))`.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The API key as `Authorization: Bearer <key>` (the SDK's way).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKeyScheme::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "The API key in the `X-API-Key` header (older SDKs).",
            ))),
        );
    }
}

/// Every endpoint, each with its OpenAPI operation.
///
/// To add an endpoint: annotate its handler with `#[utoipa::path(...)]` (method, path, tag,
/// summary, params, request body, every status it can answer with its body, and
/// `security(("bearer" = []), ("apiKey" = []))` if it takes a `Caller`), derive `ToSchema`
/// for its bodies (or describe a `json!` body in schema.rs), and register it here with
/// `.routes(routes!(module::handler))`. Never with `.route(...)`, here or in [`router`]: that
/// serves the endpoint without documenting it. Then add it to the expected list in
/// tests/openapi.rs.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(sale::submit))
        .routes(routes!(sale::status))
        .routes(routes!(credit::issue))
        .routes(routes!(views::search))
        .routes(routes!(views::original))
        .routes(routes!(views::device))
        .routes(routes!(views::monitoring))
        .routes(routes!(stock::adjust))
        .routes(routes!(stock::adjustment))
        .routes(routes!(stock::master))
        .routes(routes!(stock::master_operation))
        .routes(routes!(items::register))
        .routes(routes!(items::bulk_import))
        .routes(routes!(customers::register))
        .routes(routes!(init::init))
        .routes(routes!(init::handshake))
        .routes(routes!(oauth::token))
        .routes(routes!(admin::tenants, provision::provision_tenant))
        .routes(routes!(admin::issue_key, admin::list_keys))
        .routes(routes!(admin::revoke_key))
        .routes(routes!(admin::audit))
        .routes(routes!(admin::issue_oauth_client))
        .routes(routes!(admin::revoke_oauth_client))
        .routes(routes!(admin::rotate_data_key))
        .routes(routes!(admin::rotate_master_key))
        .routes(routes!(admin::operator_keys))
        .routes(routes!(admin::revoke_operator_key))
        .routes(routes!(docs::openapi_json))
        .routes(routes!(docs::page))
}

/// The OpenAPI 3.1 document of [`router`], as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = routes().into_openapi();
    document_throttling(&mut api);
    api
}

/// Every operation that takes a key can also answer 429 (`AUTH_THROTTLED`, see
/// [`throttle`]), and 403 (`FORBIDDEN`) for a key of the other kind (an operator key on a
/// branch route, a branch key on an admin route): added here to each, rather than repeated
/// in every handler's annotation.
fn document_throttling(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder, header::HeaderBuilder};
    let throttled = ResponseBuilder::new()
        .description(
            "Too many failed authentications from this address or with this key prefix \
             (`AUTH_THROTTLED`): retry after `Retry-After` seconds (also `retryAfterSeconds`).",
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(utoipa::openapi::schema::Object::with_type(
                    utoipa::openapi::schema::Type::Integer,
                ))
                .description(Some("Seconds until an attempt is let through."))
                .build(),
        )
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    let forbidden = ResponseBuilder::new()
        .description(
            "A key of the other kind (`FORBIDDEN`): an operator key on a branch route, or a \
             branch key on an admin route.",
        )
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                let responses = &mut operation.responses.responses;
                responses.insert("429".into(), throttled.clone().into());
                responses
                    .entry("403".into())
                    .or_insert_with(|| forbidden.clone().into());
            }
        }
    }
}

pub fn router(state: AppState) -> Router {
    let (routes, mut api) = routes().split_for_parts();
    document_throttling(&mut api);
    routes
        .layer(Extension(Arc::new(docs::Docs::new(api))))
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such endpoint",
            )
        })
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// Every request, once answered, at DEBUG: method, path, status and time. Never a header
/// (they carry API keys) and never the query string.
async fn log_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        path,
        status = response.status().as_u16(),
        elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "answered"
    );
    response
}

/// The authenticated caller of a branch route: a live branch API key, from
/// `Authorization: Bearer` or `X-API-Key`.
pub struct Caller {
    pub key: ApiKey,
}

/// The authenticated caller of an admin route: a live operator key.
pub struct Operator {
    pub key: ushuru_store::OperatorKey,
}

impl Operator {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("operator:{}", self.key.id)
    }
}

/// Whose key a request carries.
enum Presented {
    Branch(ApiKey),
    Operator(ushuru_store::OperatorKey),
}

/// Finds the live key a request presents (trying first the kind the route wants), under the
/// authentication throttle: a throttled address or key prefix gets 429, a failure is
/// counted, and the failure that starts a throttle is written to the audit log.
async fn authenticate_request(
    parts: &Parts,
    state: &AppState,
    operator_route: bool,
) -> Result<Presented, ApiError> {
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
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let address = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let now = std::time::Instant::now();
    state
        .auth_throttle
        .check(address, now)
        .map_err(ApiError::throttled)?;
    let found = match presented {
        Some(presented) => find_key(state, presented, operator_route).await?,
        None => None,
    };
    match found {
        Some(found) => Ok(found),
        None => Err(count_failure(state, now, address, presented).await),
    }
}

/// The live key `presented` is, trying first the kind the route wants.
async fn find_key(
    state: &AppState,
    presented: &str,
    operator_route: bool,
) -> Result<Option<Presented>, ApiError> {
    let at = state.clock.now();
    let store = &state.store;
    Ok(if presented.starts_with(ushuru_store::OAUTH_TOKEN_START) {
        // An OAuth access token acts as its client's branch key.
        store
            .authenticate_oauth_token(presented, at)
            .await?
            .map(Presented::Branch)
    } else if operator_route {
        match store.authenticate_operator(presented, at).await? {
            Some(key) => Some(Presented::Operator(key)),
            None => store
                .authenticate(presented, at)
                .await?
                .map(Presented::Branch),
        }
    } else if let Some(key) = state.key_cache.get(presented, at) {
        Some(Presented::Branch(key))
    } else {
        let generation = state.key_cache.generation();
        match store.authenticate(presented, at).await? {
            Some(key) => {
                state.key_cache.put(presented, &key, at, generation);
                Some(Presented::Branch(key))
            }
            None => store
                .authenticate_operator(presented, at)
                .await?
                .map(Presented::Operator),
        }
    })
}

/// Counts a failed authentication and says how to answer it: 401, or 429 when failures
/// with its key prefix are over the limit. The failure that starts a throttle is logged
/// and written to the audit log (address and key prefix, never the key).
pub(crate) async fn count_failure(
    state: &AppState,
    now: std::time::Instant,
    address: Option<std::net::IpAddr>,
    presented: Option<&str>,
) -> ApiError {
    let failure =
        state
            .auth_throttle
            .failed(address, presented.map(throttle::Subject::key_prefix), now);
    if failure.throttled_now {
        let address = address.map(|a| a.to_string());
        let key_prefix = presented.map(ushuru_store::key_prefix);
        tracing::warn!(
            address,
            key_prefix,
            "authentication throttled after repeated failures"
        );
        state
            .store
            .audit_or_log(
                ushuru_store::NewAuditEvent::new(state.clock.now(), "api", "auth.throttled")
                    .detail(serde_json::json!({"address": address, "keyPrefix": key_prefix})),
            )
            .await;
    }
    match failure.prefix_wait {
        Some(wait) => ApiError::throttled(wait),
        None => ApiError::unauthenticated(),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match authenticate_request(parts, state, false).await? {
            Presented::Branch(key) => Ok(Caller { key }),
            Presented::Operator(_) => Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "an operator key acts on no branch: call this route with the branch's API key",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match authenticate_request(parts, state, true).await? {
            Presented::Operator(key) => Ok(Operator { key }),
            Presented::Branch(_) => Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "this route needs an operator key (ROLE_ADMIN); a branch key cannot call it",
            )),
        }
    }
}

/// The device context of the caller's branch. Every branch with a key has one; a missing
/// one is our fault (a branch provisioned without its relay), not the caller's.
pub(crate) async fn branch_context(
    state: &AppState,
    scope: ushuru_store::Scope,
) -> Result<BranchContext, ApiError> {
    if let Some(context) = state.branches.get(scope.branch) {
        return Ok(context);
    }
    // Not served here yet: provisioned by another replica sharing the database since this
    // one started. Its first request here starts serving it, as a restart would.
    let unavailable = |why: String| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "BRANCH_NOT_SERVED",
            format!("this server does not sign for the branch yet: {why}"),
        )
    };
    let Some(provisioning) = state.provisioning.as_deref() else {
        return Err(unavailable(
            "it was provisioned after this server started".into(),
        ));
    };
    // One scoped read says whether there is a device to serve; only then the list of
    // initialised branches (once per branch and replica) for its identity.
    if state.store.device(scope).await?.is_none() {
        return Err(unavailable("its device is not initialised".into()));
    }
    let found = state
        .store
        .initialised_branches()
        .await?
        .into_iter()
        .find(|b| b.scope == scope);
    let Some(served) = found else {
        return Err(unavailable("its device is not initialised".into()));
    };
    if let Err(e) = provision::serve_branch(state, provisioning, served) {
        // Another request may have started serving it meanwhile.
        if state.branches.get(scope.branch).is_none() {
            return Err(unavailable(e.to_string()));
        }
    }
    tracing::info!(
        branch = scope.branch.0,
        "serving a branch provisioned elsewhere"
    );
    state
        .branches
        .get(scope.branch)
        .ok_or_else(|| unavailable("it could not be started".into()))
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
