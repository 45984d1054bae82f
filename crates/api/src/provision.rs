//! Provisioning a tenant's branch while serving: `POST /v2/admin/tenants` (taxid-api.md
//! §2.10, the SDK's `provision_tenant`), and what `serve` shares with it — starting to sign
//! for a branch whose device is initialised ([`serve_branch`]) and initialising a device on
//! its control unit ([`initialise_device`]).
//!
//! A provisioning creates the tenant (if its PIN is new) and the branch, initialises the
//! device with `selectInitOsdcInfo` (no transaction is open during the call, invariant 8),
//! seals the cmcKey at once, stores the device, and starts the branch's relay: a key issued
//! for the branch signs from the next request. If the control unit issues no key, what the
//! call created is removed again, so a failed provisioning leaves nothing behind (a branch
//! without a device would be listed as `KEY_REQUIRED` and block a retry). A branch that a
//! crash left without a device (or that `ushuru admin branch-add` made) is taken over by
//! the next provisioning of its PIN and branch id, so a retry completes it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use ushuru_engine::{DeviceIdentity, Relay};
use ushuru_kra::endpoints::InitDevice;
use ushuru_kra::types::InitRequest;
use ushuru_kra::{ClientConfig, KraClient, Outcome, Profile, ResultCode, Timeouts};
use ushuru_store::{DeviceRecord, InitialisedBranch, NewAuditEvent, Scope, StoreError, Tenant};
use ushuru_vault::Vault;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::keys::{SealedKeyOpener, binding};
use crate::operations::is_pin;
use crate::sale::respond;
use crate::schema::ErrorBody;
use crate::{AppState, BranchContext, Operator, request_id};

/// The control-unit "URL" recorded for a device on the built-in sandbox, which runs in the
/// serving process and is called without a network.
pub const BUILT_IN_SANDBOX: &str = "built-in-sandbox";

/// How this process reaches control units.
pub trait ControlUnits: Send + Sync + 'static {
    /// A client of the control unit at `config.base_url`: [`BUILT_IN_SANDBOX`] in process
    /// (started when first needed), anything else over HTTP.
    fn client(&self, config: ClientConfig) -> Result<KraClient, String>;

    /// The control unit `serve` was started with (`--control-unit`) and how it talks to
    /// it, if any: PRODUCTION branches without a URL of their own sign there.
    fn configured(&self) -> Option<(String, Profile)>;
}

/// What provisioning needs beyond the rest of [`AppState`].
pub struct Provisioning {
    pub control_units: Arc<dyn ControlUnits>,
    /// The owner name of this process's relays (their leases and branch locks).
    pub relay_owner: String,
    /// One provisioning at a time in this process: two requests for one branch would
    /// otherwise both ask its control unit for a key. Provisioning is rare; sales never
    /// wait for this.
    turn: tokio::sync::Mutex<()>,
}

impl Provisioning {
    pub fn new(control_units: Arc<dyn ControlUnits>, relay_owner: impl Into<String>) -> Self {
        Provisioning {
            control_units,
            relay_owner: relay_owner.into(),
            turn: tokio::sync::Mutex::new(()),
        }
    }
}

/// Why a branch whose device is initialised cannot be signed for.
#[derive(Debug, thiserror::Error)]
#[error("branch {bhf_id} of {tin}: {reason}")]
pub struct ServeBranchError {
    pub tin: String,
    pub bhf_id: String,
    pub reason: String,
}

