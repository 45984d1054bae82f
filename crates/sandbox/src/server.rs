//! The sandbox over HTTP: every KRA endpoint on its OSCU path (also under `/etims-api`), its
//! VSCU path and its GavaConnect path (under `/etims-oscu/api/v1`, with an OAuth token from
//! `/v1/token/generate`), and the control API under `/_sandbox/`.
//!
//! Connections are served by our own accept loop so that a fault can close one without an
//! answer, before processing (`drop`) or after committing (`lost_answer`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Json, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tower::ServiceExt;
use ushuru_kra::wire::DateTime14;
use ushuru_kra::{
    EndpointName, InProcessAnswer, InProcessCall, InProcessFuture, InProcessUnit, Profile,
    ResultCode,
};

use crate::control_unit::{Caller, ControlUnit, Reply};
use crate::faults::{Fault, FaultQueue};

/// How long clients may take: to send a request's headers, and to have a whole request
/// answered (body and `delay` faults included; 408 after). Slow or stalled clients must not
/// hold connections forever.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read: Duration,
    pub request: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(30),
            request: Duration::from_secs(120),
        }
    }
}

/// The prefix of the GavaConnect (Apigee) paths.
pub const GATEWAY_PREFIX: &str = "/etims-oscu/api/v1";
/// The GavaConnect token path.
pub const TOKEN_PATH: &str = "/v1/token/generate";

/// The consumer key and secret the sandbox's GavaConnect accepts.
#[derive(Clone, Debug)]
pub struct GatewayAccess {
    pub consumer_key: String,
    pub consumer_secret: String,
}

impl Default for GatewayAccess {
    fn default() -> Self {
        GatewayAccess {
            consumer_key: "ushuru-sandbox".into(),
            consumer_secret: "ushuru-sandbox".into(),
        }
    }
}

/// The sandbox: a control unit, its fault queue and its gateway tokens.
pub struct Sandbox {
    unit: ControlUnit,
    faults: FaultQueue,
    gateway: GatewayAccess,
    limits: Limits,
    tokens: Mutex<HashMap<String, Instant>>,
}

/// Lets a handler close the connection it is answering on.
#[derive(Clone)]
struct ConnectionKill(Arc<Notify>);

type Shared = Arc<Sandbox>;

impl Sandbox {
    pub fn new(unit: ControlUnit, gateway: GatewayAccess) -> Arc<Self> {
        Self::with_limits(unit, gateway, Limits::default())
    }

