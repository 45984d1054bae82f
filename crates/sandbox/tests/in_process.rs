//! The sandbox called in process (as `ushuru serve` calls its built-in one) reads exactly
//! as the same sandbox over HTTP: every call, every fault kind, every profile, side by
//! side on two fresh sandboxes.

// A test crate: a panic in a helper is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use ushuru_kra::endpoints::*;
use ushuru_kra::types::*;
use ushuru_kra::{
    Call, ClientConfig, EndpointName, InProcessUnit, KraClient, Outcome, Profile, Secret, Timeouts,
};
use ushuru_sandbox::faults::Fault;
use ushuru_sandbox::{Config, Mode, SandboxHandle};

/// How a call ended, without what legitimately differs between two sandboxes (the
/// signatures and keys, which are random, and the answer's timestamps).
#[derive(Debug, PartialEq)]
struct Seen {
    class: &'static str,
    detail: String,
    http_status: Option<u16>,
    body_shape: Option<Value>,
}

fn shape(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, inner)| {
                    let inner = match key.as_str() {
                        "resultDt" | "rcptSign" | "intrlData" | "cmcKey" | "sdcDateTime"
                        | "vsdcRcptPbctDate" | "responseRefID" => Value::String("<varies>".into()),
                        _ => shape(inner),
                    };
                    (key, inner)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(shape).collect()),
        other => other,
    }
}

fn seen<T>(call: Call<T>) -> Seen {
    let detail = match &call.outcome {
        Outcome::Ok { code, .. } => code.code().to_owned(),
        Outcome::Rejected { code, message } => format!("{}: {message}", code.code()),
        // The wording names the transport; the class is what the relay acts on.
        Outcome::NotSent { .. } | Outcome::Ambiguous { .. } => String::new(),
    };
    Seen {
        class: call.outcome.class_name(),
        detail,
        http_status: call.exchange.http_status,
        body_shape: call
            .exchange
            .response_body
            .map(|body| serde_json::from_str::<Value>(&body).map_or(Value::String(body), shape)),
    }
}

/// One sandbox and a client of it, over HTTP or in process.
struct Side {
    handle: SandboxHandle,
    client: KraClient,
}

impl Side {
    async fn new(profile: Profile, in_process: bool, sale_timeout: Duration) -> Side {
        // A VSCU JAR takes its identity from the body and needs no cmcKey header.
        let mode = match profile {
            Profile::Vscu => Mode::Vscu,
            Profile::Oscu | Profile::GavaConnect => Mode::Oscu,
        };
        let handle = start(Config {
            mode,
            ..Config::default()
        })
        .await;
        let over_http = client(&handle, profile, TIN, "00");
        let config = ClientConfig {
            timeouts: Timeouts {
                sale: sale_timeout,
                ..Timeouts::default()
            },
            ..over_http.config().clone()
        };
        let client = if in_process {
            let unit: Arc<dyn InProcessUnit> = handle.sandbox().clone();
            KraClient::in_process(config, unit).unwrap()
        } else {
            KraClient::new(config).unwrap()
        };
        Side { handle, client }
    }

    fn fault(&self, endpoint: EndpointName, fault: Fault) {
        self.handle.sandbox().faults().push(endpoint, fault, 1);
    }

    fn signed(&self) -> usize {
        self.handle.sandbox().unit().dump()["sales"]
            .as_object()
            .map_or(0, |s| s.len())
    }

    /// Initialises the device (keeping its cmcKey) and registers an item.
    async fn ready(&mut self) -> Vec<Seen> {
        let request = InitRequest {
            tin: TIN.into(),
            bhf_id: "00".into(),
            dvc_srl_no: "POS-IN-PROCESS".into(),
        };
        let init = self.client.call::<InitDevice>(&request).await;
        let body = init.exchange.response_body.clone().unwrap_or_default();
        let key = match &init.outcome {
            Outcome::Ok {
                data: Some(data), ..
            } => data.info.cmc_key.clone(),
            other => panic!("initialisation failed: {other:?}"),
        };
        assert!(
            !body.contains(&key),
            "the journal keeps the issued cmcKey redacted"
        );
        self.client = self.client.with_cmc_key(Secret::new(key));
        let item = self
            .client
            .call::<SaveItemEndpoint>(&item_request("SODA", "B"))
            .await;
        vec![seen(init), seen(item)]
    }
}