/// Starts signing for a branch whose device is initialised: its sealed cmcKey handed to the
/// relays, its relay added to the pipeline, and its device known to the branch routes.
/// `serve` calls it for every such branch at start, and provisioning for a new one.
pub fn serve_branch(
    state: &AppState,
    provisioning: &Provisioning,
    served: InitialisedBranch,
) -> Result<(), ServeBranchError> {
    let failed = |reason: String| ServeBranchError {
        tin: served.tin.clone(),
        bhf_id: served.bhf_id.clone(),
        reason,
    };
    let profile: Profile = served
        .device
        .profile
        .parse()
        .map_err(|e| failed(format!("stored profile: {e}")))?;
    let key = SealedKeyOpener {
        vault: state.vault.clone(),
        scope: served.scope,
        keys: Arc::clone(&state.sealed_keys),
    };
    // Found now, not at the first sale: a master key that does not open the branch's key.
    drop(
        state
            .vault
            .open_cmc_key(binding(served.scope), &served.device.cmc_key)
            .map_err(|e| {
                failed(format!(
                    "{e}. Start with the master key this database was sealed with"
                ))
            })?,
    );
    let client = provisioning
        .control_units
        .client(ClientConfig {
            base_url: served.device.control_unit_url.clone(),
            profile,
            tin: served.tin.clone(),
            bhf_id: served.bhf_id.clone(),
            cmc_key: None,
            timeouts: Timeouts::default(),
            gateway: None,
        })
        .map_err(&failed)?
        .with_cmc_key_opener(Arc::new(key));
    let identity = DeviceIdentity {
        sdc_id: served.device.sdc_id.clone(),
        mrc_no: Some(served.device.mrc_no.clone()),
    };
    let relay = Relay::new(
        state.store.clone(),
        client,
        served.scope,
        identity.clone(),
        provisioning.relay_owner.clone(),
        Arc::clone(&state.clock),
    );
    // Known to the routes first: the relay's first settlement may answer a waiting sale.
    let added = state.branches.insert(
        served.scope.branch,
        BranchContext {
            tin: served.tin.clone(),
            bhf_id: served.bhf_id.clone(),
            device: identity,
        },
    );
    if !added {
        return Err(failed("it is served already".into()));
    }
    // The relay's client holds no key: it opens the branch's latest sealed form, kept in
    // `sealed_keys` (which rotations update), for each call. Set only by the call that
    // added the branch, so a losing concurrent call cannot put back an older form.
    state
        .sealed_keys
        .set(served.scope.branch, served.device.cmc_key.clone());
    if let Err(e) = state.pipeline.add_relay(relay) {
        state.branches.remove(served.scope.branch);
        return Err(failed(e.to_string()));
    }
    Ok(())
}

/// Why a device was not initialised. Nothing is stored in any case.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// 902: the control unit issued this branch's key before and does not issue it again.
    #[error("the control unit says the device is initialised already (902)")]
    Installed,
    #[error("the control unit refused: {code}: {message}")]
    Refused { code: ResultCode, message: String },
    /// The request never reached the control unit.
    #[error("the control unit could not be reached: {0}")]
    NotSent(String),
    /// It may have been processed: a retry may then find the key issued (902).
    #[error("the control unit gave no usable answer: {0}")]
    NoAnswer(String),
    #[error("the control unit answered without device information")]
    NoDeviceInfo,
    #[error("cannot seal the cmcKey: {0}")]
    Seal(String),
}

