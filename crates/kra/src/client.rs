//! The control-unit client: one call ends in exactly one of four outcomes, and every call
//! leaves an exchange record (the bytes sent and received) for the journal.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::codes::ResultCode;
use crate::endpoints::{CallClass, Endpoint, EndpointName, Profile};
use crate::envelope::{Envelope, GatewayEnvelope};
use crate::wire::from_value_lenient;

/// A secret string (the cmcKey, a gateway secret): never printed by `Debug` or `Display`,
/// and zeroized when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(zeroize::Zeroizing::new(value.into()))
    }

    /// The secret itself, for the moment it is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a call ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The control unit did it (`000`), or found nothing (`001`, `data` then `None`).
    Ok { code: ResultCode, data: Option<T> },
    /// The control unit answered and refused: a KRA code, or a definite HTTP refusal.
    Rejected { code: ResultCode, message: String },
    /// The request provably never reached the control unit (connection refused, DNS,
    /// connect timeout): safe to send again.
    NotSent { reason: String },
    /// The request may have been processed, but no usable answer came back (timeout after
    /// sending, dropped connection, 5xx, unreadable body). Never renumber: look it up.
    Ambiguous { reason: String },
}

impl<T> Outcome<T> {
    pub fn class_name(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Rejected { .. } => "rejected",
            Outcome::NotSent { .. } => "not_sent",
            Outcome::Ambiguous { .. } => "ambiguous",
        }
    }

    fn map<U>(self, f: impl FnOnce(Option<T>) -> Result<Option<U>, String>) -> Outcome<U> {
        match self {
            Outcome::Ok { code, data } => match f(data) {
                Ok(data) => Outcome::Ok { code, data },
                Err(reason) => Outcome::Ambiguous { reason },
            },
            Outcome::Rejected { code, message } => Outcome::Rejected { code, message },
            Outcome::NotSent { reason } => Outcome::NotSent { reason },
            Outcome::Ambiguous { reason } => Outcome::Ambiguous { reason },
        }
    }
}

/// What went over the wire, for the exchange journal. Headers are not kept: they carry
/// the cmcKey.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub endpoint: EndpointName,
    pub path: String,
    pub request_body: String,
    pub response_body: Option<String>,
    pub http_status: Option<u16>,
    pub elapsed: Duration,
}

/// A call's outcome and its exchange.
#[derive(Debug)]
pub struct Call<T> {
    pub outcome: Outcome<T>,
    pub exchange: Exchange,
}

/// Per call-class timeouts for the whole exchange, and the connect timeout.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub init: Duration,
    pub lookup: Duration,
    pub save: Duration,
    pub sale: Duration,
}

impl Default for Timeouts {
    /// Odoo's experience with KRA: 30 s for init, up to 120 s under congestion; a sale is
    /// capped lower so that an ambiguous one is reconciled sooner.
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            init: Duration::from_secs(30),
            lookup: Duration::from_secs(120),
            save: Duration::from_secs(60),
            sale: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    pub fn for_class(&self, class: CallClass) -> Duration {
        match class {
            CallClass::Init => self.init,
            CallClass::Lookup => self.lookup,
            CallClass::Save => self.save,
            CallClass::Sale => self.sale,
        }
    }
}

/// GavaConnect's OAuth client credentials.
#[derive(Clone, Debug)]
pub struct GatewayCredentials {
    /// `…/v1/token/generate`: GET with `grant_type=client_credentials` and HTTP Basic.
    pub token_url: String,
    pub consumer_key: String,
    pub consumer_secret: Secret,
}

/// Where and as whom a client calls.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// e.g. `https://etims-api-sbx.kra.go.ke/etims-api`, `http://127.0.0.1:8088`.
    pub base_url: String,
    pub profile: Profile,
    pub tin: String,
    pub bhf_id: String,
    /// Absent before initialisation.
    pub cmc_key: Option<Secret>,
    pub timeouts: Timeouts,
    pub gateway: Option<GatewayCredentials>,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(
        "the GavaConnect profile needs gateway credentials (token URL, consumer key and secret)"
    )]
    MissingGatewayCredentials,
}