/// Everything a relay can meet, in order, on one side; what it saw, and the number of
/// sales the sandbox signed after each step.
async fn scenario(side: &mut Side) -> Vec<(Seen, usize)> {
    let mut log: Vec<(Seen, usize)> = side
        .ready()
        .await
        .into_iter()
        .map(|s| (s, side.signed()))
        .collect();
    let sale_of = |invc_no| {
        sale(
            TIN,
            "00",
            invc_no,
            vec![line("SODA", priced("116", "B", "1"))],
        )
    };
    let endpoint = EndpointName::SaveTrnsSalesOsdc;
    let faults = [
        None,
        Some(Fault::ResultCode {
            code: "999".into(),
            message: Some("KRA is busy".into()),
        }),
        Some(Fault::HttpStatus {
            status: 502,
            body: None,
        }),
        Some(Fault::HttpStatus {
            status: 403,
            body: Some("<html>Forbidden</html>".into()),
        }),
        Some(Fault::Drop),
        Some(Fault::LostAnswer),
        // Longer than the client waits: ambiguous to it. The sandbox stops waiting with
        // it (over HTTP the closed connection cancels the handler), so nothing is signed.
        Some(Fault::Delay { ms: 600 }),
        Some(Fault::Delay { ms: 20 }),
    ];
    for fault in faults {
        let given_up = matches!(fault, Some(Fault::Delay { ms: 600 }));
        if let Some(fault) = fault {
            side.fault(endpoint, fault);
        }
        // The control unit takes only the next number: the one after those it signed.
        let invc_no = side.signed() as u64 + 1;
        let call = side.client.call::<SignSale>(&sale_of(invc_no)).await;
        if given_up {
            // Had the call gone on after the client gave up, it would be counted.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        log.push((seen(call), side.signed()));
    }
    // The same sale again: the control unit's duplicate answer.
    let again = side.client.call::<SignSale>(&sale_of(1)).await;
    log.push((seen(again), side.signed()));
    // A wrong cmcKey is refused the same way.
    let wrong = side.client.with_cmc_key(Secret::new("0".repeat(32)));
    let refused = wrong.call::<SignSale>(&sale_of(20)).await;
    log.push((seen(refused), side.signed()));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_calls_read_exactly_as_http_calls_on_every_profile() {
    for profile in [Profile::Oscu, Profile::Vscu, Profile::GavaConnect] {
        let timeout = Duration::from_millis(300);
        let mut over_http = Side::new(profile, false, timeout).await;
        let mut in_process = Side::new(profile, true, timeout).await;
        let http_log = scenario(&mut over_http).await;
        let direct_log = scenario(&mut in_process).await;
        assert_eq!(http_log.len(), direct_log.len());
        for (step, (http, direct)) in http_log.iter().zip(&direct_log).enumerate() {
            assert_eq!(http, direct, "{profile:?}, step {step}");
        }
        // The scenario did meet every class, so the comparison above means something.
        let classes: std::collections::HashSet<_> =
            direct_log.iter().map(|(seen, _)| seen.class).collect();
        for class in ["ok", "rejected", "ambiguous"] {
            assert!(classes.contains(class), "{profile:?}: no {class} call");
        }
        // Signed: the plain sale, the lost answer and the short delay; not the refusals,
        // the 502, the dropped call or the call given up on.
        assert_eq!(direct_log.last().map(|(_, signed)| *signed), Some(3));
    }
}