/// Initialises the device of the branch `client` is for with `selectInitOsdcInfo`, and
/// returns what to keep of it, the cmcKey sealed for `scope` at once: the plaintext goes no
/// further than this function.
pub async fn initialise_device(
    client: &KraClient,
    vault: &Vault,
    scope: Scope,
    serial: &str,
) -> Result<DeviceRecord, InitError> {
    let config = client.config();
    let request = InitRequest {
        tin: config.tin.clone(),
        bhf_id: config.bhf_id.clone(),
        dvc_srl_no: serial.to_owned(),
    };
    let info = match client.call::<InitDevice>(&request).await.outcome {
        Outcome::Ok {
            data: Some(response),
            ..
        } => response.info,
        Outcome::Ok { data: None, .. } => return Err(InitError::NoDeviceInfo),
        Outcome::Rejected {
            code: ResultCode::DeviceInstalled,
            ..
        } => return Err(InitError::Installed),
        Outcome::Rejected { code, message } => return Err(InitError::Refused { code, message }),
        Outcome::NotSent { reason } => return Err(InitError::NotSent(reason)),
        Outcome::Ambiguous { reason } => return Err(InitError::NoAnswer(reason)),
    };
    let cmc_key = zeroize::Zeroizing::new(info.cmc_key);
    let sealed = vault
        .seal_cmc_key(binding(scope), &cmc_key)
        .map_err(|e| InitError::Seal(e.to_string()))?;
    Ok(DeviceRecord {
        control_unit_url: config.base_url.clone(),
        profile: format!("{:?}", config.profile).to_lowercase(),
        sdc_id: info.sdc_id,
        mrc_no: info.mrc_no,
        cmc_key: sealed,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnitType {
    Vscu,
    Oscu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Environment {
    Sandbox,
    Production,
}

/// A provisioning request, checked.
#[derive(Debug, PartialEq, Eq)]
struct Provision {
    tin: String,
    bhf_id: String,
    serial: String,
    unit_type: UnitType,
    environment: Environment,
    vscu_base_url: Option<String>,
}

/// The body of `POST /v2/admin/tenants`, as the SDK's `TenantProvisioning` sends it.
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TenantProvisioning {
    /// The taxpayer's KRA PIN: a letter, nine digits, a letter (`INVALID_TIN`).
    tin: String,
    /// KRA's branch id: two digits, `00` for the head office (`INVALID_BHF_ID`).
    bhf_id: String,
    /// The device's serial number, 1 to 100 characters (`INVALID_DVC_SRL_NO`).
    dvc_srl_no: String,
    /// `VSCU` (the default) or `OSCU` (`INVALID_CONTROL_UNIT_TYPE`).
    control_unit_type: Option<String>,
    /// `SANDBOX` (the default) or `PRODUCTION` (`INVALID_ENVIRONMENT`).
    environment: Option<String>,
    /// The branch's VSCU, an HTTP or HTTPS URL; VSCU only
    /// (`VSCU_URL_NOT_ALLOWED` with OSCU, `INVALID_VSCU_BASE_URL` if not a URL).
    vscu_base_url: Option<String>,
}

const FIELDS: [&str; 6] = [
    "tin",
    "bhfId",
    "dvcSrlNo",
    "controlUnitType",
    "environment",
    "vscuBaseUrl",
];

/// Reads and checks the body: 400 `INVALID_BODY` if it is not a JSON object, else 422 with
/// the code of the first field that is wrong.
fn parse(body: &[u8]) -> Result<Provision, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("INVALID_BODY", format!("the body does not read: {e}"))
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_request(
            "INVALID_BODY",
            "the body must be a JSON object",
        ));
    };
    // A misspelt `vscuBaseUrl` must not quietly provision a sandbox branch.
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            "UNKNOWN_FIELD",
            format!(
                "unknown field {unknown:?}: the fields are {}",
                FIELDS.join(", ")
            ),
        ));
    }
    let tin = text(&fields, "tin", "INVALID_TIN")?.ok_or_else(|| {
        ApiError::invalid(
            "INVALID_TIN",
            "tin is required: the taxpayer's KRA PIN (A123456789B)",
        )
    })?;
    if !is_pin(tin) {
        return Err(ApiError::invalid(
            "INVALID_TIN",
            format!("tin {tin:?} is not a KRA PIN (a letter, nine digits, a letter: A123456789B)"),
        ));
    }
    let bhf_id = text(&fields, "bhfId", "INVALID_BHF_ID")?.ok_or_else(|| {
        ApiError::invalid(
            "INVALID_BHF_ID",
            "bhfId is required: two digits, 00 for the head office",
        )
    })?;
    if bhf_id.len() != 2 || !bhf_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(
            "INVALID_BHF_ID",
            format!("bhfId {bhf_id:?} is not a branch id (two digits, 00 for the head office)"),
        ));
    }
    let serial = text(&fields, "dvcSrlNo", "INVALID_DVC_SRL_NO")?.unwrap_or_default();
    if serial.is_empty() || serial.chars().count() > 100 {
        return Err(ApiError::invalid(
            "INVALID_DVC_SRL_NO",
            "dvcSrlNo is required: the device's serial number, 1 to 100 characters",
        ));
    }
    let unit_type = match text(&fields, "controlUnitType", "INVALID_CONTROL_UNIT_TYPE")? {
        None | Some("VSCU") => UnitType::Vscu,
        Some("OSCU") => UnitType::Oscu,
        Some(other) => {
            return Err(ApiError::invalid(
                "INVALID_CONTROL_UNIT_TYPE",
                format!("controlUnitType {other:?} is not VSCU or OSCU"),
            ));
        }
    };
    let environment = match text(&fields, "environment", "INVALID_ENVIRONMENT")? {
        None | Some("SANDBOX") => Environment::Sandbox,
        Some("PRODUCTION") => Environment::Production,
        Some(other) => {
            return Err(ApiError::invalid(
                "INVALID_ENVIRONMENT",
                format!("environment {other:?} is not SANDBOX or PRODUCTION"),
            ));
        }
    };
    // Empty counts as absent, as in the SDK's own check.
    let vscu_base_url = text(&fields, "vscuBaseUrl", "INVALID_VSCU_BASE_URL")?
        .filter(|url| !url.is_empty())
        .map(str::to_owned);
    if let Some(url) = &vscu_base_url {
        if unit_type == UnitType::Oscu {
            return Err(ApiError::invalid(
                "VSCU_URL_NOT_ALLOWED",
                "an OSCU branch signs at KRA's OSCU, not at a VSCU: leave vscuBaseUrl out or use controlUnitType VSCU",
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        // No credentials in it: the URL is stored with the branch and written to the
        // audit log.
        let authority = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(r));
        if rest.is_none_or(|host| host.is_empty() || host.contains(char::is_whitespace))
            || authority.is_some_and(|a| a.contains('@'))
        {
            return Err(ApiError::invalid(
                "INVALID_VSCU_BASE_URL",
                "vscuBaseUrl must be an http:// or https:// URL without credentials",
            ));
        }
    }
    Ok(Provision {
        tin: tin.to_owned(),
        bhf_id: bhf_id.to_owned(),
        serial: serial.to_owned(),
        unit_type,
        environment,
        vscu_base_url,
    })
}

/// A field that must be a string if present (trimmed); `code` if it is not.
fn text<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
    code: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.trim())),
        Some(_) => Err(ApiError::invalid(code, format!("{name} must be a string"))),
    }
}