/// One call to a control unit that runs in this process: what the HTTP request would carry.
#[derive(Clone, Copy)]
pub struct InProcessCall<'a> {
    pub endpoint: EndpointName,
    pub profile: Profile,
    /// The `tin` and `bhfId` headers (absent on the VSCU profile, as over HTTP).
    pub tin: Option<&'a str>,
    pub bhf_id: Option<&'a str>,
    /// The `cmcKey` header, under the same rules as over HTTP.
    pub cmc_key: Option<&'a str>,
    pub body: &'a [u8],
}

impl fmt::Debug for InProcessCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessCall")
            .field("endpoint", &self.endpoint)
            .field("profile", &self.profile)
            .field("tin", &self.tin)
            .field("bhf_id", &self.bhf_id)
            .field("cmc_key", &self.cmc_key.map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// What an in-process control unit answered: the HTTP status and body it would have sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InProcessAnswer {
    pub status: u16,
    pub body: String,
}

/// A future an [`InProcessUnit`] answers with.
pub type InProcessFuture<'a> = Pin<Box<dyn Future<Output = Option<InProcessAnswer>> + Send + 'a>>;

/// A control unit in this process (the built-in sandbox), called without HTTP: no socket,
/// no HTTP encoding, no connection pool, the same bytes in and out. `None` means the call
/// ended without an answer (the unit "closed the connection"), which the client reads as
/// over HTTP: the request may have been processed.
pub trait InProcessUnit: Send + Sync + 'static {
    fn answer<'a>(&'a self, call: InProcessCall<'a>) -> InProcessFuture<'a>;
}

/// Opens a branch's cmcKey for the moment of one call (the vault). A client given one holds
/// no key itself: each call opens it, puts it on the wire, and drops (zeroizes) it.
pub trait CmcKeyOpener: Send + Sync + 'static {
    /// The key, or why it cannot be opened (never the key itself).
    fn open(&self) -> Result<Secret, String>;
}

/// A client of one branch's control unit.
#[derive(Clone)]
pub struct KraClient {
    http: reqwest::Client,
    config: Arc<ClientConfig>,
    token: Arc<Mutex<Option<(String, Instant)>>>,
    /// Set when the control unit runs in this process: calls skip HTTP.
    in_process: Option<Arc<dyn InProcessUnit>>,
    /// Set when the cmcKey is sealed: opened per call instead of `config.cmc_key`.
    cmc_key_opener: Option<Arc<dyn CmcKeyOpener>>,
}