    pub fn with_limits(unit: ControlUnit, gateway: GatewayAccess, limits: Limits) -> Arc<Self> {
        Arc::new(Sandbox {
            unit,
            faults: FaultQueue::default(),
            gateway,
            limits,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    pub fn unit(&self) -> &ControlUnit {
        &self.unit
    }

    pub fn faults(&self) -> &FaultQueue {
        &self.faults
    }

    /// Every route of the sandbox.
    pub fn router(self: &Arc<Self>) -> Router {
        let mut router = Router::new();
        for &endpoint in EndpointName::ALL {
            let oscu = endpoint.path(Profile::Oscu);
            let paths = [
                (oscu.to_owned(), Profile::Oscu),
                (format!("/etims-api{oscu}"), Profile::Oscu),
                (endpoint.path(Profile::Vscu).to_owned(), Profile::Vscu),
                (
                    format!("{GATEWAY_PREFIX}{}", endpoint.path(Profile::GavaConnect)),
                    Profile::GavaConnect,
                ),
            ];
            for (path, profile) in paths {
                router = router.route(
                    &path,
                    post(move |state, kill, headers, body| {
                        kra_call(state, kill, headers, body, endpoint, profile)
                    })
                    .fallback(|| async {
                        envelope(&Reply::refuse(ResultCode::RequestMethodError, "use POST"))
                            .into_response()
                    }),
                );
            }
        }
        router
            .route(TOKEN_PATH, get(gateway_token))
            .route("/_sandbox", get(control_help))
            .route("/_sandbox/", get(control_help))
            .route("/_sandbox/state", get(control_state))
            .route("/_sandbox/reset", post(control_reset))
            .route("/_sandbox/faults", get(control_faults).post(control_add_fault).delete(control_clear_faults))
            .route("/_sandbox/upstream", get(control_upstream).post(control_set_upstream))
            .route("/_sandbox/clock", get(control_clock).post(control_set_clock))
            .route("/_sandbox/verify", post(control_verify))
            .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({"code": "NOT_FOUND", "message": "no such path; GET /_sandbox lists the control API"}))) })
            .layer(axum::middleware::from_fn_with_state(self.limits.request, within_deadline))
            .with_state(Arc::clone(self))
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let router = self.router();
        let header_read = self.limits.header_read;
        let mut shutdown = std::pin::pin!(shutdown);
        // Open connections, so that stopping the sandbox also ends keep-alive connections:
        // a stopped control unit must not go on answering its clients.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    // Too many open files and the like: wait a moment, keep serving.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => {
                    connections.abort_all();
                    return Ok(());
                }
            };
            let _ = stream.set_nodelay(true);
            let router = router.clone();
            connections.spawn(async move {
                let kill = Arc::new(Notify::new());
                let connection_kill = ConnectionKill(Arc::clone(&kill));
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let mut request = request.map(Body::new);
                        request.extensions_mut().insert(connection_kill.clone());
                        router.clone().oneshot(request)
                    },
                );
                // A client that never finishes its headers must not hold a connection forever.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    // Dropping the connection closes the socket with nothing more written.
                    () = kill.notified() => {}
                }
            });
        }
    }

    /// Binds `addr` and serves in the background.
    pub async fn start(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<SandboxHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let sandbox = Arc::clone(&self);
        let task = tokio::spawn(sandbox.serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(SandboxHandle {
            addr,
            stop: Some(stop),
            task,
            sandbox: self,
        })
    }
}

/// A running sandbox.
pub struct SandboxHandle {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    sandbox: Arc<Sandbox>,
}

impl SandboxHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Stops accepting connections.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// A request that has not been answered within the deadline (a body that never arrives)
/// gets 408 instead of holding its connection.
async fn within_deadline(
    State(deadline): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => control_error(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the request took too long to arrive",
        ),
    }
}

/// What a KRA call answers, as the HTTP route sends it and an in-process caller reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn json(status: StatusCode, value: &Value) -> Answer {
        Answer {
            status: status.as_u16(),
            content_type: "application/json",
            body: value.to_string(),
        }
    }

    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        (
            status,
            [(header::CONTENT_TYPE, self.content_type)],
            self.body,
        )
            .into_response()
    }
}

fn envelope(reply: &Reply) -> Answer {
    let now = DateTime14(
        chrono::Utc::now()
            .with_timezone(&crate::clock::EAT)
            .naive_local(),
    )
    .digits();
    Answer::json(
        StatusCode::OK,
        &json!({
            "resultCd": reply.code.code(),
            "resultMsg": reply.message,
            "resultDt": now,
            "data": reply.data,
        }),
    )
}

fn gateway_envelope(reply: &Reply) -> Answer {
    let reference = format!("SBX-{}", chrono::Utc::now().timestamp_micros());
    if reply.code.is_success() {
        let body = json!({
            "resultCd": reply.code.code(),
            "resultMsg": reply.message,
            "resultDt": DateTime14(chrono::Utc::now().with_timezone(&crate::clock::EAT).naive_local()).digits(),
            "data": reply.data,
        });
        Answer::json(
            StatusCode::OK,
            &json!({
                "responseHeader": {"responseCode": "200", "responseRefID": reference, "customerMessage": "Successful", "debugMessage": null},
                "responseBody": body,
            }),
        )
    } else {
        // Business failures come back as HTTP 400 with the reason in debugMessage (§1.1).
        let header = json!({
            "responseCode": "400",
            "responseRefID": reference,
            "customerMessage": "Validation failed",
            "debugMessage": format!("{}: {}", reply.code.code(), reply.message),
        });
        Answer::json(
            StatusCode::BAD_REQUEST,
            &json!({"responseHeader": header, "responseBody": null}),
        )
    }
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn kra_call(
    State(sandbox): State<Shared>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    body: Bytes,
    endpoint: EndpointName,
    profile: Profile,
) -> Response {
    if profile == Profile::GavaConnect && !sandbox.token_is_valid(&headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"header": {"responseCode": "401", "customerMessage": "Unauthorised-Invalid Access Token"}, "body": null}))).into_response();
    }
    let caller = Caller {
        tin: header_text(&headers, "tin"),
        bhf_id: header_text(&headers, "bhfId"),
        cmc_key: header_text(&headers, "cmcKey"),
    };
    match sandbox.respond(endpoint, profile, caller, &body).await {
        Some(answer) => answer.into_response(),
        None => close_without_answer(&kill).await,
    }
}