/// Where the branch will sign, and how: its own VSCU (`vscuBaseUrl`, VSCU profile); the
/// built-in sandbox (SANDBOX, the OSCU profile it emulates); or the control unit `serve` was
/// started with (PRODUCTION), when it is of the branch's type.
fn control_unit(
    request: &Provision,
    configured: Option<(String, Profile)>,
) -> Result<(String, Profile), ApiError> {
    if let Some(url) = &request.vscu_base_url {
        return Ok((url.clone(), Profile::Vscu));
    }
    match (request.environment, request.unit_type, configured) {
        // The built-in sandbox emulates KRA's OSCU (it wants the cmcKey on every call, as
        // the bootstrap branches use it), whatever the branch will be in production.
        (Environment::Sandbox, _, _) => Ok((BUILT_IN_SANDBOX.into(), Profile::Oscu)),
        (Environment::Production, UnitType::Oscu, Some((url, profile)))
            if profile != Profile::Vscu =>
        {
            Ok((url, profile))
        }
        (Environment::Production, UnitType::Vscu, Some((url, Profile::Vscu))) => {
            Ok((url, Profile::Vscu))
        }
        (Environment::Production, UnitType::Vscu, _) => Err(ApiError::invalid(
            "CONTROL_UNIT_REQUIRED",
            "a PRODUCTION VSCU branch needs its VSCU: give vscuBaseUrl",
        )),
        (Environment::Production, UnitType::Oscu, _) => Err(ApiError::invalid(
            "CONTROL_UNIT_REQUIRED",
            "a PRODUCTION OSCU branch signs at the OSCU `ushuru serve` was started with \
             (--control-unit with --control-unit-profile oscu or gavaconnect); this one has none",
        )),
    }
}