impl fmt::Debug for KraClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KraClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KraClient {
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        if config.profile == Profile::GavaConnect && config.gateway.is_none() {
            return Err(ClientError::MissingGatewayCredentials);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(60))
            // A redirect after a POST arrived could be followed to a host that is down and
            // misread as "never sent", and would carry the cmcKey header along: refuse it.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(KraClient {
            http,
            config: Arc::new(config),
            token: Arc::new(Mutex::new(None)),
            in_process: None,
            cmc_key_opener: None,
        })
    }

    /// A client of a control unit that runs in this process (the built-in sandbox): every
    /// call goes to `unit` directly, with the headers and body it would get over HTTP, the
    /// same per-class timeouts, and its answer read exactly as an HTTP answer is. A
    /// GavaConnect token is not fetched: no gateway stands between the two.
    pub fn in_process(
        config: ClientConfig,
        unit: Arc<dyn InProcessUnit>,
    ) -> Result<Self, ClientError> {
        let needs_token = config.profile == Profile::GavaConnect && config.gateway.is_none();
        let mut client = Self::new(ClientConfig {
            // Checked by `new` for HTTP; never used in process.
            profile: if needs_token {
                Profile::Oscu
            } else {
                config.profile
            },
            ..config.clone()
        })?;
        client.config = Arc::new(config);
        client.in_process = Some(unit);
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The same client with the cmcKey that initialisation issued.
    pub fn with_cmc_key(&self, cmc_key: Secret) -> Self {
        let mut config = (*self.config).clone();
        config.cmc_key = Some(cmc_key);
        KraClient {
            http: self.http.clone(),
            config: Arc::new(config),
            token: self.token.clone(),
            in_process: self.in_process.clone(),
            cmc_key_opener: None,
        }
    }

    /// The same client with a sealed cmcKey: every call opens it through `opener` for the
    /// moment of the call, and the client holds no key in between.
    pub fn with_cmc_key_opener(&self, opener: Arc<dyn CmcKeyOpener>) -> Self {
        let mut config = (*self.config).clone();
        config.cmc_key = None;
        KraClient {
            http: self.http.clone(),
            config: Arc::new(config),
            token: self.token.clone(),
            in_process: self.in_process.clone(),
            cmc_key_opener: Some(opener),
        }
    }

    /// The cmcKey for one call of `endpoint`, when the profile sends one: opened now if
    /// sealed. Dropped (zeroized) when the call ends.
    fn cmc_key_for(&self, endpoint: EndpointName) -> Result<Option<Secret>, String> {
        if self.config.profile == Profile::Vscu || endpoint == EndpointName::SelectInitOsdcInfo {
            return Ok(None);
        }
        match &self.cmc_key_opener {
            Some(opener) => opener
                .open()
                .map(Some)
                .map_err(|e| format!("the cmcKey could not be opened: {e}")),
            None => Ok(self.config.cmc_key.clone()),
        }
    }

    /// Calls a typed endpoint.
    pub async fn call<E: Endpoint>(&self, request: &E::Request) -> Call<E::Response> {
        let body = match self.body_for(request) {
            Ok(body) => body,
            Err(e) => {
                let reason = format!("cannot encode the request: {e}");
                return Call {
                    outcome: Outcome::NotSent { reason },
                    exchange: self.exchange(E::NAME, String::new(), None, None, Duration::ZERO),
                };
            }
        };
        self.send_typed::<E::Response>(E::NAME, body).await
    }

    /// Sends a payload exactly as given (a stored sale, resent byte for byte) and reads the
    /// answer as `T`.
    pub async fn send_typed<T: DeserializeOwned>(
        &self,
        endpoint: EndpointName,
        body: Vec<u8>,
    ) -> Call<T> {
        let call = self.send(endpoint, body).await;
        let outcome = call.outcome.map(|data| match data {
            None | Some(Value::Null) => Ok(None),
            Some(value) => from_value_lenient::<T>(value).map(Some).map_err(|e| {
                format!("the control unit answered success with a body that does not parse: {e}")
            }),
        });
        Call {
            outcome,
            exchange: call.exchange,
        }
    }

    /// Sends a payload exactly as given; `data` is returned as JSON.
    pub async fn send(&self, endpoint: EndpointName, body: Vec<u8>) -> Call<Value> {
        let path = endpoint.path(self.config.profile);
        let url = format!("{}{}", self.config.base_url.trim_end_matches('/'), path);
        let request_body = String::from_utf8_lossy(&body).into_owned();
        let started = Instant::now();
        // Nothing is sent without the key it needs.
        let cmc_key = match self.cmc_key_for(endpoint) {
            Ok(key) => key,
            Err(reason) => {
                return Call {
                    outcome: Outcome::NotSent { reason },
                    exchange: self.exchange(endpoint, request_body, None, None, Duration::ZERO),
                };
            }
        };
        if let Some(unit) = &self.in_process {
            return self
                .send_in_process(
                    unit.as_ref(),
                    endpoint,
                    &body,
                    cmc_key.as_ref(),
                    request_body,
                    started,
                )
                .await;
        }

        let mut retried_token = false;
        loop {
            let token = match self.gateway_token(retried_token).await {
                Ok(token) => token,
                Err(outcome) => {
                    return Call {
                        outcome,
                        exchange: self.exchange(
                            endpoint,
                            request_body,
                            None,
                            None,
                            started.elapsed(),
                        ),
                    };
                }
            };
            let request = self.request(
                endpoint,
                &url,
                body.clone(),
                token.as_deref(),
                cmc_key.as_ref(),
            );
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    let outcome = classify_send_error(&e);
                    return Call {
                        outcome,
                        exchange: self.exchange(
                            endpoint,
                            request_body,
                            None,
                            None,
                            started.elapsed(),
                        ),
                    };
                }
            };
            let status = response.status().as_u16();
            // An expired token is refused before anything is processed: fetch a new one once.
            if status == 401 && self.config.profile == Profile::GavaConnect && !retried_token {
                retried_token = true;
                continue;
            }
            let text = match response.text().await {
                Ok(text) => text,
                Err(e) => {
                    let outcome = Outcome::Ambiguous {
                        reason: format!("the answer could not be read: {e}"),
                    };
                    return Call {
                        outcome,
                        exchange: self.exchange(
                            endpoint,
                            request_body,
                            None,
                            Some(status),
                            started.elapsed(),
                        ),
                    };
                }
            };
            let redacted = redact_issued_key(endpoint, text.clone());
            let outcome = self.interpret(status, &text, &redacted);
            let text = redacted;
            let exchange = self.exchange(
                endpoint,
                request_body,
                Some(text),
                Some(status),
                started.elapsed(),
            );
            trace_call(&outcome, &exchange);
            return Call { outcome, exchange };
        }
    }

    /// [`Self::send`] to a unit in this process.
    async fn send_in_process(
        &self,
        unit: &dyn InProcessUnit,
        endpoint: EndpointName,
        body: &[u8],
        cmc_key: Option<&Secret>,
        request_body: String,
        started: Instant,
    ) -> Call<Value> {
        let config = &self.config;
        // The headers `request` would set, by the same rules.
        let over_headers = config.profile != Profile::Vscu;
        let call = InProcessCall {
            endpoint,
            profile: config.profile,
            tin: over_headers.then_some(config.tin.as_str()),
            bhf_id: over_headers.then_some(config.bhf_id.as_str()),
            cmc_key: cmc_key.map(Secret::expose),
            body,
        };
        let timeout = config.timeouts.for_class(endpoint.call_class());
        let answer = tokio::time::timeout(timeout, unit.answer(call)).await;
        let (outcome, response_body, status) = match answer {
            Err(_) => {
                let reason = format!("no answer in time: {} ms passed", timeout.as_millis());
                (Outcome::Ambiguous { reason }, None, None)
            }
            Ok(None) => {
                let reason = "the control unit ended the call without an answer".to_owned();
                (Outcome::Ambiguous { reason }, None, None)
            }
            Ok(Some(InProcessAnswer { status, body })) => {
                let redacted = redact_issued_key(endpoint, body.clone());
                let outcome = self.interpret(status, &body, &redacted);
                (outcome, Some(redacted), Some(status))
            }
        };
        let exchange = self.exchange(
            endpoint,
            request_body,
            response_body,
            status,
            started.elapsed(),
        );
        trace_call(&outcome, &exchange);
        Call { outcome, exchange }
    }

    /// Serialises a request; on the VSCU profile the identity goes into the body as well.
    fn body_for<R: serde::Serialize>(&self, request: &R) -> Result<Vec<u8>, serde_json::Error> {
        let mut value = serde_json::to_value(request)?;
        if self.config.profile == Profile::Vscu
            && let Value::Object(map) = &mut value
        {
            for (key, identity) in [("tin", &self.config.tin), ("bhfId", &self.config.bhf_id)] {
                let slot = map.entry(key).or_insert(Value::Null);
                if slot.is_null() {
                    *slot = Value::String(identity.clone());
                }
            }
        }
        serde_json::to_vec(&value)
    }

    fn request(
        &self,
        endpoint: EndpointName,
        url: &str,
        body: Vec<u8>,
        token: Option<&str>,
        cmc_key: Option<&Secret>,
    ) -> reqwest::RequestBuilder {
        let config = &self.config;
        let mut request = self
            .http
            .post(url)
            .timeout(config.timeouts.for_class(endpoint.call_class()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        // The VSCU JAR takes its identity from the body and has no use for the cmcKey.
        if config.profile == Profile::Vscu {
            return request;
        }
        request = request
            .header("tin", &config.tin)
            .header("bhfId", &config.bhf_id);
        if let Some(key) = cmc_key {
            match reqwest::header::HeaderValue::from_str(key.expose()) {
                Ok(mut value) => {
                    // Kept out of any debug print of the request.
                    value.set_sensitive(true);
                    request = request.header("cmcKey", value);
                }
                // Not a header value: sent without it, the control unit refuses the call.
                Err(_) => tracing::error!("the cmcKey is not a valid header value; not sent"),
            }
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Reads an answer into an outcome. `shown` is the same answer with an issued cmcKey
    /// redacted: what error reasons quote.
    fn interpret(&self, status: u16, text: &str, shown: &str) -> Outcome<Value> {
        let envelope = match self.config.profile {
            Profile::GavaConnect => match serde_json::from_str::<GatewayEnvelope<Value>>(text) {
                Ok(GatewayEnvelope {
                    response_body: Some(body),
                    ..
                }) => Some(body),
                Ok(GatewayEnvelope {
                    response_header,
                    response_body: None,
                }) if (400..500).contains(&status) => {
                    // KRA's code, when the gateway passes it on as "994: …", keeps its
                    // meaning: a duplicate must still be recognised as one.
                    let code = response_header
                        .debug_message
                        .as_deref()
                        .and_then(leading_result_code)
                        .unwrap_or_else(|| ResultCode::Other(format!("HTTP{status}")));
                    let message = [
                        response_header.customer_message,
                        response_header.debug_message,
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ");
                    return Outcome::Rejected { code, message };
                }
                _ => None,
            },
            Profile::Oscu | Profile::Vscu => serde_json::from_str::<Envelope<Value>>(text).ok(),
        };
        match envelope {
            // A server error may come after the work was done, envelope or not.
            _ if status >= 500 => Outcome::Ambiguous {
                reason: format!("HTTP {status}: {}", excerpt(shown)),
            },
            // A redirect is a definite answer: the request was not processed there.
            _ if (300..400).contains(&status) => Outcome::Rejected {
                code: ResultCode::Other(format!("HTTP{status}")),
                message: "the control unit answered with a redirect: configure its final URL"
                    .to_owned(),
            },
            Some(envelope) if envelope.result_cd.is_success() => Outcome::Ok {
                code: envelope.result_cd,
                data: envelope.data,
            },
            Some(envelope) => Outcome::Rejected {
                code: envelope.result_cd,
                message: envelope.result_msg,
            },
            // No envelope: a gateway or proxy spoke. A 4xx refused the request before it
            // was processed; anything else may have been processed.
            None if (400..500).contains(&status) && status != 408 => Outcome::Rejected {
                code: ResultCode::Other(format!("HTTP{status}")),
                message: excerpt(shown),
            },
            None => Outcome::Ambiguous {
                reason: format!(
                    "HTTP {status} without a usable envelope: {}",
                    excerpt(shown)
                ),
            },
        }
    }

    fn exchange(
        &self,
        endpoint: EndpointName,
        request_body: String,
        response_body: Option<String>,
        http_status: Option<u16>,
        elapsed: Duration,
    ) -> Exchange {
        Exchange {
            endpoint,
            path: endpoint.path(self.config.profile).to_owned(),
            request_body,
            response_body,
            http_status,
            elapsed,
        }
    }

    /// GavaConnect's bearer token, fetched when missing, expiring within a minute, or
    /// refused (`refresh`).
    async fn gateway_token(&self, refresh: bool) -> Result<Option<String>, Outcome<Value>> {
        let Some(gateway) = &self.config.gateway else {
            return Ok(None);
        };
        if self.config.profile != Profile::GavaConnect {
            return Ok(None);
        }
        let mut cached = self.token.lock().await;
        if let Some((token, expires)) = cached.as_ref()
            && !refresh
            && *expires > Instant::now() + Duration::from_secs(60)
        {
            return Ok(Some(token.clone()));
        }
        let response = self
            .http
            .get(&gateway.token_url)
            .query(&[("grant_type", "client_credentials")])
            .basic_auth(
                &gateway.consumer_key,
                Some(gateway.consumer_secret.expose()),
            )
            .timeout(self.config.timeouts.init)
            .send()
            .await
            .map_err(|e| match classify_send_error(&e) {
                Outcome::Ambiguous { reason } => Outcome::NotSent {
                    reason: format!("token request failed: {reason}"),
                },
                other => other,
            })?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.map_err(|e| Outcome::NotSent {
            reason: format!("token answer unreadable (HTTP {status}): {e}"),
        })?;
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|_| status == 200)
            .ok_or_else(|| Outcome::Rejected {
                code: ResultCode::Other(format!("HTTP{status}")),
                message: "GavaConnect refused the consumer key and secret".to_owned(),
            })?;
        let expires_in = body
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(3600);
        *cached = Some((
            token.to_owned(),
            Instant::now() + Duration::from_secs(expires_in),
        ));
        Ok(Some(token.to_owned()))
    }
}

/// A call with its bodies at TRACE (as the journal keeps them: no headers, the issued
/// cmcKey redacted), its class at DEBUG.
fn trace_call<T>(outcome: &Outcome<T>, exchange: &Exchange) {
    tracing::debug!(
        endpoint = exchange.endpoint.oscu_name(),
        outcome = outcome.class_name(),
        http_status = exchange.http_status,
        elapsed_us = u64::try_from(exchange.elapsed.as_micros()).unwrap_or(u64::MAX),
        "control-unit call"
    );
    tracing::trace!(
        endpoint = exchange.endpoint.oscu_name(),
        request = exchange.request_body.as_str(),
        response = exchange.response_body.as_deref(),
        "control-unit call bodies"
    );
}

/// A send error is `NotSent` only when the request provably never left: the connection was
/// never established. Everything after connecting may have reached the server.
fn classify_send_error<T>(error: &reqwest::Error) -> Outcome<T> {
    if error.is_connect() {
        Outcome::NotSent {
            reason: format!("cannot connect: {}", error_chain(error)),
        }
    } else if error.is_builder() {
        Outcome::NotSent {
            reason: format!("invalid request: {}", error_chain(error)),
        }
    } else if error.is_timeout() {
        Outcome::Ambiguous {
            reason: format!("no answer in time: {}", error_chain(error)),
        }
    } else {
        Outcome::Ambiguous {
            reason: format!("connection failed after sending: {}", error_chain(error)),
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `"994: There is an overlapped Data"` → 994.
fn leading_result_code(text: &str) -> Option<ResultCode> {
    let (code, _) = text.trim().split_once(':')?;
    let code = code.trim();
    (!code.is_empty() && code.len() <= 4 && code.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| ResultCode::parse(code))
}

/// The answer to initialisation carries the cmcKey; the exchange journal keeps it redacted.
fn redact_issued_key(endpoint: EndpointName, text: String) -> String {
    if endpoint != EndpointName::SelectInitOsdcInfo || !text.contains("cmcKey") {
        return text;
    }
    fn redact(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map.iter_mut() {
                    if key.trim() == "cmcKey" {
                        *inner = Value::String("<redacted>".to_owned());
                    } else {
                        redact(inner);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(redact),
            _ => {}
        }
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(mut value) => {
            redact(&mut value);
            value.to_string()
        }
        Err(_) => "<an unreadable answer that mentions the cmcKey, withheld>".to_owned(),
    }
}

fn excerpt(text: &str) -> String {
    text.chars().take(300).collect()
}