impl Sandbox {
    /// One call of a KRA endpoint, faults included, whether it came over HTTP or from this
    /// process: `None` when a fault ends the call without an answer (`drop` before
    /// processing, `lost_answer` after committing).
    pub async fn respond(
        &self,
        endpoint: EndpointName,
        profile: Profile,
        caller: Caller<'_>,
        body: &[u8],
    ) -> Option<Answer> {
        let fault = self.faults.take(endpoint);
        match &fault {
            Some(Fault::Drop) => return None,
            Some(Fault::Delay { ms }) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Some(Fault::ResultCode { code, message }) => {
                let code = ResultCode::parse(code);
                let message = message.clone().unwrap_or_else(|| code.meaning().to_owned());
                let reply = Reply {
                    code,
                    message,
                    data: None,
                };
                return Some(answer(profile, &reply));
            }
            Some(Fault::HttpStatus { status, body }) => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
                let body = body
                    .clone()
                    .unwrap_or_else(|| format!("<html><body><h1>{status}</h1></body></html>"));
                return Some(Answer {
                    status: status.as_u16(),
                    content_type: "text/html",
                    body,
                });
            }
            Some(Fault::LostAnswer) | None => {}
        }
        // Called directly on the async worker: the critical section takes microseconds, and
        // `block_in_place` cost a thread hand-off per call (−35 % with a state file,
        // measured). The one long wait, a state file locked by another process, is capped
        // at 1 s.
        let reply = self.unit.handle(endpoint, profile, caller, body);
        if fault == Some(Fault::LostAnswer) {
            return None;
        }
        Some(answer(profile, &reply))
    }
}

/// The built-in sandbox as `ushuru serve` calls it: in process, through the same
/// [`Sandbox::respond`] as its HTTP routes, faults included. No GavaConnect token is asked
/// for: no gateway stands between a process and itself.
impl InProcessUnit for Sandbox {
    fn answer<'a>(&'a self, call: InProcessCall<'a>) -> InProcessFuture<'a> {
        Box::pin(async move {
            let caller = Caller {
                tin: call.tin,
                bhf_id: call.bhf_id,
                cmc_key: call.cmc_key,
            };
            let answer = self
                .respond(call.endpoint, call.profile, caller, call.body)
                .await?;
            Some(InProcessAnswer {
                status: answer.status,
                body: answer.body,
            })
        })
    }
}

fn answer(profile: Profile, reply: &Reply) -> Answer {
    match profile {
        Profile::GavaConnect => gateway_envelope(reply),
        Profile::Oscu | Profile::Vscu => envelope(reply),
    }
}

async fn close_without_answer(kill: &ConnectionKill) -> Response {
    kill.0.notify_one();
    std::future::pending::<Response>().await
}