/// `POST /v2/admin/tenants`: a tenant's branch, with its device initialised, served at once.
#[utoipa::path(
    post,
    path = "/v2/admin/tenants",
    tag = "admin",
    summary = "Provision a tenant's branch",
    description = "Creates the tenant (a new PIN) or adds the branch to it (a known PIN), \
        initialises the branch's device on its control unit (`selectInitOsdcInfo`), seals the \
        cmcKey it issues and starts signing for the branch at once: a key issued with \
        `POST /v2/admin/tenants/{deviceId}/api-keys` signs from its first request, no restart. \
        SANDBOX branches sign through the built-in sandbox (an OSCU emulator, whatever \
        `controlUnitType`); a VSCU branch with `vscuBaseUrl` at that VSCU over HTTP; a PRODUCTION OSCU branch at the control unit `serve` was \
        started with. If the control unit issues no key, nothing is kept: the request may be \
        sent again. Written to the audit log; the cmcKey is never shown.",
    request_body(content = TenantProvisioning, content_type = "application/json"),
    responses(
        (status = 201, description = "Provisioned and served.", body = described::Provisioned),
        (status = 400, description = "Not a JSON object (`INVALID_BODY`).", body = ErrorBody),
        (status = 401, description = "No live key (`UNAUTHENTICATED`).", body = ErrorBody),
        (status = 403, description = "A branch key (`FORBIDDEN`): this needs an operator key.", body = ErrorBody),
        (status = 409, description = "`TENANT_BRANCH_EXISTS`: the PIN has this branch, with \
            its device, already; `DEVICE_ALREADY_INSTALLED`: the control unit issued this \
            branch's key before (902) and does not issue it again.", body = ErrorBody),
        (status = 422, description = "A field is wrong: `INVALID_TIN`, `INVALID_BHF_ID`, \
            `INVALID_DVC_SRL_NO`, `INVALID_CONTROL_UNIT_TYPE`, `INVALID_ENVIRONMENT`, \
            `INVALID_VSCU_BASE_URL`, `VSCU_URL_NOT_ALLOWED` (OSCU with `vscuBaseUrl`), \
            `CONTROL_UNIT_REQUIRED` (PRODUCTION with no control unit), `UNKNOWN_FIELD`; or the \
            control unit refused (`CONTROL_UNIT_REFUSED`, with `resultCd`).", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
        (status = 502, description = "The control unit could not be reached \
            (`CONTROL_UNIT_UNREACHABLE`) or gave no usable answer (`CONTROL_UNIT_NO_ANSWER`, \
            `CONTROL_UNIT_NO_DEVICE_INFO`). Nothing was kept.", body = ErrorBody),
        (status = 503, description = "This process does not provision (`PROVISIONING_UNAVAILABLE`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("apiKey" = [])),
)]
pub(crate) async fn provision_tenant(
    State(state): State<AppState>,
    operator: Operator,
    body: Bytes,
) -> Response {
    let request_id = request_id();
    // On a task of its own: a client that gives up (the control unit may take 30 s) drops
    // this handler, and a provisioning cut off between the control unit issuing the key
    // and the store keeping it would lose the key for good (a retry gets 902).
    let provisioned = tokio::spawn(async move { provision(&state, &operator, &body).await }).await;
    match provisioned {
        Ok(Ok(body)) => respond(StatusCode::CREATED, body, &request_id),
        Ok(Err(error)) => error.into_response(),
        Err(e) => ApiError::internal(format!("the provisioning task failed: {e}")).into_response(),
    }
}

async fn provision(state: &AppState, operator: &Operator, body: &[u8]) -> Result<Value, ApiError> {
    let request = parse(body)?;
    let Some(provisioning) = state.provisioning.as_deref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "PROVISIONING_UNAVAILABLE",
            "this process does not provision branches",
        ));
    };
    let (unit_url, profile) = control_unit(&request, provisioning.control_units.configured())?;
    let _turn = provisioning.turn.lock().await;
    let store = &state.store;

    let (tenant, tenant_created) = tenant_for(state, &request.tin).await?;
    let (branch, branch_created) = match store.branch_by_id(tenant.id, &request.bhf_id).await? {
        Some(branch) => {
            if store.device(branch.scope()).await?.is_some() {
                return Err(exists(&request));
            }
            // Left without a device by a crash, or made by `ushuru admin branch-add`: this
            // provisioning completes it.
            (branch, false)
        }
        None => match store.create_branch(tenant.id, &request.bhf_id).await {
            Ok(branch) => (branch, true),
            // Made by another process since the look above.
            Err(StoreError::Conflict(_)) => return Err(exists(&request)),
            Err(e) => return Err(e.into()),
        },
    };
    let scope = branch.scope();
    let undo = Undo {
        state,
        scope,
        branch: branch_created,
        tenant: tenant_created,
    };

    let client = match provisioning.control_units.client(ClientConfig {
        base_url: unit_url.clone(),
        profile,
        tin: request.tin.clone(),
        bhf_id: request.bhf_id.clone(),
        cmc_key: None,
        timeouts: Timeouts::default(),
        gateway: None,
    }) {
        Ok(client) => client,
        Err(e) => {
            undo.run().await;
            return Err(ApiError::internal(format!("control-unit client: {e}")));
        }
    };
    let device = match initialise_device(&client, &state.vault, scope, &request.serial).await {
        Ok(device) => device,
        Err(e) => {
            tracing::warn!(error = %e, tin = %request.tin, bhf_id = %request.bhf_id,
                "provisioning: the device was not initialised; nothing is kept");
            undo.run().await;
            return Err(init_error(e));
        }
    };
    if let Err(e) = store.save_device(scope, &device).await {
        // The control unit has issued the key and will not issue it again (902): say so
        // loudly, the operator has to recover the device at KRA.
        tracing::error!(error = %e, tin = %request.tin, bhf_id = %request.bhf_id, sdc_id = %device.sdc_id,
            "provisioning: the control unit initialised the device but it could not be stored");
        undo.run().await;
        return Err(e.into());
    }

    let actor = operator.actor();
    let now = state.clock.now();
    if tenant_created {
        store
            .audit_or_log(
                NewAuditEvent::new(now, actor.clone(), "tenant.created")
                    .tenant(tenant.id)
                    .detail(json!({"tin": tenant.tin})),
            )
            .await;
    }
    if branch_created {
        store
            .audit_or_log(
                NewAuditEvent::new(now, actor.clone(), "branch.created")
                    .scope(scope)
                    .detail(json!({"bhfId": request.bhf_id})),
            )
            .await;
    }
    store
        .audit_or_log(
            NewAuditEvent::new(now, actor, "device.initialised")
                .scope(scope)
                .detail(json!({
                    "sdcId": device.sdc_id,
                    "controlUnit": device.control_unit_url,
                    "dataKeyVersion": device.cmc_key.data_key.version,
                    "masterKeyVersion": device.cmc_key.data_key.master_version,
                })),
        )
        .await;

    let (sdc_id, mrc_no) = (device.sdc_id.clone(), device.mrc_no.clone());
    if let Err(e) = serve_branch(
        state,
        provisioning,
        InitialisedBranch {
            scope,
            tin: request.tin.clone(),
            bhf_id: request.bhf_id.clone(),
            device,
        },
    ) {
        // A request of the new branch's key may have started serving it first.
        if state.branches.get(scope.branch).is_none() {
            // Stored whole: `serve` signs for it from its next start.
            return Err(ApiError::internal(format!(
                "provisioned, but not served until restart: {e}"
            )));
        }
    }
    tracing::info!(tin = %request.tin, bhf_id = %request.bhf_id, sdc_id = %sdc_id, "branch provisioned and served");
    Ok(json!({
        "tenantId": tenant.id.0,
        "tin": tenant.tin,
        "name": tenant.name,
        "deviceId": scope.branch.0,
        "bhfId": request.bhf_id,
        "dvcSrlNo": request.serial,
        "controlUnitType": match request.unit_type {
            UnitType::Vscu => "VSCU",
            UnitType::Oscu => "OSCU",
        },
        "environment": match request.environment {
            Environment::Sandbox => "SANDBOX",
            Environment::Production => "PRODUCTION",
        },
        "status": "READY",
        "sdcId": sdc_id,
        "mrcNo": mrc_no,
        "tenantCreated": tenant_created,
    }))
}