impl Sandbox {
    fn token_is_valid(&self, headers: &HeaderMap) -> bool {
        let Some(token) =
            header_text(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens
            .get(token.trim())
            .is_some_and(|expiry| *expiry > Instant::now())
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    grant_type: Option<String>,
}

/// GavaConnect's token endpoint: GET with HTTP Basic consumer key and secret.
async fn gateway_token(
    State(sandbox): State<Shared>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    use data_encoding::BASE64;
    if query.grant_type.as_deref() != Some("client_credentials") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let credentials = header_text(&headers, "authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| BASE64.decode(b64.trim().as_bytes()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let expected = format!(
        "{}:{}",
        sandbox.gateway.consumer_key, sandbox.gateway.consumer_secret
    );
    if credentials.as_deref() != Some(expected.as_str()) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client", "error_description": "Invalid consumer key or secret"}))).into_response();
    }
    let token = data_encoding::HEXLOWER.encode(&crate::sign::random_bytes::<20>());
    let lifetime = Duration::from_secs(3599);
    let mut tokens = sandbox
        .tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tokens.retain(|_, expiry| *expiry > Instant::now());
    tokens.insert(token.clone(), Instant::now() + lifetime);
    Json(json!({"access_token": token, "expires_in": lifetime.as_secs().to_string()}))
        .into_response()
}

// ---- control API ------------------------------------------------------------------------

fn control_error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.to_string()})),
    )
        .into_response()
}

fn persisted(result: Result<impl serde::Serialize, crate::persist::PersistError>) -> Response {
    match result {
        Ok(body) => Json(body).into_response(),
        Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, "STATE_FILE", e),
    }
}

async fn control_help() -> Json<Value> {
    Json(json!({
        "about": "Ushuru control-unit sandbox: control API (not part of KRA's)",
        "endpoints": {
            "GET /_sandbox/state": "dump the whole state as JSON (secrets redacted)",
            "POST /_sandbox/reset": "forget every device, item and sale",
            "GET /_sandbox/faults": "faults queued, per endpoint",
            "POST /_sandbox/faults": "queue a fault: {\"endpoint\": \"saveTrnsSalesOsdc\" or a path, \"count\": N, \"fault\": {\"kind\": \"result_code\", \"code\": \"999\"} | {\"kind\": \"http_status\", \"status\": 502} | {\"kind\": \"delay\", \"ms\": 3000} | {\"kind\": \"drop\"} | {\"kind\": \"lost_answer\"}}",
            "DELETE /_sandbox/faults": "clear every queued fault",
            "GET /_sandbox/upstream": "whether the VSCU's link to KRA is cut",
            "POST /_sandbox/upstream": "{\"cut\": true} cuts the link; {\"cut\": false} restores it and syncs what was signed offline",
            "GET /_sandbox/clock": "the sandbox's time (EAT)",
            "POST /_sandbox/clock": "{\"set\": \"yyyyMMddHHmmss\"} or {\"advance_seconds\": N}",
            "POST /_sandbox/verify": "{\"tin\", \"bhfId\", \"invcNo\", \"intrlData\", \"rcptSign\"}: whether this sandbox issued that receipt",
            "GET /v1/token/generate?grant_type=client_credentials": "GavaConnect token (HTTP Basic consumer key and secret)",
        },
        "kra_paths": {
            "oscu": "/<name> and /etims-api/<name>, e.g. /saveTrnsSalesOsdc",
            "vscu": "RRA-style, e.g. /trnsSales/saveSales",
            "gavaconnect": format!("{GATEWAY_PREFIX}/<name>, e.g. {GATEWAY_PREFIX}/sendSalesTransaction"),
        }
    }))
}

async fn control_state(State(sandbox): State<Shared>) -> Json<Value> {
    Json(sandbox.unit.dump())
}

async fn control_reset(State(sandbox): State<Shared>) -> Response {
    sandbox.faults.clear();
    persisted(sandbox.unit.reset().map(|()| json!({"reset": true})))
}