/// The tenant with this PIN, made (named by its PIN) if there is none; whether it was made.
async fn tenant_for(state: &AppState, tin: &str) -> Result<(Tenant, bool), ApiError> {
    if let Some(tenant) = state.store.tenant_by_tin(tin).await? {
        return Ok((tenant, false));
    }
    match state.store.create_tenant(tin, tin).await {
        Ok(tenant) => Ok((tenant, true)),
        // Made by another process since the look above.
        Err(StoreError::Conflict(_)) => state
            .store
            .tenant_by_tin(tin)
            .await?
            .map(|tenant| (tenant, false))
            .ok_or_else(|| ApiError::internal("a tenant conflicted and then was not found")),
        Err(e) => Err(e.into()),
    }
}

fn exists(request: &Provision) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "TENANT_BRANCH_EXISTS",
        format!(
            "{} has a branch {} with its device already (see GET /v2/admin/tenants for its deviceId)",
            request.tin, request.bhf_id
        ),
    )
}

fn init_error(error: InitError) -> ApiError {
    match error {
        InitError::Installed => ApiError::new(
            StatusCode::CONFLICT,
            "DEVICE_ALREADY_INSTALLED",
            "the control unit issued this branch's key before (902) and does not issue it again; \
             nothing was kept here. Recover the device's key at KRA, or use another branch id",
        ),
        InitError::Refused { code, message } => ApiError::invalid(
            "CONTROL_UNIT_REFUSED",
            format!("the control unit refused to initialise the device: {message}"),
        )
        .with("resultCd", json!(code.code())),
        InitError::NotSent(reason) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "CONTROL_UNIT_UNREACHABLE",
            format!(
                "the control unit could not be reached ({reason}); nothing was kept, send again"
            ),
        ),
        InitError::NoAnswer(reason) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "CONTROL_UNIT_NO_ANSWER",
            format!(
                "the control unit gave no usable answer ({reason}); nothing was kept. Send again: \
                 if it had issued the key, it answers DEVICE_ALREADY_INSTALLED"
            ),
        ),
        InitError::NoDeviceInfo => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "CONTROL_UNIT_NO_DEVICE_INFO",
            "the control unit answered without the device's information; nothing was kept",
        ),
        InitError::Seal(e) => ApiError::internal(format!("sealing a new cmcKey: {e}")),
    }
}

/// What a failed provisioning removes again: the branch (and tenant) it created.
struct Undo<'a> {
    state: &'a AppState,
    scope: Scope,
    branch: bool,
    tenant: bool,
}

impl Undo<'_> {
    async fn run(self) {
        if !self.branch {
            return;
        }
        if let Err(e) = self
            .state
            .store
            .discard_unprovisioned_branch(self.scope, self.tenant)
            .await
        {
            // Left as a branch without a device: listed KEY_REQUIRED, not served, and
            // completed by the next provisioning of the same PIN and branch id.
            tracing::error!(error = %e, branch = self.scope.branch.0,
                "a branch whose provisioning failed could not be removed");
        }
    }
}

// Schemas of the answer, for the OpenAPI document only.
#[allow(dead_code)]
mod described {
    /// A provisioned branch: `deviceId` names it in the other admin routes (issue its API
    /// keys with `POST /v2/admin/tenants/{deviceId}/api-keys`). Never the cmcKey.
    #[derive(utoipa::ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct Provisioned {
        tenant_id: i64,
        tin: String,
        name: String,
        device_id: i64,
        bhf_id: String,
        dvc_srl_no: String,
        control_unit_type: String,
        environment: String,
        /// `READY`: the device is initialised and the branch is served.
        status: String,
        sdc_id: String,
        mrc_no: String,
        /// Whether the PIN was new (else the branch was added to its tenant).
        tenant_created: bool,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn code(body: Value) -> (u16, &'static str) {
        let error = parse(body.to_string().as_bytes()).unwrap_err();
        (error.status.as_u16(), error.code)
    }