async fn control_faults(State(sandbox): State<Shared>) -> Json<Value> {
    Json(json!(sandbox.faults.pending()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    endpoint: String,
    fault: Fault,
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

/// An endpoint by OSCU name or by any of its paths.
fn endpoint_named(text: &str) -> Option<EndpointName> {
    let text = text.trim();
    let gateway_path = text.strip_prefix(GATEWAY_PREFIX);
    EndpointName::ALL
        .iter()
        .copied()
        .find(|e| e.oscu_name() == text)
        .or_else(|| {
            let path = text.strip_prefix("/etims-api").unwrap_or(text);
            EndpointName::from_path(path, Profile::Oscu)
                .or_else(|| EndpointName::from_path(path, Profile::Vscu))
                .or_else(|| {
                    gateway_path.and_then(|p| EndpointName::from_path(p, Profile::GavaConnect))
                })
        })
}

async fn control_add_fault(State(sandbox): State<Shared>, body: Bytes) -> Response {
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                "INVALID_FAULT",
                format!("{e}; GET /_sandbox shows the form"),
            );
        }
    };
    let Some(endpoint) = endpoint_named(&request.endpoint) else {
        return control_error(
            StatusCode::BAD_REQUEST,
            "UNKNOWN_ENDPOINT",
            format!("no endpoint {:?}", request.endpoint),
        );
    };
    if request.count == 0 {
        return control_error(
            StatusCode::BAD_REQUEST,
            "INVALID_FAULT",
            "count must be at least 1",
        );
    }
    sandbox.faults.push(endpoint, request.fault, request.count);
    Json(json!({"queued": request.count, "endpoint": endpoint.oscu_name()})).into_response()
}

async fn control_clear_faults(State(sandbox): State<Shared>) -> Json<Value> {
    sandbox.faults.clear();
    Json(json!({"cleared": true}))
}

async fn control_upstream(State(sandbox): State<Shared>) -> Json<Value> {
    Json(json!({"cut": sandbox.unit.upstream_cut(), "mode": sandbox.unit.config().mode}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamRequest {
    cut: bool,
}

async fn control_set_upstream(State(sandbox): State<Shared>, body: Bytes) -> Response {
    let request: UpstreamRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                format!("{e}; send {{\"cut\": true|false}}"),
            );
        }
    };
    if sandbox.unit.config().mode != crate::Mode::Vscu {
        return control_error(
            StatusCode::CONFLICT,
            "NOT_VSCU",
            "only a VSCU has an upstream link: start the sandbox with --mode vscu",
        );
    }
    persisted(
        sandbox
            .unit
            .set_upstream(request.cut)
            .map(|synced| json!({"cut": request.cut, "synced": synced})),
    )
}

async fn control_clock(State(sandbox): State<Shared>) -> Json<Value> {
    Json(
        json!({"now": DateTime14(sandbox.unit.clock().now()).digits(), "offset_ms": sandbox.unit.clock().offset_ms()}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockRequest {
    set: Option<String>,
    advance_seconds: Option<i64>,
}

async fn control_set_clock(State(sandbox): State<Shared>, body: Bytes) -> Response {
    let request: ClockRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return control_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", e),
    };
    let clock = sandbox.unit.clock();
    match (request.set, request.advance_seconds) {
        (Some(at), None) => match DateTime14::parse(&at) {
            Some(at) => clock.set(at.0),
            None => {
                return control_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_TIME",
                    format!("{at:?} is not yyyyMMddHHmmss"),
                );
            }
        },
        (None, Some(seconds)) => clock.advance(chrono::Duration::seconds(seconds)),
        _ => {
            return control_error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "send either {\"set\": \"yyyyMMddHHmmss\"} or {\"advance_seconds\": N}",
            );
        }
    }
    persisted(
        sandbox
            .unit
            .save_clock()
            .map(|()| json!({"now": DateTime14(clock.now()).digits()})),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VerifyRequest {
    tin: String,
    bhf_id: String,
    invc_no: u64,
    intrl_data: String,
    rcpt_sign: String,
}

async fn control_verify(State(sandbox): State<Shared>, body: Bytes) -> Response {
    let request: VerifyRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return control_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", e),
    };
    match sandbox.unit.verify(
        &request.tin,
        &request.bhf_id,
        request.invc_no,
        &request.intrl_data,
        &request.rcpt_sign,
    ) {
        Some(valid) => Json(json!({"valid": valid})).into_response(),
        None => control_error(
            StatusCode::NOT_FOUND,
            "NO_SUCH_RECEIPT",
            "this sandbox signed no such invoice",
        ),
    }
}