    #[test]
    fn the_sdk_body_reads_with_its_defaults() {
        let read = parse(br#"{"tin":"P051234567A","bhfId":"01","dvcSrlNo":" POS-1 ","controlUnitType":"VSCU","environment":"SANDBOX"}"#).unwrap();
        assert_eq!(
            read,
            Provision {
                tin: "P051234567A".into(),
                bhf_id: "01".into(),
                serial: "POS-1".into(),
                unit_type: UnitType::Vscu,
                environment: Environment::Sandbox,
                vscu_base_url: None,
            }
        );
        let bare = parse(br#"{"tin":"P051234567A","bhfId":"00","dvcSrlNo":"S"}"#).unwrap();
        assert_eq!(
            (bare.unit_type, bare.environment),
            (UnitType::Vscu, Environment::Sandbox)
        );
        assert_eq!(
            control_unit(&bare, None).unwrap(),
            (BUILT_IN_SANDBOX.to_owned(), Profile::Oscu)
        );
    }

    #[test]
    fn every_bad_field_has_its_code() {
        let base = json!({"tin":"P051234567A","bhfId":"01","dvcSrlNo":"S"});
        let with = |field: &str, value: Value| {
            let mut body = base.clone();
            body[field] = value;
            body
        };
        let without = |field: &str| {
            let mut body = base.clone();
            body.as_object_mut().unwrap().remove(field);
            body
        };
        for (body, expected) in [
            (without("tin"), (422, "INVALID_TIN")),
            (with("tin", json!("p051234567a")), (422, "INVALID_TIN")),
            (with("tin", json!(51234567)), (422, "INVALID_TIN")),
            (without("bhfId"), (422, "INVALID_BHF_ID")),
            (with("bhfId", json!("1")), (422, "INVALID_BHF_ID")),
            (without("dvcSrlNo"), (422, "INVALID_DVC_SRL_NO")),
            (with("dvcSrlNo", json!("  ")), (422, "INVALID_DVC_SRL_NO")),
            (
                with("controlUnitType", json!("XSCU")),
                (422, "INVALID_CONTROL_UNIT_TYPE"),
            ),
            (
                with("environment", json!("STAGING")),
                (422, "INVALID_ENVIRONMENT"),
            ),
            (
                with("vscuBaseURL", json!("http://x")),
                (422, "UNKNOWN_FIELD"),
            ),
            (
                with("vscuBaseUrl", json!("ftp://x")),
                (422, "INVALID_VSCU_BASE_URL"),
            ),
            (
                with(
                    "vscuBaseUrl",
                    json!("http://operator:secret@127.0.0.1:8088/vscu"),
                ),
                (422, "INVALID_VSCU_BASE_URL"),
            ),
            (json!([1]), (400, "INVALID_BODY")),
        ] {
            assert_eq!(code(body.clone()), expected, "{body}");
        }
        let mut oscu = with("controlUnitType", json!("OSCU"));
        oscu["vscuBaseUrl"] = json!("http://127.0.0.1:1");
        assert_eq!(code(oscu), (422, "VSCU_URL_NOT_ALLOWED"));
        assert_eq!(parse(b"{").unwrap_err().code, "INVALID_BODY");
    }

    #[test]
    fn production_needs_a_control_unit_of_its_type() {
        let request = |unit_type, url: Option<&str>| Provision {
            tin: "P051234567A".into(),
            bhf_id: "01".into(),
            serial: "S".into(),
            unit_type,
            environment: Environment::Production,
            vscu_base_url: url.map(str::to_owned),
        };
        let oscu_unit = Some(("https://oscu".to_owned(), Profile::Oscu));
        let vscu_unit = Some(("http://vscu".to_owned(), Profile::Vscu));
        let refused = |r: Result<(String, Profile), ApiError>| r.unwrap_err().code;
        assert_eq!(
            refused(control_unit(&request(UnitType::Vscu, None), None)),
            "CONTROL_UNIT_REQUIRED"
        );
        assert_eq!(
            refused(control_unit(&request(UnitType::Oscu, None), None)),
            "CONTROL_UNIT_REQUIRED"
        );
        assert_eq!(
            refused(control_unit(
                &request(UnitType::Oscu, None),
                vscu_unit.clone()
            )),
            "CONTROL_UNIT_REQUIRED"
        );
        assert_eq!(
            refused(control_unit(
                &request(UnitType::Vscu, None),
                oscu_unit.clone()
            )),
            "CONTROL_UNIT_REQUIRED"
        );
        assert_eq!(
            control_unit(&request(UnitType::Oscu, None), oscu_unit).unwrap(),
            ("https://oscu".to_owned(), Profile::Oscu)
        );
        assert_eq!(
            control_unit(&request(UnitType::Vscu, Some("http://mine")), None).unwrap(),
            ("http://mine".to_owned(), Profile::Vscu)
        );
    }
}
